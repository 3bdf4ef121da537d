// Command reference-gateway is the Go yardstick for the sidecar's data path: it holds yamux
// tunnels (hashicorp/yamux, server role, default config), upgrades users' SSH requests to a
// byte stream spliced with io.Copy to the container gateway (over a tunnel stream or dialled
// directly, with TLS and the HMAC proofs), and reverse-proxies log GETs over a stream with
// httputil.ReverseProxy.
//
// It deliberately skips what is not on the data path: no Arvados API calls (tokens are only
// checked to be present; the container of a log request is taken from its path), no peers,
// no metrics, no logging. Events are JSON lines on stdout; the program exits when its
// standard input closes.
//
// Debian's yamux streams mishandle read deadlines (see interop/go/crunch-run/tunnel.go). This
// program never sets one on a stream: the TLS client handshakes without a context, the upgrade
// answer is read with http.ReadResponse, and log requests go through a RoundTripper that
// writes and reads the exchange itself instead of http.Transport. So it needs no workaround
// and no extra copies. (crypto/tls sets a write deadline when it sends close_notify, which is
// harmless here: yamux only consults it while waiting for send window.)
package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/yamux"
)

var (
	upgradePath = regexp.MustCompile(
		`^/arvados/v1/(?:connect|containers)/([a-z0-9]{5}-dz642-[a-z0-9]{15})/(gateway_tunnel|ssh)$`)
	logPath = regexp.MustCompile(
		`^/arvados/v1/container_requests/([a-z0-9]{5}-xvhdp-[a-z0-9]{15})/log/` +
			`([a-z0-9]{5}-dz642-[a-z0-9]{15})(?:/.*)?$`)
)

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

func hmacHex(key, msg []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(msg)
	return hex.EncodeToString(mac.Sum(nil))
}

// directTargets collects repeated -direct UUID=host:port flags.
type directTargets map[string]string

func (d directTargets) String() string { return fmt.Sprint(map[string]string(d)) }
func (d directTargets) Set(v string) error {
	i := strings.IndexByte(v, '=')
	if i < 0 {
		return errors.New("want UUID=host:port")
	}
	d[v[:i]] = v[i+1:]
	return nil
}

type reference struct {
	rootToken   string
	internalURL string
	direct      directTargets

	mu      sync.Mutex
	tunnels map[string]*yamux.Session
}

func main() {
	direct := directTargets{}
	listen := flag.String("listen", "127.0.0.1:0", "front door `address`")
	rootToken := flag.String("root-token", "", "SystemRootToken the container keys derive from")
	flag.Var(direct, "direct", "`UUID=host:port` of a directly reachable gateway (repeatable)")
	flag.Parse()
	if *rootToken == "" {
		emit("fatal", "error", "-root-token is required")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		emit("fatal", "error", err.Error())
		os.Exit(1)
	}
	ref := &reference{
		rootToken:   *rootToken,
		internalURL: "http://" + ln.Addr().String() + "/",
		direct:      direct,
		tunnels:     map[string]*yamux.Session{},
	}
	srv := &http.Server{Handler: ref, ErrorLog: nil}
	go srv.Serve(ln)
	emit("ready", "address", ln.Addr().String())
	io.Copy(io.Discard, os.Stdin)
}

func (ref *reference) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m := upgradePath.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodPost {
		switch {
		case m[2] == "gateway_tunnel" && strings.EqualFold(r.Header.Get("Upgrade"), "tunnel"):
			ref.tunnel(w, r, m[1])
			return
		case m[2] == "ssh" && strings.EqualFold(r.Header.Get("Upgrade"), "ssh"):
			ref.ssh(w, r, m[1])
			return
		}
	}
	if m := logPath.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodGet {
		ref.logs(w, r, m[1], m[2])
		return
	}
	if r.URL.Path == "/debug/tunnels" {
		ref.mu.Lock()
		n := len(ref.tunnels)
		ref.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"tunnels\":%d}\n", n)
		return
	}
	http.Error(w, "not found", http.StatusNotFound)
}

// tunnel checks crunch-run's auth secret and holds the connection as a yamux server session.
func (ref *reference) tunnel(w http.ResponseWriter, r *http.Request, uuid string) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	want := hmacHex([]byte(ref.rootToken), []byte(uuid))
	if !hmac.Equal([]byte(r.PostForm.Get("auth_secret")), []byte(want)) {
		http.Error(w, "authentication error", http.StatusUnauthorized)
		return
	}
	conn, brw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	_, err = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: tunnel\r\n"+
		"Connection: upgrade\r\nX-Arvados-Internal-Url: "+ref.internalURL+"\r\n\r\n")
	if err != nil {
		conn.Close()
		return
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	sess, err := yamux.Server(withBuffered(conn, brw.Reader), cfg)
	if err != nil {
		conn.Close()
		return
	}
	ref.mu.Lock()
	ref.tunnels[uuid] = sess
	ref.mu.Unlock()
	go func() {
		<-sess.CloseChan()
		ref.mu.Lock()
		if ref.tunnels[uuid] == sess {
			delete(ref.tunnels, uuid)
		}
		ref.mu.Unlock()
	}()
}

// gatewayConn is a TLS connection to a container's gateway with its proofs.
type gatewayConn struct {
	tls         *tls.Conn
	requestAuth string
	respondAuth string
}

// dialGateway opens a tunnel stream (or a TCP connection) and completes TLS and the proof.
func (ref *reference) dialGateway(uuid string) (*gatewayConn, error) {
	ref.mu.Lock()
	sess := ref.tunnels[uuid]
	ref.mu.Unlock()
	var transport net.Conn
	var err error
	switch addr, ok := ref.direct[uuid]; {
	case sess != nil:
		transport, err = sess.Open()
	case ok:
		transport, err = net.Dial("tcp", addr)
	default:
		return nil, errors.New("container is running but tunnel is down")
	}
	if err != nil {
		return nil, err
	}
	tc := tls.Client(transport, &tls.Config{InsecureSkipVerify: true,
		NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		transport.Close()
		return nil, err
	}
	key := []byte(hmacHex([]byte(ref.rootToken), []byte(uuid)))
	reqAuth := hmacHex(key, tc.ConnectionState().PeerCertificates[0].Raw)
	return &gatewayConn{tls: tc, requestAuth: reqAuth,
		respondAuth: hmacHex(key, []byte(reqAuth))}, nil
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if i := strings.IndexByte(h, ' '); i > 0 {
		return strings.TrimSpace(h[i+1:])
	}
	return ""
}

// ssh upgrades at the gateway first and only then answers the user's upgrade, so a failure
// is still reported as an HTTP error.
func (ref *reference) ssh(w http.ResponseWriter, r *http.Request, uuid string) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	if bearer(r) == "" {
		http.Error(w, "Not logged in", http.StatusUnauthorized)
		return
	}
	gw, err := ref.dialGateway(uuid)
	if err != nil {
		http.Error(w, "proxy error: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	form := url.Values{"uuid": {uuid}}
	for _, name := range []string{"detach_keys", "login_username", "no_forward"} {
		form.Set(name, r.PostForm.Get(name))
	}
	body := form.Encode()
	head := "POST /ssh HTTP/1.1\r\nHost: " + uuid + "\r\nUpgrade: ssh\r\nConnection: upgrade\r\n" +
		"X-Arvados-Container-Gateway-Uuid: " + uuid + "\r\n" +
		"X-Arvados-Authorization: " + gw.requestAuth + "\r\n" +
		"Content-Type: application/x-www-form-urlencoded\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	if _, err := io.WriteString(gw.tls, head+body); err != nil {
		gw.tls.Close()
		http.Error(w, "proxy error: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	gbr := bufio.NewReader(gw.tls)
	resp, err := http.ReadResponse(gbr, nil)
	switch {
	case err != nil:
		err = fmt.Errorf("upgrade failed: %w", err)
	case resp.StatusCode != http.StatusSwitchingProtocols ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "ssh"):
		err = fmt.Errorf("unexpected status %s", resp.Status)
	case !hmac.Equal([]byte(resp.Header.Get("X-Arvados-Authorization-Response")),
		[]byte(gw.respondAuth)):
		err = errors.New("bad X-Arvados-Authorization-Response header")
	}
	if err != nil {
		gw.tls.Close()
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	conn, brw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		gw.tls.Close()
		return
	}
	_, err = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ssh\r\n"+
		"Connection: upgrade\r\n\r\n")
	if err != nil {
		conn.Close()
		gw.tls.Close()
		return
	}
	splice(withBuffered(conn, brw.Reader), conn, readerWithBuffered(gw.tls, gbr), gw.tls)
}

// splice copies both ways, passing each half-close on, and closes both when both are done
// or either fails.
func splice(userR io.Reader, user net.Conn, upR io.Reader, up *tls.Conn) {
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(up, userR)
		if err == nil {
			err = up.CloseWrite()
		}
		done <- err
	}()
	go func() {
		_, err := io.Copy(user, upR)
		if err == nil {
			if tcp, ok := user.(*net.TCPConn); ok {
				err = tcp.CloseWrite()
			}
		}
		done <- err
	}()
	if err := <-done; err == nil {
		<-done
	}
	user.Close()
	up.Close()
}

// logs passes a log request to the gateway through one new stream, as the sidecar does.
func (ref *reference) logs(w http.ResponseWriter, r *http.Request, cr, ctr string) {
	if bearer(r) == "" {
		http.Error(w, "Not logged in", http.StatusUnauthorized)
		return
	}
	proxy := &httputil.ReverseProxy{
		Director: func(out *http.Request) {
			out.URL.Scheme = "https"
			out.URL.Host = ctr
			out.Host = ctr
			out.Header.Del("Authorization")
			out.Header.Set("X-Arvados-Container-Gateway-Uuid", ctr)
			out.Header.Set("X-Webdav-Prefix", "/arvados/v1/container_requests/"+cr+"/log/"+ctr)
			out.Header.Set("X-Webdav-Source", "/log")
		},
		Transport: &gatewayTransport{ref: ref, uuid: ctr},
		ErrorLog:  nil,
	}
	proxy.ServeHTTP(w, r)
}

// gatewayTransport sends each request over its own new gateway connection, whose certificate
// the request's proof header is computed from.
type gatewayTransport struct {
	ref  *reference
	uuid string
}

func (t *gatewayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	gw, err := t.ref.dialGateway(t.uuid)
	if err != nil {
		return nil, err
	}
	out := req.Clone(req.Context())
	out.Header.Set("X-Arvados-Authorization", gw.requestAuth)
	out.Close = true
	if err := out.Write(gw.tls); err != nil {
		gw.tls.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(gw.tls, 32<<10), out)
	if err != nil {
		gw.tls.Close()
		return nil, err
	}
	if !hmac.Equal([]byte(resp.Header.Get("X-Arvados-Authorization-Response")),
		[]byte(gw.respondAuth)) {
		resp.Body.Close()
		gw.tls.Close()
		return nil, errors.New("bad X-Arvados-Authorization-Response header")
	}
	resp.Header.Del("X-Arvados-Authorization-Response")
	resp.Body = &closeBoth{ReadCloser: resp.Body, conn: gw.tls}
	return resp, nil
}

// closeBoth closes the gateway connection along with the response body.
type closeBoth struct {
	io.ReadCloser
	conn net.Conn
}

func (c *closeBoth) Close() error {
	c.ReadCloser.Close()
	return c.conn.Close()
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

// withBuffered keeps only the bytes br already holds, not br itself, so a held tunnel does
// not pin the server's 4 KiB reader for its whole life.
func withBuffered(conn net.Conn, br *bufio.Reader) net.Conn {
	n := br.Buffered()
	if n == 0 {
		return conn
	}
	pending, _ := br.Peek(n)
	return &bufferedConn{Conn: conn, pending: append([]byte(nil), pending...)}
}

// readerWithBuffered reads what br holds and then r directly, so bulk data skips br's copy.
func readerWithBuffered(r io.Reader, br *bufio.Reader) io.Reader {
	n := br.Buffered()
	if n == 0 {
		return r
	}
	pending, _ := br.Peek(n)
	return io.MultiReader(bytes.NewReader(append([]byte(nil), pending...)), r)
}
