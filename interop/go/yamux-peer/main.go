// Command yamux-peer is the Go side of the yamux interop tests: it runs hashicorp/yamux with
// its default configuration (plus optional keepalive settings) over one TCP connection and
// reports what it saw as JSON lines on stdout.
//
// Modes:
//
//	echo    accept streams and echo each one until its peer half-closes
//	send    open -streams streams per entry of -sizes, send seeded payloads, read the echo
//	source  open one stream per entry of -sizes, send the payload, then close it
//	ping    like echo, and after -idle also call Ping -pings times
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

type options struct {
	role         string
	connect      string
	listen       string
	mode         string
	sizes        []int
	streams      int
	timeout      time.Duration
	keepalive    time.Duration
	writeTimeout time.Duration
	goAwayAfter  int
	idle         time.Duration
	pings        int
}

// streamResult is one stream's outcome in send and source modes.
type streamResult struct {
	ID         uint32 `json:"id"`
	Size       int    `json:"size"`
	SentSHA256 string `json:"sent_sha256"`
	RecvSHA256 string `json:"recv_sha256,omitempty"`
	RecvBytes  int64  `json:"recv_bytes"`
	OK         bool   `json:"ok"`
	Error      string `json:"error,omitempty"`
}

// echoRecord is one echoed stream in echo and ping modes.
type echoRecord struct {
	ID     uint32 `json:"id"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	Error  string `json:"error,omitempty"`
}

var stdout = json.NewEncoder(os.Stdout)
var stdoutLock sync.Mutex

func emit(v map[string]interface{}) {
	stdoutLock.Lock()
	defer stdoutLock.Unlock()
	if err := stdout.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "yamux-peer: stdout:", err)
		os.Exit(3)
	}
}

func fail(format string, args ...interface{}) {
	emit(map[string]interface{}{"event": "fatal", "error": fmt.Sprintf(format, args...)})
	os.Exit(2)
}

func main() {
	opts := parseFlags()
	conn := dial(opts)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	if opts.keepalive > 0 {
		cfg.KeepAliveInterval = opts.keepalive
	}
	if opts.writeTimeout > 0 {
		cfg.ConnectionWriteTimeout = opts.writeTimeout
	}
	var sess *yamux.Session
	var err error
	if opts.role == "client" {
		sess, err = yamux.Client(conn, cfg)
	} else {
		sess, err = yamux.Server(conn, cfg)
	}
	if err != nil {
		fail("yamux session: %v", err)
	}
	emit(map[string]interface{}{"event": "ready", "role": opts.role, "mode": opts.mode})

	switch opts.mode {
	case "echo":
		records := echoAll(sess, opts)
		emit(map[string]interface{}{"event": "echo", "streams": records.list()})
	case "send":
		results := sendAll(sess, opts, true)
		emit(map[string]interface{}{"event": "result", "ok": allOK(results), "streams": results})
		waitClosed(sess, opts.timeout)
	case "source":
		results := sendAll(sess, opts, false)
		emit(map[string]interface{}{"event": "result", "ok": allOK(results), "streams": results})
		waitClosed(sess, opts.timeout)
	case "ping":
		records := &echoLog{}
		done := make(chan struct{})
		go func() {
			echoLoop(sess, opts, records)
			close(done)
		}()
		select {
		case <-time.After(opts.idle):
		case <-sess.CloseChan():
		}
		var rtts []float64
		pingErr := ""
		for i := 0; i < opts.pings; i++ {
			rtt, err := sess.Ping()
			if err != nil {
				pingErr = err.Error()
				break
			}
			rtts = append(rtts, float64(rtt.Microseconds())/1000)
		}
		emit(map[string]interface{}{
			"event": "ping", "ok": pingErr == "" && !sess.IsClosed(), "rtts_ms": rtts,
			"error": pingErr, "closed": sess.IsClosed(),
		})
		<-done
		emit(map[string]interface{}{"event": "echo", "streams": records.list()})
	default:
		fail("unknown mode %q", opts.mode)
	}
	sess.Close()
	emit(map[string]interface{}{"event": "exit"})
}

func parseFlags() options {
	var o options
	var sizes string
	flag.StringVar(&o.role, "role", "client", "yamux role: client or server")
	flag.StringVar(&o.connect, "connect", "", "address to dial")
	flag.StringVar(&o.listen, "listen", "", "address to listen on for one connection")
	flag.StringVar(&o.mode, "mode", "echo", "echo, send, source or ping")
	flag.StringVar(&sizes, "sizes", "1024", "comma-separated payload sizes in bytes")
	flag.IntVar(&o.streams, "streams", 1, "streams per size in send mode")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for each stream")
	flag.DurationVar(&o.keepalive, "keepalive", 0, "KeepAliveInterval (0: yamux default)")
	flag.DurationVar(&o.writeTimeout, "write-timeout", 0, "ConnectionWriteTimeout (0: default)")
	flag.IntVar(&o.goAwayAfter, "goaway-after", 0, "echo mode: send GoAway after N accepts")
	flag.DurationVar(&o.idle, "idle", time.Second, "ping mode: wait before pinging")
	flag.IntVar(&o.pings, "pings", 3, "ping mode: number of pings")
	flag.Parse()
	if o.role != "client" && o.role != "server" {
		fail("-role must be client or server")
	}
	if (o.connect == "") == (o.listen == "") {
		fail("exactly one of -connect and -listen is required")
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			fail("bad size %q", s)
		}
		o.sizes = append(o.sizes, n)
	}
	return o
}

func dial(o options) net.Conn {
	if o.connect != "" {
		conn, err := net.Dial("tcp", o.connect)
		if err != nil {
			fail("dial: %v", err)
		}
		return conn
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		fail("listen: %v", err)
	}
	emit(map[string]interface{}{"event": "listening", "addr": ln.Addr().String()})
	conn, err := ln.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	ln.Close()
	return conn
}

// payload is deterministic per stream so either side can check it.
func payload(seed int64, size int) []byte {
	buf := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(buf)
	return buf
}

func hexSum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func allOK(results []streamResult) bool {
	for _, r := range results {
		if !r.OK {
			return false
		}
	}
	return true
}

// sendAll runs every stream at once; with echo it expects the payload back on each stream.
func sendAll(sess *yamux.Session, o options, echo bool) []streamResult {
	var jobs []int
	for _, size := range o.sizes {
		for i := 0; i < o.streams; i++ {
			jobs = append(jobs, size)
		}
	}
	results := make([]streamResult, len(jobs))
	var wg sync.WaitGroup
	for i, size := range jobs {
		wg.Add(1)
		go func(i, size int) {
			defer wg.Done()
			results[i] = runStream(sess, o, int64(i+1), size, echo)
		}(i, size)
	}
	wg.Wait()
	return results
}

func runStream(sess *yamux.Session, o options, seed int64, size int, echo bool) streamResult {
	data := payload(seed, size)
	res := streamResult{Size: size, SentSHA256: hexSum(data)}
	stream, err := sess.OpenStream()
	if err != nil {
		res.Error = "open: " + err.Error()
		return res
	}
	res.ID = stream.StreamID()
	stream.SetDeadline(time.Now().Add(o.timeout))
	if !echo {
		// A single Write lets yamux put up to a whole window into one frame.
		if _, err := stream.Write(data); err != nil {
			res.Error = "write: " + err.Error()
			return res
		}
		stream.Close()
		res.OK = true
		return res
	}
	writeErr := make(chan error, 1)
	go func() {
		_, err := stream.Write(data)
		writeErr <- err
	}()
	// This yamux version reports EOF on reads once the local side closed, so read the whole
	// echo before closing.
	h := sha256.New()
	n, err := io.CopyN(h, stream, int64(size))
	res.RecvBytes = n
	res.RecvSHA256 = hex.EncodeToString(h.Sum(nil))
	if err != nil {
		res.Error = "read: " + err.Error()
	} else if werr := <-writeErr; werr != nil {
		res.Error = "write: " + werr.Error()
	}
	stream.Close()
	res.OK = res.Error == "" && res.RecvSHA256 == res.SentSHA256
	return res
}

type echoLog struct {
	mu      sync.Mutex
	records []echoRecord
}

func (l *echoLog) add(r echoRecord) {
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
}

func (l *echoLog) list() []echoRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]echoRecord{}, l.records...)
}

func echoAll(sess *yamux.Session, o options) *echoLog {
	records := &echoLog{}
	echoLoop(sess, o, records)
	return records
}

// echoLoop serves streams until the session ends, then waits for the echoes in progress.
func echoLoop(sess *yamux.Session, o options, records *echoLog) {
	var wg sync.WaitGroup
	accepted := 0
	for {
		stream, err := sess.AcceptStream()
		if err != nil {
			break
		}
		accepted++
		if o.goAwayAfter > 0 && accepted == o.goAwayAfter {
			if err := sess.GoAway(); err != nil {
				fmt.Fprintln(os.Stderr, "yamux-peer: go away:", err)
			}
			emit(map[string]interface{}{"event": "goaway-sent", "after": accepted})
		}
		wg.Add(1)
		go func(stream *yamux.Stream) {
			defer wg.Done()
			records.add(echoStream(stream))
		}(stream)
	}
	wg.Wait()
}

func echoStream(stream *yamux.Stream) echoRecord {
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(stream, h), stream)
	rec := echoRecord{ID: stream.StreamID(), Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}
	if err != nil {
		rec.Error = err.Error()
	}
	stream.Close()
	return rec
}

func waitClosed(sess *yamux.Session, limit time.Duration) {
	select {
	case <-sess.CloseChan():
	case <-time.After(limit):
	}
}
