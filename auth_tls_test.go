package main

// Transport tests (auth.go, SPEC §2.1, §2.2, §1.4 step 3): the three modes,
// the TLS versions and ALPN offered, the startup errors for bad TLS material,
// and the mTLS matrix of refusals (failed handshake versus 401/403).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsTestConfig returns a client TLS configuration that trusts the test CA
// and presents the named client certificate ("" for none).
func tlsTestConfig(p *testPKI, cert string) *tls.Config {
	cfg := &tls.Config{RootCAs: p.caPool}
	if cert != "" {
		tlsPresentCert(cfg, p.clients[cert])
	}
	return cfg
}

// tlsPresentCert makes cfg send c whatever the server asks for. With
// Certificates alone, Go's client silently sends no certificate when the
// issuer is not among the server's acceptable CAs, so a rogue-CA test would
// only test "no certificate".
func tlsPresentCert(cfg *tls.Config, c tls.Certificate) {
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
}

// tlsTestClient returns an HTTP client with its own transport over cfg; keep-alive
// is off so that every request makes its own handshake.
func tlsTestClient(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: cfg, DisableKeepAlives: true,
	}}
}

// rawTLSExchange dials addr with cfg, sends one raw HTTP/1.1 request and
// returns whatever the server sent back before closing. A refused handshake
// yields an error and no bytes.
func rawTLSExchange(t *testing.T, addr string, cfg *tls.Config, method, path string) ([]byte, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err // TLS 1.2: the server refuses inside the handshake
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := method + " " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n"
	if method == "POST" {
		req += "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
	} else {
		req += "\r\n"
	}
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, err
	}
	// TLS 1.3: the client finishes its half of the handshake first, and the
	// server's refusal arrives as an alert on the first read.
	var buf bytes.Buffer
	_, err = io.Copy(&buf, conn)
	return buf.Bytes(), err
}

// expectHandshakeRefused fails unless the exchange was refused at the TLS
// layer: an error and not one byte of HTTP. wantAlert is the text of the TLS
// alert the server must send (Go's wording, e.g. "unknown certificate
// authority"), so that the refusal is known to have the right cause.
func expectHandshakeRefused(t *testing.T, addr string, cfg *tls.Config, method, path, wantAlert string) {
	t.Helper()
	reply, err := rawTLSExchange(t, addr, cfg, method, path)
	if err == nil || len(reply) > 0 {
		t.Fatalf("%s %s: want a failed handshake and no HTTP response, got err=%v reply=%q", method, path, err, reply)
	}
	if !strings.Contains(err.Error(), "tls: "+wantAlert) {
		t.Fatalf("%s %s: handshake error %q, want the alert %q", method, path, err, wantAlert)
	}
}

// tlsTestAddr strips the scheme from a server URL.
func tlsTestAddr(url string) string {
	return strings.TrimPrefix(strings.TrimPrefix(url, "https://"), "http://")
}

// TestTransportModes covers §2.1: what each mode logs, whether a client
// certificate is requested, and that agent routes are open without mTLS.
func TestTransportModes(t *testing.T) {
	pki := newTestPKI(t)
	for _, tc := range []struct {
		mode        string
		args        []string
		warning     string // required startup warning, "" for none
		wantRequest bool   // whether the server asks for a client certificate
	}{
		{"plain", nil, "running without TLS: traffic is unencrypted and agent endpoints are unauthenticated", false},
		{"tls", []string{"--tls-cert", pki.serverCert, "--tls-key", pki.serverKey},
			"no client CA configured: agent endpoints are not authenticated", false},
		{"mtls", []string{"--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", pki.caFile}, "", true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			rs := startRun(t, nil, tc.args...)
			logs := rs.logs.String()
			if !strings.Contains(logs, `msg="Control plane listening" addr=`+rs.addr+" mode="+tc.mode) {
				t.Errorf("listening line with mode=%s missing:\n%s", tc.mode, logs)
			}
			for _, w := range []string{
				"running without TLS: traffic is unencrypted and agent endpoints are unauthenticated",
				"no client CA configured: agent endpoints are not authenticated",
			} {
				if got := strings.Contains(logs, w); got != (w == tc.warning) {
					t.Errorf("log contains %q: %v, want %v\n%s", w, got, w == tc.warning, logs)
				}
			}

			// The empty key table is announced, with the hardening hint; in
			// mTLS mode without --bootstrap-token-file or --bootstrap-cn,
			// bootstrap is closed and the log says so (§3.3).
			noKeys := `msg="no API keys exist: POST /api/v1/keys/bootstrap is open"`
			if tc.mode == "mtls" {
				noKeys = `msg="no API keys exist and bootstrap is closed: set --bootstrap-token-file or --bootstrap-cn, or create a key offline with keys create"`
			}
			if !strings.Contains(logs, noKeys) || !strings.Contains(logs, "bootstrap-token-file") {
				t.Errorf("no-keys warning with the --bootstrap-token-file hint missing:\n%s", logs)
			}

			requested := false
			var c *http.Client
			if tc.mode == "plain" {
				c = &http.Client{Timeout: 30 * time.Second}
			} else {
				cfg := tlsTestConfig(pki, "")
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					requested = true
					cert := pki.clients["web-01"]
					return &cert, nil
				}
				c = tlsTestClient(cfg)
			}
			r := do(t, c, "GET", rs.url+"/health", "", nil)
			if r.status != 200 || string(r.body) != "ok" {
				t.Fatalf("/health: %d %q", r.status, r.body)
			}
			if requested != tc.wantRequest {
				t.Errorf("client certificate requested: %v, want %v", requested, tc.wantRequest)
			}
			if tc.mode == "mtls" {
				return
			}
			// §3.5: without a verified certificate the agent routes are open
			// to anyone, for any machine id (ACC-34 in plain mode).
			expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-02/report", "",
				reportBody("web-02", storePath('a', "sys"), true, "up-to-date")), 200, "")
			expect(t, do(t, c, "GET", rs.url+"/api/v1/machines/web-02/desired-generation", "", nil), 404, "no desired generation")
		})
	}
}

// TestTLSVersionsAndALPNACC9 covers ACC-9 against the production listener
// (run in mTLS mode): TLS 1.1 is refused, TLS 1.2 and 1.3 work, and an ALPN
// offer of h2,http/1.1 negotiates http/1.1 (§2.2).
func TestTLSVersionsAndALPNACC9(t *testing.T) {
	pki := newTestPKI(t)
	rs := startRun(t, nil, "--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", pki.caFile)
	addr := tlsTestAddr(rs.url)

	t.Run("TLS 1.1 only client fails the handshake", func(t *testing.T) {
		cfg := tlsTestConfig(pki, "operator")
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		expectHandshakeRefused(t, addr, cfg, "GET", "/health", "protocol version not supported")
		if _, err := tlsTestClient(cfg).Get(rs.url + "/health"); err == nil {
			t.Fatal("HTTP client with TLS 1.1 got a response")
		}
	})
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(v.name+" succeeds", func(t *testing.T) {
			cfg := tlsTestConfig(pki, "operator")
			cfg.MinVersion, cfg.MaxVersion = v.version, v.version
			resp, err := tlsTestClient(cfg).Get(rs.url + "/health")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(body) != "ok" {
				t.Fatalf("/health: %d %q", resp.StatusCode, body)
			}
			if resp.TLS == nil || resp.TLS.Version != v.version {
				t.Fatalf("negotiated %+v, want version %x", resp.TLS, v.version)
			}
		})
	}
	t.Run("ALPN h2,http/1.1 negotiates http/1.1", func(t *testing.T) {
		cfg := tlsTestConfig(pki, "operator")
		cfg.NextProtos = []string{"h2", "http/1.1"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		state := conn.ConnectionState()
		conn.Close()
		if state.NegotiatedProtocol != "http/1.1" {
			t.Fatalf("negotiated protocol %q, want http/1.1", state.NegotiatedProtocol)
		}
		// The same through an HTTP client that would use HTTP/2 if offered.
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: tlsTestConfig(pki, "operator"), ForceAttemptHTTP2: true,
		}}
		resp, err := c.Get(rs.url + "/health")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Proto != "HTTP/1.1" || resp.TLS.NegotiatedProtocol != "http/1.1" {
			t.Fatalf("proto %s, ALPN %q; want HTTP/1.1 and http/1.1", resp.Proto, resp.TLS.NegotiatedProtocol)
		}
	})
}

// tlsBadFiles writes the broken TLS inputs of §1.4 step 3 next to the PKI.
type tlsBadFiles struct {
	missing, garbage, badDER, keyBadDER, certOnly, dir string
}

func tlsWriteBadFiles(t *testing.T, p *testPKI) tlsBadFiles {
	t.Helper()
	dir := t.TempDir()
	b := tlsBadFiles{missing: filepath.Join(dir, "does-not-exist.pem"), dir: filepath.Join(dir, "a-directory")}
	if err := os.Mkdir(b.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b.garbage = filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(b.garbage, []byte("this is not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.badDER = writePEM(t, dir, "bad-der.pem", "CERTIFICATE", []byte("not DER at all"))
	b.keyBadDER = writePEM(t, dir, "bad-key.pem", "PRIVATE KEY", []byte("not DER at all"))
	// A key file holding only a certificate has no private key in it.
	certPEM, err := os.ReadFile(p.serverCert)
	if err != nil {
		t.Fatal(err)
	}
	b.certOnly = filepath.Join(dir, "cert-as-key.pem")
	if err := os.WriteFile(b.certOnly, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTLSMaterialErrors covers §1.4 step 3 and the exit-1 part of ACC-2: an
// unreadable or invalid certificate, key or CA file, or a key that does not
// match the certificate, is an error that names the file, from loadTLSConfig
// and from run, where it is not a usage error (exit 1, not 2), and the
// database is never opened.
func TestTLSMaterialErrors(t *testing.T) {
	p := newTestPKI(t)
	b := tlsWriteBadFiles(t, p)
	webKey := p.clientFile["web-01"][1]
	cases := []struct {
		name           string
		cert, key, ca  string
		wantFile       string // the path the message must name
		wantAlso       string // a second path it must name, if any
		wantSubstrings []string
	}{
		{name: "missing certificate", cert: b.missing, key: p.serverKey, wantFile: b.missing},
		{name: "certificate is a directory", cert: b.dir, key: p.serverKey, wantFile: b.dir},
		{name: "certificate not PEM", cert: b.garbage, key: p.serverKey, wantFile: b.garbage},
		{name: "certificate with bad DER", cert: b.badDER, key: p.serverKey, wantFile: b.badDER},
		{name: "missing key", cert: p.serverCert, key: b.missing, wantFile: b.missing},
		{name: "key not PEM", cert: p.serverCert, key: b.garbage, wantFile: b.garbage},
		{name: "key with bad DER", cert: p.serverCert, key: b.keyBadDER, wantFile: b.keyBadDER},
		{name: "key file without a key", cert: p.serverCert, key: b.certOnly, wantFile: b.certOnly},
		{name: "key does not match certificate", cert: p.serverCert, key: webKey, wantFile: webKey, wantAlso: p.serverCert},
		{name: "missing client CA", cert: p.serverCert, key: p.serverKey, ca: b.missing, wantFile: b.missing},
		{name: "client CA not PEM", cert: p.serverCert, key: p.serverKey, ca: b.garbage, wantFile: b.garbage},
		{name: "client CA with bad DER", cert: p.serverCert, key: p.serverKey, ca: b.badDER, wantFile: b.badDER},
		// §2.2: a CA file with no certificate is a startup error.
		{name: "client CA without a certificate", cert: p.serverCert, key: p.serverKey, ca: p.serverKey, wantFile: p.serverKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadTLSConfig(tc.cert, tc.key, tc.ca)
			if err == nil || cfg != nil {
				t.Fatalf("loadTLSConfig: got %v, %v; want an error", cfg, err)
			}
			if !strings.Contains(err.Error(), tc.wantFile) || !strings.Contains(err.Error(), tc.wantAlso) {
				t.Errorf("loadTLSConfig error %q does not name %s %s", err, tc.wantFile, tc.wantAlso)
			}

			db := filepath.Join(t.TempDir(), "state.db")
			args := []string{"serve", "--tls-cert", tc.cert, "--tls-key", tc.key, "--db-path", db, "--listen", "127.0.0.1:0"}
			if tc.ca != "" {
				args = append(args, "--client-ca", tc.ca)
			}
			var stderr syncBuffer
			err = run(context.Background(), args, func(string) string { return "" }, io.Discard, &stderr)
			if err == nil {
				t.Fatalf("run succeeded; logs:\n%s", stderr.String())
			}
			var ue *usageError
			if errors.As(err, &ue) {
				t.Fatalf("run: %v is a usage error (exit 2); bad TLS material must exit 1", err)
			}
			if !strings.Contains(err.Error(), tc.wantFile) {
				t.Errorf("run error %q does not name %s", err, tc.wantFile)
			}
			if strings.Contains(stderr.String(), "Control plane listening") {
				t.Errorf("server started listening:\n%s", stderr.String())
			}
			// Step 3 comes before step 4: the database is not even created.
			if _, err := os.Stat(db); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("database file exists after a TLS error (stat: %v)", err)
			}
		})
	}
}

// TestTLSMaterialErrorExitCode checks the real exit status of the binary for
// bad TLS material: 1, with the file named on stderr (ACC-2).
func TestTLSMaterialErrorExitCode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	p := newTestPKI(t)
	missing := filepath.Join(t.TempDir(), "missing-cert.pem")
	webKey := p.clientFile["web-01"][1]
	for _, tc := range []struct {
		name      string
		cert, key string
		wantFile  string
	}{
		{"missing certificate", missing, p.serverKey, missing},
		{"key does not match", p.serverCert, webKey, webKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(buildBinary(t), "--tls-cert", tc.cert, "--tls-key", tc.key,
				"--db-path", filepath.Join(t.TempDir(), "state.db"), "--listen", "127.0.0.1:0")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1; stderr:\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantFile) {
				t.Errorf("stderr does not name %s:\n%s", tc.wantFile, stderr.String())
			}
		})
	}
}

// TestLoadTLSConfigAccepts covers the accepted inputs of §2.2: a chain in the
// certificate file (leaf first), the first private key of the key file in
// PKCS#8, SEC1 or PKCS#1 form, and the fixed protocol settings.
func TestLoadTLSConfigAccepts(t *testing.T) {
	p := newTestPKI(t)
	dir := t.TempDir()
	now := time.Now()

	serverPEM, err := os.ReadFile(p.serverCert)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.caFile)
	if err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(dir, "chain.pem")
	if err := os.WriteFile(chain, append(append([]byte{}, serverPEM...), caPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	pkcs8PEM, err := os.ReadFile(p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pkcs8PEM)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sec1DER, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := writePEM(t, dir, "sec1.pem", "EC PRIVATE KEY", sec1DER)
	// A certificate before the key: the first PEM private key is used.
	mixed := filepath.Join(dir, "mixed.pem")
	if err := os.WriteFile(mixed, append(append([]byte{}, serverPEM...), pkcs8PEM...), 0o600); err != nil {
		t.Fatal(err)
	}

	// PKCS#1 needs an RSA key: a self-signed RSA server certificate.
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaTmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: "rsa"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	rsaDER, err := x509.CreateCertificate(rand.Reader, rsaTmpl, rsaTmpl, &rsaKey.PublicKey, rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaCert := writePEM(t, dir, "rsa.pem", "CERTIFICATE", rsaDER)
	rsaPKCS1 := writePEM(t, dir, "rsa-key.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))

	for _, tc := range []struct {
		name, cert, key, ca string
		chainLen            int
	}{
		{"PKCS#8 key", p.serverCert, p.serverKey, "", 1},
		{"chain of two certificates", chain, p.serverKey, "", 2},
		{"SEC1 key", p.serverCert, sec1, "", 1},
		{"certificate before the key", p.serverCert, mixed, "", 1},
		{"PKCS#1 key", rsaCert, rsaPKCS1, "", 1},
		{"client CA", p.serverCert, p.serverKey, p.caFile, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadTLSConfig(tc.cert, tc.key, tc.ca)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Certificates) != 1 || len(cfg.Certificates[0].Certificate) != tc.chainLen {
				t.Fatalf("certificates %d, chain %d; want 1 and %d", len(cfg.Certificates), len(cfg.Certificates[0].Certificate), tc.chainLen)
			}
			if cfg.MinVersion != tls.VersionTLS12 {
				t.Errorf("MinVersion %x, want TLS 1.2", cfg.MinVersion)
			}
			if cfg.MaxVersion != 0 && cfg.MaxVersion < tls.VersionTLS13 {
				t.Errorf("MaxVersion %x disables TLS 1.3", cfg.MaxVersion)
			}
			if len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "http/1.1" {
				t.Errorf("NextProtos %q, want [http/1.1]", cfg.NextProtos)
			}
			if cfg.SessionTicketsDisabled {
				t.Error("session tickets are disabled")
			}
			wantAuth := tls.NoClientCert
			if tc.ca != "" {
				wantAuth = tls.RequireAndVerifyClientCert
			}
			if cfg.ClientAuth != wantAuth {
				t.Errorf("ClientAuth %v, want %v", cfg.ClientAuth, wantAuth)
			}
		})
	}
}

// tlsExtraCA is a second client CA made by the test, with its key, so that the
// test can issue certificates the helpers do not provide.
type tlsExtraCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// issue returns a client certificate from the extra CA with the given subject
// and extended key usages (nil: no EKU extension at all).
func (ca tlsExtraCA) issue(t *testing.T, subject pkix.Name, eku []x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject: subject, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku,
	}
	der, key := signCert(t, tmpl, ca.cert, ca.key)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestMTLSMatrix covers ACC-8, the mTLS part of ACC-9, ACC-32 and the
// refusal half of ACC-33: every way a caller can be refused in mTLS mode,
// and whether the refusal is a failed handshake (no HTTP at all) or a 401/403
// with its exact message. It runs against the production listener, with a
// client CA bundle of two CAs (§2.2: every certificate is a trusted root).
func TestMTLSMatrix(t *testing.T) {
	pki := newTestPKI(t)
	second, secondKey := newCA(t, "second test CA", time.Now())
	ca2 := tlsExtraCA{second, secondKey}
	bundlePEM, err := os.ReadFile(pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: second.Raw})...)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, bundlePEM, 0o600); err != nil {
		t.Fatal(err)
	}
	rs := startRun(t, nil, "--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", bundle, "--bootstrap-cn", "operator")
	addr := tlsTestAddr(rs.url)
	clientAuth := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	custom := map[string]tls.Certificate{
		"second-CA web-01": ca2.issue(t, pkix.Name{CommonName: "web-01"}, clientAuth),
		"no EKU web-01":    ca2.issue(t, pkix.Name{CommonName: "web-01"}, nil),
		"serverAuth EKU":   ca2.issue(t, pkix.Name{CommonName: "web-01"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		"no CN":            ca2.issue(t, pkix.Name{Organization: []string{"web-01"}}, clientAuth),
		"two CNs": ca2.issue(t, pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidCN, Value: "web-01"}, {Type: oidCN, Value: "web-01"}}}, clientAuth),
	}
	clientCfg := func(cert string, maxVersion uint16) *tls.Config {
		cfg := tlsTestConfig(pki, "")
		if c, ok := custom[cert]; ok {
			tlsPresentCert(cfg, c)
		} else if cert != "" {
			tlsPresentCert(cfg, pki.clients[cert])
		}
		if maxVersion != 0 {
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, maxVersion
		}
		return cfg
	}

	// The admin key comes from bootstrap with the operator certificate.
	op := tlsTestClient(clientCfg("operator", 0))
	admin := bootstrapKey(t, op, rs.url)
	cnMismatch := `nixfleet_auth_failures_total{reason="cn_mismatch"}`
	rejectedBefore, cnBefore := metricValue(t, op, rs.url, reportsRejected), metricValue(t, op, rs.url, cnMismatch)

	// wantStatus handshake: the TLS handshake fails and no HTTP response is
	// sent; wantErr is then the TLS alert.
	const handshake = 0
	web02Report := reportBody("web-02", storePath('b', "sys"), true, "up-to-date")
	for _, tc := range []struct {
		name         string
		cert         string // pki client name or a key of custom; "" for none
		maxVersion   uint16 // 0: the client default (1.2–1.3)
		method, path string
		key          string
		body         any
		wantStatus   int
		wantErr      string
	}{
		// ACC-8: no certificate, another CA, an expired one, or TLS 1.1 (ACC-9):
		// refused at the handshake on every path, public ones included.
		{name: "no certificate /health", method: "GET", path: "/health", wantErr: "certificate required"},
		{name: "no certificate /metrics", method: "GET", path: "/metrics", wantErr: "certificate required"},
		{name: "no certificate bootstrap", method: "POST", path: "/api/v1/keys/bootstrap", wantErr: "certificate required"},
		{name: "no certificate with admin key", method: "GET", path: "/api/v1/machines", key: admin, wantErr: "certificate required"},
		{name: "rogue CA /health", cert: "rogue", method: "GET", path: "/health", wantErr: "unknown certificate authority"},
		{name: "rogue CA /metrics", cert: "rogue", method: "GET", path: "/metrics", wantErr: "unknown certificate authority"},
		{name: "rogue CA bootstrap", cert: "rogue", method: "POST", path: "/api/v1/keys/bootstrap", wantErr: "unknown certificate authority"},
		{name: "rogue CA own agent route", cert: "rogue", method: "GET", path: "/api/v1/machines/web-01/desired-generation", wantErr: "unknown certificate authority"},
		{name: "expired /health", cert: "expired", method: "GET", path: "/health", wantErr: "expired certificate"},
		{name: "expired /metrics", cert: "expired", method: "GET", path: "/metrics", wantErr: "expired certificate"},
		{name: "expired bootstrap", cert: "expired", method: "POST", path: "/api/v1/keys/bootstrap", wantErr: "expired certificate"},
		{name: "TLS 1.1 only /health", cert: "operator", maxVersion: tls.VersionTLS11, method: "GET", path: "/health", wantErr: "protocol version not supported"},
		{name: "TLS 1.1 only bootstrap", cert: "operator", maxVersion: tls.VersionTLS11, method: "POST", path: "/api/v1/keys/bootstrap", wantErr: "protocol version not supported"},
		{name: "no certificate over TLS 1.2", maxVersion: tls.VersionTLS12, method: "GET", path: "/health", wantErr: "handshake failure"},
		{name: "rogue CA over TLS 1.2", cert: "rogue", maxVersion: tls.VersionTLS12, method: "GET", path: "/health", wantErr: "unknown certificate authority"},
		{name: "expired over TLS 1.2", cert: "expired", maxVersion: tls.VersionTLS12, method: "GET", path: "/health", wantErr: "expired certificate"},
		// §2.2: a certificate whose EKU excludes client authentication.
		{name: "serverAuth-only EKU /health", cert: "serverAuth EKU", method: "GET", path: "/health", wantErr: "bad certificate"},

		// Accepted handshakes, for contrast.
		{name: "operator /health", cert: "operator", method: "GET", path: "/health", wantStatus: 200},
		{name: "operator /metrics", cert: "operator", method: "GET", path: "/metrics", wantStatus: 200},
		{name: "second CA of the bundle", cert: "second-CA web-01", method: "GET", path: "/api/v1/machines/web-01/desired-generation",
			wantStatus: 404, wantErr: "no desired generation"},
		{name: "no EKU extension is accepted", cert: "no EKU web-01", method: "GET", path: "/api/v1/machines/web-01/desired-generation",
			wantStatus: 404, wantErr: "no desired generation"},

		// ACC-32 and §3.5: a verified certificate whose single CN is not the
		// path id gets 403, on both agent routes.
		{name: "CN web-01 reads web-02 desired generation", cert: "web-01", method: "GET", path: "/api/v1/machines/web-02/desired-generation",
			wantStatus: 403, wantErr: "client certificate CN does not match machine id"},
		{name: "CN web-01 reports for web-02", cert: "web-01", method: "POST", path: "/api/v1/machines/web-02/report", body: web02Report,
			wantStatus: 403, wantErr: "client certificate CN does not match machine id"},
		{name: "CN web-01 with admin key on web-02 report", cert: "web-01", method: "POST", path: "/api/v1/machines/web-02/report", key: admin,
			body: web02Report, wantStatus: 403, wantErr: "client certificate CN does not match machine id"},
		{name: "CN operator on an agent route", cert: "operator", method: "GET", path: "/api/v1/machines/web-01/desired-generation",
			wantStatus: 403, wantErr: "client certificate CN does not match machine id"},
		{name: "certificate without CN", cert: "no CN", method: "GET", path: "/api/v1/machines/web-01/desired-generation",
			wantStatus: 403, wantErr: "client certificate CN does not match machine id"},
		{name: "certificate with two CNs", cert: "two CNs", method: "GET", path: "/api/v1/machines/web-01/desired-generation",
			wantStatus: 403, wantErr: "client certificate CN does not match machine id"},

		// ACC-33: admin routes need the certificate and a key; an agent
		// certificate alone is 401, never a pass.
		{name: "CN web-01 without key on GET machines", cert: "web-01", method: "GET", path: "/api/v1/machines",
			wantStatus: 401, wantErr: "missing API key"},
		{name: "CN web-01 without key on create key", cert: "web-01", method: "POST", path: "/api/v1/keys", body: map[string]any{"name": "x"},
			wantStatus: 401, wantErr: "missing API key"},
		{name: "CN web-01 without key on its own register", cert: "web-01", method: "POST", path: "/api/v1/machines/web-01/register",
			wantStatus: 401, wantErr: "missing API key"},
		{name: "CN operator with a bogus key", cert: "operator", method: "GET", path: "/api/v1/machines", key: "nfk-bogus",
			wantStatus: 401, wantErr: "invalid API key"},
		{name: "CN operator with admin key", cert: "operator", method: "GET", path: "/api/v1/machines", key: admin, wantStatus: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := clientCfg(tc.cert, tc.maxVersion)
			if tc.wantStatus == handshake {
				expectHandshakeRefused(t, addr, cfg, tc.method, tc.path, tc.wantErr)
				return
			}
			r := do(t, tlsTestClient(cfg), tc.method, rs.url+tc.path, tc.key, tc.body)
			expect(t, r, tc.wantStatus, tc.wantErr)
			if tc.wantStatus == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="nixfleet"` {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}

	// ACC-32: nothing was stored for web-02, and the refused reports count as
	// CN mismatches, not as rejected reports (§11).
	if ms := listMachinesT(t, op, rs.url, admin, ""); len(ms) != 0 {
		t.Errorf("machines after refused reports: %+v", ms)
	}
	if rows := auditRows(t, op, rs.url, admin, "?action=report"); len(rows) != 0 {
		t.Errorf("report audit rows: %+v", rows)
	}
	if got := metricValue(t, op, rs.url, reportsRejected); got != rejectedBefore {
		t.Errorf("%s = %v, want %v", reportsRejected, got, rejectedBefore)
	}
	if got := metricValue(t, op, rs.url, cnMismatch); got != cnBefore+6 {
		t.Errorf("%s = %v, want %v", cnMismatch, got, cnBefore+6)
	}
}
