package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"strings"

	"golang.org/x/net/webdav"
)

// readOnlyAllow is what OPTIONS advertises; webdav.Handler would list write methods too.
const readOnlyAllow = "OPTIONS, GET, PROPFIND"

// logServer serves the container's log directory read-only over WebDAV.
type logServer struct {
	fs     webdav.FileSystem
	locks  webdav.LockSystem
	logger *log.Logger
}

func newLogServer(dir string, logger *log.Logger) *logServer {
	s := &logServer{locks: webdav.NewMemLS(), logger: logger}
	if dir != "" {
		s.fs = readOnlyFS{webdav.Dir(dir)}
	}
	return s
}

// ServeHTTP maps the request onto the log directory. The controller forwards the client's own
// path (say /arvados/v1/container_requests/CR/log/CTR/stderr.txt) and says which part of it to
// strip (X-Webdav-Prefix) and which gateway subtree the rest is relative to (X-Webdav-Source).
// Keeping the client's path intact means PROPFIND hrefs come out right for the client.
// Without those headers the gateway's own namespace applies: /log/... is the log directory.
func (s *logServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	source := strings.TrimRight(r.Header.Get(hdrWebdavSource), "/")
	prefix := strings.TrimRight(r.Header.Get(hdrWebdavPrefix), "/")
	switch source {
	case "/log":
	case "":
		prefix += "/log"
	default:
		http.Error(w, "unsupported webdav source", http.StatusNotFound)
		return
	}
	p := r.URL.Path
	if prefix != "" && p != prefix && !strings.HasPrefix(p, prefix+"/") {
		http.Error(w, "path is outside the webdav prefix", http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodOptions, "PROPFIND":
	default:
		w.Header().Set("Allow", readOnlyAllow)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if s.fs == nil {
		http.Error(w, "no log directory", http.StatusNotFound)
		return
	}
	h := &webdav.Handler{
		Prefix:     prefix,
		FileSystem: s.fs,
		LockSystem: s.locks,
		Logger: func(r *http.Request, err error) {
			if err != nil && !os.IsNotExist(err) {
				s.logger.Printf("webdav %s %s: %v", r.Method, r.URL.Path, err)
			}
		},
	}
	if r.Method != http.MethodOptions {
		h.ServeHTTP(w, r)
		return
	}
	aw := &allowRewriter{ResponseWriter: w}
	h.ServeHTTP(aw, r)
	// webdav's OPTIONS answer has no body: it only sets headers and lets net/http send them.
	aw.start()
}

// allowRewriter replaces the Allow header just before the response starts.
type allowRewriter struct {
	http.ResponseWriter
	started bool
}

func (a *allowRewriter) start() {
	if !a.started {
		a.started = true
		if a.Header().Get("Allow") != "" {
			a.Header().Set("Allow", readOnlyAllow)
		}
	}
}

func (a *allowRewriter) WriteHeader(status int) {
	a.start()
	a.ResponseWriter.WriteHeader(status)
}

func (a *allowRewriter) Write(b []byte) (int, error) {
	if !a.started {
		a.WriteHeader(http.StatusOK)
	}
	return a.ResponseWriter.Write(b)
}

// readOnlyFS refuses every change so that no WebDAV method can alter the logs, whatever the
// method filter above lets through in the future.
type readOnlyFS struct {
	webdav.Dir
}

func (readOnlyFS) Mkdir(context.Context, string, os.FileMode) error {
	return os.ErrPermission
}

func (fs readOnlyFS) OpenFile(ctx context.Context, name string, flag int,
	perm os.FileMode) (webdav.File, error) {
	if flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND) != 0 {
		return nil, os.ErrPermission
	}
	return fs.Dir.OpenFile(ctx, name, os.O_RDONLY, 0)
}

func (readOnlyFS) RemoveAll(context.Context, string) error {
	return os.ErrPermission
}

func (readOnlyFS) Rename(context.Context, string, string) error {
	return os.ErrPermission
}
