package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// handshakeTimeout bounds the dial plus the upgrade exchange, so a silent peer cannot stall
// the redial loop.
const handshakeTimeout = 30 * time.Second

// errTunnelRefused is returned when the controller answered but did not upgrade.
var errTunnelRefused = errors.New("tunnel upgrade refused")

// tunneler keeps one gateway tunnel to the controller up, redialing when it drops.
type tunneler struct {
	cfg     *config
	streams *streamListener
	api     *apiClient
	events  eventSink
	logger  *log.Logger
	seq     int
}

func newTunneler(cfg *config, streams *streamListener, api *apiClient, events eventSink,
	logger *log.Logger) *tunneler {
	return &tunneler{cfg: cfg, streams: streams, api: api, events: events, logger: logger}
}

// run dials, serves and redials until ctx is done.
func (t *tunneler) run(ctx context.Context) {
	for ctx.Err() == nil {
		tun, err := t.open(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.logger.Printf("tunnel: %v", err)
			if !errors.Is(err, errTunnelRefused) {
				t.events.emit("tunnel_error", "error", err.Error())
			}
			sleepCtx(ctx, t.cfg.redialInterval)
			continue
		}
		select {
		case <-ctx.Done():
			tun.session.Close()
			return
		case <-tun.goaway:
		case <-tun.down:
		}
		if tun.sawGoAway() {
			// The controller wants this tunnel gone: build the next one right away while
			// this one finishes the streams it carries — unless tunnels keep being sent
			// away as soon as they come up, which would otherwise make a tight loop.
			sleepCtx(ctx, time.Until(tun.started.Add(t.cfg.redialInterval)))
		} else {
			sleepCtx(ctx, t.cfg.redialInterval)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

// tunnelPath is the controller endpoint that upgrades to a tunnel.
func (t *tunneler) tunnelPath() string {
	if t.cfg.tunnelPathStyle == "containers" {
		return "/arvados/v1/containers/" + t.cfg.uuid + "/gateway_tunnel"
	}
	return "/arvados/v1/connect/" + t.cfg.uuid + "/gateway_tunnel"
}

// upgradeRequest renders the exact bytes of the tunnel request. It is written by hand rather
// than by net/http because the controller's tests pin this form: absolute-form target, no
// Connection header, and a form body carrying the auth secret.
func (t *tunneler) upgradeRequest(host string) []byte {
	body := "auth_secret=" + t.cfg.authSecret
	token := t.cfg.apiToken
	if token == "" {
		token = "x"
	}
	return []byte("POST " + t.cfg.tunnelURL + t.tunnelPath() + " HTTP/1.1\r\n" +
		"Authorization: Bearer " + token + "\r\n" +
		"Host: " + host + "\r\n" +
		"Upgrade: tunnel\r\n" +
		"Content-Type: application/x-www-form-urlencoded\r\n" +
		fmt.Sprintf("Content-Length: %d\r\n", len(body)) +
		"\r\n" + body)
}

func (t *tunneler) dial(ctx context.Context, u *url.URL) (net.Conn, error) {
	dialer := &net.Dialer{Timeout: handshakeTimeout}
	if u.Scheme == "http" {
		return dialer.DialContext(ctx, "tcp", hostPort(u, "80"))
	}
	td := &tls.Dialer{NetDialer: dialer, Config: &tls.Config{
		ServerName:         u.Hostname(),
		InsecureSkipVerify: t.cfg.insecure,
		NextProtos:         []string{"http/1.1"},
	}}
	return td.DialContext(ctx, "tcp", hostPort(u, "443"))
}

func hostPort(u *url.URL, defaultPort string) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), defaultPort)
}

// open dials the controller, upgrades the connection and starts a yamux client on it.
func (t *tunneler) open(ctx context.Context) (*tunnel, error) {
	u, err := url.Parse(t.cfg.tunnelURL)
	if err != nil {
		return nil, err
	}
	conn, err := t.dial(ctx, u)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if _, err := conn.Write(t.upgradeRequest(u.Host)); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading upgrade response: %w", err)
	}
	if problem := checkUpgrade(resp); problem != "" {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		conn.Close()
		t.events.emit("tunnel_refused", "status", resp.StatusCode, "error", problem,
			"body", strings.TrimSpace(string(body)))
		return nil, fmt.Errorf("%w: %s", errTunnelRefused, problem)
	}
	conn.SetDeadline(time.Time{})
	internalURL := resp.Header.Get("X-Arvados-Internal-Url")

	t.seq++
	tun := &tunnel{
		id:      t.seq,
		started: time.Now(),
		events:  t.events,
		logger:  t.logger,
		goaway:  make(chan struct{}),
		down:    make(chan struct{}),
		idle:    make(chan struct{}, 1),
	}
	watcher := &frameWatcher{onGoAway: tun.noteGoAway}
	// Bytes the controller sent right behind its 101 are already in br; yamux must see them
	// before anything else read from the socket.
	muxConn := &watchedConn{Conn: conn, r: br, watcher: watcher}
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = nil
	ycfg.Logger = t.logger
	if t.cfg.keepaliveInterval > 0 {
		ycfg.KeepAliveInterval = t.cfg.keepaliveInterval
	} else {
		ycfg.EnableKeepAlive = false
	}
	sess, err := yamux.Client(muxConn, ycfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	tun.session = sess
	t.logger.Printf("tunnel %d: up, internal URL %q", tun.id, internalURL)
	t.events.emit("tunnel_up", "tunnel", tun.id, "internal_url", internalURL)
	go tun.serve(t.streams)
	if t.api != nil && internalURL != "" {
		go t.api.setGatewayAddress(ctx, "tunnel "+internalURL, t.events, t.logger)
	}
	return tun, nil
}

// checkUpgrade says what is wrong with an upgrade response, or "" when it is a proper one.
func checkUpgrade(resp *http.Response) string {
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return "unexpected status " + resp.Status
	}
	if strings.ToLower(resp.Header.Get("Upgrade")) != "tunnel" {
		return fmt.Sprintf("unexpected Upgrade header %q", resp.Header.Get("Upgrade"))
	}
	if strings.ToLower(resp.Header.Get("Connection")) != "upgrade" {
		return fmt.Sprintf("unexpected Connection header %q", resp.Header.Get("Connection"))
	}
	return ""
}

// tunnel is one yamux session in the client role: the controller opens streams, each of which
// carries one TLS connection to the gateway.
type tunnel struct {
	id      int
	started time.Time
	session *yamux.Session
	events  eventSink
	logger  *log.Logger

	goawayOnce sync.Once
	goaway     chan struct{}
	down       chan struct{}
	idle       chan struct{}

	mu      sync.Mutex
	active  int
	drained bool
}

// noteGoAway is called by the frame watcher on the reader goroutine, before yamux itself
// sees the frame.
func (tun *tunnel) noteGoAway(code uint32) {
	tun.goawayOnce.Do(func() {
		tun.logger.Printf("tunnel %d: GoAway received (code %d)", tun.id, code)
		tun.events.emit("goaway", "tunnel", tun.id, "code", code)
		close(tun.goaway)
	})
}

func (tun *tunnel) sawGoAway() bool {
	select {
	case <-tun.goaway:
		return true
	default:
		return false
	}
}

func (tun *tunnel) serve(streams *streamListener) {
	acceptErr := make(chan error, 1)
	go func() {
		for {
			st, err := tun.session.AcceptStream()
			if err != nil {
				acceptErr <- err
				return
			}
			tun.mu.Lock()
			tun.active++
			tun.mu.Unlock()
			streams.push(newStreamConn(st, tun.streamDone))
		}
	}()
	goaway := tun.goaway
	for {
		select {
		case err := <-acceptErr:
			tun.session.Close()
			reason := err.Error()
			tun.mu.Lock()
			if tun.drained {
				reason = "drained after goaway"
			}
			tun.mu.Unlock()
			tun.logger.Printf("tunnel %d: down: %s", tun.id, reason)
			tun.events.emit("tunnel_down", "tunnel", tun.id, "error", reason)
			close(tun.down)
			return
		case <-goaway:
			goaway = nil
			tun.closeIfIdle()
		case <-tun.idle:
			if tun.sawGoAway() {
				tun.closeIfIdle()
			}
		}
	}
}

func (tun *tunnel) streamDone() {
	tun.mu.Lock()
	tun.active--
	idle := tun.active == 0
	tun.mu.Unlock()
	if idle {
		select {
		case tun.idle <- struct{}{}:
		default:
		}
	}
}

// closeIfIdle ends a tunnel that was told to go away once it carries no streams.
func (tun *tunnel) closeIfIdle() {
	tun.mu.Lock()
	idle := tun.active == 0
	if idle {
		tun.drained = true
	}
	tun.mu.Unlock()
	if idle {
		tun.session.Close()
	}
}

// watchedConn reads through a bufio.Reader holding bytes already received, and shows every
// byte to a frameWatcher.
type watchedConn struct {
	net.Conn
	r       *bufio.Reader
	watcher *frameWatcher
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.watcher.observe(p[:n])
	return n, err
}

// Yamux frame layout: a 12-byte header (version, type, flags, stream ID, length), followed by
// a payload of `length` bytes for data frames only.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	yamuxTypeGoAway = 3
)

// frameWatcher follows the frame boundaries of the incoming yamux byte stream. hashicorp/yamux
// takes note of a normal GoAway silently (it only makes OpenStream fail, and this side never
// opens streams), so watching the wire is the one way to learn that the controller wants this
// tunnel to wind down.
type frameWatcher struct {
	header   [yamuxHeaderSize]byte
	have     int
	skip     uint32
	onGoAway func(code uint32)
}

func (w *frameWatcher) observe(p []byte) {
	for len(p) > 0 {
		if w.skip > 0 {
			n := len(p)
			if uint32(n) > w.skip {
				n = int(w.skip)
			}
			w.skip -= uint32(n)
			p = p[n:]
			continue
		}
		n := copy(w.header[w.have:], p)
		w.have += n
		p = p[n:]
		if w.have < yamuxHeaderSize {
			return
		}
		w.have = 0
		length := uint32(w.header[8])<<24 | uint32(w.header[9])<<16 |
			uint32(w.header[10])<<8 | uint32(w.header[11])
		switch w.header[1] {
		case yamuxTypeData:
			w.skip = length
		case yamuxTypeGoAway:
			w.onGoAway(length)
		}
	}
}

// streamConn is the gateway's view of one tunnel stream. The stream is not handed to net/http
// directly because this yamux release does not give streams full net.Conn deadline semantics:
// a SetReadDeadline does not wake a Read already blocked, and its timeout error is not a
// net.Error, so crypto/tls treats it as fatal. net/http relies on both, setting a past read
// deadline to stop its background read when a request ends or a connection is hijacked for
// SSH. net.Pipe has proper deadlines; one pipe per direction keeps half-close working (the
// peer's EOF must not stop our answer), and two copy loops move the bytes.
type streamConn struct {
	rd, wr  net.Conn
	stream  net.Conn
	once    sync.Once
	onClose func()
}

// newStreamConn joins stream to two pipes; onClose runs once, when the gateway closes it.
func newStreamConn(stream net.Conn, onClose func()) *streamConn {
	rd, rdFeed := net.Pipe()
	wr, wrDrain := net.Pipe()
	go func() {
		io.Copy(rdFeed, stream)
		rdFeed.Close()
	}()
	go func() {
		io.Copy(stream, wrDrain)
		wrDrain.Close()
		stream.Close()
	}()
	return &streamConn{rd: rd, wr: wr, stream: stream, onClose: onClose}
}

func (c *streamConn) Read(p []byte) (int, error)  { return c.rd.Read(p) }
func (c *streamConn) Write(p []byte) (int, error) { return c.wr.Write(p) }
func (c *streamConn) LocalAddr() net.Addr         { return c.stream.LocalAddr() }
func (c *streamConn) RemoteAddr() net.Addr        { return c.stream.RemoteAddr() }

func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.rd.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.wr.SetWriteDeadline(t) }

func (c *streamConn) SetDeadline(t time.Time) error {
	c.rd.SetReadDeadline(t)
	return c.wr.SetWriteDeadline(t)
}

func (c *streamConn) Close() error {
	c.rd.Close()
	err := c.wr.Close()
	c.once.Do(c.onClose)
	return err
}

// streamListener hands tunnel streams to the gateway's http.Server as if they were accepted
// connections.
type streamListener struct {
	addr      net.Addr
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newStreamListener(addr net.Addr) *streamListener {
	return &streamListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *streamListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *streamListener) Addr() net.Addr {
	return l.addr
}
