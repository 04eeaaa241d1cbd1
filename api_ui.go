package main

import (
	"embed"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// GET /ui/: the read-only status page, embedded in the binary. The page is
// static; it asks for an API key and reads the JSON API and the event
// stream with it, like any other client. Nothing here is secret, so the
// route is public (in mTLS mode the TLS handshake still requires a client
// certificate).

//go:embed ui/*.html ui/*.js ui/*.css
var uiFiles embed.FS

// uiCSP allows nothing but the page's own files and its requests to this
// origin: no inline script or style, no other origin, no framing, and
// Trusted Types so that no string can become markup.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'"

var uiTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// errUIDisabled is the 404 of every /ui route when --ui=false.
func errUIDisabled() error { return notFoundf("the status page is disabled (--ui=false)") }

// uiRedirect sends GET /ui to /ui/, so relative asset URLs resolve.
func (s *server) uiRedirect(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if !s.ui {
		return errUIDisabled()
	}
	w.Header().Set("Location", "/ui/")
	w.WriteHeader(http.StatusMovedPermanently)
	return nil
}

// uiFile serves one file of the page: /ui/ is index.html.
func (s *server) uiFile(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if !s.ui {
		return errUIDisabled()
	}
	name := strings.TrimPrefix(r.URL.Path, "/ui/")
	if name == "" {
		name = "index.html"
	}
	typ, ok := uiTypes[path.Ext(name)]
	if strings.Contains(name, "/") || !ok {
		return notFoundf("not found")
	}
	b, err := uiFiles.ReadFile("ui/" + name)
	if err != nil {
		return notFoundf("not found")
	}
	h := w.Header()
	h.Set("Content-Type", typ)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-cache") // revalidate, so an upgraded binary's page is seen at once
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	return nil
}
