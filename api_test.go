package main

// Tests for the transport and decoding rules (§2.3–§2.7): body decoding and
// content types (ACC-11 … ACC-13), the 1 MiB body limit (ACC-10), routing,
// 404/405/Allow and HEAD (ACC-14), JSON error bodies (ACC-15), and that
// /health and /metrics stay out of the HTTP metrics.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// apiFixture is an mtEnv with a reported machine web-01, a registered web-02,
// a release for both and a running rollout over web-02.
type apiFixture struct {
	*mtEnv
	releaseID, rolloutID string
	p1                   string
}

func newAPIFixture(t *testing.T) *apiFixture {
	t.Helper()
	f := &apiFixture{mtEnv: newMTEnv(t), p1: storePath('a', "sys-1")}
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

// apiSend sends body with exactly the given Content-Type ("" for none) and an
// optional bearer key. chunked hides the length, so Go sends the body chunked.
func apiSend(t testing.TB, c *http.Client, method, url, key, contentType string, body []byte, chunked bool) response {
	t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = io.MultiReader(bytes.NewReader(body))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if chunked {
		req.ContentLength = -1
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return send(t, c, req)
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

// TestDecodeRejects covers ACC-12, ACC-15 and ACC-110's second half for every
// route that reads a JSON body (§2.4): null, arrays, other top-level values,
// trailing data, truncated JSON, invalid UTF-8, whitespace-only bodies and
// wrong content types are refused with a JSON error, store nothing and write
// no audit row; a zero-byte body is {} only for bootstrap, register and cancel.
func TestDecodeRejects(t *testing.T) {
	f := newAPIFixture(t)
	bad := []struct {
		name, ct, body string
		status         int
		prefix         string // required prefix of the error message
	}{
		{"null", "application/json", "null", 400, "invalid JSON body: "},
		{"array", "application/json", `[{"name":"x"}]`, 400, "invalid JSON body: "},
		{"string", "application/json", `"x"`, 400, "invalid JSON body: "},
		{"number", "application/json", `42`, 400, "invalid JSON body: "},
		{"trailing object", "application/json", `{} {}`, 400, "invalid JSON body: "},
		{"trailing garbage", "application/json", `{"name":"x"}x`, 400, "invalid JSON body: "},
		{"truncated", "application/json", `{"name":`, 400, "invalid JSON body: "},
		{"unterminated", "application/json", `{`, 400, "invalid JSON body: "},
		{"invalid UTF-8 in string", "application/json", "{\"name\":\"\xff\xfe\"}", 400, "invalid JSON body: "},
		{"invalid UTF-8 in key", "application/json", "{\"\xc3\x28\":1}", 400, "invalid JSON body: "},
		{"whitespace only", "application/json", "  \n", 400, "invalid JSON body: "},
		{"single quotes", "application/json", `{'name':'x'}`, 400, "invalid JSON body: "},
		{"text/plain", "text/plain", `{}`, 415, "Content-Type must be application/json"},
		{"form", "application/x-www-form-urlencoded", `{}`, 415, "Content-Type must be application/json"},
		{"jsonx", "application/jsonx", `{}`, 415, "Content-Type must be application/json"},
		{"text/json", "text/json", `{}`, 415, "Content-Type must be application/json"},
		{"malformed media type", "application/json;;;", `{}`, 415, "Content-Type must be application/json"},
	}
	for _, rt := range f.apiBodyRoutes() {
		t.Run(rt.name, func(t *testing.T) {
			cases := bad
			if !rt.emptyOK {
				cases = append(slices.Clone(bad),
					struct {
						name, ct, body string
						status         int
						prefix         string
					}{"empty body", "application/json", "", 400, "invalid JSON body: "},
					struct {
						name, ct, body string
						status         int
						prefix         string
					}{"empty body, text/plain", "text/plain", "", 415, "Content-Type must be application/json"})
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := f.fingerprint(t)
					r := apiSend(t, f.c, rt.method, f.url+rt.path, rt.key, tc.ct, []byte(tc.body), false)
					expect(t, r, tc.status, "")
					if msg := r.errMsg(t); !strings.HasPrefix(msg, tc.prefix) {
						t.Fatalf("error %q, want prefix %q", msg, tc.prefix)
					}
					if after := f.fingerprint(t); after != before {
						t.Fatalf("state changed:\n%s\n%s", before, after)
					}
				})
			}
		})
	}
}

// TestDecodeAccepts covers ACC-11's content-type half, ACC-13 and §2.4: the
// accepted content types (absent, parameters, case, +json), zero-byte bodies
// for the three routes without required fields, and unknown keys.
func TestDecodeAccepts(t *testing.T) {
	for _, ct := range []string{"", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON; Charset=UTF-8",
		"application/merge-patch+json", "application/vnd.nixfleet+json"} {
		t.Run("content type "+ct, func(t *testing.T) {
			f := newAPIFixture(t)
			for _, rt := range f.apiBodyRoutes() {
				r := apiSend(t, f.c, rt.method, f.url+rt.path, rt.key, ct, []byte(rt.valid), false)
				if rt.name == "bootstrap" {
					expect(t, r, 409, "API keys already exist. Use an admin key to create more.")
					continue
				}
				expect(t, r, rt.status, "")
			}
			if m := f.mustMachine(t, "web-01"); m.Lifecycle != "maintenance" || !slices.Equal(m.Tags, []string{"web"}) || *m.DesiredGeneration != f.p1 {
				t.Fatalf("web-01 %+v", m)
			}
		})
	}

	t.Run("zero-byte bodies", func(t *testing.T) {
		f := newAPIFixture(t)
		for _, ct := range []string{"", "text/plain"} { // the content type is not checked
			expect(t, apiSend(t, f.c, "POST", f.url+"/api/v1/machines/web-0"+map[string]string{"": "3", "text/plain": "4"}[ct]+"/register",
				f.A, ct, nil, false), 201, "")
		}
		if m := f.mustMachine(t, "web-04"); m.Lifecycle != "active" {
			t.Fatalf("web-04 %+v", m)
		}
		expect(t, apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts/"+f.rolloutID+"/cancel", f.D, "text/plain", nil, true), 200, "")
		var status string
		f.ts.st.ro.QueryRow("SELECT status FROM rollout WHERE id = ?", f.rolloutID).Scan(&status)
		if status != "cancelled" {
			t.Fatalf("rollout %s after cancel with an empty body", status)
		}
		// A chunked zero-byte body is zero bytes too.
		expect(t, apiSend(t, f.c, "POST", f.url+"/api/v1/machines/web-05/register", f.A, "application/json", nil, true), 201, "")
		ts := newTestServer(t, testServerOptions{})
		r := apiSend(t, ts.client(""), "POST", ts.url+"/api/v1/keys/bootstrap", "", "text/plain", nil, true)
		expect(t, r, 200, "")
		var k keyCreated
		r.json(t, &k)
		if k.Name != "admin" {
			t.Fatalf("bootstrap name %q", k.Name)
		}
	})

	t.Run("ACC-13 unknown keys are ignored", func(t *testing.T) {
		f := newAPIFixture(t)
		body := `{"release_id":"` + f.releaseID + `","cache_url":null,"strategy":"all_at_once","batch_sizes":null,` +
			`"failure_threshold":"0","on_failure":"pause","health_timeout":300,"soak_seconds":0,"target":{"hosts":["web-01"],"extra":1},"policy":null}`
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, body), 201, "")
		rep := `{"machine_id":"web-01","current_generation":"","success":true,"message":"up-to-date","timestamp":"2026-04-11T09:30:00Z",` +
			`"tags":null,"health":null,"agent_version":null,"uptime_seconds":null,"future":{"nested":[1,2]},"x":"y"}`
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/machines/web-01/report", "", rep), 200, "")
		m := f.mustMachine(t, "web-01")
		if m.AgentVersion != "" || m.UptimeSeconds != 0 || m.CurrentGeneration != "" {
			t.Fatalf("null fields not treated as absent: %+v", m)
		}
	})
}

// TestDecodeValues covers ACC-12 (uptime_seconds 1.5, success "yes") and the
// rest of §2.4's value rules: duplicate keys (the last
// wins), integers without fraction or exponent and in range, wrong JSON
// types, and null for a required field.
func TestDecodeValues(t *testing.T) {
	f := newAPIFixture(t)
	t.Run("duplicate keys, last wins", func(t *testing.T) {
		expect(t, f.register(t, "dup-01", `{"lifecycle":"bogus","lifecycle":"pending"}`), 201, "")
		if m := f.mustMachine(t, "dup-01"); m.Lifecycle != "pending" {
			t.Fatalf("lifecycle %s", m.Lifecycle)
		}
		expect(t, f.register(t, "dup-02", `{"lifecycle":"pending","lifecycle":"bogus"}`), 400, "invalid lifecycle state: bogus")
		if _, ok := f.machine(t, "dup-02"); ok {
			t.Fatal("dup-02 created")
		}
		rep := `{"machine_id":"web-01","current_generation":"","success":false,"message":"x","timestamp":"2026-04-11T09:30:00Z","success":true}`
		expect(t, f.report(t, "web-01", rep), 200, "")
		if m := f.mustMachine(t, "web-01"); m.SystemState != "ok" {
			t.Fatalf("system_state %s, want ok (last success wins)", m.SystemState)
		}
	})
	t.Run("integers", func(t *testing.T) {
		for _, tc := range []struct {
			value string
			ok    bool
		}{
			{"0", true}, {"86400", true}, {"9223372036854775807", true},
			{"1.5", false}, {"1.0", false}, {"1e2", false}, {"1E2", false}, {"-1", false}, {"\"5\"", false},
			{"9223372036854775808", false}, {"true", false}, {"[]", false}, {"{}", false},
		} {
			t.Run("uptime "+tc.value, func(t *testing.T) {
				rep := `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","uptime_seconds":` + tc.value + `}`
				before := f.fingerprint(t)
				r := f.report(t, "web-01", rep)
				if tc.ok {
					expect(t, r, 200, "")
					return
				}
				expect(t, r, 400, "")
				if after := f.fingerprint(t); after != before {
					t.Fatalf("state changed:\n%s\n%s", before, after)
				}
			})
		}
		for _, v := range []string{"300.0", "3e2", "300.5"} {
			t.Run("health_timeout "+v, func(t *testing.T) {
				before := f.fingerprint(t)
				body := `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]},"health_timeout":` + v + `}`
				expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, body), 400, "")
				if after := f.fingerprint(t); after != before {
					t.Fatalf("state changed:\n%s\n%s", before, after)
				}
			})
		}
		body := `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]},"soak_seconds":1e1}`
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, body), 400, "")
	})
	t.Run("wrong types", func(t *testing.T) {
		for _, tc := range []struct{ path, key, body string }{
			{"/api/v1/machines/web-01/report", "", `{"machine_id":5,"current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z"}`},
			{"/api/v1/machines/web-01/report", "", `{"machine_id":"web-01","current_generation":"","success":"yes","message":"x","timestamp":"2026-04-11T09:30:00Z"}`},
			{"/api/v1/machines/web-01/report", "", `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","tags":"web"}`},
			{"/api/v1/machines/web-01/report", "", `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","health":[]}`},
			{"/api/v1/machines/web-01/register", f.A, `{"tags":[1]}`},
			{"/api/v1/keys", f.A, `{"name":"x","role":1}`},
			{"/api/v1/rollouts", f.D, `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]},"failure_threshold":1}`},
			{"/api/v1/rollouts", f.D, `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":["web-01"]}`},
		} {
			before := f.fingerprint(t)
			expect(t, do(t, f.c, "POST", f.url+tc.path, tc.key, tc.body), 400, "")
			if after := f.fingerprint(t); after != before {
				t.Fatalf("%s: state changed:\n%s\n%s", tc.body, before, after)
			}
		}
	})
	t.Run("null required field", func(t *testing.T) {
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/keys", f.A, `{"name":null,"role":"deploy"}`), 400, "name: required")
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, `{"release_id":null,"strategy":"all_at_once","target":{"hosts":["web-01"]}}`), 400, "release_id: required")
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/releases", f.D, `{"entries":null}`), 400, "entries: required")
	})
}

// TestBodyLimit covers ACC-10's 1 MiB half and §2.3: a body of 1,048,577
// bytes gets 413 with and without a Content-Length, stores nothing and
// writes no audit row; a body of exactly 1,048,576 bytes is read. A report
// refused for its size counts as rejected.
func TestBodyLimit(t *testing.T) {
	f := newAPIFixture(t)
	pad := func(body string, size int) []byte {
		b := []byte(body)
		// Pad inside the object with spaces so the JSON stays valid.
		out := append([]byte{}, b[:len(b)-1]...)
		out = append(out, bytes.Repeat([]byte(" "), size-len(b))...)
		return append(out, '}')
	}
	rollout1 := `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]}}`
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("rollouts chunked=%v", chunked), func(t *testing.T) {
			before := f.fingerprint(t)
			r := apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "application/json", pad(rollout1, 1<<20+1), chunked)
			expect(t, r, 413, "request body too large")
			if after := f.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			// Also when the oversized body is not even JSON.
			r = apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "", bytes.Repeat([]byte("x"), 1<<20+1), chunked)
			expect(t, r, 413, "request body too large")
		})
	}
	t.Run("exactly 1 MiB is read", func(t *testing.T) {
		r := apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "application/json", pad(rollout1, 1<<20), false)
		expect(t, r, 201, "")
		// The same body, chunked: read in full and decoded (now a conflict).
		r = apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "application/json", pad(rollout1, 1<<20), true)
		expect(t, r, 409, "")
	})
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("report chunked=%v", chunked), func(t *testing.T) {
			rep, _ := apiJSON(reportBody("web-01", f.p1, true, "up-to-date"))
			before, rej := f.fingerprint(t), f.metric(t, mtRejected)
			r := apiSend(t, f.c, "POST", f.url+"/api/v1/machines/web-01/report", "", "application/json", pad(rep, 1<<20+1), chunked)
			expect(t, r, 413, "request body too large")
			if after := f.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := f.metric(t, mtRejected); got != rej+1 {
				t.Fatalf("nixfleet_reports_total{result=\"rejected\"} %v -> %v, want +1 (§11: 413 counts as rejected)", rej, got)
			}
		})
	}
	t.Run("other routes", func(t *testing.T) {
		for _, rt := range f.apiBodyRoutes() {
			if rt.path == "/api/v1/releases" {
				continue // 32 MiB
			}
			for _, chunked := range []bool{false, true} {
				before := f.fingerprint(t)
				r := apiSend(t, f.c, rt.method, f.url+rt.path, rt.key, "application/json", pad(rt.valid, 1<<20+1), chunked)
				expect(t, r, 413, "request body too large")
				if after := f.fingerprint(t); after != before {
					t.Fatalf("%s chunked=%v: state changed:\n%s\n%s", rt.name, chunked, before, after)
				}
			}
		}
	})
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
		{"GET", "/api/v1/machines/web-01", f.A, 404, "not found", nil},
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
		{"GET", "/api/v1/machines/web-01%2Fdesired-generation", 404, "not found"},
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
					var v float64
					fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
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

