// Command bench-gateway is the container-gateway side of the benchmarks. Like crunch-run it
// dials yamux tunnels to a controller (the sidecar or the Go reference) in the client role
// and serves TLS with the gateway's HMAC proofs on every stream; it can also listen directly.
//
// Behind an SSH upgrade it runs one benchmark mode chosen by the first 16 bytes the client
// sends (see readCommand); GET requests are answered with a generated body whose size is the
// number in the last path segment ("gen-<bytes>"). Events are JSON lines on stdout. The
// program exits when its standard input closes, so it cannot outlive the runner.
//
// Each connection is served by a small TLS + HTTP/1.1 loop rather than net/http's Server:
// Debian's yamux streams do not honour read deadlines the way net/http needs (see
// interop/go/crunch-run/tunnel.go), and a loop that never sets a deadline needs neither the
// two-pipe wrapper crunch-run uses nor its extra copies, so the gateway costs as little CPU
// as possible on a 2-core machine where it shares the cores with the proxy under test.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Benchmark modes after an SSH upgrade.
const (
	modeSink   = 'k'
	modeSource = 's'
	modeEcho   = 'e'
)

// commandMagic starts every benchmark command, so a stray client fails loudly.
const commandMagic = "ABG1"

// chunkSize is the size of the buffers used to move bulk data.
const chunkSize = 256 << 10

var (
	stdoutMu sync.Mutex
	pattern  = makePattern(chunkSize)
)

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

func makePattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func hmacHex(key, msg []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(msg)
	return hex.EncodeToString(mac.Sum(nil))
}

// tunnelTargets collects repeated -tunnel flags.
type tunnelTargets []string

func (t *tunnelTargets) String() string     { return strings.Join(*t, ",") }
func (t *tunnelTargets) Set(v string) error { *t = append(*t, v); return nil }

type gateway struct {
	rootToken string
	certDER   []byte
	tlsConfig *tls.Config
}

func main() {
	var tunnels tunnelTargets
	rootToken := flag.String("root-token", "", "SystemRootToken the container keys derive from")
	listen := flag.String("listen", "", "address of a direct TLS listener (empty: none)")
	flag.Var(&tunnels, "tunnel", "`URL|UUID`: dial a tunnel to URL for container UUID "+
		"(repeatable)")
	flag.Parse()
	if *rootToken == "" {
		fatal(errors.New("-root-token is required"))
	}
	cert, err := selfSignedCert()
	if err != nil {
		fatal(err)
	}
	g := &gateway{
		rootToken: *rootToken,
		certDER:   cert.Certificate[0],
		tlsConfig: &tls.Config{Certificates: []tls.Certificate{cert},
			NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12},
	}
	direct := ""
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fatal(err)
		}
		direct = ln.Addr().String()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go g.serve(c)
			}
		}()
	}
	for _, t := range tunnels {
		i := strings.LastIndex(t, "|")
		if i < 0 {
			fatal(fmt.Errorf("-tunnel %q is not URL|UUID", t))
		}
		if err := g.dialTunnel(t[:i], t[i+1:]); err != nil {
			fatal(fmt.Errorf("tunnel to %s: %w", t[:i], err))
		}
	}
	emit("ready", "direct_address", direct)
	io.Copy(io.Discard, os.Stdin)
}

// dialTunnel upgrades a connection to a tunnel as crunch-run does (absolute-form target, no
// Connection header, auth_secret in a form body) and serves the streams opened on it.
func (g *gateway) dialTunnel(base, uuid string) error {
	u, err := url.Parse(base)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return err
	}
	body := "auth_secret=" + hmacHex([]byte(g.rootToken), []byte(uuid))
	req := "POST " + strings.TrimRight(base, "/") + "/arvados/v1/connect/" + uuid +
		"/gateway_tunnel HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: tunnel\r\n" +
		"Content-Type: application/x-www-form-urlencoded\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	if _, err := conn.Write([]byte(req)); err != nil {
		conn.Close()
		return err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "tunnel") {
		conn.Close()
		return fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Client(withBuffered(conn, br), cfg)
	if err != nil {
		conn.Close()
		return err
	}
	emit("tunnel_up", "url", base, "uuid", uuid)
	go func() {
		for {
			st, err := sess.Accept()
			if err != nil {
				emit("tunnel_down", "url", base, "uuid", uuid, "error", err.Error())
				return
			}
			go g.serve(st)
		}
	}()
	return nil
}

// serve answers one request on a stream or direct connection, then closes it.
func (g *gateway) serve(raw net.Conn) {
	tc := tls.Server(raw, g.tlsConfig)
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return
	}
	br := bufio.NewReaderSize(tc, 16<<10)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	uuid := req.Header.Get("X-Arvados-Container-Gateway-Uuid")
	key := []byte(hmacHex([]byte(g.rootToken), []byte(uuid)))
	got := req.Header.Get("X-Arvados-Authorization")
	if uuid == "" || !hmac.Equal([]byte(got), []byte(hmacHex(key, g.certDER))) {
		io.WriteString(tc, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n"+
			"Connection: close\r\n\r\nunauthorized\n")
		return
	}
	proof := "X-Arvados-Authorization-Response: " + hmacHex(key, []byte(got)) + "\r\n"
	switch {
	case req.Method == http.MethodPost && req.URL.Path == "/ssh" &&
		strings.EqualFold(req.Header.Get("Upgrade"), "ssh"):
		io.Copy(io.Discard, req.Body)
		_, err := io.WriteString(tc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ssh\r\n"+
			"Connection: upgrade\r\n"+proof+"\r\n")
		if err == nil {
			runMode(tc, br)
		}
	case req.Method == http.MethodGet:
		size, err := strconv.ParseInt(strings.TrimPrefix(path.Base(req.URL.Path), "gen-"), 10, 64)
		if err != nil || size < 0 {
			io.WriteString(tc, "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n"+proof+
				"Connection: close\r\n\r\nnot found\n")
			return
		}
		head := "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" +
			"Content-Length: " + strconv.FormatInt(size, 10) + "\r\n" + proof +
			"Connection: close\r\n\r\n"
		if _, err := io.WriteString(tc, head); err == nil {
			sendBytes(tc, size)
		}
	default:
		io.WriteString(tc, "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n"+proof+
			"Connection: close\r\n\r\nnot found\n")
	}
}

// readCommand reads the 16-byte command: "ABG1", the mode byte, 3 zero bytes, and a 64-bit
// big-endian byte count.
func readCommand(r io.Reader) (byte, int64, error) {
	var cmd [16]byte
	if _, err := io.ReadFull(r, cmd[:]); err != nil {
		return 0, 0, err
	}
	if string(cmd[:4]) != commandMagic {
		return 0, 0, errors.New("bad command")
	}
	return cmd[4], int64(binary.BigEndian.Uint64(cmd[8:])), nil
}

// runMode runs the benchmark the client asked for on an upgraded connection.
func runMode(w io.Writer, r io.Reader) {
	mode, n, err := readCommand(r)
	if err != nil {
		return
	}
	switch mode {
	case modeSink:
		buf := make([]byte, chunkSize)
		var got int64
		for got < n {
			want := int64(len(buf))
			if n-got < want {
				want = n - got
			}
			m, err := r.Read(buf[:want])
			got += int64(m)
			if err != nil {
				break
			}
		}
		var ack [8]byte
		binary.BigEndian.PutUint64(ack[:], uint64(got))
		w.Write(ack[:])
		// Wait for the client to hang up, so the ack is not cut off by our close.
		io.Copy(io.Discard, r)
	case modeSource:
		sendBytes(w, n)
		io.Copy(io.Discard, r)
	case modeEcho:
		buf := make([]byte, 64<<10)
		for {
			m, err := r.Read(buf)
			if m > 0 {
				if _, werr := w.Write(buf[:m]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

func sendBytes(w io.Writer, n int64) {
	for n > 0 {
		chunk := pattern
		if n < int64(len(chunk)) {
			chunk = chunk[:n]
		}
		m, err := w.Write(chunk)
		n -= int64(m)
		if err != nil {
			return
		}
	}
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

// withBuffered keeps only the bytes br already holds, not br itself, so a held tunnel does not
// pin a 4 KiB reader for its whole life.
func withBuffered(conn net.Conn, br *bufio.Reader) net.Conn {
	n := br.Buffered()
	if n == 0 {
		return conn
	}
	pending, _ := br.Peek(n)
	return &bufferedConn{Conn: conn, pending: append([]byte(nil), pending...)}
}

func selfSignedCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: "bench container gateway"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
