package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// storePathRE is the store path rule of SPEC §2.7.
var storePathRE = regexp.MustCompile(`^/nix/store/[0-9abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+._?=-]+$`)

// fakeCP stands in for the control plane's two agent routes. It records every
// report, checks its JSON shape against SPEC §5.1, and serves the desired
// generations the test sets.
type fakeCP struct {
	t *testing.T

	mu       sync.Mutex
	reports  []report
	polls    map[string]int
	desired  map[string]string
	pollHint *int
	status   int // when non-zero, every poll gets this status
}

func newFakeCP(t *testing.T) *fakeCP {
	return &fakeCP{t: t, polls: map[string]int{}, desired: map[string]string{}}
}

func (cp *fakeCP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if r.Header.Get("Authorization") != "" {
		cp.t.Errorf("%s %s carries an Authorization header", r.Method, r.URL.Path)
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && r.TLS.PeerCertificates[0].Subject.CommonName != id {
		http.Error(w, `{"error":"client certificate CN does not match machine id"}`, http.StatusForbidden)
		return
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if r.Method == http.MethodGet {
		cp.polls[id]++
		switch {
		case cp.status != 0:
			http.Error(w, `{"error":"internal error"}`, cp.status)
		case cp.desired[id] == "":
			http.Error(w, `{"error":"no desired generation"}`, http.StatusNotFound)
		default:
			json.NewEncoder(w).Encode(map[string]any{"hash": cp.desired[id], "cache_url": nil, "poll_hint": cp.pollHint})
		}
		return
	}
	body, _ := io.ReadAll(r.Body)
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		cp.t.Errorf("report Content-Type %q", ct)
	}
	checkReportShape(cp.t, body)
	var rep report
	if err := json.Unmarshal(body, &rep); err != nil {
		cp.t.Errorf("decode report: %v", err)
	}
	if rep.MachineID != id {
		cp.t.Errorf("report for %s posted to %s", rep.MachineID, r.URL.Path)
	}
	cp.reports = append(cp.reports, rep)
}

// checkReportShape checks a report body key by key against SPEC §5.1: exact
// key names (encoding/json alone would match keys case-insensitively), the
// required keys, their JSON types and the timestamp format.
func checkReportShape(t *testing.T, body []byte) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Errorf("report is not a JSON object: %v: %s", err, body)
		return
	}
	checkKeys(t, "report", m,
		map[string]string{"machine_id": "string", "current_generation": "string", "success": "bool", "message": "string",
			"timestamp": "time", "tags": "list", "agent_version": "string", "uptime_seconds": "number"},
		map[string]string{"health": "object"})
	h, ok := m["health"].(map[string]any)
	if !ok {
		return
	}
	checkKeys(t, "health", h, map[string]string{"results": "list", "all_passed": "bool", "timestamp": "time"}, nil)
	results, _ := h["results"].([]any)
	for _, r := range results {
		r, _ := r.(map[string]any)
		optional := map[string]string{}
		if r["status"] == "fail" {
			optional["message"] = "string"
		}
		checkKeys(t, "health result", r, map[string]string{"status": "string", "check_name": "string", "duration_ms": "number"}, optional)
	}
}

func checkKeys(t *testing.T, what string, m map[string]any, required, optional map[string]string) {
	t.Helper()
	for k := range m {
		if required[k] == "" && optional[k] == "" {
			t.Errorf("%s has unexpected key %q", what, k)
		}
	}
	for k := range required {
		if _, ok := m[k]; !ok {
			t.Errorf("%s lacks required key %q", what, k)
		}
	}
	for k, v := range m {
		kind := required[k] + optional[k]
		ok := false
		switch v := v.(type) {
		case string:
			_, err := time.Parse(time.RFC3339, v)
			ok = kind == "string" || kind == "time" && err == nil
		case bool:
			ok = kind == "bool"
		case float64:
			ok = kind == "number" && v >= 0 && v == float64(int64(v))
		case []any:
			ok = kind == "list"
		case map[string]any:
			ok = kind == "object"
		}
		if !ok && kind != "" {
			t.Errorf("%s key %q = %#v, want a %s", what, k, v, kind)
		}
	}
}

// reportsOf returns a copy of the reports received from id.
func (cp *fakeCP) reportsOf(id string) []report {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []report
	for _, r := range cp.reports {
		if r.MachineID == id {
			out = append(out, r)
		}
	}
	return out
}

func (cp *fakeCP) pollsOf(id string) int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.polls[id]
}

func (cp *fakeCP) setDesired(id, hash string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.desired[id] = hash
}

func (cp *fakeCP) serve(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/machines/{id}/desired-generation", cp)
	mux.Handle("POST /api/v1/machines/{id}/report", cp)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

// syncBuffer is fakeagent's stdout, read by the test while agents write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs fakeagent with args until the test ends, and returns its stdout.
func start(t *testing.T, args ...string) *syncBuffer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run after cancel: %v", err)
		}
		if !strings.Contains(out.String(), "fakeagent: stopped") {
			t.Errorf("no clean stop in the log:\n%s", out)
		}
	})
	return out
}

// waitFor polls cond until it holds or 3 s have passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// fast are intervals that keep a test well under a second; the hour-long
// health interval means only the first and post-deploy health-checks happen.
var fast = []string{"--poll-interval", "20ms", "--retry-interval", "20ms", "--health-interval", "1h", "--apply-delay", "10ms"}

func messages(reports []report) []string {
	var out []string
	for _, r := range reports {
		out = append(out, r.Message)
	}
	return out
}

func TestRegisterThenDeploy(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t)
	ts := cp.serve(t)
	out := start(t, append([]string{"--url", ts.URL, "--machines", "2", "--tags", "web,eu-west"}, fast...)...)

	waitFor(t, "web-01's first report", func() bool { return len(cp.reportsOf("web-01")) > 0 })
	first := cp.reportsOf("web-01")[0]
	initial := initialGeneration("web-01")
	if !storePathRE.MatchString(initial) || !strings.HasSuffix(initial, "-nixos-system-web-01-initial") {
		t.Errorf("initial generation %q", initial)
	}
	want := report{MachineID: "web-01", CurrentGeneration: initial, Success: true, Message: "health-check",
		Tags: []string{"web", "eu-west"}, AgentVersion: "0.1.0"}
	got := first
	got.Timestamp, got.Health, got.UptimeSeconds = "", nil, 0
	if !equalReports(got, want) {
		t.Errorf("first report = %+v, want %+v", got, want)
	}
	if h := first.Health; h == nil || !h.AllPassed || len(h.Results) != 2 ||
		h.Results[0] != (checkResult{Status: "pass", CheckName: "sshd.service", DurationMs: 3}) ||
		h.Results[1].Status != "pass" || h.Results[1].CheckName != "nginx.service" {
		t.Errorf("first health = %+v, want sshd.service and nginx.service passing", first.Health)
	}
	waitFor(t, "web-01 to poll", func() bool { return cp.pollsOf("web-01") > 0 })

	v2 := "/nix/store/6cp643dzvlxxpkgbg5kzmwj47sam9zs2-nixos-system-web-01-v2"
	before := len(cp.reportsOf("web-01"))
	cp.setDesired("web-01", v2)
	waitFor(t, "web-01 to report up-to-date", func() bool {
		return slices.Contains(messages(cp.reportsOf("web-01")[before:]), "up-to-date")
	})
	after := cp.reportsOf("web-01")[before:]
	if len(after) < 4 {
		t.Fatalf("web-01 sent %q after the new desired generation", messages(after))
	}
	wantSeq := []struct{ msg, gen string }{{"applying", initial}, {"deployed", v2}, {"health-check", v2}, {"up-to-date", v2}}
	for i, w := range wantSeq {
		if r := after[i]; r.Message != w.msg || r.CurrentGeneration != w.gen || !r.Success || (r.Health != nil) != (w.msg == "health-check") {
			t.Errorf("report %d after the new desired generation = %+v, want %q on %s", i, r, w.msg, w.gen)
		}
	}
	if m := messages(cp.reportsOf("web-02")); !slices.Equal(m, []string{"health-check"}) {
		t.Errorf("web-02 (no desired generation) sent %q, want only its first health-check", m)
	}
	for _, line := range []string{"web-01 registered (health ok)", "web-02 registered (health ok)",
		"web-01 applying " + v2, "web-01 deployed " + v2, "web-01 health ok"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("log lacks %q:\n%s", line, out)
		}
	}
}

func equalReports(a, b report) bool {
	return a.MachineID == b.MachineID && a.CurrentGeneration == b.CurrentGeneration && a.Success == b.Success &&
		a.Message == b.Message && slices.Equal(a.Tags, b.Tags) && a.AgentVersion == b.AgentVersion &&
		a.UptimeSeconds == b.UptimeSeconds && a.Timestamp == b.Timestamp && (a.Health == nil) == (b.Health == nil)
}

// TestOnceWithFailingMachine also covers --once: run returns by itself after
// one cycle per machine, and exits 0 (nil). A --fail machine passes its
// checks on its initial generation and fails them on the one it is given.
func TestOnceWithFailingMachine(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t)
	ts := cp.serve(t)
	v2 := "/nix/store/4lmnzx45iy43kwjqn1xna7z3dj8grrz5-nixos-system-web-02-v2"
	cp.setDesired("web-02", v2)
	cp.setDesired("web-03", initialGeneration("web-03"))
	out := &syncBuffer{}
	err := run(context.Background(), append([]string{"--url", ts.URL, "--machines", "3", "--fail", "web-02", "--once"}, fast...), out)
	if err != nil {
		t.Fatalf("run --once: %v\n%s", err, out)
	}

	for id, want := range map[string][]string{
		"web-01": {"health-check"},
		"web-02": {"health-check", "applying", "deployed", "health-check"},
		"web-03": {"health-check", "up-to-date"},
	} {
		if got := messages(cp.reportsOf(id)); !slices.Equal(got, want) {
			t.Errorf("%s sent %q, want %q", id, got, want)
		}
		if n := cp.pollsOf(id); n != 1 {
			t.Errorf("%s polled %d times, want 1", id, n)
		}
	}
	web02 := cp.reportsOf("web-02")
	if r := web02[0]; !r.Success || r.Health == nil || !r.Health.AllPassed {
		t.Errorf("web-02's first health-check, on its initial generation = %+v, want passing", r)
	}
	for _, i := range []int{3} {
		r := web02[i]
		if r.Success || r.Health == nil || r.Health.AllPassed {
			t.Errorf("web-02 health-check %d = %+v, want success=false, all_passed=false", i, r)
			continue
		}
		nginx := r.Health.Results[1]
		if nginx.Status != "fail" || nginx.CheckName != "nginx.service" || nginx.Message == "" {
			t.Errorf("web-02 nginx.service result = %+v, want a failure with a message", nginx)
		}
	}
	if web02[3].CurrentGeneration != v2 {
		t.Errorf("web-02's failing health-check after the deploy is on %q, want %q", web02[3].CurrentGeneration, v2)
	}
	for _, line := range []string{"web-02 registered (health ok)", "web-02 deployed " + v2,
		"web-02 health check failed: nginx.service"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("log lacks %q:\n%s", line, out)
		}
	}
}

func TestPollHintShortensNextPoll(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t)
	ts := cp.serve(t)
	hint := 1
	cp.pollHint = &hint
	cp.setDesired("web-01", initialGeneration("web-01"))
	// Without the hint the next poll would come an hour later.
	start(t, "--url", ts.URL, "--machines", "1", "--poll-interval", "1h", "--retry-interval", "1h", "--health-interval", "1h")
	waitFor(t, "a second poll after poll_hint", func() bool { return cp.pollsOf("web-01") >= 2 })
}

func TestPeriodicHealthCheck(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t)
	ts := cp.serve(t)
	v2 := "/nix/store/4lmnzx45iy43kwjqn1xna7z3dj8grrz5-nixos-system-web-01-v2"
	cp.setDesired("web-01", v2)
	out := start(t, "--url", ts.URL, "--ids", "web-01", "--fail", "web-01", "--health-interval", "20ms",
		"--poll-interval", "1h", "--apply-delay", "1ms")
	healthOnV2 := func() (n int) {
		for _, r := range cp.reportsOf("web-01") {
			if r.Message == "health-check" && r.CurrentGeneration == v2 {
				n++
			}
		}
		return n
	}
	waitFor(t, "three health-checks on the deployed generation", func() bool { return healthOnV2() >= 3 })
	for _, r := range cp.reportsOf("web-01") {
		if r.Message == "health-check" && r.CurrentGeneration == v2 && (r.Success || r.Health == nil || r.Health.AllPassed) {
			t.Errorf("periodic report %+v, want a failing health-check", r)
		}
	}
	// Unchanged outcomes are not logged again.
	if n := strings.Count(out.String(), "nginx.service"); n != 1 {
		t.Errorf("the failing check is logged %d times, want once:\n%s", n, out)
	}
}

func TestPollErrorIsRetried(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t)
	cp.status = http.StatusInternalServerError
	ts := cp.serve(t)
	out := start(t, append([]string{"--url", ts.URL, "--ids", "db-01"}, fast...)...)
	waitFor(t, "a retried poll", func() bool { return cp.pollsOf("db-01") >= 2 })
	waitFor(t, "the log line", func() bool {
		return strings.Contains(out.String(), "db-01 poll: 500 internal error (retrying in 20ms)")
	})
}

func TestOnceFailsWhenServerIsDown(t *testing.T) {
	t.Parallel()
	ts := httptest.NewServer(http.NotFoundHandler())
	ts.Close() // a port nobody listens on
	out := &syncBuffer{}
	err := run(context.Background(), []string{"--url", ts.URL, "--machines", "2", "--once"}, out)
	if err == nil || !strings.Contains(err.Error(), "2 of 2 machines") {
		t.Errorf("run --once against a closed port = %v, want an error naming 2 of 2 machines", err)
	}
	if !strings.Contains(out.String(), "web-01 report health-check: dial tcp") {
		t.Errorf("log lacks the failed registration:\n%s", out)
	}
}

func TestMachineIDs(t *testing.T) {
	for _, tc := range []struct {
		args        []string
		n           int
		first, last string
	}{
		{[]string{"--machines", "3"}, 3, "web-01", "web-03"},
		{[]string{"--machines", "100", "--prefix", "db"}, 100, "db-001", "db-100"},
		{[]string{"--ids", "a, b,c"}, 3, "a", "c"},
	} {
		c, err := parseConfig(append([]string{"--url", "http://127.0.0.1:1"}, tc.args...), io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if len(c.ids) != tc.n || c.ids[0] != tc.first || c.ids[tc.n-1] != tc.last {
			t.Errorf("%q: ids %q, want %d from %s to %s", tc.args, c.ids, tc.n, tc.first, tc.last)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--url", "127.0.0.1:8080"},
		{"--url", "ftp://127.0.0.1"},
		{"--url", "http://127.0.0.1:8080", "--fail", "web-99"},
		{"--url", "http://127.0.0.1:8080", "--ids", "web/01"},
		{"--url", "http://127.0.0.1:8080", "--tags", "has space"},
		{"--url", "http://127.0.0.1:8080", "--poll-interval", "0s"},
		{"--url", "http://127.0.0.1:8080", "--ca", "ca.pem"},
		{"--url", "http://127.0.0.1:8080", "--insecure"},
		{"--url", "http://127.0.0.1:8080", "extra"},
	} {
		err := run(context.Background(), args, io.Discard)
		if !errors.As(err, new(usageError)) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
	var help bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) ||
		!strings.Contains(help.String(), "-url URL") || !strings.Contains(help.String(), "Examples:") {
		t.Errorf("-h = %v, printed:\n%s", err, help.String())
	}
}

// TestMTLS runs a machine against a server that requires client certificates,
// with --ca and --cert-dir, and checks that a certificate whose CN is not the
// machine id is refused at startup.
func TestMTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	writeClientCert := func(file, cn string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: caTmpl.NotBefore, NotAfter: caTmpl.NotAfter}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		writePEM(t, filepath.Join(dir, file+".pem"), "CERTIFICATE", der)
		writePEM(t, filepath.Join(dir, file+"-key.pem"), "PRIVATE KEY", keyDER)
	}
	writeClientCert("web-01", "web-01")
	writeClientCert("web-02", "someone-else")

	cp := newFakeCP(t)
	mux := http.NewServeMux()
	mux.Handle("/api/v1/machines/{id}/", cp)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	ts := httptest.NewUnstartedServer(mux)
	ts.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	writePEM(t, filepath.Join(dir, "server-ca.pem"), "CERTIFICATE", ts.Certificate().Raw)

	args := []string{"--url", ts.URL, "--ca", filepath.Join(dir, "server-ca.pem"), "--cert-dir", dir, "--once"}
	out := &syncBuffer{}
	if err := run(context.Background(), append(args, "--ids", "web-01"), out); err != nil {
		t.Fatalf("run over mTLS: %v\n%s", err, out)
	}
	if got := messages(cp.reportsOf("web-01")); !slices.Equal(got, []string{"health-check"}) {
		t.Errorf("web-01 sent %q over mTLS, want one health-check", got)
	}
	err = run(context.Background(), append(args, "--ids", "web-02"), io.Discard)
	if err == nil || errors.As(err, new(usageError)) || !strings.Contains(err.Error(), `certificate CN is "someone-else"`) {
		t.Errorf("run with a wrong CN = %v, want a runtime error naming the CN", err)
	}
	err = run(context.Background(), append(args, "--ids", "web-03"), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "web-03.pem") {
		t.Errorf("run with a missing certificate = %v, want an error naming web-03.pem", err)
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
