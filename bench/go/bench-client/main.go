// Command bench-client is the load generator of the benchmarks, run against the sidecar and
// the Go reference alike so that both are measured by the same client. Subcommands:
//
//	throughput  SSH upgrades, then bulk bytes up (to a sink) or down (from a source)
//	rtt         SSH upgrade, then 64-byte round trips through an echo
//	log         one GET of a log file, at full speed or read at a fixed rate
//	tunnels     open many tunnels as crunch-run would, report the rate, hold them
//
// The modes after an SSH upgrade are those of bench-gateway: a 16-byte command ("ABG1", mode,
// 3 zero bytes, 64-bit big-endian count) that the client sends first (the sidecar holds the
// gateway's bytes until the client has spoken, as arvados-client needs). Results are JSON
// lines on stdout; a failure is an {"event":"fatal"} line and exit status 1.
package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

const chunkSize = 256 << 10

var stdoutMu sync.Mutex

func emit(event string, kv ...interface{}) {
	m := map[string]interface{}{"event": event}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, _ := json.Marshal(m)
	stdoutMu.Lock()
	os.Stdout.Write(append(b, '\n'))
	stdoutMu.Unlock()
}

func fatal(err error) {
	emit("fatal", "error", err.Error())
	os.Exit(1)
}

func hmacHex(key, msg []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(msg)
	return hex.EncodeToString(mac.Sum(nil))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench-client throughput|rtt|trickle|log|tunnels [flags]")
		os.Exit(2)
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "throughput":
		err = throughput(args)
	case "rtt":
		err = rtt(args)
	case "trickle":
		err = trickle(args)
	case "log":
		err = logGet(args)
	case "tunnels":
		err = tunnels(args)
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fatal(err)
	}
}

// upgraded is a connection after a 101, reading through what the head reader buffered.
type upgraded struct {
	conn net.Conn
	r    *bufio.Reader
}

// sshUpgrade sends the upgrade request arvados-client sends and checks for a 101.
func sshUpgrade(base, uuid, token string) (*upgraded, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	body := "detach_keys=&login_username=bench&no_forward=false"
	req := "POST " + strings.TrimRight(base, "/") + "/arvados/v1/connect/" + uuid +
		"/ssh HTTP/1.1\r\nHost: " + u.Host + "\r\nAuthorization: Bearer " + token + "\r\n" +
		"Upgrade: ssh\r\nContent-Type: application/x-www-form-urlencoded\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		conn.Close()
		return nil, fmt.Errorf("ssh upgrade refused: %s %s", resp.Status,
			strings.TrimSpace(string(msg)))
	}
	return &upgraded{conn: conn, r: br}, nil
}

func command(mode byte, n int64) []byte {
	cmd := make([]byte, 16)
	copy(cmd, "ABG1")
	cmd[4] = mode
	binary.BigEndian.PutUint64(cmd[8:], uint64(n))
	return cmd
}

// upgradeFlags declares the flags every subcommand that makes an SSH upgrade takes.
func upgradeFlags(fs *flag.FlagSet) (base, uuid, token *string) {
	base = fs.String("url", "", "proxy base URL")
	uuid = fs.String("uuid", "", "container UUID")
	token = fs.String("token", "", "user token")
	return base, uuid, token
}

func throughput(args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	base, uuid, token := upgradeFlags(fs)
	streams := fs.Int("streams", 1, "concurrent streams")
	total := fs.Int64("bytes", 64<<20, "bytes in all, split evenly over the streams")
	dir := fs.String("dir", "up", "up: client to gateway; down: gateway to client")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir != "up" && *dir != "down" {
		return errors.New("-dir must be up or down")
	}
	per := *total / int64(*streams)
	conns := make([]*upgraded, *streams)
	for i := range conns {
		c, err := sshUpgrade(*base, *uuid, *token)
		if err != nil {
			return err
		}
		defer c.conn.Close()
		conns[i] = c
	}
	start := make(chan struct{})
	errs := make(chan error, len(conns))
	var moved int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func(c *upgraded) {
			defer wg.Done()
			<-start
			var n int64
			var err error
			if *dir == "up" {
				n, err = sendToSink(c, per)
			} else {
				n, err = readFromSource(c, per)
			}
			atomic.AddInt64(&moved, n)
			errs <- err
		}(c)
	}
	cpu0 := cpuSeconds()
	t0 := time.Now()
	close(start)
	wg.Wait()
	seconds := time.Since(t0).Seconds()
	cpu := cpuSeconds() - cpu0
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	emit("result", "bytes", moved, "seconds", seconds, "mbps", float64(moved)/seconds/1e6,
		"streams", *streams, "dir", *dir, "cpu_s", cpu)
	return nil
}

// cpuSeconds is this process's CPU time so far, user and system.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func sendToSink(c *upgraded, n int64) (int64, error) {
	if _, err := c.conn.Write(command('k', n)); err != nil {
		return 0, err
	}
	buf := make([]byte, chunkSize)
	var sent int64
	for sent < n {
		chunk := buf
		if n-sent < int64(len(chunk)) {
			chunk = chunk[:n-sent]
		}
		m, err := c.conn.Write(chunk)
		sent += int64(m)
		if err != nil {
			return sent, err
		}
	}
	var ack [8]byte
	if _, err := io.ReadFull(c.r, ack[:]); err != nil {
		return sent, fmt.Errorf("no ack from the sink: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != n {
		return sent, fmt.Errorf("sink counted %d bytes, sent %d", got, n)
	}
	return sent, nil
}

func readFromSource(c *upgraded, n int64) (int64, error) {
	if _, err := c.conn.Write(command('s', n)); err != nil {
		return 0, err
	}
	buf := make([]byte, chunkSize)
	var got int64
	for got < n {
		want := int64(len(buf))
		if n-got < want {
			want = n - got
		}
		m, err := c.r.Read(buf[:want])
		got += int64(m)
		if err != nil {
			return got, fmt.Errorf("source stopped after %d of %d bytes: %w", got, n, err)
		}
	}
	return got, nil
}

func rtt(args []string) error {
	fs := flag.NewFlagSet("rtt", flag.ContinueOnError)
	base, uuid, token := upgradeFlags(fs)
	samples := fs.Int("samples", 10000, "round trips measured")
	warmup := fs.Int("warmup", 500, "round trips not measured, first")
	size := fs.Int("size", 64, "message size in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := sshUpgrade(*base, *uuid, *token)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	if _, err := c.conn.Write(command('e', 0)); err != nil {
		return err
	}
	msg := make([]byte, *size)
	back := make([]byte, *size)
	times := make([]float64, 0, *samples)
	for i := 0; i < *warmup+*samples; i++ {
		msg[0] = byte(i)
		msg[*size-1] = byte(i >> 8)
		t := time.Now()
		if _, err := c.conn.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c.r, back); err != nil {
			return err
		}
		d := time.Since(t)
		if back[0] != msg[0] || back[*size-1] != msg[*size-1] {
			return errors.New("echo returned other bytes than were sent")
		}
		if i >= *warmup {
			times = append(times, float64(d.Nanoseconds())/1e3)
		}
	}
	sort.Float64s(times)
	emit("result", "samples", len(times), "p50_us", percentile(times, 0.50),
		"p90_us", percentile(times, 0.90), "p99_us", percentile(times, 0.99),
		"p999_us", percentile(times, 0.999), "max_us", times[len(times)-1])
	return nil
}

// trickle sends small messages at a steady pace to the gateway's sink: the traffic of a
// shell's keystrokes or of a program printing short lines, at rates where what a proxy does
// between reads (sleep, or poll for a while) shows in its CPU time.
func trickle(args []string) error {
	fs := flag.NewFlagSet("trickle", flag.ContinueOnError)
	base, uuid, token := upgradeFlags(fs)
	size := fs.Int("size", 12, "message size in bytes")
	every := fs.Duration("every", 150*time.Microsecond, "time from one message to the next")
	duration := fs.Duration("duration", 4*time.Second, "how long to send")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *every <= 0 || *size <= 0 {
		return errors.New("-every and -size must be positive")
	}
	count := int64(*duration / *every)
	c, err := sshUpgrade(*base, *uuid, *token)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	if _, err := c.conn.Write(command('k', count*int64(*size))); err != nil {
		return err
	}
	msg := make([]byte, *size)
	start := time.Now()
	for i := int64(0); i < count; i++ {
		// Spin to each message's time: a sleep this short would overshoot it by more than the
		// interval itself.
		due := start.Add(time.Duration(i) * *every)
		for time.Now().Before(due) {
		}
		if _, err := c.conn.Write(msg); err != nil {
			return err
		}
	}
	seconds := time.Since(start).Seconds()
	var ack [8]byte
	if _, err := io.ReadFull(c.r, ack[:]); err != nil {
		return fmt.Errorf("no ack from the sink: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != count*int64(*size) {
		return fmt.Errorf("sink counted %d bytes, sent %d", got, count*int64(*size))
	}
	emit("result", "messages", count, "seconds", seconds)
	return nil
}

// percentile picks the nearest-rank percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	rank := int(p*float64(len(sorted))+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}

func logGet(args []string) error {
	fs := flag.NewFlagSet("log", flag.ContinueOnError)
	target := fs.String("url", "", "full URL of the log file")
	token := fs.String("token", "", "user token")
	rate := fs.Int64("rate", 0, "read at most this many bytes per second (0: full speed)")
	duration := fs.Duration("duration", 0, "with -rate: stop reading after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodGet, *target, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+*token)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true,
		ReadBufferSize: 64 << 10}}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("log GET answered %s %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	emit("headers", "content_length", resp.ContentLength)
	if *rate > 0 {
		return slowRead(resp, *rate, *duration)
	}
	buf := make([]byte, chunkSize)
	var got int64
	for {
		n, err := resp.Body.Read(buf)
		got += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", got, err)
		}
	}
	seconds := time.Since(t0).Seconds()
	if resp.ContentLength >= 0 && got != resp.ContentLength {
		return fmt.Errorf("read %d bytes of %d", got, resp.ContentLength)
	}
	emit("result", "bytes", got, "seconds", seconds, "mbps", float64(got)/seconds/1e6)
	return nil
}

// slowRead reads 64 KiB at a time, never ahead of rate, until the duration is over.
func slowRead(resp *http.Response, rate int64, duration time.Duration) error {
	buf := make([]byte, 64<<10)
	t0 := time.Now()
	var got int64
	for time.Since(t0) < duration {
		due := time.Duration(float64(got) / float64(rate) * float64(time.Second))
		if wait := due - time.Since(t0); wait > 0 {
			time.Sleep(wait)
		}
		n, err := resp.Body.Read(buf)
		got += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", got, err)
		}
	}
	seconds := time.Since(t0).Seconds()
	emit("result", "bytes", got, "seconds", seconds, "mbps", float64(got)/seconds/1e6)
	return nil
}

func tunnels(args []string) error {
	fs := flag.NewFlagSet("tunnels", flag.ContinueOnError)
	base := fs.String("url", "", "proxy base URL")
	rootToken := fs.String("root-token", "", "SystemRootToken the auth secrets derive from")
	n := fs.Int("n", 100, "tunnels to open")
	concurrency := fs.Int("concurrency", 32, "tunnels being opened at once")
	prefix := fs.String("prefix", "zzzzz-dz642-idle", "container UUID prefix (5+7+4 chars)")
	hold := fs.Bool("hold", false, "hold the tunnels until stdin says close or ends")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(*prefix) != 16 {
		return errors.New("-prefix must be 16 characters, e.g. zzzzz-dz642-idle")
	}
	u, err := url.Parse(*base)
	if err != nil {
		return err
	}
	sessions := make([]*yamux.Session, *n)
	var next int64 = -1
	var failed int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= *n {
					return
				}
				uuid := fmt.Sprintf("%s%011d", *prefix, i)
				sess, err := openTunnel(u, *base, uuid, *rootToken)
				if err != nil {
					atomic.AddInt64(&failed, 1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				sessions[i] = sess
			}
		}()
	}
	wg.Wait()
	seconds := time.Since(t0).Seconds()
	if failed > 0 {
		return fmt.Errorf("%d of %d tunnels failed, first: %v", failed, *n, firstErr.Load())
	}
	emit("tunnels_up", "n", *n, "seconds", seconds, "rate", float64(*n)/seconds)
	if *hold {
		line := bufio.NewScanner(os.Stdin)
		for line.Scan() && strings.TrimSpace(line.Text()) != "close" {
		}
	}
	for _, s := range sessions {
		if s != nil {
			s.Close()
		}
	}
	emit("closed", "n", *n)
	return nil
}

// openTunnel upgrades one connection the way crunch-run does and starts a yamux client.
func openTunnel(u *url.URL, base, uuid, rootToken string) (*yamux.Session, error) {
	conn, err := net.DialTimeout("tcp", u.Host, 30*time.Second)
	if err != nil {
		return nil, err
	}
	body := "auth_secret=" + hmacHex([]byte(rootToken), []byte(uuid))
	req := "POST " + strings.TrimRight(base, "/") + "/arvados/v1/connect/" + uuid +
		"/gateway_tunnel HTTP/1.1\r\nHost: " + u.Host + "\r\nAuthorization: Bearer x\r\n" +
		"Upgrade: tunnel\r\nContent-Type: application/x-www-form-urlencoded\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("tunnel refused: %s", resp.Status)
	}
	var mux net.Conn = conn
	if k := br.Buffered(); k > 0 {
		pending, _ := br.Peek(k)
		mux = &bufferedConn{Conn: conn, pending: append([]byte(nil), pending...)}
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	return yamux.Client(mux, cfg)
}

// bufferedConn is a connection whose first bytes were already read into a buffer.
type bufferedConn struct {
	net.Conn
	pending []byte
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
