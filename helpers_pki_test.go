package main

// The test PKI: a real ECDSA CA with server and client certificates written
// as PEM files, a rogue CA and an expired certificate, and HTTPS clients that
// present a chosen client certificate.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

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
