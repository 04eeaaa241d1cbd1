package main

// Shared test helpers: a fake clock, a real PKI generated per test, servers
// started through run (the production entry point) or assembled from the
// production parts around httptest, and small HTTP client helpers.

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
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
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

// testPKI is a CA with server and client certificates, written as PEM files.
type testPKI struct {
	dir        string
	caFile     string // trusted client CA bundle
	caPool     *x509.CertPool
	serverCert string // for 127.0.0.1 and localhost
	serverKey  string
	clients    map[string]tls.Certificate // by name: web-01, web-02, operator, rogue, expired
	clientFile map[string][2]string       // by name: cert and key PEM paths
}

// newTestPKI generates an ECDSA CA, a server certificate for 127.0.0.1,
// client certificates for web-01, web-02 and operator, one for web-01 from a
// rogue CA ("rogue") and an expired one for web-01 ("expired").
func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{dir: dir, clients: map[string]tls.Certificate{}, clientFile: map[string][2]string{}}
	now := time.Now()
	ca, caKey := newCA(t, "nixfleet test CA", now)
	rogue, rogueKey := newCA(t, "rogue CA", now)
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(ca)
	p.caFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)

	srvTmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "control-plane"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:    []string{"localhost"},
		NotBefore:   now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	certDER, key := signCert(t, srvTmpl, ca, caKey)
	p.serverCert = writePEM(t, dir, "server.pem", "CERTIFICATE", certDER)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	p.serverKey = writePEM(t, dir, "server-key.pem", "PRIVATE KEY", keyDER)

	client := func(name, cn string, issuer *x509.Certificate, issuerKey *ecdsa.PrivateKey, notAfter time.Time) {
		tmpl := &x509.Certificate{
			Subject:   pkix.Name{CommonName: cn},
			NotBefore: now.Add(-48 * time.Hour), NotAfter: notAfter,
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		der, k := signCert(t, tmpl, issuer, issuerKey)
		kd, _ := x509.MarshalPKCS8PrivateKey(k)
		cf := writePEM(t, dir, name+".pem", "CERTIFICATE", der)
		kf := writePEM(t, dir, name+"-key.pem", "PRIVATE KEY", kd)
		pair, err := tls.LoadX509KeyPair(cf, kf)
		if err != nil {
			t.Fatal(err)
		}
		p.clients[name] = pair
		p.clientFile[name] = [2]string{cf, kf}
	}
	client("web-01", "web-01", ca, caKey, now.Add(24*time.Hour))
	client("web-02", "web-02", ca, caKey, now.Add(24*time.Hour))
	client("operator", "operator", ca, caKey, now.Add(24*time.Hour))
	client("rogue", "web-01", rogue, rogueKey, now.Add(24*time.Hour))
	client("expired", "web-01", ca, caKey, now.Add(-24*time.Hour))
	return p
}

var serial int64 = 1

func nextSerial() *big.Int {
	serial++
	return big.NewInt(serial)
}

func newCA(t testing.TB, cn string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-72 * time.Hour), NotAfter: now.Add(72 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// signCert creates a key pair and a certificate for tmpl signed by issuer.
func signCert(t testing.TB, tmpl, issuer *x509.Certificate, issuerKey *ecdsa.PrivateKey) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = nextSerial()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := listeningRE.FindStringSubmatch(rs.logs.String()); m != nil {
			rs.addr = m[1]
			break
		}
		select {
		case err := <-rs.done:
			cancel()
			t.Fatalf("server exited during startup: %v\nlogs:\n%s", err, rs.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("server did not start\nlogs:\n%s", rs.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	scheme := "http"
	if strings.Contains(joined, "--tls-cert") {
		scheme = "https"
	}
	rs.url = scheme + "://" + rs.addr
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
		bootstrapToken: o.bootstrapToken, reportRetention: 168 * time.Hour, now: now, log: newLogger(logs, "debug")})
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

// client returns an HTTPS client that trusts the test CA and presents the
// named client certificate ("" for none).
func (p *testPKI) client(cert string) *http.Client {
	cfg := &tls.Config{RootCAs: p.caPool}
	if cert != "" {
		// GetClientCertificate, not Certificates: with Certificates, Go's client
		// silently sends no certificate when the server's acceptable CAs do not
		// include its issuer, and a rogue-CA test would test "no certificate".
		c := p.clients[cert]
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
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

// bootstrapKey creates the first admin key and returns it.
func bootstrapKey(t testing.TB, c *http.Client, base string) string {
	t.Helper()
	r := do(t, c, "POST", base+"/api/v1/keys/bootstrap", "", `{"name":"first-admin"}`)
	expect(t, r, 200, "")
	var k keyCreated
	r.json(t, &k)
	return k.Key
}

// createKey creates a key with the given role using the admin key.
func createTestKey(t testing.TB, c *http.Client, base, admin, name, role string) string {
	t.Helper()
	r := do(t, c, "POST", base+"/api/v1/keys", admin, map[string]any{"name": name, "role": role})
	expect(t, r, 201, "")
	var k keyCreated
	r.json(t, &k)
	return k.Key
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
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// buildBinary builds the daemon once per test process and returns its path.
func buildBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nixfleet-cp-bin")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "nixfleet-control-plane")
		out, err := exec.Command("go", "build", "-o", binaryPath, ".").CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// binServer is the built binary running as a child process.
type binServer struct {
	cmd  *exec.Cmd
	url  string
	logs *syncBuffer
	done chan error // receives cmd.Wait's result
}

// startBinary runs the built binary with args (add --db-path yourself; a
// loopback --listen is added unless given) and waits until it listens. The
// process is killed at cleanup if still running.
func startBinary(t testing.TB, args ...string) *binServer {
	t.Helper()
	if !strings.Contains(strings.Join(args, " "), "--listen") {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	bs := &binServer{logs: &syncBuffer{}, done: make(chan error, 1)}
	bs.cmd = exec.Command(buildBinary(t), args...)
	bs.cmd.Stderr = bs.logs
	bs.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if err := bs.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { bs.done <- bs.cmd.Wait() }()
	t.Cleanup(func() {
		bs.cmd.Process.Kill()
		<-bs.done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := listeningRE.FindStringSubmatch(bs.logs.String()); m != nil {
			bs.url = "http://" + m[1]
			if strings.Contains(strings.Join(args, " "), "--tls-cert") {
				bs.url = "https://" + m[1]
			}
			return bs
		}
		select {
		case err := <-bs.done:
			bs.done <- err
			t.Fatalf("binary exited during startup: %v\n%s", err, bs.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("binary did not start:\n%s", bs.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kill9 kills the process with SIGKILL and waits for it.
func (bs *binServer) kill9(t testing.TB) {
	t.Helper()
	bs.cmd.Process.Signal(syscall.SIGKILL)
	err := <-bs.done
	bs.done <- err
}
