package main

// Tests for the HTTP layer (api.go, §2.5–§2.7): routing, 404/405/Allow and
// HEAD (ACC-14), path cleaning and path IDs (ACC-35), JSON error bodies
// (ACC-15), and that /health and /metrics stay out of the HTTP metrics
// (ACC-113). The decoding of request bodies is in api_decode_test.go.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// apiFixture is an testEnv with a reported machine web-01, a registered web-02,
// a release for both and a running rollout over web-02.
type apiFixture struct {
	*testEnv
	releaseID, rolloutID string
	p1                   string
}

func newAPIFixture(t *testing.T) *apiFixture {
	t.Helper()
	f := &apiFixture{testEnv: newTestEnv(t), p1: storePath('a', "sys-1")}
	expect(t, f.report(t, "web-01", reportBody("web-01", f.p1, true, "up-to-date")), 200, "")
	expect(t, f.report(t, "web-02", reportBody("web-02", f.p1, true, "up-to-date")), 200, "")
	r := do(t, f.c, "POST", f.url+"/api/v1/releases", f.D, apiReleaseBody("web-01", "web-02"))
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	f.releaseID = rel.ID
	r = do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, apiRolloutBody(f.releaseID, "web-02"))
	expect(t, r, 201, "")
	var ro createRolloutResponse
	r.json(t, &ro)
	f.rolloutID = ro.RolloutID
	return f
}

func apiReleaseBody(hosts ...string) map[string]any {
	var entries []map[string]any
	for i, h := range hosts {
		entries = append(entries, map[string]any{"hostname": h, "store_path": storePath("bcdf"[i%4], "nixos-system-"+h), "platform": "x86_64-linux"})
	}
	return map[string]any{"entries": entries}
}

func apiRolloutBody(releaseID string, hosts ...string) map[string]any {
	return map[string]any{"release_id": releaseID, "strategy": "all_at_once", "target": map[string]any{"hosts": hosts}}
}

// apiRaw writes a raw HTTP/1.1 request on a new connection and reads the
// answer, so that the request line reaches the server exactly as written.
func apiRaw(t testing.TB, baseURL, method, target string, header map[string]string, body string) response {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", method, target)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != "" || method == "POST" || method == "PUT" || method == "PATCH" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: rb}
}

// apiBodyRoute is one route that reads a JSON body (§2.4).
type apiBodyRoute struct {
	name    string
	method  string
	path    string
	key     string
	emptyOK bool   // bootstrap, register and cancel: a zero-byte body is {}
	valid   string // a body that succeeds
	status  int    // the success status
}

func (f *apiFixture) apiBodyRoutes() []apiBodyRoute {
	report, _ := apiJSON(reportBody("web-01", f.p1, true, "up-to-date"))
	release, _ := apiJSON(apiReleaseBody("web-01"))
	return []apiBodyRoute{
		{"bootstrap", "POST", "/api/v1/keys/bootstrap", "", true, `{"name":"x"}`, 409},
		{"report", "POST", "/api/v1/machines/web-01/report", "", false, report, 200},
		{"register", "POST", "/api/v1/machines/web-03/register", f.A, true, `{"lifecycle":"pending"}`, 201},
		{"tags", "PUT", "/api/v1/machines/web-01/tags", f.A, false, `{"tags":["web"]}`, 200},
		{"notify-deploy", "POST", "/api/v1/machines/web-01/notify-deploy", f.D, false, `{"store_path":"` + f.p1 + `"}`, 200},
		{"create release", "POST", "/api/v1/releases", f.D, false, release, 201},
		{"create rollout", "POST", "/api/v1/rollouts", f.D, false, `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]}}`, 201},
		{"cancel", "POST", "/api/v1/rollouts/" + f.rolloutID + "/cancel", f.D, true, `{"revert":false}`, 200},
		{"create key", "POST", "/api/v1/keys", f.A, false, `{"name":"ci","role":"deploy"}`, 201},
		{"lifecycle", "PATCH", "/api/v1/machines/web-01/lifecycle", f.A, false, `{"lifecycle":"maintenance"}`, 200},
	}
}

func apiJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// apiAllow splits an Allow header into a sorted list.
func apiAllow(h string) []string {
	var out []string
	for _, m := range strings.Split(h, ",") {
		if m = strings.TrimSpace(m); m != "" {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return out
}

// TestRouting covers ACC-14, ACC-21 and §2.5/§2.6: 404 without
// authentication for unknown paths, 405 with an Allow header for known paths,
// and 401 before 405 (and before 404 of a resource) on admin paths.
func TestRouting(t *testing.T) {
	f := newAPIFixture(t)
	for _, tc := range []struct {
		method, path string
		key          string
		status       int
		msg          string
		allow        []string
	}{
		{"GET", "/api/v1/nope", "", 404, "not found", nil},
		{"GET", "/", "", 404, "not found", nil},
		{"GET", "/api/v1/machines/", f.A, 404, "not found", nil},
		{"GET", "/api/v1/machines/ghost-01", f.A, 404, "machine ghost-01 not found", nil},
		{"GET", "/api/v1/machines/ghost-01", "", 401, "missing API key", nil},
		{"GET", "/api/v1/machines/web-01/desired-generation/x", "", 404, "not found", nil},
		{"POST", "/api/v1/nope", f.A, 404, "not found", nil},
		{"GET", "/health/", "", 404, "not found", nil},
		{"GET", "/API/V1/MACHINES", f.A, 404, "not found", nil},
		{"POST", "/api/v1/machines", "", 401, "missing API key", nil},
		{"POST", "/api/v1/machines", "nfk-not-a-real-key", 401, "invalid API key", nil},
		{"POST", "/api/v1/machines", f.A, 405, "method not allowed", []string{"GET", "HEAD"}},
		{"POST", "/api/v1/machines", f.R, 405, "method not allowed", []string{"GET", "HEAD"}},
		{"GET", "/api/v1/keys/bootstrap", "", 401, "missing API key", nil},
		{"GET", "/api/v1/keys/bootstrap", f.A, 405, "method not allowed", []string{"DELETE", "POST"}},
		{"PUT", "/api/v1/machines/web-01/desired-generation", "", 401, "missing API key", nil},
		{"PUT", "/api/v1/machines/web-01/desired-generation", f.A, 405, "method not allowed", []string{"DELETE", "GET", "HEAD"}},
		{"GET", "/api/v1/machines/web-01/report", "", 405, "method not allowed", []string{"POST"}},
		{"DELETE", "/api/v1/machines/web-01/report", "", 405, "method not allowed", []string{"POST"}},
		{"DELETE", "/health", "", 405, "method not allowed", []string{"GET", "HEAD"}},
		{"POST", "/metrics", "", 405, "method not allowed", []string{"GET", "HEAD"}},
		{"PUT", "/api/v1/releases/" + f.releaseID, "", 401, "missing API key", nil},
		{"PUT", "/api/v1/releases/" + f.releaseID, f.A, 405, "method not allowed", []string{"DELETE", "GET", "HEAD"}},
		{"GET", "/api/v1/rollouts/" + f.rolloutID + "/pause", f.A, 405, "method not allowed", []string{"POST"}},
		{"PATCH", "/api/v1/keys/1", "", 401, "missing API key", nil},
		{"PATCH", "/api/v1/keys/1", f.A, 405, "method not allowed", []string{"DELETE"}},
		{"OPTIONS", "/api/v1/machines", f.A, 405, "method not allowed", []string{"GET", "HEAD"}},
		{"BREW", "/api/v1/machines", f.A, 405, "method not allowed", []string{"GET", "HEAD"}},
		{"GET", "/api/v1/rollouts/r-ghost", "", 401, "missing API key", nil},
		{"DELETE", "/api/v1/releases/rel-ghost", "", 401, "missing API key", nil},
		{"GET", "/api/v1/rollouts/r-ghost", f.R, 404, "rollout r-ghost not found", nil},
		{"DELETE", "/api/v1/releases/rel-ghost", f.A, 404, "release rel-ghost not found", nil},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			before := f.fingerprint(t)
			r := do(t, f.c, tc.method, f.url+tc.path, tc.key, nil)
			expect(t, r, tc.status, tc.msg)
			if got := apiAllow(r.header.Get("Allow")); !slices.Equal(got, tc.allow) {
				t.Fatalf("Allow %q, want %v", r.header.Get("Allow"), tc.allow)
			}
			if tc.status == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="nixfleet"` {
				t.Fatalf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
			if after := f.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
		})
	}
}

// TestPathCleaning covers ACC-35's path-ID half (web%2001 and friends) and
// documents how paths with "." and ".." segments, encoded slashes and spaces
// are treated (§2.5, §2.7): ServeMux redirects a path that needs cleaning
// (307, before any route runs); an encoded segment in an ID position is
// checked by the ID rule (400); anywhere else the path matches no route (404).
func TestPathCleaning(t *testing.T) {
	f := newAPIFixture(t)
	for _, tc := range []struct {
		method, target string
		status         int
		msg            string
	}{
		{"GET", "/api/v1/machines/../desired-generation", 307, "/api/v1/desired-generation"},
		{"GET", "/api/v1/machines/./desired-generation", 307, "/api/v1/machines/desired-generation"},
		{"GET", "/api/v1/machines/%2e%2e/desired-generation", 400, "invalid machine id"},
		{"GET", "/api/v1/machines/%2E/desired-generation", 400, "invalid machine id"},
		{"POST", "/api/v1/machines/../report", 307, "/api/v1/report"},
		{"GET", "/api/v1/machines/web%2001/desired-generation", 400, "invalid machine id"},
		{"GET", "/api/v1/machines/web%2F01/desired-generation", 400, "invalid machine id"},
		{"GET", "/api/v1/machines/web-01/../web-01/desired-generation", 307, "/api/v1/machines/web-01/desired-generation"},
		{"GET", "/api/v1//machines", 307, "/api/v1/machines"},
		{"GET", "/api/v1/./machines", 307, "/api/v1/machines"},
		// One path segment: it matches GET /api/v1/machines/{id}, an operator
		// route, so authentication comes first (§2.6); with a key the id is
		// refused (below).
		{"GET", "/api/v1/machines/web-01%2Fdesired-generation", 401, "missing API key"},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			before := f.fingerprint(t)
			r := apiRaw(t, f.url, tc.method, tc.target, nil, "")
			if tc.status == 307 {
				if r.status != 307 || r.header.Get("Location") != tc.msg {
					t.Fatalf("status %d Location %q, want 307 to %s", r.status, r.header.Get("Location"), tc.msg)
				}
			} else {
				expect(t, r, tc.status, tc.msg)
			}
			if after := f.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
		})
	}
	expect(t, do(t, f.c, "GET", f.url+"/api/v1/machines/web-01%2Fdesired-generation", f.R, nil), 400, "invalid machine id")
	// The ID rule for the other ID kinds.
	expect(t, do(t, f.c, "GET", f.url+"/api/v1/releases/rel%20x", f.R, nil), 400, "invalid release id")
	expect(t, do(t, f.c, "GET", f.url+"/api/v1/rollouts/"+strings.Repeat("r", 129), f.R, nil), 400, "invalid rollout id")
	expect(t, do(t, f.c, "DELETE", f.url+"/api/v1/keys/abc", f.A, nil), 400, "invalid key id")
	expect(t, do(t, f.c, "DELETE", f.url+"/api/v1/keys/0", f.A, nil), 400, "invalid key id")
	expect(t, do(t, f.c, "DELETE", f.url+"/api/v1/keys/9223372036854775808", f.A, nil), 400, "invalid key id")
	expect(t, do(t, f.c, "DELETE", f.url+"/api/v1/keys/9223372036854775807", f.A, nil), 404, "")
}

// TestHead covers ACC-14's HEAD half and §2.5: HEAD is served wherever GET
// is, with the GET status and headers and no body.
func TestHead(t *testing.T) {
	f := newAPIFixture(t)
	expect(t, do(t, f.c, "POST", f.url+"/api/v1/machines/web-01/notify-deploy", f.D, map[string]string{"store_path": f.p1}), 200, "")
	for _, tc := range []struct {
		path, key string
		status    int
		ctPrefix  string
	}{
		{"/health", "", 200, "text/plain; charset=utf-8"},
		{"/metrics", "", 200, "text/plain; version=0.0.4"},
		{"/api/v1/machines", f.A, 200, "application/json"},
		{"/api/v1/machines", "", 401, "application/json"},
		{"/api/v1/machines/web-01/desired-generation", "", 200, "application/json"},
		{"/api/v1/machines/web-02/desired-generation", "", 404, "application/json"},
		{"/api/v1/machines/ghost/desired-generation", "", 404, "application/json"},
		{"/api/v1/releases/" + f.releaseID, f.R, 200, "application/json"},
		{"/api/v1/audit/export", f.R, 200, "text/csv"},
		{"/api/v1/nope", "", 404, "application/json"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			get := do(t, f.c, "GET", f.url+tc.path, tc.key, nil)
			head := do(t, f.c, "HEAD", f.url+tc.path, tc.key, nil)
			if head.status != tc.status || get.status != tc.status {
				t.Fatalf("HEAD %d, GET %d, want %d", head.status, get.status, tc.status)
			}
			if len(head.body) != 0 {
				t.Fatalf("HEAD body %q", head.body)
			}
			if ct := head.header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctPrefix) {
				t.Fatalf("HEAD Content-Type %q", ct)
			}
			if tc.path == "/health" && string(get.body) != "ok" {
				t.Fatalf("GET /health body %q", get.body)
			}
		})
	}
	// The raw answer to HEAD /health carries no body bytes at all.
	r := apiRaw(t, f.url, "HEAD", "/health", nil, "")
	if r.status != 200 || len(r.body) != 0 {
		t.Fatalf("raw HEAD /health %d %q", r.status, r.body)
	}
}

// TestHTTPMetricsExclusions covers ACC-113's /health and /metrics half: no
// request to those paths, whatever its method, is counted in
// nixfleet_http_requests_total, while other requests are.
func TestHTTPMetricsExclusions(t *testing.T) {
	f := newAPIFixture(t)
	total := func() (sum float64, lines []string) {
		r := do(t, f.c, "GET", f.url+"/metrics", "", nil)
		for _, l := range strings.Split(string(r.body), "\n") {
			if strings.HasPrefix(l, "nixfleet_http_requests_total{") || strings.HasPrefix(l, "nixfleet_http_request_duration_seconds_count{") {
				lines = append(lines, l)
				if strings.HasPrefix(l, "nixfleet_http_requests_total{") {
					v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
					if err != nil {
						t.Fatalf("value of %s: %v", l, err)
					}
					sum += v
				}
			}
		}
		return sum, lines
	}
	before, beforeLines := total()
	for _, m := range []string{"GET", "HEAD", "POST", "DELETE", "OPTIONS", "BREW"} {
		do(t, f.c, m, f.url+"/health", "", nil)
		do(t, f.c, m, f.url+"/metrics", "", nil)
	}
	after, afterLines := total()
	if after != before || !slices.Equal(afterLines, beforeLines) {
		t.Fatalf("/health and /metrics were counted: %v -> %v\n%s", before, after, strings.Join(afterLines, "\n"))
	}
	for _, l := range afterLines {
		if strings.Contains(l, `path="/health"`) || strings.Contains(l, `path="/metrics"`) {
			t.Fatalf("series %s", l)
		}
	}
	do(t, f.c, "GET", f.url+"/never", "", nil)
	do(t, f.c, "BREW", f.url+"/api/v1/machines", f.A, nil)
	if got := f.metric(t, `nixfleet_http_requests_total{method="GET",path="unmatched",status="404"}`); got != 1 {
		t.Fatalf("unmatched 404 count %v", got)
	}
	if got := f.metric(t, `nixfleet_http_requests_total{method="OTHER",path="unmatched",status="405"}`); got != 1 {
		t.Fatalf("unmatched 405 count %v", got)
	}
}

// TestErrorBodies covers ACC-15 and §2.5 for statuses produced outside the
// handlers' own checks: every application error is a compact JSON object
// with a non-empty error and Content-Type application/json, and every 401
// carries WWW-Authenticate.
func TestErrorBodies(t *testing.T) {
	f := newAPIFixture(t)
	for _, tc := range []struct {
		method, path, key string
		body              any
		status            int
	}{
		{"GET", "/api/v1/nope", "", nil, 404},
		{"POST", "/api/v1/machines", f.A, nil, 405},
		{"GET", "/api/v1/machines", "", nil, 401},
		{"GET", "/api/v1/machines", "nfk-not-a-real-key", nil, 401},
		{"GET", "/api/v1/keys", f.R, nil, 403},
		{"POST", "/api/v1/machines/web-01/register", f.A, "{", 400},
		{"POST", "/api/v1/machines/web-02/notify-deploy", f.D, map[string]string{"store_path": f.p1}, 409},
		{"GET", "/api/v1/releases/rel-ghost", f.R, nil, 404},
	} {
		t.Run(fmt.Sprintf("%d %s %s", tc.status, tc.method, tc.path), func(t *testing.T) {
			r := do(t, f.c, tc.method, f.url+tc.path, tc.key, tc.body)
			expect(t, r, tc.status, "")
			body := strings.TrimSuffix(string(r.body), "\n")
			if !strings.HasPrefix(body, `{"error":"`) || strings.Count(body, "\n") != 0 || !strings.HasSuffix(body, `"}`) {
				t.Fatalf("error body %q is not one compact JSON object", r.body)
			}
			if tc.status == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="nixfleet"` {
				t.Fatalf("401 without WWW-Authenticate")
			}
		})
	}
	// Authorization header variants never give 403 (ACC-18).
	for _, h := range []string{"nfk-x", "Basic dXNlcjpwYXNz", "bearer " + f.A, "Bearer  " + f.A, "Bearer ", "Bearer"} {
		req, _ := http.NewRequest("GET", f.url+"/api/v1/machines", nil)
		req.Header.Set("Authorization", h)
		expect(t, send(t, f.c, req), 401, "")
	}
}
