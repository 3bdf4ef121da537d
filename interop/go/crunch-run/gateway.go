package main

import (
	"context"
	"crypto/hmac"
	"crypto/tls"
	"log"
	"net"
	"net/http"
	"strings"
	"time"
)

// Header names of the gateway protocol between the controller and crunch-run.
const (
	hdrGatewayUUID   = "X-Arvados-Container-Gateway-Uuid"
	hdrAuthorization = "X-Arvados-Authorization"
	hdrAuthResponse  = "X-Arvados-Authorization-Response"
	hdrWebdavPrefix  = "X-Webdav-Prefix"
	hdrWebdavSource  = "X-Webdav-Source"
)

// gateway is the HTTP handler behind both the direct listener and the tunnel's streams.
type gateway struct {
	uuid       string
	authSecret string
	// wantAuth is the request auth a client must send: hex(HMAC(secret, our certificate DER)).
	wantAuth string
	logs     *logServer
	ssh      *sshServer
	logger   *log.Logger
}

func newGateway(cfg *config, cert tls.Certificate, logger *log.Logger) (*gateway, error) {
	sshSrv, err := newSSHServer(cfg.workdir, logger)
	if err != nil {
		return nil, err
	}
	return &gateway{
		uuid:       cfg.uuid,
		authSecret: cfg.authSecret,
		wantAuth:   hmacHex([]byte(cfg.authSecret), cert.Certificate[0]),
		logs:       newLogServer(cfg.logDir, logger),
		ssh:        sshSrv,
		logger:     logger,
	}, nil
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The UUID check comes first: a request meant for another container must not learn
	// anything, not even whether its auth would have passed here.
	if r.Header.Get(hdrGatewayUUID) != g.uuid {
		http.Error(w, "misdirected request", http.StatusBadGateway)
		return
	}
	reqAuth := r.Header.Get(hdrAuthorization)
	if !hmac.Equal([]byte(reqAuth), []byte(g.wantAuth)) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	// Proves to the client that it reached the holder of the secret, not an impostor
	// presenting a copied certificate.
	w.Header().Set(hdrAuthResponse, hmacHex([]byte(g.authSecret), []byte(reqAuth)))
	switch {
	case r.URL.Path == "/ssh" && r.Method == http.MethodPost &&
		strings.EqualFold(r.Header.Get("Upgrade"), "ssh"):
		g.ssh.handleUpgrade(w, r)
	case r.Header.Get(hdrWebdavSource) != "" || r.URL.Path == "/log" ||
		strings.HasPrefix(r.URL.Path, "/log/"):
		g.logs.ServeHTTP(w, r)
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

// newServer returns the one HTTP server that serves the direct listener and tunnel streams.
func (g *gateway) newServer() *http.Server {
	return &http.Server{
		Handler:           g,
		ReadHeaderTimeout: time.Minute,
		// Idle keep-alive streams would otherwise hold a tunnel that was told to go away.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    g.logger,
	}
}

// gatewayTLSConfig offers HTTP/1.1 only because the SSH upgrade needs a hijackable connection.
func gatewayTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
}

// run starts the gateway and, as configured, the tunnel and the gateway_address update; it
// returns when ctx is done.
func run(ctx context.Context, cfg *config, events eventSink, logger *log.Logger) error {
	host, _, err := net.SplitHostPort(cfg.listen)
	if err != nil {
		return err
	}
	cert, err := newSelfSignedCert(host)
	if err != nil {
		return err
	}
	gw, err := newGateway(cfg, cert, logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	tlsConfig := gatewayTLSConfig(cert)
	srv := gw.newServer()
	go srv.Serve(tls.NewListener(ln, tlsConfig))
	addr := ln.Addr().String()
	logger.Printf("container %s: gateway listening on %s", cfg.uuid, addr)
	events.emit("ready", "gateway_address", addr)

	api := newAPIClient(cfg)
	if cfg.tunnelURL != "" {
		streams := newStreamListener(ln.Addr())
		go srv.Serve(tls.NewListener(streams, tlsConfig))
		t := newTunneler(cfg, streams, api, events, logger)
		go t.run(ctx)
	} else if api != nil {
		go api.setGatewayAddress(ctx, addr, events, logger)
	}

	<-ctx.Done()
	logger.Printf("shutting down")
	srv.Close()
	gw.ssh.closeAll()
	return nil
}
