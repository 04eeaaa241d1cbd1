package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// pki is the benchmark's own certificate authority: an ECDSA P-256 CA, a
// server certificate for 127.0.0.1 (written to files for the child servers)
// and client certificates whose CN is a machine id, generated on first use
// and cached, because in mTLS mode the daemon requires the CN of the client
// certificate to equal the machine id in the path.
type pki struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	roots  *x509.CertPool

	// Files for the servers' --tls-cert, --tls-key and --client-ca, and the
	// CA key with which the idle scenario's client processes (loadPKI) issue
	// their own client certificates.
	serverCertFile, serverKeyFile, caFile, caKeyFile string

	mu      sync.Mutex
	clients map[string]*tls.Certificate
}

// newPKI creates the CA and the server certificate and writes the server's
// PEM files into dir.
func newPKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "loadbench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	p := &pki{caCert: caCert, caKey: caKey, roots: x509.NewCertPool(), clients: map[string]*tls.Certificate{}}
	p.roots.AddCert(caCert)

	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate server key: %w", err)
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "loadbench server"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}, caCert, &serverKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create server certificate: %w", err)
	}
	serverKeyDER, err := x509.MarshalPKCS8PrivateKey(serverKey)
	if err != nil {
		return nil, fmt.Errorf("encode server key: %w", err)
	}

	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	if err != nil {
		return nil, fmt.Errorf("encode CA key: %w", err)
	}
	p.caFile = filepath.Join(dir, "ca.pem")
	p.caKeyFile = filepath.Join(dir, "ca-key.pem")
	p.serverCertFile = filepath.Join(dir, "server.pem")
	p.serverKeyFile = filepath.Join(dir, "server-key.pem")
	files := []struct {
		path, typ string
		der       []byte
	}{
		{p.caFile, "CERTIFICATE", caDER},
		{p.serverCertFile, "CERTIFICATE", serverDER},
		{p.serverKeyFile, "PRIVATE KEY", serverKeyDER},
		{p.caKeyFile, "PRIVATE KEY", caKeyDER},
	}
	for _, f := range files {
		b := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(f.path, b, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return p, nil
}

// loadPKI reads the CA that newPKI wrote (certificate and key), so that a
// client process can issue client certificates the servers trust.
func loadPKI(caFile, caKeyFile string) (*pki, error) {
	certPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(caKeyFile)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s or %s: no PEM block", caFile, caKeyFile)
	}
	caCert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", caFile, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", caKeyFile, err)
	}
	caKey, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ECDSA key", caKeyFile)
	}
	p := &pki{caCert: caCert, caKey: caKey, roots: x509.NewCertPool(), clients: map[string]*tls.Certificate{}}
	p.roots.AddCert(caCert)
	return p, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// clientCert returns the client certificate with the given CN, creating it
// on first use. Generation runs outside the lock so that many goroutines can
// create certificates for different machines in parallel.
func (p *pki) clientCert(cn string) (*tls.Certificate, error) {
	p.mu.Lock()
	c, ok := p.clients[cn]
	p.mu.Unlock()
	if ok {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate client key: %w", err)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return nil, fmt.Errorf("create client certificate %s: %w", cn, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse client certificate %s: %w", cn, err)
	}
	c = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.clients[cn]; ok {
		return prev, nil // another goroutine won the race; keep one certificate per CN
	}
	p.clients[cn] = c
	return c, nil
}

// clientTLS returns a client configuration that trusts the benchmark CA and,
// when cn is not empty, presents the client certificate with that CN. Like
// the v0.1 agent, it speaks HTTP/1.1 only.
func (p *pki) clientTLS(cn string) (*tls.Config, error) {
	cfg := &tls.Config{
		RootCAs:    p.roots,
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
	}
	if cn != "" {
		c, err := p.clientCert(cn)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{*c}
	}
	return cfg, nil
}
