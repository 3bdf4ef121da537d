// Command crunch-run stands in for Arvados' crunch-run container gateway in interop tests and in
// the demo: it serves the gateway's TLS API (SSH over an upgraded connection, live logs over
// WebDAV) on a local listener and, when given -tunnel-url, through a yamux tunnel it dials to
// the controller (or the sidecar that plays it).
//
// Events that tests wait for are printed to stdout as JSON lines; everything else is logged to
// stderr.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// uuidChars are the characters a container UUID may contain; the UUID goes into URL paths.
const uuidChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"

// config holds the validated command line.
type config struct {
	uuid              string
	authSecret        string
	listen            string
	tunnelURL         string
	tunnelPathStyle   string
	apiURL            string
	apiToken          string
	logDir            string
	workdir           string
	insecure          bool
	keepaliveInterval time.Duration
	redialInterval    time.Duration
}

// parseFlags reads and validates the command line.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	var rootToken string
	fs := flag.NewFlagSet("crunch-run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.uuid, "uuid", "", "container `uuid` (required)")
	fs.StringVar(&cfg.authSecret, "auth-secret", "",
		"gateway auth secret as a `hex` string (or give -system-root-token)")
	fs.StringVar(&rootToken, "system-root-token", "",
		"`token` from which the auth secret is derived as hex(HMAC-SHA256(token, uuid))")
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:0", "`address` of the gateway TLS listener")
	fs.StringVar(&cfg.tunnelURL, "tunnel-url", "",
		"http(s) base `URL` of the controller; when set, dial a gateway tunnel to it")
	fs.StringVar(&cfg.tunnelPathStyle, "tunnel-path-style", "connect",
		"tunnel endpoint `style`: connect (/arvados/v1/connect/UUID/gateway_tunnel) or "+
			"containers (/arvados/v1/containers/UUID/gateway_tunnel)")
	fs.StringVar(&cfg.apiURL, "api-url", "",
		"base `URL` of the Arvados API; when set, PUT the container's gateway_address there")
	fs.StringVar(&cfg.apiToken, "api-token", "", "`token` for the API and the tunnel request")
	fs.StringVar(&cfg.logDir, "log-dir", "", "`directory` served read-only as WebDAV under /log")
	fs.StringVar(&cfg.workdir, "workdir", "", "`directory` where SSH commands run")
	fs.BoolVar(&cfg.insecure, "insecure", false,
		"skip TLS certificate verification toward -tunnel-url and -api-url")
	fs.DurationVar(&cfg.keepaliveInterval, "keepalive-interval", 30*time.Second,
		"yamux keepalive ping `interval` on the tunnel; 0 disables keepalive")
	fs.DurationVar(&cfg.redialInterval, "redial-interval", 5*time.Second,
		"`interval` between tunnel dial attempts after a failure or a drop")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.uuid == "" {
		return nil, errors.New("-uuid is required")
	}
	if strings.Trim(cfg.uuid, uuidChars) != "" {
		return nil, errors.New("-uuid must contain only letters, digits and '-'")
	}
	switch {
	case cfg.authSecret != "" && rootToken != "":
		return nil, errors.New("give only one of -auth-secret and -system-root-token")
	case rootToken != "":
		cfg.authSecret = hmacHex([]byte(rootToken), []byte(cfg.uuid))
	case cfg.authSecret == "":
		return nil, errors.New("-auth-secret or -system-root-token is required")
	}
	if _, err := hex.DecodeString(cfg.authSecret); err != nil {
		return nil, errors.New("-auth-secret must be a hex string")
	}
	if cfg.tunnelURL != "" {
		u, err := url.Parse(cfg.tunnelURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errors.New("-tunnel-url must be an http or https URL")
		}
		cfg.tunnelURL = strings.TrimRight(cfg.tunnelURL, "/")
	}
	if cfg.tunnelPathStyle != "connect" && cfg.tunnelPathStyle != "containers" {
		return nil, errors.New("-tunnel-path-style must be connect or containers")
	}
	if cfg.apiURL != "" {
		u, err := url.Parse(cfg.apiURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errors.New("-api-url must be an http or https URL")
		}
		cfg.apiURL = strings.TrimRight(cfg.apiURL, "/")
	}
	if cfg.keepaliveInterval < 0 {
		return nil, errors.New("-keepalive-interval must not be negative")
	}
	if cfg.redialInterval <= 0 {
		return nil, errors.New("-redial-interval must be positive")
	}
	return cfg, nil
}

func main() {
	logger := log.New(os.Stderr, "crunch-run: ", log.LstdFlags|log.Lmicroseconds)
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crunch-run:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, newJSONEvents(os.Stdout), logger); err != nil {
		logger.Print(err)
		os.Exit(1)
	}
}
