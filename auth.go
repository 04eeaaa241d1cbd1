package main

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
)

// Transport security and identity (§2.2, §3): the TLS configuration, the
// identity of a client certificate, API-key authentication, role checks and
// the bootstrap guards. Nothing else reads r.TLS or the Authorization header.

// loadTLSConfig builds the server TLS configuration from the PEM files. Every
// error names the file at fault. With caFile set, every connection must
// present a client certificate that chains to one of its certificates (mTLS).
func loadTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	certs, err := readPEMCertificates("TLS certificate", certFile)
	if err != nil {
		return nil, err
	}
	var chain [][]byte
	for _, c := range certs {
		chain = append(chain, c.Raw)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS key %s: %w", keyFile, err)
	}
	var keyBlock *pem.Block
	for rest := keyPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			keyBlock = b
			break
		}
	}
	if keyBlock == nil {
		return nil, fmt.Errorf("TLS key %s: no PEM private key found", keyFile)
	}
	certOnly := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[0]})
	for _, c := range chain[1:] {
		certOnly = append(certOnly, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	pair, err := tls.X509KeyPair(certOnly, pem.EncodeToMemory(keyBlock))
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return nil, fmt.Errorf("TLS key %s does not match certificate %s", keyFile, certFile)
		}
		return nil, fmt.Errorf("TLS key %s: %w", keyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		// TLS 1.2 is the oldest version without known protocol weaknesses; 1.3 is on.
		MinVersion: tls.VersionTLS12,
		// HTTP/2 is not offered: the agents speak HTTP/1.1 and one protocol
		// keeps the server's timeouts and limits simple to reason about.
		NextProtos: []string{"http/1.1"},
		ClientAuth: tls.NoClientCert,
	}
	if caFile != "" {
		cas, err := readPEMCertificates("client CA", caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		for _, c := range cas {
			pool.AddCert(c)
		}
		cfg.ClientCAs = pool
		// The handshake fails without a certificate that chains to the bundle,
		// so no HTTP request, not even /health, reaches an unauthenticated peer.
		// Go checks that a leaf carrying an extended key usage allows client
		// authentication; a leaf without the extension is accepted.
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// readPEMCertificates parses every CERTIFICATE block of a PEM file; what
// names the file in errors. A file without any certificate is an error.
func readPEMCertificates(what, path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s %s: no PEM certificate found", what, path)
	}
	return certs, nil
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// peerCN returns the CommonName of the verified client certificate; verified
// is false when the connection carries none (plain and TLS modes). A
// certificate whose subject has no CommonName, or several, has no identity
// (§3.3): cn is "" and every CN check must fail closed on it.
func peerCN(r *http.Request) (cn string, verified bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		return "", false
	}
	leaf := r.TLS.PeerCertificates[0]
	var cns []string
	for _, atv := range leaf.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			if s, isStr := atv.Value.(string); isStr {
				cns = append(cns, s)
			} else {
				cns = append(cns, "", "") // not a string: never matches
			}
		}
	}
	if len(cns) != 1 {
		return "", true
	}
	return cns[0], true
}

// principal is the authenticated caller of an admin route.
type principal struct {
	actor string // apikey:<name>
	role  string
	keyID int64
}

// authFailure logs and counts a refused authentication or authorisation and
// returns the error to send. Failures are never audited: anonymous callers
// must not be able to grow the append-only log.
func (s *server) authFailure(r *http.Request, kind error, reason, msg string) error {
	s.log.Warn("authentication failed", "reason", reason, "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
	s.m.authFailures.inc(reason)
	return &clientError{kind, msg}
}

// authorize applies the authentication and role check of a route (§3.4),
// returning the caller of an admin route.
func (s *server) authorize(r *http.Request, acc access) (*principal, error) {
	switch acc {
	case public:
		return nil, nil
	case agent:
		// §3.5: with a verified client certificate, its single CN must be the
		// machine id of the path, byte for byte.
		if cn, ok := peerCN(r); ok && cn != r.PathValue("id") {
			return nil, s.authFailure(r, errForbidden, "cn_mismatch", "client certificate CN does not match machine id")
		}
		return nil, nil
	}
	p, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	switch {
	case acc == adminRole && p.role != "admin":
		return nil, s.authFailure(r, errForbidden, "forbidden", "admin role required")
	case acc == deployRole && p.role != "deploy" && p.role != "admin":
		return nil, s.authFailure(r, errForbidden, "forbidden", "deploy or admin role required")
	}
	return p, nil
}

// authenticate checks the Bearer API key of the request against the
// database (§3.2). Every call hashes the token and looks it up, so keys added
// or revoked by any means take effect on the next request.
func (s *server) authenticate(r *http.Request) (*principal, error) {
	h, present := r.Header["Authorization"]
	if !present {
		return nil, s.authFailure(r, errUnauthorized, "missing", "missing API key")
	}
	token, ok := strings.CutPrefix(h[0], "Bearer ")
	if !ok || token == "" {
		return nil, s.authFailure(r, errUnauthorized, "invalid", "invalid Authorization header")
	}
	st := s.cp.st
	k, err := st.keyByHash(r.Context(), hashKey(token))
	if err != nil {
		return nil, err
	}
	now := st.now().UnixMilli()
	switch {
	case k == nil:
		return nil, s.authFailure(r, errUnauthorized, "invalid", "invalid API key")
	case k.RevokedAt != nil:
		return nil, s.authFailure(r, errUnauthorized, "revoked", "API key revoked")
	case k.ExpiresAt != nil && *k.ExpiresAt <= now:
		return nil, s.authFailure(r, errUnauthorized, "expired", "API key expired")
	}
	if k.LastUsedAt == nil || now-*k.LastUsedAt > 60_000 {
		// Best effort, in its own transaction: a failure only costs accuracy.
		if err := st.touchKey(r.Context(), k.ID); err != nil {
			s.log.Warn("update key last_used_at", "err", err)
		}
	}
	return &principal{actor: "apikey:" + k.Name, role: k.Role, keyID: k.ID}, nil
}

// bootstrapGuard is what POST /api/v1/keys/bootstrap requires besides an
// empty key table (§3.3).
type bootstrapGuard struct {
	token string   // --bootstrap-token-file's secret; empty: none
	cns   []string // --bootstrap-cn: in mTLS without a token, the CNs that may bootstrap
}

const bootstrapClosed = "bootstrap is closed: set --bootstrap-token-file or --bootstrap-cn, or create a key offline with keys create"

// check refuses a bootstrap request that does not pass the guard. In mTLS
// mode a certificate must have an identity (exactly one CN) that is not a
// machine's, and without a token file that CN must be listed in
// --bootstrap-cn: otherwise any certificate the fleet CA signed, such as
// every agent's, could mint the first admin key.
func (s *server) checkBootstrap(r *http.Request) error {
	g := s.guard
	if g.token != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Bootstrap-Token")), []byte(g.token)) != 1 {
		return s.authFailure(r, errForbidden, "forbidden", "bootstrap token required")
	}
	cn, verified := peerCN(r)
	switch {
	case !verified: // plain and TLS modes: no client certificate to judge
	case cn == "":
		return s.authFailure(r, errForbidden, "forbidden", "client certificate has no single CN: it cannot bootstrap")
	case s.cp.st.fleet.get(cn) != nil:
		return s.authFailure(r, errForbidden, "forbidden", "machine certificates cannot bootstrap")
	case g.token != "":
	case len(g.cns) == 0:
		return s.authFailure(r, errForbidden, "forbidden", bootstrapClosed)
	case !slices.Contains(g.cns, cn):
		return s.authFailure(r, errForbidden, "forbidden", "client certificate CN "+cn+" is not in --bootstrap-cn")
	}
	return nil
}

// logBootstrapGuard says at startup how bootstrap is guarded, so that an
// operator knows whether the first admin key can be minted and by whom.
func (s *server) logBootstrapGuard(ctx context.Context) {
	keys, err := readValue(ctx, s.cp.st, dbq.countKeys)
	switch g := s.guard; {
	case err != nil:
		s.log.Warn("cannot tell how bootstrap is guarded", "err", err)
	case keys > 0:
		s.log.Info("bootstrap is closed: API keys exist")
	case s.mode == "mtls" && g.token == "" && len(g.cns) == 0:
		s.log.Warn("no API keys exist and " + bootstrapClosed)
	case g.token != "" && s.mode == "mtls":
		s.log.Info("no API keys exist: POST /api/v1/keys/bootstrap requires the secret of --bootstrap-token-file " +
			"and a client certificate with a single CN that is not a registered machine")
	case g.token != "":
		s.log.Info("no API keys exist: POST /api/v1/keys/bootstrap requires the secret of --bootstrap-token-file")
	case s.mode == "mtls":
		s.log.Info("no API keys exist: POST /api/v1/keys/bootstrap accepts client certificates whose CN is in --bootstrap-cn "+
			"and is not a registered machine", "cns", strings.Join(g.cns, ","))
	default:
		s.log.Warn("no API keys exist: POST /api/v1/keys/bootstrap is open",
			"hint", "set --bootstrap-token-file to require a one-time secret")
	}
}

// bootstrap handles POST /api/v1/keys/bootstrap: the first admin key, while
// the key table is empty (§3.3), behind the configured guard.
func (s *server) bootstrap(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if err := s.checkBootstrap(r); err != nil {
		return err
	}
	req, err := decode[bootstrapRequest](w, r, maxBody, true)
	if err != nil {
		return err
	}
	created, err := s.cp.bootstrap(r.Context(), *req.Name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, created)
}
