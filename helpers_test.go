package main

// Shared test helpers: a fake clock, polling with a deadline, servers
// started through run (the production entry point) or assembled from the
// production parts around httptest, a test server with one key of each role,
// and small HTTP and database helpers. The test PKI is in helpers_pki_test.go,
// the built binary in helpers_binary_test.go, the rollout helpers in
// helpers_rollout_test.go and the crash-safety ledger and database verifier
// in helpers_crash_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injectable clock that tests move forward by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 4, 11, 9, 30, 0, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a goroutine-safe log sink.
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

// poll calls cond until it returns true or timeout has passed, and reports
// whether it returned true. It waits 1 ms after the first call, doubling up
// to 20 ms, so a condition that is almost there is seen at once and a slow
// one is not hammered. Tests wait with waitFor; poll is for the few callers
// that report a timeout in their own words.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 20*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait) // the poll interval, inside the deadline
	}
}

// waitFor polls cond until it holds and fails the test if it does not within
// timeout; what names the condition in the failure. cond runs on the test's
// goroutine, so it may call t.Fatal itself.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// mustScan scans row (a *sql.Row, or *sql.Rows positioned by Next) into dest
// and fails the test on any error, of the query or of the scan, so that a
// failed read can never pass for "nothing stored".
func mustScan(t testing.TB, row interface{ Scan(...any) error }, dest ...any) {
	t.Helper()
	if err := row.Scan(dest...); err != nil {
		t.Fatalf("scan: %v", err)
	}
}

// runServer is a server started through run, as the binary starts it.
type runServer struct {
	url    string // http://127.0.0.1:port or https://…
	addr   string
	dbPath string
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

var listeningRE = regexp.MustCompile(`msg="Control plane listening" addr=(\S+)`)

// startRun starts the server with run(ctx, ["serve", args...]) on a loopback
// port, waits until it logs that it is listening, and stops it at cleanup. A
// --db-path in a temp dir and --listen 127.0.0.1:0 are added unless args set
// them. getenv may be nil.
func startRun(t testing.TB, getenv func(string) string, args ...string) *runServer {
	t.Helper()
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "--db-path") {
		args = append(args, "--db-path", filepath.Join(t.TempDir(), "state.db"))
	}
	if !strings.Contains(joined, "--listen") {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	rs := launchRun(t, getenv, args...)
	scheme := "http"
	if strings.Contains(joined, "--tls-cert") {
		scheme = "https"
	}
	rs.url = scheme + "://" + rs.addr
	return rs
}

// launchRun runs run(ctx, ["serve", args...]) with exactly the flags given
// (startRun adds the usual ones), waits until it logs that it is listening,
// and stops it at cleanup. rs.url is left empty. getenv may be nil.
func launchRun(t testing.TB, getenv func(string) string, args ...string) *runServer {
	t.Helper()
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	rs := &runServer{logs: &syncBuffer{}, done: make(chan error, 1)}
	for i, a := range args {
		if a == "--db-path" && i+1 < len(args) {
			rs.dbPath = args[i+1]
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs.cancel = cancel
	go func() { rs.done <- run(ctx, append([]string{"serve"}, args...), getenv, io.Discard, rs.logs) }()
	listening := poll(20*time.Second, func() bool {
		if m := listeningRE.FindStringSubmatch(rs.logs.String()); m != nil {
			rs.addr = m[1]
			return true
		}
		select {
		case err := <-rs.done:
			cancel()
			t.Fatalf("server exited during startup: %v\nlogs:\n%s", err, rs.logs.String())
		default:
		}
		return false
	})
	if !listening {
		cancel()
		t.Fatalf("server did not start\nlogs:\n%s", rs.logs.String())
	}
	t.Cleanup(func() { rs.stop(t) })
	return rs
}

// stop cancels the server and waits for run to return; it returns run's error.
func (rs *runServer) stop(t testing.TB) error {
	t.Helper()
	rs.cancel()
	select {
	case err, ok := <-rs.done:
		if ok {
			close(rs.done)
			if err != nil {
				t.Errorf("run returned %v", err)
			}
			return err
		}
		return nil
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not stop\nlogs:\n%s", rs.logs.String())
		return nil
	}
}

// testServer is the application built by newApp, as serve builds it, behind
// httptest with an injectable clock. The executor and retention loops are not
// started: tests call ts.exec.step with the fake clock.
type testServer struct {
	*app
	ts    *httptest.Server
	url   string
	clock *fakeClock
	logs  *syncBuffer
	pki   *testPKI
}

type testServerOptions struct {
	mode           string // "plain" (default), "tls" or "mtls"
	bootstrapToken string
	bootstrapCNs   []string // mTLS: the client certificate CNs that may bootstrap (--bootstrap-cn)
	dbPath         string
	realClock      bool // use time.Now instead of a fake clock
}

// newTestServer starts a server over a fresh database in a temp dir.
func newTestServer(t testing.TB, o testServerOptions) *testServer {
	t.Helper()
	if o.mode == "" {
		o.mode = "plain"
	}
	if o.dbPath == "" {
		o.dbPath = filepath.Join(t.TempDir(), "state.db")
	}
	clock := newFakeClock()
	now := clock.now
	if o.realClock {
		now = time.Now
	}
	logs := &syncBuffer{}
	a, err := newApp(context.Background(), appConfig{dbPath: o.dbPath, mode: o.mode,
		bootstrapToken: o.bootstrapToken, bootstrapCNs: o.bootstrapCNs, reportRetention: 168 * time.Hour, now: now, log: newLogger(logs, "debug")})
	if err != nil {
		t.Fatal(err)
	}
	tsrv := &testServer{app: a, clock: clock, logs: logs}
	tsrv.ts = httptest.NewUnstartedServer(a.srv.handler())
	tsrv.ts.Config.ReadHeaderTimeout = readHeaderTimeout
	tsrv.ts.Config.MaxHeaderBytes = maxHeaderBytes
	if o.mode != "plain" {
		tsrv.pki = newTestPKI(t)
		ca := ""
		if o.mode == "mtls" {
			ca = tsrv.pki.caFile
		}
		cfg, err := loadTLSConfig(tsrv.pki.serverCert, tsrv.pki.serverKey, ca)
		if err != nil {
			t.Fatal(err)
		}
		tsrv.ts.TLS = cfg
		tsrv.ts.StartTLS()
	} else {
		tsrv.ts.Start()
	}
	tsrv.url = tsrv.ts.URL
	t.Cleanup(func() {
		a.st.events.close() // open event streams would keep ts.Close waiting
		tsrv.ts.Close()
		if err := a.close(); err != nil {
			t.Errorf("close app: %v", err)
		}
	})
	return tsrv
}

// pass runs one executor pass at the fake clock's time.
func (ts *testServer) pass(ctx context.Context) { ts.exec.step(ctx, ts.clock.now()) }

// client returns an HTTP client for the server; in TLS modes it trusts the
// test CA and presents the named client certificate ("" for none).
func (ts *testServer) client(cert string) *http.Client {
	if ts.pki == nil {
		return &http.Client{Timeout: 30 * time.Second}
	}
	return ts.pki.client(cert)
}

// testEnv is a plain-mode test server (fake clock) with the three keys of the
// acceptance checklist: A (admin, from bootstrap, named "first-admin"),
// D (deploy, "deployer") and R (readonly, "reader").
type testEnv struct {
	ts      *testServer
	c       *http.Client
	url     string
	A, D, R string
}

func newTestEnv(t testing.TB) *testEnv {
	t.Helper()
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	e := &testEnv{ts: ts, c: c, url: ts.url}
	e.A = bootstrapKey(t, c, ts.url)
	e.D = createTestKey(t, c, ts.url, e.A, "deployer", "deploy")
	e.R = createTestKey(t, c, ts.url, e.A, "reader", "readonly")
	return e
}

func (e *testEnv) report(t testing.TB, id string, body any) response {
	t.Helper()
	return do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/report", "", body)
}

func (e *testEnv) register(t testing.TB, id string, body any) response {
	t.Helper()
	return do(t, e.c, "POST", e.url+"/api/v1/machines/"+id+"/register", e.A, body)
}

func (e *testEnv) patch(t testing.TB, id, lifecycle string) response {
	t.Helper()
	return do(t, e.c, "PATCH", e.url+"/api/v1/machines/"+id+"/lifecycle", e.A, map[string]any{"lifecycle": lifecycle})
}

func (e *testEnv) desired(t testing.TB, id string) response {
	t.Helper()
	return do(t, e.c, "GET", e.url+"/api/v1/machines/"+id+"/desired-generation", "", nil)
}

// machine returns the listed status of id; ok is false if it is not listed.
func (e *testEnv) machine(t testing.TB, id string) (machineStatus, bool) {
	t.Helper()
	for _, m := range listMachinesT(t, e.c, e.url, e.A, "") {
		if m.MachineID == id {
			return m, true
		}
	}
	return machineStatus{}, false
}

func (e *testEnv) mustMachine(t testing.TB, id string) machineStatus {
	t.Helper()
	m, ok := e.machine(t, id)
	if !ok {
		t.Fatalf("machine %s not listed", id)
	}
	return m
}

// audit returns the audit rows for target (all actions), oldest first.
func (e *testEnv) audit(t testing.TB, target string) []auditEvent {
	t.Helper()
	evs := auditRows(t, e.c, e.url, e.A, "?limit=1000&target="+target)
	slices.Reverse(evs)
	return evs
}

// auditSummary returns "action|actor|detail" for each audit row of target,
// oldest first.
func (e *testEnv) auditSummary(t testing.TB, target string) []string {
	t.Helper()
	var out []string
	for _, ev := range e.audit(t, target) {
		d := "<null>"
		if ev.Detail != nil {
			d = *ev.Detail
		}
		out = append(out, ev.Action+"|"+ev.Actor+"|"+d)
	}
	return out
}

// fingerprint summarises the stored state: row counts of the tables that a
// rejected request must not touch, and the highest audit id.
func (e *testEnv) fingerprint(t testing.TB) string {
	t.Helper()
	return dbFingerprint(t, e.ts)
}

// dbFingerprint is the fingerprint of ts's database.
func dbFingerprint(t testing.TB, ts *testServer) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"machine", "machine_tag", "desired_generation", "report", "health_report",
		"api_key", "audit_event", "release", "release_entry", "rollout", "rollout_batch", "rollout_machine"} {
		var n int
		if err := ts.st.ro.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", table, err)
		}
		fmt.Fprintf(&b, "%s=%d ", table, n)
	}
	var maxID int64
	mustScan(t, ts.st.ro.QueryRow("SELECT coalesce(max(id), 0) FROM audit_event"), &maxID)
	fmt.Fprintf(&b, "audit_max=%d", maxID)
	return b.String()
}

func (e *testEnv) metric(t testing.TB, series string) float64 {
	t.Helper()
	return metricValue(t, e.c, e.url, series)
}

// countRows runs a count query on the test server's database.
func countRows(t testing.TB, ts *testServer, q string, args ...any) int {
	t.Helper()
	var n int
	if err := ts.st.ro.QueryRowContext(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// response is a decoded HTTP response.
type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into v, failing the test on error.
func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

// errMsg returns the "error" field of a JSON error body.
func (r response) errMsg(t testing.TB) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	r.json(t, &e)
	return e.Error
}

// do sends a request. body may be nil, a string or []byte (sent as is), or
// any other value (JSON-encoded). key, when non-empty, is sent as a Bearer
// token. JSON bodies get Content-Type application/json.
func do(t testing.TB, c *http.Client, method, url, key string, body any) response {
	t.Helper()
	var rd io.Reader
	isJSON := false
	switch b := body.(type) {
	case nil:
	case string:
		rd, isJSON = strings.NewReader(b), true
	case []byte:
		rd, isJSON = bytes.NewReader(b), true
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd, isJSON = bytes.NewReader(enc), true
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if isJSON {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return send(t, c, req)
}

// send performs req and reads the whole response.
func send(t testing.TB, c *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
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

// authSend sends a request with exactly the given extra headers (the
// Authorization header is not added for the caller). body is sent as JSON
// when non-empty.
func authSend(t testing.TB, c *http.Client, method, url string, hdr map[string]string, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return send(t, c, req)
}

// tryDo sends one request without a testing.TB, so that it can run on any
// goroutine and never fails the test: the server may die at any moment.
// body is JSON-encoded unless nil; key, when non-empty, is a Bearer token.
func tryDo(c *http.Client, method, url, key string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		// The status line arrived but the body did not: a 2xx is only
		// trusted once the whole answer has been read.
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

// expect fails the test unless r has the wanted status; for error statuses it
// also checks the JSON error body, and, when wantErr is non-empty, its text.
func expect(t testing.TB, r response, status int, wantErr string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if status >= 400 {
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("error Content-Type %q, want application/json", ct)
		}
		msg := r.errMsg(t)
		if msg == "" {
			t.Fatalf("empty error message in %s", r.body)
		}
		if wantErr != "" && msg != wantErr {
			t.Fatalf("error %q, want %q", msg, wantErr)
		}
	}
}

// authExpect401 checks a 401 with its message and the WWW-Authenticate header
// that every 401 carries (§2.5).
func authExpect401(t testing.TB, r response, wantErr string) {
	t.Helper()
	expect(t, r, http.StatusUnauthorized, wantErr)
	if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="nixfleet"` {
		t.Fatalf("WWW-Authenticate %q, want Bearer realm=\"nixfleet\"", got)
	}
}

var authKeyTokenRE = regexp.MustCompile(`^nfk-[0-9a-f]{64}$`)

// bootstrapKey creates the first admin key and returns it.
func bootstrapKey(t testing.TB, c *http.Client, base string) string {
	t.Helper()
	r := do(t, c, "POST", base+"/api/v1/keys/bootstrap", "", `{"name":"first-admin"}`)
	expect(t, r, 200, "")
	var k keyCreated
	r.json(t, &k)
	return k.Key
}

// createTestKey creates a key with the given role using the admin key.
func createTestKey(t testing.TB, c *http.Client, base, admin, name, role string) string {
	t.Helper()
	return keysCreateAPI(t, c, base, admin, map[string]any{"name": name, "role": role}).Key
}

// keysCreateAPI posts a key and returns the decoded 201 response.
func keysCreateAPI(t testing.TB, c *http.Client, base, admin string, body any) keyCreated {
	t.Helper()
	return postCreated[keyCreated](t, c, base+"/api/v1/keys", admin, body)
}

// postCreated posts body to url with key, expects 201 and returns the answer
// decoded.
func postCreated[T any](t testing.TB, c *http.Client, url, key string, body any) T {
	t.Helper()
	r := do(t, c, "POST", url, key, body)
	expect(t, r, 201, "")
	var out T
	r.json(t, &out)
	return out
}

// storePath returns a valid store path whose name ends in name.
func storePath(hashChar byte, name string) string {
	return "/nix/store/" + strings.Repeat(string(hashChar), 32) + "-" + name
}

// reportBody builds a v0.1 agent report.
func reportBody(id, gen string, success bool, message string) map[string]any {
	return map[string]any{
		"machine_id": id, "current_generation": gen, "success": success, "message": message,
		"timestamp": "2026-04-11T09:30:00.52Z", "agent_version": "0.1.0", "uptime_seconds": 100,
	}
}

// healthBody builds a health-check report: passing when failed is empty,
// otherwise with those checks failing.
func healthBody(id, gen string, failed ...string) map[string]any {
	results := []map[string]any{{"status": "pass", "check_name": "sshd.service", "duration_ms": 3}}
	for _, f := range failed {
		results = append(results, map[string]any{"status": "fail", "check_name": f, "duration_ms": 5, "message": "unit is failed"})
	}
	b := reportBody(id, gen, len(failed) == 0, "health-check")
	b["health"] = map[string]any{"results": results, "all_passed": len(failed) == 0, "timestamp": "2026-04-11T09:30:00.51Z"}
	return b
}

// The series of nixfleet_reports_total, by result.
const (
	reportsRejected = `nixfleet_reports_total{result="rejected"}`
	reportsSuccess  = `nixfleet_reports_total{result="success"}`
	reportsFailure  = `nixfleet_reports_total{result="failure"}`
)

// outputTimeRE is the format of every timestamp the API writes (§0.5).
var outputTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// numberedTags returns n distinct valid tags: t00, t01, …
func numberedTags(n int) []string {
	tags := make([]string, n)
	for i := range tags {
		tags[i] = fmt.Sprintf("t%02d", i)
	}
	return tags
}

// sameMachineStatus compares two statuses, seconds_since_last_report aside.
func sameMachineStatus(a, b machineStatus) bool {
	a.SecondsSinceLastReport, b.SecondsSinceLastReport = nil, nil
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// listMachinesT returns GET /api/v1/machines decoded.
func listMachinesT(t testing.TB, c *http.Client, base, key, query string) []machineStatus {
	t.Helper()
	r := do(t, c, "GET", base+"/api/v1/machines"+query, key, nil)
	expect(t, r, 200, "")
	var ms []machineStatus
	r.json(t, &ms)
	return ms
}

// auditRows returns the audit rows matching query (e.g. "?action=register").
func auditRows(t testing.TB, c *http.Client, base, key, query string) []auditEvent {
	t.Helper()
	r := do(t, c, "GET", base+"/api/v1/audit"+query, key, nil)
	expect(t, r, 200, "")
	var evs []auditEvent
	r.json(t, &evs)
	return evs
}

// metricValue returns the value of one series in the /metrics output, or -1.
func metricValue(t testing.TB, c *http.Client, base, series string) float64 {
	t.Helper()
	r := do(t, c, "GET", base+"/metrics", "", nil)
	expect(t, r, 200, "")
	for _, line := range strings.Split(string(r.body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("value of %s: %v", series, err)
			}
			return v
		}
	}
	return -1
}

// relEntry is one release entry of a request.
func relEntry(host string, hash byte, tags ...string) map[string]any {
	e := map[string]any{"hostname": host, "store_path": storePath(hash, "nixos-system-"+host), "platform": "x86_64-linux"}
	if tags != nil {
		e["tags"] = tags
	}
	return e
}

// relCreate creates a release and returns its id.
func relCreate(t testing.TB, e *testEnv, key string, body any) string {
	t.Helper()
	return postCreated[struct{ ID string }](t, e.c, e.ts.url+"/api/v1/releases", key, body).ID
}

// relRegister registers active machines.
func relRegister(t testing.TB, e *testEnv, ids ...string) {
	t.Helper()
	for _, id := range ids {
		expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/machines/"+id+"/register", e.A, nil), 201, "")
	}
}

// relRollout creates a rollout over hosts and returns its id.
func relRollout(t testing.TB, e *testEnv, release string, body map[string]any, hosts ...string) string {
	t.Helper()
	req := map[string]any{"release_id": release, "strategy": "all_at_once", "target": map[string]any{"hosts": hosts}}
	for k, v := range body {
		req[k] = v
	}
	r := do(t, e.c, "POST", e.ts.url+"/api/v1/rollouts", e.D, req)
	expect(t, r, 201, "")
	var out createRolloutResponse
	r.json(t, &out)
	return out.RolloutID
}
