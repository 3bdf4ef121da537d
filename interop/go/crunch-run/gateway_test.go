package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

const testUUID = "zzzzz-dz642-0123456789abcde"
const testSecret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// testTimeout bounds every wait so a broken build fails instead of hanging.
const testTimeout = 20 * time.Second

type event struct {
	name   string
	fields map[string]interface{}
}

type recorder struct {
	ch chan event
}

func (r *recorder) emit(name string, kv ...interface{}) {
	fields := map[string]interface{}{}
	for i := 0; i+1 < len(kv); i += 2 {
		fields[kv[i].(string)] = kv[i+1]
	}
	r.ch <- event{name, fields}
}

// next returns the next event, failing the test if it is not called name.
func (r *recorder) next(t *testing.T, name string) event {
	t.Helper()
	select {
	case ev := <-r.ch:
		if ev.name != name {
			t.Fatalf("got event %s %v, want %s", ev.name, ev.fields, name)
		}
		return ev
	case <-time.After(testTimeout):
		t.Fatalf("no %s event", name)
	}
	return event{}
}

func baseConfig(t *testing.T) *config {
	return &config{
		uuid:              testUUID,
		authSecret:        testSecret,
		listen:            "127.0.0.1:0",
		tunnelPathStyle:   "connect",
		workdir:           t.TempDir(),
		logDir:            t.TempDir(),
		keepaliveInterval: 0,
		redialInterval:    50 * time.Millisecond,
	}
}

// startGateway runs the program in-process and returns its events and listen address.
func startGateway(t *testing.T, cfg *config) (*recorder, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rec := &recorder{ch: make(chan event, 1000)}
	done := make(chan error, 1)
	tw := &testWriter{t: t}
	logger := log.New(tw, "", 0)
	go func() { done <- run(ctx, cfg, rec, logger) }()
	t.Cleanup(func() {
		cancel()
		<-done
		tw.close()
	})
	ready := rec.next(t, "ready")
	return rec, ready.fields["gateway_address"].(string)
}

// testWriter sends the program's log to the test log while the test runs; goroutines that
// finish later must not call t.Log, which panics after the test has completed.
type testWriter struct {
	mu     sync.Mutex
	t      *testing.T
	closed bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// requestAuth is what a client must send: an HMAC over the certificate the gateway showed.
func requestAuth(conn *tls.Conn) string {
	return hmacHex([]byte(testSecret), conn.ConnectionState().PeerCertificates[0].Raw)
}

func tlsClient(t *testing.T, conn net.Conn) *tls.Conn {
	t.Helper()
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(testTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

func dialGateway(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return tlsClient(t, conn)
}

// roundTrip sends one request on conn and reads the answer.
func roundTrip(t *testing.T, conn *tls.Conn, br *bufio.Reader, req *http.Request) (
	*http.Response, string) {
	t.Helper()
	req.Header.Set(hdrGatewayUUID, testUUID)
	req.Header.Set(hdrAuthorization, requestAuth(conn))
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestSSHExecShellAndRefusals(t *testing.T) {
	cfg := baseConfig(t)
	_, addr := startGateway(t, cfg)
	client := sshOver(t, dialGateway(t, addr))
	defer client.Close()

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Setenv("GREETING", "hello"); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run(`pwd; echo "$GREETING"; echo oops >&2; exit 3`)
	var exitErr *ssh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
		t.Fatalf("exec error %v, want exit status 3", err)
	}
	if want := cfg.workdir + "\nhello\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	if stderr.String() != "oops\n" {
		t.Errorf("stderr %q", stderr.String())
	}

	sess, err = client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	sess.Stdin = strings.NewReader("echo from-shell-$((40+2))\nexit 0\n")
	stdout.Reset()
	sess.Stdout = &stdout
	if err := sess.Shell(); err != nil {
		t.Fatalf("shell: %v", err)
	}
	if err := sess.Wait(); err != nil {
		t.Fatalf("shell: %v", err)
	}
	if stdout.String() != "from-shell-42\n" {
		t.Errorf("shell output %q", stdout.String())
	}

	if _, err := client.Dial("tcp", "127.0.0.1:9"); err == nil {
		t.Error("direct-tcpip channel was accepted")
	}
}

// sshOver upgrades a gateway connection with POST /ssh and starts an SSH client on it.
func sshOver(t *testing.T, conn *tls.Conn) *ssh.Client {
	t.Helper()
	auth := requestAuth(conn)
	form := "login_username=root&detach_keys=ctrl-p&no_forward=true"
	fmt.Fprintf(conn, "POST /ssh HTTP/1.1\r\nHost: gw\r\nUpgrade: ssh\r\nConnection: upgrade\r\n"+
		"%s: %s\r\n%s: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"+
		"Content-Length: %d\r\n\r\n%s", hdrGatewayUUID, testUUID, hdrAuthorization, auth,
		len(form), form)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "ssh" ||
		resp.Header.Get("Connection") != "upgrade" {
		t.Fatalf("upgrade answer %s %v", resp.Status, resp.Header)
	}
	if got, want := resp.Header.Get(hdrAuthResponse), hmacHex([]byte(testSecret),
		[]byte(auth)); got != want {
		t.Fatalf("response auth %q, want %q", got, want)
	}
	// The SSH session outlives the handshake deadline that tlsClient set.
	conn.SetDeadline(time.Time{})
	c, chans, reqs, err := ssh.NewClientConn(&bufferedConn{Conn: conn, r: br}, "gateway",
		&ssh.ClientConfig{User: "root", HostKeyCallback: ssh.InsecureIgnoreHostKey(),
			Timeout: testTimeout})
	if err != nil {
		t.Fatal(err)
	}
	return ssh.NewClient(c, chans, reqs)
}

func TestAuthAndRouting(t *testing.T) {
	_, addr := startGateway(t, baseConfig(t))
	conn := dialGateway(t, addr)
	br := bufio.NewReader(conn)
	req, _ := http.NewRequest("GET", "https://gw/nothing", nil)
	resp, _ := roundTrip(t, conn, br, req)
	if resp.StatusCode != 404 || resp.Header.Get(hdrAuthResponse) == "" {
		t.Fatalf("unknown path: %s %v", resp.Status, resp.Header)
	}
	req, _ = http.NewRequest("GET", "https://gw/log/x", nil)
	req.Header.Set(hdrGatewayUUID, testUUID)
	req.Header.Set(hdrAuthorization, strings.Repeat("0", 64))
	req.Write(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 401 || resp.Header.Get(hdrAuthResponse) != "" {
		t.Fatalf("bad auth: %s %v", resp.Status, resp.Header)
	}
}

func TestLogsWebdav(t *testing.T) {
	cfg := baseConfig(t)
	if err := os.WriteFile(filepath.Join(cfg.logDir, "stderr.txt"), []byte("0123456789"),
		0o644); err != nil {
		t.Fatal(err)
	}
	_, addr := startGateway(t, cfg)
	conn := dialGateway(t, addr)
	br := bufio.NewReader(conn)
	prefix := "/arvados/v1/container_requests/zzzzz-xvhdp-0123456789abcde/log/" + testUUID

	req, _ := http.NewRequest("PROPFIND", "https://gw"+prefix+"/", nil)
	req.Header.Set("Depth", "1")
	req.Header.Set(hdrWebdavPrefix, prefix)
	req.Header.Set(hdrWebdavSource, "/log")
	resp, body := roundTrip(t, conn, br, req)
	if resp.StatusCode != 207 {
		t.Fatalf("PROPFIND: %s %s", resp.Status, body)
	}
	if !strings.Contains(body, "<D:href>"+prefix+"/stderr.txt</D:href>") {
		t.Errorf("PROPFIND hrefs lack the prefix: %s", body)
	}

	req, _ = http.NewRequest("GET", "https://gw"+prefix+"/stderr.txt", nil)
	req.Header.Set(hdrWebdavPrefix, prefix)
	req.Header.Set(hdrWebdavSource, "/log")
	req.Header.Set("Range", "bytes=3-")
	resp, body = roundTrip(t, conn, br, req)
	if resp.StatusCode != 206 || body != "3456789" {
		t.Errorf("ranged GET: %s %q", resp.Status, body)
	}

	req, _ = http.NewRequest("OPTIONS", "https://gw/log/stderr.txt", nil)
	resp, _ = roundTrip(t, conn, br, req)
	if resp.StatusCode != 200 || resp.Header.Get("Allow") != readOnlyAllow {
		t.Errorf("OPTIONS: %s Allow %q", resp.Status, resp.Header.Get("Allow"))
	}

	for _, method := range []string{"PUT", "DELETE", "MKCOL", "MOVE"} {
		req, _ = http.NewRequest(method, "https://gw/log/stderr.txt", strings.NewReader("x"))
		resp, _ = roundTrip(t, conn, br, req)
		if resp.StatusCode != 405 {
			t.Errorf("%s: %s", method, resp.Status)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(cfg.logDir, "stderr.txt")); string(data) !=
		"0123456789" {
		t.Errorf("log file changed to %q", data)
	}
}

// fakeController accepts tunnel dials and hands each to the test.
type fakeController struct {
	ln    net.Listener
	conns chan net.Conn
}

func newFakeController(t *testing.T) *fakeController {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fc := &fakeController{ln: ln, conns: make(chan net.Conn, 10)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fc.conns <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return fc
}

// accept takes the next tunnel dial and reads its upgrade request.
func (fc *fakeController) accept(t *testing.T) (net.Conn, *bufio.Reader, *http.Request,
	string) {
	t.Helper()
	select {
	case c := <-fc.conns:
		t.Cleanup(func() { c.Close() })
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			t.Fatal(err)
		}
		return c, br, req, string(body)
	case <-time.After(testTimeout):
		t.Fatal("crunch-run did not dial the controller")
	}
	return nil, nil, nil, ""
}
