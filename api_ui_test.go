package main

// Tests of the status page's serving (api_ui.go): headers, the files, the
// --ui switch, and that the page has nothing inline and never mutates.
// The page itself runs in Chromium in api_ui_browser_test.go.

import (
	"bytes"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TestStatusPageServed: /ui/ and its assets carry the strict CSP and the
// other headers; /ui redirects; unknown files are JSON 404s.
func TestStatusPageServed(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/ui/", "text/html; charset=utf-8", `<script src="app.js" defer></script>`},
		{"/ui/index.html", "text/html; charset=utf-8", "<title>nixfleet status</title>"},
		{"/ui/app.js", "text/javascript; charset=utf-8", "'use strict';"},
		{"/ui/style.css", "text/css; charset=utf-8", ".bar"},
	} {
		r := do(t, e.c, "GET", e.url+tc.path, "", nil)
		expect(t, r, 200, "")
		for k, want := range map[string]string{
			"Content-Type":            tc.ctype,
			"Content-Security-Policy": uiCSP,
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"X-Frame-Options":         "DENY",
		} {
			if got := r.header.Get(k); got != want {
				t.Errorf("%s: %s %q, want %q", tc.path, k, got, want)
			}
		}
		if !strings.Contains(string(r.body), tc.contains) {
			t.Errorf("%s does not contain %q", tc.path, tc.contains)
		}
	}
	for _, p := range []string{"/ui/nope.js", "/ui/x/app.js", "/ui/app.go"} {
		expect(t, do(t, e.c, "GET", e.url+p, "", nil), 404, "not found")
	}
	noRedirect := *e.c
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	r := do(t, &noRedirect, "GET", e.url+"/ui", "", nil)
	if r.status != 301 || r.header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui: %d Location %q", r.status, r.header.Get("Location"))
	}
}

// TestStatusPageDisabled: with --ui=false every /ui route is a JSON 404
// and the API is unchanged.
func TestStatusPageDisabled(t *testing.T) {
	rs := startRun(t, nil, "--ui", "false")
	c := &http.Client{}
	for _, p := range []string{"/ui", "/ui/", "/ui/app.js"} {
		expect(t, do(t, c, "GET", rs.url+p, "", nil), 404, "the status page is disabled (--ui=false)")
	}
	rs2 := startRun(t, func(k string) string {
		if k == "NIXFLEET_CP_UI" {
			return "false"
		}
		return ""
	})
	expect(t, do(t, c, "GET", rs2.url+"/ui/", "", nil), 404, "the status page is disabled (--ui=false)")
	if _, err := parseServeFlags([]string{"--ui", "maybe"}, func(string) string { return "" }); err == nil ||
		err.Error() != `invalid --ui "maybe": want true or false` {
		t.Errorf("--ui maybe: %v", err)
	}
}

// TestStatusPageStatic: the page has no inline script, style or event
// handler, loads nothing from another origin, and its script only reads:
// every fetch is a GET (no method option, no body).
func TestStatusPageStatic(t *testing.T) {
	files, err := fs.Glob(uiFiles, "ui/*")
	if err != nil || len(files) != 3 {
		t.Fatalf("embedded files %v, %v", files, err)
	}
	html, _ := uiFiles.ReadFile("ui/index.html")
	js, _ := uiFiles.ReadFile("ui/app.js")
	css, _ := uiFiles.ReadFile("ui/style.css")
	// The page lists the server's lifecycle states, in order (§7.1).
	var quoted []string
	for _, lc := range lifecycles {
		quoted = append(quoted, "'"+string(lc)+"'")
	}
	if want := "const LIFECYCLES = [" + strings.Join(quoted, ", ") + "];"; !bytes.Contains(js, []byte(want)) {
		t.Errorf("app.js does not declare %s", want)
	}
	for _, re := range []string{`<script(?:\s[^>]*)?>\s*[^<\s]`, `\sstyle=`, `\son[a-z]+=`, `<style`, `https?://`, `//[a-z0-9.-]+\.[a-z]{2,}/`} {
		if regexp.MustCompile(`(?i)` + re).Match(html) {
			t.Errorf("index.html matches %s", re)
		}
	}
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
		"method:", "body:", "http://", "https://", "localStorage"} {
		if strings.Contains(string(js), bad) {
			t.Errorf("app.js contains %q", bad)
		}
	}
	if strings.Contains(string(css), "url(") || strings.Contains(string(css), "@import") {
		t.Error("style.css loads something")
	}
}
