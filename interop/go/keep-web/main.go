// Command keep-web stands in for Arvados' keep-web WebDAV server in interop tests and in the
// demo. It serves, read-only, one directory per collection UUID under -root, picks the
// collection from a `{uuid}.internal` Host header, accepts only the -token bearer token, and
// honours the X-Webdav-Prefix and X-Webdav-Source headers the way the sidecar relies on.
//
// The "ready" event is printed to stdout as one JSON line; requests are logged to stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config holds the validated command line.
type config struct {
	listen string
	root   string
	token  string
}

// parseFlags reads and validates the command line.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("keep-web", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:0", "`address` of the HTTP listener")
	fs.StringVar(&cfg.root, "root", "",
		"`directory` holding one sub-directory per collection UUID (required)")
	fs.StringVar(&cfg.token, "token", "",
		"the only bearer `token` accepted, i.e. the cluster's SystemRootToken (required)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.root == "" {
		return nil, errors.New("-root is required")
	}
	st, err := os.Stat(cfg.root)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("-root %q is not a directory", cfg.root)
	}
	if cfg.token == "" {
		return nil, errors.New("-token is required")
	}
	return cfg, nil
}

func main() {
	logger := log.New(os.Stderr, "keep-web: ", log.LstdFlags|log.Lmicroseconds)
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keep-web:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, logger); err != nil {
		logger.Print(err)
		os.Exit(1)
	}
}

// run serves until ctx is done, then lets requests in flight finish for a short while.
func run(ctx context.Context, cfg *config, stdout io.Writer, logger *log.Logger) error {
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           newServer(cfg.root, cfg.token, logger),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          logger,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	ready, err := json.Marshal(map[string]string{
		"event": "ready",
		"url":   "http://" + ln.Addr().String(),
	})
	if err != nil {
		return err
	}
	if _, err := stdout.Write(append(ready, '\n')); err != nil {
		return err
	}
	logger.Printf("serving %s on %s", cfg.root, ln.Addr())

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		// Requests still running after the grace period are cut off; that is not a failure.
		logger.Printf("shutdown: %v", err)
		srv.Close()
	}
	logger.Print("stopped")
	return nil
}
