package main

// Regression tests for the gaps a security review found (one test per row of
// the review, cited as "row N"; SECURITY.md's threat model points here).
// Each one failed on the code before the fix. Row 1 (decoding cost) is
// TestDecodeCostIsLinear; the malformed-request, hostile-connection and fuzz
// suites are in hostile*_test.go and fuzz*_test.go.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// secPKI is a CA with a server certificate and client certificates whose
// subjects the test chooses (including ones without a CN or with two).
type secPKI struct {
	dir, caFile, certFile, keyFile string
	pool                           *x509.CertPool
	clients                        map[string]tls.Certificate
}

func newSecPKI(t *testing.T, subjects map[string]pkix.Name) *secPKI {
	t.Helper()
	now := time.Now()
	p := &secPKI{dir: t.TempDir(), pool: x509.NewCertPool(), clients: map[string]tls.Certificate{}}
	ca, caKey := newCA(t, "review CA", now)
	p.pool.AddCert(ca)
	p.caFile = writePEM(t, p.dir, "ca.pem", "CERTIFICATE", ca.Raw)
	der, key := signCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "cp"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	p.certFile = writePEM(t, p.dir, "server.pem", "CERTIFICATE", der)
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p.keyFile = writePEM(t, p.dir, "server-key.pem", "PRIVATE KEY", kd)
	for name, subject := range subjects {
		der, key := signCert(t, &x509.Certificate{Subject: subject, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
		kd, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(pemOf("CERTIFICATE", der), pemOf("PRIVATE KEY", kd))
		if err != nil {
			t.Fatal(err)
		}
		p.clients[name] = pair
	}
	return p
}

func (p *secPKI) client(name string) *http.Client {
	c := p.clients[name]
	cfg := &tls.Config{RootCAs: p.pool, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (p *secPKI) serverArgs() []string {
	return []string{"--tls-cert", p.certFile, "--tls-key", p.keyFile, "--client-ca", p.caFile}
}

var oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}

// secSubjects are the client certificates of the mTLS rows.
var secSubjects = map[string]pkix.Name{
	"web-01":   {CommonName: "web-01"},
	"web-02":   {CommonName: "web-02"},
	"operator": {CommonName: "operator"},
	"two-cns":  {ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: "web-01"}, {Type: oidCN, Value: "operator"}}},
	"no-cn":    {Organization: []string{"fleet"}},
}

// Row 3: a client certificate with two CNs (or none) has no identity. It
// used to pass the bootstrap guard, because its "CN" was "" and "" is no
// registered machine; and it must never pass an agent route's CN check.
func TestReviewCertificateWithoutSingleCN(t *testing.T) {
	pki := newSecPKI(t, secSubjects)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("0123456789abcdef0123"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := startRun(t, nil, append(pki.serverArgs(), "--bootstrap-token-file", token)...)
	expect(t, do(t, pki.client("web-01"), "POST", rs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", "", true, "up-to-date")), 200, "")

	bootstrap := func(cert string) response {
		req, err := http.NewRequest("POST", rs.url+"/api/v1/keys/bootstrap", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Bootstrap-Token", "0123456789abcdef0123")
		return send(t, pki.client(cert), req)
	}
	for _, cert := range []string{"two-cns", "no-cn"} {
		expect(t, bootstrap(cert), 403, "client certificate has no single CN: it cannot bootstrap")
		for _, id := range []string{"web-01", "operator"} {
			expect(t, do(t, pki.client(cert), "GET", rs.url+"/api/v1/machines/"+id+"/desired-generation", "", nil), 403,
				"client certificate CN does not match machine id")
		}
	}
	expect(t, bootstrap("web-01"), 403, "machine certificates cannot bootstrap")
	expect(t, bootstrap("operator"), 200, "")
}

// Row 4: in mTLS mode without a token file, any certificate the fleet CA
// signed (every agent's) could mint the first admin key. Now bootstrap needs
// a CN listed in --bootstrap-cn, and with neither flag it is closed; the
// startup log says which.
func TestReviewMTLSBootstrapNeedsAllowedCN(t *testing.T) {
	pki := newSecPKI(t, secSubjects)
	t.Run("neither flag: closed", func(t *testing.T) {
		rs := startRun(t, nil, pki.serverArgs()...)
		for _, cert := range []string{"operator", "web-02"} {
			expect(t, do(t, pki.client(cert), "POST", rs.url+"/api/v1/keys/bootstrap", "", nil), 403, bootstrapClosed)
		}
		if !strings.Contains(rs.logs.String(), "no API keys exist and "+bootstrapClosed) {
			t.Fatalf("the startup log does not say bootstrap is closed:\n%s", rs.logs)
		}
	})
	t.Run("--bootstrap-cn operator", func(t *testing.T) {
		rs := startRun(t, nil, append(pki.serverArgs(), "--bootstrap-cn", "operator")...)
		if !strings.Contains(rs.logs.String(), "accepts client certificates whose CN is in --bootstrap-cn") {
			t.Fatalf("the startup log does not name the guard:\n%s", rs.logs)
		}
		expect(t, do(t, pki.client("web-02"), "POST", rs.url+"/api/v1/keys/bootstrap", "", nil), 403,
			"client certificate CN web-02 is not in --bootstrap-cn")
		expect(t, do(t, pki.client("operator"), "POST", rs.url+"/api/v1/keys/bootstrap", "", nil), 200, "")
	})
	t.Run("--bootstrap-cn without mTLS is a usage error", func(t *testing.T) {
		err := run(t.Context(), []string{"serve", "--bootstrap-cn", "operator", "--db-path", filepath.Join(t.TempDir(), "s.db")},
			func(string) string { return "" }, nil, &syncBuffer{})
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(ue.msg, "--bootstrap-cn requires --client-ca") {
			t.Fatalf("run = %v, want a usage error naming --bootstrap-cn", err)
		}
	})
}

// Row 5: revoking the last admin key that never expires is refused even
// when admin keys that will expire exist: otherwise the fleet can end with
// no usable admin by waiting.
func TestReviewLastNonExpiringAdmin(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	r := do(t, c, "POST", ts.url+"/api/v1/keys", admin, map[string]any{"name": "temp-admin", "role": "admin",
		"expires_at": ts.clock.now().Add(time.Hour).Format(time.RFC3339)})
	expect(t, r, 201, "")
	var temp keyCreated
	r.json(t, &temp)
	expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/1", admin, nil), 409, "cannot revoke the last non-expiring admin key")
	expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/"+strconv.FormatInt(temp.ID, 10), admin, nil), 204, "")
	createTestKey(t, c, ts.url, admin, "second-admin", "admin")
	expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/1", admin, nil), 204, "")
}

// Row 7: an agent cannot grow the append-only audit log without bound. 1,000
// reports alternating between two generations used to write 1,001 rows; now
// at most 10 report rows per machine in any 60 s, and the next row says how
// many changes it stands for. The bound survives a restart.
func TestReviewAuditFloodBound(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	a, b := storePath('a', "web-01"), storePath('b', "web-01")
	for i := range 1000 {
		gen := a
		if i%2 == 1 {
			gen = b
		}
		body := reportBody("web-01", gen, true, "up-to-date")
		body["tags"] = []string{fmt.Sprintf("t%d", i%2)}
		expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/report", "", body), 200, "")
	}
	rows := auditRows(t, c, ts.url, admin, "?target=web-01&limit=1000")
	count := map[string]int{}
	for _, ev := range rows {
		count[ev.Action]++
	}
	if count["report"] != 10 || count["tags.update"] != 10 {
		t.Fatalf("audit rows for 1,000 reports within one minute: %v, want 10 report and 10 tags.update", count)
	}
	if got := metricValue(t, c, ts.url, `nixfleet_audit_suppressed_total{action="report"}`); got != 990 {
		t.Fatalf("suppressed report rows %v, want 990", got)
	}

	// A restart inside the same minute keeps the bound (the window is
	// rebuilt from the rows), and the count of a suppressed change is kept
	// by the row that follows the window.
	ts.ts.Close()
	if err := ts.app.close(); err != nil {
		t.Fatal(err)
	}
	ts2 := newTestServer(t, testServerOptions{dbPath: dbPath})
	expect(t, do(t, c, "POST", ts2.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", a, false, "x")), 200, "")
	if n := len(auditRows(t, c, ts2.url, admin, "?target=web-01&action=report&limit=1000")); n != 10 {
		t.Fatalf("%d report rows after a restart within the window, want 10", n)
	}
	ts2.clock.advance(61 * time.Second)
	expect(t, do(t, c, "POST", ts2.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", b, true, "x")), 200, "")
	latest := auditRows(t, c, ts2.url, admin, "?target=web-01&action=report&limit=1")[0]
	if latest.Detail == nil || !strings.HasSuffix(*latest.Detail, " (+1 changes not audited individually)") {
		t.Fatalf("row after the window: %v, want the suffix for the one suppressed change", latest.Detail)
	}
}

// Row 8: a second control plane on the same database file refuses to start
// (each process trusts its own in-memory state), and changes nothing.
func TestReviewSecondProcessRefused(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	first := startRun(t, nil, "--db-path", dbPath)
	logs := &syncBuffer{}
	err := run(t.Context(), []string{"serve", "--db-path", dbPath, "--listen", "127.0.0.1:0"}, func(string) string { return "" }, nil, logs)
	if err == nil || err.Error() != "database "+dbPath+" is in use by another control plane process" {
		t.Fatalf("second process: %v, want the in-use error", err)
	}
	if strings.Contains(logs.String(), "database ready") {
		t.Fatalf("the second process opened the database:\n%s", logs)
	}
	expect(t, do(t, &http.Client{Timeout: 5 * time.Second}, "GET", first.url+"/health", "", nil), 200, "")
}

// Row 9: a port in use (or an address that cannot be bound) fails before
// anything is created: no database file, no directory.
func TestReviewBindBeforeDatabase(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, listen := range []string{busy.Addr().String(), "192.0.2.1:8080"} {
		dir := filepath.Join(t.TempDir(), "state")
		err := run(t.Context(), []string{"serve", "--listen", listen, "--db-path", filepath.Join(dir, "state.db")},
			func(string) string { return "" }, nil, &syncBuffer{})
		var ue *usageError
		if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "listen on "+listen) {
			t.Fatalf("--listen %s: %v, want a bind error (exit 1)", listen, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("--listen %s: %s exists after a failed bind (%v)", listen, dir, err)
		}
	}
}

// Row 10: a client that gives up while its request waits is not a server
// error: it is counted as 499 and not logged as "internal error". Here the
// request waits for the database write lock, which another process holds.
func TestReviewClientGoneIsNotInternalError(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	other, err := sql.Open("sqlite", "file:"+ts.st.path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lock, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /api/v1/machines/web-09/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\n\r\n", admin)
	conn.Close() // the client gives up
	series := `nixfleet_http_requests_total{method="POST",path="/api/v1/machines/{id}/register",status="499"}`
	waitFor(t, 10*time.Second, "the abandoned request to be counted as 499", func() bool { return metricValue(t, c, ts.url, series) == 1 })
	if _, err := lock.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ts.logs.String(), `msg="internal error"`) {
		t.Fatalf("an abandoned request was logged as an internal error:\n%s", ts.logs)
	}
	if len(listMachinesT(t, c, ts.url, admin, "")) != 0 {
		t.Fatal("the abandoned register was committed")
	}
}

// Row 11: every enum-valued query parameter refuses an unknown value with a
// 400 naming it, so that a typo never looks like an empty fleet (§4.19).
func TestReviewEnumQueryValues(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	for _, tc := range []struct{ target, msg string }{
		{"/api/v1/rollouts?status=bogus", "status: must be one of created, running, paused, completed, failed, cancelled"},
		{"/api/v1/rollouts?status=Running", "status: must be one of created, running, paused, completed, failed, cancelled"},
		{"/api/v1/machines?lifecycle=bogus", "invalid lifecycle state: bogus"},
		{"/api/v1/audit?action=bogus", "action: not an audit action: bogus"},
		{"/api/v1/audit/export?action=rollout.create", "action: not an audit action: rollout.create"},
	} {
		expect(t, do(t, c, "GET", ts.url+tc.target, admin, nil), 400, tc.msg)
	}
	expect(t, do(t, c, "GET", ts.url+"/api/v1/audit?action=bootstrap", admin, nil), 200, "")
}

// Row 12: JSON bodies do not escape <, > and &: the v0.1 CLI prints error
// messages and audit details as they are.
func TestReviewNoHTMLEscaping(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/register", admin, nil), 201, "")
	r := do(t, c, "PATCH", ts.url+"/api/v1/machines/web-01/lifecycle", admin, `{"lifecycle":"pending"}`)
	expect(t, r, 409, "invalid transition: active -> pending")
	if !strings.Contains(string(r.body), "active -> pending") {
		t.Fatalf("body %s escapes HTML characters", r.body)
	}
	expect(t, do(t, c, "PATCH", ts.url+"/api/v1/machines/web-01/lifecycle", admin, `{"lifecycle":"maintenance"}`), 200, "")
	r = do(t, c, "GET", ts.url+"/api/v1/audit?action=update_lifecycle", admin, nil)
	if !strings.Contains(string(r.body), `"detail":"active -> maintenance"`) {
		t.Fatalf("audit body %s escapes HTML characters", r.body)
	}
}

// Row 13: --max-connections caps the connections served at once. At the cap
// a new connection is admitted by closing the connection idle the longest;
// when none is idle (every connection is in a request), it waits until one
// closes.
func TestReviewMaxConnections(t *testing.T) {
	rs := startRun(t, nil, "--max-connections", "3")
	var conns []net.Conn
	for range 3 {
		conn, err := net.Dial("tcp", rs.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Make sure the server has accepted it: one request, answered.
		fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.Contains(line, "200") {
			t.Fatalf("idle connection: %q %v", line, err)
		}
		conns = append(conns, conn)
	}
	// Three idle keep-alive connections: a fourth client is served, and the
	// oldest idle connection is closed to make room.
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	expect(t, do(t, fresh, "GET", rs.url+"/health", "", nil), 200, "")
	conns[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conns[0].Read(make([]byte, 1)); err == nil {
		t.Fatalf("the oldest idle connection is still open (read %d bytes)", n)
	}
	// Now make every connection busy: each in a request whose body has not
	// arrived yet. A further client waits.
	busy := "POST /api/v1/machines/web-01/report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
	for _, c := range conns[1:] {
		fmt.Fprint(c, busy)
	}
	third, err := net.Dial("tcp", rs.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	fmt.Fprint(third, busy)
	time.Sleep(time.Second) // let the server read the headers (not a timing assertion)
	slow := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if _, err := slow.Get(rs.url + "/health"); err == nil {
		t.Fatal("a connection was served beyond --max-connections 3 while all were busy")
	}
	third.Close()
	expect(t, do(t, fresh, "GET", rs.url+"/health", "", nil), 200, "")
}

// Row 2: exports whose clients stop reading hold no database connection,
// and API-key lookups have a pool of their own: with 12 stalled exports of
// 60,000 rows, other requests are still answered at once.
func TestReviewStalledExportsDoNotBlockReads(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	readonly := createTestKey(t, c, ts.url, admin, "viewer", "readonly")
	err := ts.st.write(context.Background(), func(tx *txn) error {
		_, err := tx.exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
			INSERT INTO audit_event (timestamp, actor, action, target, detail)
			SELECT ?, 'apikey:seed', 'register', 'm-' || i, 'a detail long enough to fill the socket buffers quickly' FROM n`, tx.now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(ts.url, "http://")
	for range 12 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /api/v1/audit/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", readonly)
		// Read the status line, so the export is known to stream; then stop reading.
		if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || !strings.Contains(line, "200") {
			t.Fatalf("export: %q %v", line, err)
		}
	}
	quick := &http.Client{Timeout: 10 * time.Second}
	for _, target := range []string{"/api/v1/machines", "/api/v1/audit?limit=1", "/api/v1/rollouts", "/api/v1/keys"} {
		expect(t, do(t, quick, "GET", ts.url+target, admin, nil), 200, "")
	}
}

// Row 6: listing releases streams them one at a time, so a fresh server's
// memory does not grow with the body: 20 releases of 25,000 hosts (a body of
// about 60 MB) stay well under 300 MiB of peak RSS (§4.14).
func TestReviewReleaseListMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and writes 500,000 release entries")
	}
	dbPath := filepath.Join(t.TempDir(), "state.db")
	bs := startBinary(t, "--db-path", dbPath)
	c := &http.Client{Timeout: 2 * time.Minute}
	admin := bootstrapKey(t, c, bs.url)
	var entries strings.Builder
	entries.WriteString(`{"entries":[`)
	for i := range 25_000 {
		if i > 0 {
			entries.WriteByte(',')
		}
		fmt.Fprintf(&entries, `{"hostname":"host-%05d","store_path":"%s","platform":"x86_64-linux","tags":["web","eu-west"]}`,
			i, storePath('a', fmt.Sprintf("nixos-system-host-%05d-25.05", i)))
	}
	entries.WriteString(`]}`)
	for range 20 {
		expect(t, do(t, c, "POST", bs.url+"/api/v1/releases", admin, entries.String()), 201, "")
	}
	bs.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-bs.done; err != nil {
		t.Fatalf("server exit: %v", err)
	}
	bs.done <- nil
	bs = startBinary(t, "--db-path", dbPath) // a fresh process: its peak RSS is the listing's
	req, err := http.NewRequest("GET", bs.url+"/api/v1/releases?limit=500", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := countBytes(resp)
	if err != nil || resp.StatusCode != 200 || n < 50<<20 {
		t.Fatalf("listing: status %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	peak := procStatusKiB(t, bs.cmd.Process.Pid, "VmHWM")
	t.Logf("listing 20 releases of 25,000 hosts: %d MB body, peak RSS %d MiB", n>>20, peak>>10)
	if peak > 300<<10 {
		t.Fatalf("peak RSS %d MiB while listing, want well under 300 MiB", peak>>10)
	}
}

func countBytes(resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	return io.Copy(io.Discard, resp.Body)
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

var procStatusRE = regexp.MustCompile(`(?m)^(\w+):\s+(\d+) kB$`)

// procStatusKiB reads one kB field (VmHWM, VmRSS) of /proc/<pid>/status.
func procStatusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range procStatusRE.FindAllStringSubmatch(string(b), -1) {
		if m[1] == field {
			v, err := strconv.ParseInt(m[2], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
