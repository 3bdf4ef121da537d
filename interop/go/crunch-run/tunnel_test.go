package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/yamux"
)

// prefixedConn writes a canned prefix in the same Write as the first yamux frame, so the
// crunch-run side finds yamux bytes already buffered behind the 101 response.
type prefixedConn struct {
	net.Conn
	r      *bufio.Reader
	prefix []byte
}

func (c *prefixedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *prefixedConn) Write(p []byte) (int, error) {
	if c.prefix != nil {
		buf := append(c.prefix, p...)
		c.prefix = nil
		if _, err := c.Conn.Write(buf); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

const upgradeAnswer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tunnel\r\n" +
	"Connection: Upgrade\r\nX-Arvados-Internal-Url: %s\r\n\r\n"

// gatewayGet sends a GET for the log file over a TLS connection inside a tunnel stream.
func gatewayGet(t *testing.T, tc *tls.Conn, br *bufio.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://gw/log/stderr.txt", nil)
	resp, body := roundTrip(t, tc, br, req)
	return resp.StatusCode, body
}

func TestTunnelLifecycle(t *testing.T) {
	type putCall struct {
		auth string
		body string
	}
	puts := make(chan putCall, 10)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method == "PUT" && r.URL.Path == "/arvados/v1/containers/"+testUUID {
			puts <- putCall{r.Header.Get("Authorization"), string(body)}
		}
		w.Write([]byte("{}"))
	}))
	defer api.Close()

	fc := newFakeController(t)
	cfg := baseConfig(t)
	cfg.tunnelURL = "http://" + fc.ln.Addr().String()
	cfg.apiURL = api.URL
	cfg.apiToken = "v2/zzzzz-gj3su-000000000000000/secret"
	if err := os.WriteFile(filepath.Join(cfg.logDir, "stderr.txt"), []byte("log line\n"),
		0o644); err != nil {
		t.Fatal(err)
	}
	rec, _ := startGateway(t, cfg)

	conn, br, req, body := fc.accept(t)
	if want := cfg.tunnelURL + "/arvados/v1/connect/" + testUUID + "/gateway_tunnel"; req.
		Method != "POST" || req.RequestURI != want {
		t.Fatalf("tunnel request %s %s, want POST %s", req.Method, req.RequestURI, want)
	}
	if body != "auth_secret="+testSecret || req.Header.Get("Connection") != "" ||
		req.Header.Get("Authorization") != "Bearer "+cfg.apiToken {
		t.Fatalf("tunnel request body %q headers %v", body, req.Header)
	}
	pc := &prefixedConn{Conn: conn, r: br,
		prefix: []byte(fmt.Sprintf(upgradeAnswer, "https://internal-1.example"))}
	srv1, err := yamux.Server(pc, quietYamux())
	if err != nil {
		t.Fatal(err)
	}
	st, err := srv1.Open()
	if err != nil {
		t.Fatal(err)
	}
	up := rec.next(t, "tunnel_up")
	if up.fields["tunnel"] != 1 || up.fields["internal_url"] != "https://internal-1.example" {
		t.Fatalf("tunnel_up %v", up.fields)
	}
	if ev := rec.next(t, "gateway_address_set"); ev.fields["gateway_address"] !=
		"tunnel https://internal-1.example" {
		t.Fatalf("gateway_address_set %v", ev.fields)
	}
	put := <-puts
	var record map[string]map[string]string
	if err := json.Unmarshal([]byte(put.body), &record); err != nil ||
		record["container"]["gateway_address"] != "tunnel https://internal-1.example" ||
		put.auth != "Bearer "+cfg.apiToken {
		t.Fatalf("PUT %+v", put)
	}

	tc := tlsClient(t, st)
	tbr := bufio.NewReader(tc)
	if status, text := gatewayGet(t, tc, tbr); status != 200 || text != "log line\n" {
		t.Fatalf("GET through tunnel: %d %q", status, text)
	}

	// SSH through the tunnel: the hijack must work on a stream, not only on a TCP socket.
	sshStream, err := srv1.Open()
	if err != nil {
		t.Fatal(err)
	}
	client := sshOver(t, tlsClient(t, sshStream))
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.Output("echo via-tunnel")
	client.Close()
	if err != nil || string(out) != "via-tunnel\n" {
		t.Fatalf("ssh through tunnel: %q %v", out, err)
	}

	// GoAway: crunch-run builds a second tunnel at once and keeps the first for its stream.
	if err := srv1.GoAway(); err != nil {
		t.Fatal(err)
	}
	if ev := rec.next(t, "goaway"); ev.fields["tunnel"] != 1 {
		t.Fatalf("goaway %v", ev.fields)
	}
	conn2, br2, _, _ := fc.accept(t)
	answer2 := fmt.Sprintf(upgradeAnswer, "https://internal-2.example")
	if _, err := conn2.Write([]byte(answer2)); err != nil {
		t.Fatal(err)
	}
	srv2, err := yamux.Server(&prefixedConn{Conn: conn2, r: br2}, quietYamux())
	if err != nil {
		t.Fatal(err)
	}
	if ev := rec.next(t, "tunnel_up"); ev.fields["tunnel"] != 2 {
		t.Fatalf("second tunnel_up %v", ev.fields)
	}
	rec.next(t, "gateway_address_set")
	if status, _ := gatewayGet(t, tc, tbr); status != 200 {
		t.Fatalf("stream on the old tunnel stopped working after GoAway: %d", status)
	}
	tc.Close()
	if ev := rec.next(t, "tunnel_down"); ev.fields["tunnel"] != 1 ||
		ev.fields["error"] != "drained after goaway" {
		t.Fatalf("tunnel_down %v", ev.fields)
	}

	// A dropped tunnel is redialed; a refusal is reported with its status.
	srv2.Close()
	if ev := rec.next(t, "tunnel_down"); ev.fields["tunnel"] != 2 {
		t.Fatalf("tunnel_down %v", ev.fields)
	}
	conn3, _, _, _ := fc.accept(t)
	conn3.Write([]byte("HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nunauthorized"))
	if ev := rec.next(t, "tunnel_refused"); ev.fields["status"] != 401 ||
		ev.fields["body"] != "unauthorized" {
		t.Fatalf("tunnel_refused %v", ev.fields)
	}
}

func quietYamux() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.LogOutput = io.Discard
	return cfg
}

func TestUpgradeChecks(t *testing.T) {
	const status101 = "HTTP/1.1 101 Switching Protocols\r\n"
	cases := []struct{ raw, want string }{
		{status101 + "Upgrade: Tunnel\r\nConnection: Upgrade\r\n\r\n", ""},
		{status101 + "Upgrade: ssh\r\nConnection: upgrade\r\n\r\n",
			`unexpected Upgrade header "ssh"`},
		{status101 + "Upgrade: tunnel\r\nConnection: keep-alive, upgrade\r\n\r\n",
			`unexpected Connection header "keep-alive, upgrade"`},
		{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "unexpected status 200 OK"},
	}
	for _, c := range cases {
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(c.raw)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := checkUpgrade(resp); got != c.want {
			t.Errorf("%q: got %q, want %q", c.raw, got, c.want)
		}
	}
}

func TestFrameWatcherAcrossReads(t *testing.T) {
	var codes []uint32
	w := &frameWatcher{onGoAway: func(code uint32) { codes = append(codes, code) }}
	data := []byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 4} // data frame, 4-byte payload
	// The payload looks like a GoAway header start: it must be skipped, not parsed.
	data = append(data, 0, 3, 0, 0)
	data = append(data, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9) // window update
	data = append(data, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2) // GoAway, code 2
	for _, b := range data {
		w.observe([]byte{b})
	}
	if len(codes) != 1 || codes[0] != 2 {
		t.Fatalf("GoAway codes %v, want [2]", codes)
	}
}

func TestTunnelOverTLS(t *testing.T) {
	cert, err := newSelfSignedCert("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
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
			// Dials that fail certificate checks are dropped here; the test sees the rest.
			go func() {
				if c.(*tls.Conn).Handshake() != nil {
					c.Close()
					return
				}
				fc.conns <- c
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })

	// Without -insecure the self-signed controller certificate must be rejected.
	cfg := baseConfig(t)
	cfg.tunnelURL = "https://" + ln.Addr().String()
	rec, _ := startGateway(t, cfg)
	if ev := rec.next(t, "tunnel_error"); !strings.Contains(ev.fields["error"].(string),
		"certificate") {
		t.Fatalf("tunnel_error %v", ev.fields)
	}

	cfg = baseConfig(t)
	cfg.tunnelURL = "https://" + ln.Addr().String()
	cfg.insecure = true
	rec, _ = startGateway(t, cfg)
	conn, _, req, _ := fc.accept(t)
	if req.RequestURI != cfg.tunnelURL+"/arvados/v1/connect/"+testUUID+"/gateway_tunnel" ||
		req.Host != ln.Addr().String() {
		t.Fatalf("request %s Host %s", req.RequestURI, req.Host)
	}
	conn.Write([]byte(fmt.Sprintf(upgradeAnswer, "https://internal-tls.example")))
	if ev := rec.next(t, "tunnel_up"); ev.fields["internal_url"] != "https://internal-tls.example" {
		t.Fatalf("tunnel_up %v", ev.fields)
	}
}
