package main

// TLS session resumption (auth.go, SPEC §2.2 "session tickets are enabled"):
// a resumed mTLS connection still carries the client certificate it was first
// verified with, so the CN rule of the agent routes (§3.5) holds on it; and
// the server-side cost of a full mTLS handshake against a resumed one
// (BenchmarkMTLSHandshake, whose client runs in a child process).

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMTLSResumedSessionKeepsIdentity makes new connections, one per request,
// from a client that keeps TLS sessions: the first handshake is full, the
// next ones resume it (TLS 1.3 PSK, TLS 1.2 ticket). On the resumed
// connections the daemon still knows the verified certificate's CN: its own
// agent route passes the CN check (404, no desired generation) and another
// machine's routes get 403 (ACC-32 on resumed sessions). A client that
// resumes web-01's session while configured with web-02's certificate is
// web-01 to the server: the identity is the one verified when the session
// was created, never the certificate the client has now.
func TestMTLSResumedSessionKeepsIdentity(t *testing.T) {
	pki := newTestPKI(t)
	rs := startRun(t, nil, "--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", pki.caFile)
	web02Report := reportBody("web-02", storePath('b', "sys"), true, "up-to-date")
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			cache := tls.NewLRUClientSessionCache(4)
			var resumed []bool // DidResume of each handshake, as the client saw it
			clientFor := func(cert string) *http.Client {
				cfg := tlsTestConfig(pki, cert)
				cfg.MinVersion, cfg.MaxVersion = version, version
				cfg.ClientSessionCache = cache
				cfg.VerifyConnection = func(cs tls.ConnectionState) error {
					resumed = append(resumed, cs.DidResume)
					return nil
				}
				return tlsTestClient(cfg) // keep-alive off: a new connection, and handshake, per request
			}
			web01, web02 := clientFor("web-01"), clientFor("web-02")
			for _, s := range []struct {
				name         string
				c            *http.Client
				method, path string
				body         any
				resumed      bool
				wantStatus   int
				wantErr      string
			}{
				{"full handshake, own route", web01, "GET", "/api/v1/machines/web-01/desired-generation", nil, false, 404, "no desired generation"},
				{"resumed, own route", web01, "GET", "/api/v1/machines/web-01/desired-generation", nil, true, 404, "no desired generation"},
				{"resumed, web-02's desired generation", web01, "GET", "/api/v1/machines/web-02/desired-generation", nil, true,
					403, "client certificate CN does not match machine id"},
				{"resumed, report for web-02", web01, "POST", "/api/v1/machines/web-02/report", web02Report, true,
					403, "client certificate CN does not match machine id"},
				{"web-02's certificate resuming web-01's session, web-02's route", web02, "GET",
					"/api/v1/machines/web-02/desired-generation", nil, true, 403, "client certificate CN does not match machine id"},
				{"web-02's certificate resuming web-01's session, web-01's route", web02, "GET",
					"/api/v1/machines/web-01/desired-generation", nil, true, 404, "no desired generation"},
			} {
				resumed = nil
				r := do(t, s.c, s.method, rs.url+s.path, "", s.body)
				if len(resumed) != 1 || resumed[0] != s.resumed {
					t.Errorf("%s: handshakes resumed %v, want [%v]", s.name, resumed, s.resumed)
				}
				if r.status != s.wantStatus || r.errMsg(t) != s.wantErr {
					t.Errorf("%s: %d %q, want %d %q", s.name, r.status, r.errMsg(t), s.wantStatus, s.wantErr)
				}
			}
		})
	}

}

// handshakeClientEnv, when set, makes TestHandshakeClientProcess the client
// of BenchmarkMTLSHandshake: "addr|cert file|key file|CA file|full or
// resumed|default or x25519".
const handshakeClientEnv = "NIXFLEET_TEST_HANDSHAKE_CLIENT"

// BenchmarkMTLSHandshake measures what one mTLS handshake costs the server,
// with the production TLS configuration (loadTLSConfig): a full handshake
// (certificate verification and signatures) against a resumed one (TLS 1.3
// session ticket; the key exchange still runs). The client is another process
// (this test binary, TestHandshakeClientProcess), so allocs/op and
// server-cpu-µs/op (this process's user+system CPU time per handshake) are
// the server's alone; ns/op is wall time and includes the client's turn.
// The "x25519" variants offer only X25519, as a client without the default
// hybrid post-quantum key exchange (X25519MLKEM768) does.
func BenchmarkMTLSHandshake(b *testing.B) {
	pki := newTestPKI(b)
	cfg, err := loadTLSConfig(pki.serverCert, pki.serverKey, pki.caFile)
	if err != nil {
		b.Fatal(err)
	}
	for _, kind := range []string{"full", "resumed"} {
		for _, curves := range []string{"default", "x25519"} {
			b.Run(kind+"/"+curves, func(b *testing.B) { benchmarkHandshake(b, pki, cfg, kind, curves) })
		}
	}
	// The same connection without TLS: what accepting, writing one byte and
	// closing cost by themselves.
	b.Run("tcp-only", func(b *testing.B) { benchmarkHandshake(b, pki, nil, "tcp", "") })
}

func benchmarkHandshake(b *testing.B, pki *testPKI, cfg *tls.Config, kind, curves string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	files := pki.clientFile["web-01"]
	cmd := exec.Command(os.Args[0], "-test.run=^TestHandshakeClientProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), handshakeClientEnv+"="+ln.Addr().String()+"|"+files[0]+"|"+files[1]+"|"+pki.caFile+"|"+kind+"|"+curves)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		ln.Close() // the client stops at the first refused connection
		cmd.Wait()
	}()
	// handshake serves one connection as the daemon does and says whether
	// it resumed a session.
	handshake := func() (bool, error) {
		c, err := ln.Accept()
		if err != nil {
			return false, err
		}
		defer c.Close()
		if cfg == nil {
			_, err := c.Write([]byte{1})
			return false, err
		}
		tc := tls.Server(c, cfg)
		if err := tc.HandshakeContext(context.Background()); err != nil {
			return false, err
		}
		// The client reads this byte, and with it the session tickets sent
		// before it, then closes.
		if _, err := tc.Write([]byte{1}); err != nil {
			return false, err
		}
		cs := tc.ConnectionState()
		if cn := cs.PeerCertificates[0].Subject.CommonName; cn != "web-01" || len(cs.VerifiedChains) == 0 {
			return false, fmt.Errorf("peer %q, %d verified chains", cn, len(cs.VerifiedChains))
		}
		return cs.DidResume, nil
	}
	// The first handshake is always full: it gives the client its ticket.
	if _, err := handshake(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	wrong := 0
	for range b.N {
		resumed, err := handshake()
		if err != nil {
			b.Fatal(err)
		}
		if cfg != nil && resumed != (kind == "resumed") {
			wrong++
		}
	}
	b.StopTimer()
	var after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() - before.Utime.Nano() + after.Stime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "server-cpu-µs/op")
	if wrong > 0 {
		b.Fatalf("%d of %d handshakes were not %s", wrong, b.N, kind)
	}
}

// TestHandshakeClientProcess is the client of BenchmarkMTLSHandshake when
// handshakeClientEnv is set (the benchmark starts it); otherwise it is
// skipped. It makes one connection after another, each with a handshake and
// one byte read, until the server stops accepting.
func TestHandshakeClientProcess(t *testing.T) {
	spec := os.Getenv(handshakeClientEnv)
	if spec == "" {
		t.Skip("the client process of BenchmarkMTLSHandshake")
	}
	f := strings.Split(spec, "|")
	if len(f) != 6 {
		t.Fatalf("%s=%q: want 6 fields", handshakeClientEnv, spec)
	}
	addr, certFile, keyFile, caFile, kind, curves := f[0], f[1], f[2], f[3], f[4], f[5]
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := readPEMCertificates("CA", caFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, ServerName: "127.0.0.1", RootCAs: x509.NewCertPool()}
	for _, r := range roots {
		cfg.RootCAs.AddCert(r)
	}
	if kind == "resumed" {
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	}
	if curves == "x25519" {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	dial := func() (net.Conn, error) { return tls.Dial("tcp", addr, cfg) }
	if kind == "tcp" {
		dial = func() (net.Conn, error) { return net.Dial("tcp", addr) }
	}
	for i := 0; ; i++ {
		c, err := dial()
		if err != nil {
			if i == 0 {
				t.Fatal(err)
			}
			return // the benchmark is over
		}
		_, err = io.ReadFull(bufio.NewReader(c), make([]byte, 1))
		c.Close()
		if err != nil {
			return
		}
	}
}
