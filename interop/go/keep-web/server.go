package main

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/net/webdav"
)

// collectionUUID is the form of the collection names accepted in the Host header; anything
// else is refused before it comes near the file system.
var collectionUUID = regexp.MustCompile(`^[a-z0-9]{5}-4zz18-[a-z0-9]{15}$`)

// allowedMethods are the only methods served: the tree is read-only, as the sidecar's logs are.
const allowedMethods = "GET, HEAD, OPTIONS, PROPFIND"

var (
	errBadPrefix = errors.New("invalid X-Webdav-Prefix header")
	errBadSource = errors.New("invalid X-Webdav-Source header")
	errBadPath   = errors.New("invalid path")
)

// server answers WebDAV reads for the collections under root.
type server struct {
	root   string
	token  []byte
	logger *log.Logger
}

func newServer(root, token string, logger *log.Logger) *server {
	return &server{root: root, token: []byte(token), logger: logger}
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w}
	// Set before anything else writes, so that every answer, errors included, carries it once.
	rec.Header().Set("Access-Control-Allow-Origin", "*")
	s.serve(rec, r)
	// Only the path: a query string could hold a token, and no header is ever logged.
	s.logger.Printf("%s %q host=%q status=%d", r.Method, r.URL.Path, r.Host, rec.code())
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		// Browsers send preflights without credentials, so they are answered before auth.
		h := w.Header()
		h.Set("Access-Control-Allow-Methods", allowedMethods)
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Range, Depth")
		h.Set("Access-Control-Max-Age", "86400")
		w.WriteHeader(http.StatusOK)
		return
	}
	uuid, ok := collectionFromHost(r.Host)
	if !ok {
		httpError(w, http.StatusNotFound, "collection not found")
		return
	}
	cred := credential(r.Header.Get("Authorization"))
	if cred == "" {
		// WebDAV clients such as cadaver ask for credentials only after this header.
		w.Header().Set("Www-Authenticate", `Basic realm="collections"`)
		httpError(w, http.StatusUnauthorized, "no token given")
		return
	}
	if subtle.ConstantTimeCompare([]byte(cred), s.token) != 1 {
		httpError(w, http.StatusForbidden, "token not accepted")
		return
	}
	collDir := filepath.Join(s.root, uuid)
	if st, err := os.Stat(collDir); err != nil || !st.IsDir() {
		httpError(w, http.StatusNotFound, "collection not found")
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, "PROPFIND":
	default:
		w.Header().Set("Allow", allowedMethods)
		httpError(w, http.StatusMethodNotAllowed, "method not allowed: collection is read-only")
		return
	}
	source, err := parseSource(r.Header.Get("X-Webdav-Source"))
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	prefix, err := parsePrefix(r.Header.Get("X-Webdav-Prefix"))
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkPath(r.URL.Path); err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	rest, ok := stripPrefix(r.URL.Path, prefix)
	if !ok {
		httpError(w, http.StatusNotFound, "path is outside X-Webdav-Prefix")
		return
	}
	fs := readOnlyFS{dir: webdav.Dir(filepath.Join(collDir, filepath.FromSlash(source)))}
	s.serveTree(w, r, fs, prefix, rest)
}

// serveTree answers for rest, a path inside the served tree; prefix goes back in front of
// every path the client sees.
func (s *server) serveTree(w http.ResponseWriter, r *http.Request, fs readOnlyFS,
	prefix, rest string) {
	info, statErr := fs.Stat(r.Context(), rest)
	switch {
	case r.Method == http.MethodOptions:
		if statErr != nil {
			httpError(w, http.StatusNotFound, "not found")
			return
		}
		w.Header().Set("Dav", "1, 2")
		w.Header().Set("Allow", allowedMethods)
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	case statErr == nil && info.IsDir() && r.Method != "PROPFIND":
		// webdav.Handler refuses GET on a directory; a browser in the demo wants a listing.
		s.serveListing(w, r, fs, prefix, rest)
		return
	}
	// The handler strips Prefix from the path and joins it back onto every href, so the
	// request it sees must carry the prefix; an empty rest becomes the tree's root.
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	u.Path = prefix + rest
	u.RawPath = ""
	r2.URL = &u
	h := &webdav.Handler{Prefix: prefix, FileSystem: fs, LockSystem: noLocks{}}
	h.ServeHTTP(w, r2)
}

func (s *server) serveListing(w http.ResponseWriter, r *http.Request, fs readOnlyFS,
	prefix, rest string) {
	dir, err := fs.OpenFile(r.Context(), rest, os.O_RDONLY, 0)
	if err != nil {
		httpError(w, http.StatusNotFound, "not found")
		return
	}
	defer dir.Close()
	entries, err := dir.Readdir(-1)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "cannot read directory")
		return
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	base := path.Join(prefix, rest)
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	var b strings.Builder
	title := html.EscapeString(base)
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html><head><title>%s</title></head><body>\n", title)
	fmt.Fprintf(&b, "<h1>%s</h1>\n<ul>\n", title)
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			name += "/"
		}
		href := (&url.URL{Path: base + name}).EscapedPath()
		fmt.Fprintf(&b, "<li><a href=\"%s\">%s</a></li>\n", html.EscapeString(href),
			html.EscapeString(name))
	}
	b.WriteString("</ul>\n</body></html>\n")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", fmt.Sprint(b.Len()))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write([]byte(b.String()))
	}
}

// collectionFromHost takes the collection UUID out of a `{uuid}.internal[:port]` Host.
func collectionFromHost(host string) (string, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	uuid := strings.TrimSuffix(strings.ToLower(host), ".internal")
	if uuid == host || !collectionUUID.MatchString(uuid) {
		return "", false
	}
	return uuid, true
}

// credential returns the token an Authorization header carries: Bearer and OAuth2 tokens as
// they are, and for Basic the password, which is where WebDAV clients put a token.
func credential(header string) string {
	scheme, value, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok {
		return ""
	}
	value = strings.TrimSpace(value)
	switch strings.ToLower(scheme) {
	case "bearer", "oauth2":
		return value
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return ""
		}
		_, password, _ := strings.Cut(string(raw), ":")
		return password
	}
	return ""
}

// parsePrefix validates X-Webdav-Prefix and returns it without a trailing slash, so that ""
// means no prefix.
func parsePrefix(header string) (string, error) {
	if header == "" {
		return "", nil
	}
	if !strings.HasPrefix(header, "/") || checkPath(header) != nil {
		return "", errBadPrefix
	}
	return strings.TrimRight(header, "/"), nil
}

// stripPrefix returns what follows prefix in p, always starting with '/'. The prefix must end
// on a segment boundary: `/a/log` covers `/a/log/x` but not `/a/logx`.
func stripPrefix(p, prefix string) (string, bool) {
	switch {
	case prefix == "":
		return p, true
	case p == prefix:
		return "/", true
	case strings.HasPrefix(p, prefix+"/"):
		return p[len(prefix):], true
	}
	return "", false
}

// parseSource validates X-Webdav-Source and returns it as a slash-separated path relative to
// the collection root ("" for the root itself).
func parseSource(header string) (string, error) {
	src := strings.Trim(header, "/")
	if src == "" {
		return "", nil
	}
	if strings.ContainsAny(src, "\x00\\") {
		return "", errBadSource
	}
	for _, seg := range strings.Split(src, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", errBadSource
		}
	}
	return src, nil
}

// checkPath refuses dot segments, NUL and backslashes instead of cleaning them away, so a
// path never names something other than what it appears to.
func checkPath(p string) error {
	if strings.ContainsAny(p, "\x00\\") {
		return errBadPath
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return errBadPath
		}
	}
	return nil
}

// httpError sends a plain-text error whose body says what went wrong.
func httpError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), msg)
}

// statusRecorder remembers the status sent, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (r *statusRecorder) code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}
