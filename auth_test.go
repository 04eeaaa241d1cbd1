package main

// Authentication tests (auth.go, SPEC §3, §4.4, §1.6): bootstrap and its
// hardening (ACC-16, ACC-16b, ACC-17), the Authorization header rules
// (ACC-18), keys written behind the server's back (ACC-19), the
// auth-failure counters and that no secret is ever logged. The roles matrix
// and the mTLS CN rule are in auth_matrix_test.go, TLS in auth_tls_test.go.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBootstrapACC16 covers ACC-16 and §4.4: the first bootstrap gets 200
// with an admin key, the second 409; an empty, null or "" name becomes
// "admin"; an invalid body creates nothing.
func TestBootstrapACC16(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	r := do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", `{"name":"first-admin"}`)
	expect(t, r, 200, "")
	var raw map[string]any
	r.json(t, &raw)
	if v, ok := raw["expires_at"]; !ok || v != nil {
		t.Errorf("expires_at %v (present %v), want null", v, ok)
	}
	var k keyCreated
	r.json(t, &k)
	if !authKeyTokenRE.MatchString(k.Key) || k.Name != "first-admin" || k.Role != "admin" || k.ID < 1 ||
		k.CreatedAt != "2026-04-11T09:30:00.000Z" || k.ExpiresAt != nil {
		t.Fatalf("bootstrap response %+v", k)
	}
	expect(t, do(t, c, "GET", ts.url+"/api/v1/keys", k.Key, nil), 200, "")

	r = do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", `{"name":"second"}`)
	expect(t, r, 409, "API keys already exist. Use an admin key to create more.")
	r = do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil)
	expect(t, r, 409, "API keys already exist. Use an admin key to create more.")

	for _, tc := range []struct {
		name     string
		body     any // nil: no body at all
		wantName string
	}{
		{"empty body", nil, "admin"},
		{"empty object", `{}`, "admin"},
		{"null name", `{"name":null}`, "admin"},
		{"empty name", `{"name":""}`, "admin"},
		{"unknown field ignored", `{"name":"ops","role":"readonly"}`, "ops"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, testServerOptions{})
			r := do(t, ts.client(""), "POST", ts.url+"/api/v1/keys/bootstrap", "", tc.body)
			expect(t, r, 200, "")
			var k keyCreated
			r.json(t, &k)
			if k.Name != tc.wantName || k.Role != "admin" || !authKeyTokenRE.MatchString(k.Key) {
				t.Fatalf("bootstrap %+v, want name %q role admin", k, tc.wantName)
			}
		})
	}

	t.Run("invalid requests create nothing", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{})
		c := ts.client("")
		url := ts.url + "/api/v1/keys/bootstrap"
		expect(t, do(t, c, "POST", url, "", map[string]any{"name": strings.Repeat("n", 65)}), 400, "")
		expect(t, do(t, c, "POST", url, "", `{"name":"tab\there"}`), 400, "")
		expect(t, do(t, c, "POST", url, "", `[]`), 400, "")
		expect(t, do(t, c, "POST", url, "", `{"name":`), 400, "")
		r := authSend(t, c, "POST", url, map[string]string{"Content-Type": "text/plain"}, "")
		expect(t, r, 200, "") // an empty body is {} and its type is not checked
		ts2 := newTestServer(t, testServerOptions{})
		req, _ := http.NewRequest("POST", ts2.url+"/api/v1/keys/bootstrap", strings.NewReader(`{"name":"x"}`))
		req.Header.Set("Content-Type", "text/plain")
		resp, err := ts2.client("").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 415 {
			t.Fatalf("text/plain body: %d, want 415", resp.StatusCode)
		}
		// After every refusal the table is still empty.
		expect(t, do(t, ts2.client(""), "POST", ts2.url+"/api/v1/keys/bootstrap", "", nil), 200, "")
	})

	// §3.3: revoked and expired rows count, so a fleet whose keys are all
	// revoked or expired never reopens bootstrap.
	t.Run("revoked and expired keys keep bootstrap closed", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{})
		c := ts.client("")
		var first keyCreated
		r := do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil)
		expect(t, r, 200, "")
		r.json(t, &first)
		exp := ts.clock.now().Add(time.Hour).Format(time.RFC3339)
		r = do(t, c, "POST", ts.url+"/api/v1/keys", first.Key, map[string]any{"name": "temp", "role": "admin", "expires_at": exp})
		expect(t, r, 201, "")
		var second keyCreated
		r.json(t, &second)
		// The API never revokes the last non-expiring admin key (§4.29), so
		// revoke it behind the server's back, as sqlite3 could.
		expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, first.ID), second.Key, nil), 409,
			"cannot revoke the last non-expiring admin key")
		if err := ts.st.write(context.Background(), func(tx *txn) error {
			_, err := tx.exec("UPDATE api_key SET revoked_at = ? WHERE id = ?", tx.now, first.ID)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		ts.clock.advance(2 * time.Hour)
		authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", second.Key, nil), "API key expired")
		authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", first.Key, nil), "API key revoked")
		expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil), 409,
			"API keys already exist. Use an admin key to create more.")
	})
}

// TestBootstrapKeys covers ACC-16: the first bootstrap, its 409 afterwards,
// and the name defaults (empty body, null, "") on fresh databases.
func TestBootstrapKeys(t *testing.T) {
	keyRE := regexp.MustCompile(`^nfk-[0-9a-f]{64}$`)
	for _, tc := range []struct {
		name        string
		body        string
		contentType string
		wantName    string
	}{
		{"named", `{"name":"first-admin"}`, "application/json", "first-admin"},
		{"empty body", "", "application/json", "admin"},
		{"empty body with text/plain", "", "text/plain", "admin"},
		{"empty object", `{}`, "application/json", "admin"},
		{"null name", `{"name":null}`, "application/json", "admin"},
		{"empty name", `{"name":""}`, "", "admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, testServerOptions{})
			c := ts.client("")
			r := apiSend(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", tc.contentType, []byte(tc.body), false)
			expect(t, r, 200, "")
			var k keyCreated
			r.json(t, &k)
			if !keyRE.MatchString(k.Key) || k.Name != tc.wantName || k.Role != "admin" || k.ExpiresAt != nil {
				t.Fatalf("bootstrap gave %+v", k)
			}
			if !outputTimeRE.MatchString(k.CreatedAt) {
				t.Errorf("created_at %q", k.CreatedAt)
			}
			// The key works, and bootstrap is closed from now on.
			expect(t, do(t, c, "GET", ts.url+"/api/v1/keys", k.Key, nil), 200, "")
			before := dbFingerprint(t, ts)
			expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", `{"name":"second"}`), 409,
				"API keys already exist. Use an admin key to create more.")
			expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil), 409, "")
			if after := dbFingerprint(t, ts); after != before {
				t.Fatalf("a refused bootstrap changed the database:\n%s\n%s", before, after)
			}
			evs := auditRows(t, c, ts.url, k.Key, "?action=bootstrap")
			if len(evs) != 1 || evs[0].Actor != "system:bootstrap" || evs[0].Target != tc.wantName ||
				evs[0].Detail == nil || *evs[0].Detail != "first admin key created" {
				t.Fatalf("bootstrap audit rows %+v", evs)
			}
		})
	}

	t.Run("invalid bodies create nothing", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{})
		c := ts.client("")
		for _, body := range []string{`null`, `[]`, `{"name":"` + strings.Repeat("n", 65) + `"}`, `{"name":"a\u0001b"}`, `{"name":5}`, `{} {}`} {
			expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", body), 400, "")
		}
		expect(t, apiSend(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", "text/plain", []byte(`{"name":"x"}`), false), 415,
			"Content-Type must be application/json")
		var n int
		mustScan(t, ts.st.ro.QueryRow("SELECT count(*) FROM api_key"), &n)
		if n != 0 {
			t.Fatalf("%d keys after rejected bootstraps", n)
		}
		// Bootstrap is still open.
		bootstrapKey(t, c, ts.url)
	})
}

// TestBootstrapConcurrent covers ACC-17: 20 concurrent bootstraps on an empty
// database give exactly one 200 and nineteen 409s, and one key exists.
func TestBootstrapConcurrent(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	const n = 20
	var wg sync.WaitGroup
	results := make([]response, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, _ := http.NewRequest("POST", ts.url+"/api/v1/keys/bootstrap", strings.NewReader(fmt.Sprintf(`{"name":"admin-%d"}`, i)))
			resp, err := c.Do(req)
			if err != nil {
				t.Errorf("bootstrap %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			var k keyCreated
			json.NewDecoder(resp.Body).Decode(&k)
			results[i] = response{status: resp.StatusCode, body: []byte(k.Key)}
		}()
	}
	close(start)
	wg.Wait()
	var key string
	ok, conflicts := 0, 0
	for _, r := range results {
		switch r.status {
		case 200:
			ok++
			key = string(r.body)
		case 409:
			conflicts++
		default:
			t.Errorf("unexpected status %d", r.status)
		}
	}
	if ok != 1 || conflicts != n-1 {
		t.Fatalf("%d × 200 and %d × 409, want 1 and %d", ok, conflicts, n-1)
	}
	var keys []keyInfo
	r := do(t, c, "GET", ts.url+"/api/v1/keys", key, nil)
	expect(t, r, 200, "")
	r.json(t, &keys)
	if len(keys) != 1 || keys[0].Role != "admin" {
		t.Fatalf("keys after concurrent bootstrap: %+v", keys)
	}
	if evs := auditRows(t, c, ts.url, key, "?action=bootstrap"); len(evs) != 1 {
		t.Fatalf("%d bootstrap audit rows, want 1", len(evs))
	}
}

// TestBootstrapTokenFileACC16b covers the token half of ACC-16b through run:
// with --bootstrap-token-file, bootstrap needs X-Bootstrap-Token; a missing
// or wrong token gets 403 and creates nothing; the file's surrounding
// whitespace is trimmed. A token shorter than 16 bytes is a usage error.
func TestBootstrapTokenFileACC16b(t *testing.T) {
	dir := t.TempDir()
	const secret = "0123456789abcdef-bootstrap"
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  \n"+secret+"\n\t "), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("short token is a usage error", func(t *testing.T) {
		for _, content := range []string{"0123456789abcde", "  0123456789abcde \n", "", "\n\n"} {
			short := filepath.Join(t.TempDir(), "short")
			if err := os.WriteFile(short, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			db := filepath.Join(t.TempDir(), "state.db")
			for _, how := range []string{"flag", "env"} {
				args := []string{"serve", "--db-path", db, "--listen", "127.0.0.1:0"}
				getenv := func(string) string { return "" }
				if how == "flag" {
					args = append(args, "--bootstrap-token-file", short)
				} else {
					getenv = func(k string) string {
						if k == "NIXFLEET_CP_BOOTSTRAP_TOKEN_FILE" {
							return short
						}
						return ""
					}
				}
				var logs syncBuffer
				err := run(context.Background(), args, getenv, io.Discard, &logs)
				var ue *usageError
				if !errors.As(err, &ue) {
					t.Fatalf("%s, token %q: got %v, want a usage error (exit 2)", how, content, err)
				}
				if !strings.Contains(err.Error(), "bootstrap-token-file") {
					t.Errorf("%s: error %q does not name the flag", how, err)
				}
				if _, err := os.Stat(db); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s: database created despite the usage error", how)
				}
			}
		}
	})

	t.Run("16 bytes is enough", func(t *testing.T) {
		exact := filepath.Join(t.TempDir(), "exact")
		if err := os.WriteFile(exact, []byte("0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		rs := startRun(t, nil, "--bootstrap-token-file", exact)
		c := &http.Client{Timeout: 30 * time.Second}
		r := authSend(t, c, "POST", rs.url+"/api/v1/keys/bootstrap", map[string]string{"X-Bootstrap-Token": "0123456789abcdef"}, "")
		expect(t, r, 200, "")
	})

	rs := startRun(t, nil, "--bootstrap-token-file", tokenFile)
	c := &http.Client{Timeout: 30 * time.Second}
	url := rs.url + "/api/v1/keys/bootstrap"
	for _, tc := range []struct {
		name  string
		token *string
	}{
		{"no header", nil},
		{"empty header", str("")},
		{"wrong token", str("wrong-token-wrong-token")},
		{"prefix of the token", str(secret[:16])},
		{"token with a suffix", str(secret + "x")},
		{"different case", str(strings.ToUpper(secret))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.token != nil {
				hdr["X-Bootstrap-Token"] = *tc.token
			}
			expect(t, authSend(t, c, "POST", url, hdr, `{"name":"first-admin"}`), 403, "bootstrap token required")
		})
	}
	// Every refusal left the key table empty, or this would be a 409.
	r := authSend(t, c, "POST", url, map[string]string{"X-Bootstrap-Token": secret}, `{"name":"first-admin"}`)
	expect(t, r, 200, "")
	var k keyCreated
	r.json(t, &k)
	if k.Name != "first-admin" || k.Role != "admin" || !authKeyTokenRE.MatchString(k.Key) {
		t.Fatalf("bootstrap %+v", k)
	}
	r = authSend(t, c, "GET", rs.url+"/api/v1/keys", map[string]string{"Authorization": "Bearer " + k.Key}, "")
	expect(t, r, 200, "")
	var keys []keyInfo
	r.json(t, &keys)
	if len(keys) != 1 {
		t.Fatalf("keys after refused bootstraps: %+v", keys)
	}
	r = authSend(t, c, "POST", url, map[string]string{"X-Bootstrap-Token": secret}, "")
	expect(t, r, 409, "API keys already exist. Use an admin key to create more.")
}

// TestBootstrapMTLSACC16b covers the mTLS half of ACC-16b: with
// --bootstrap-cn operator,web-01 and no token file, once web-01 has reported
// its certificate cannot bootstrap, and CN operator can; with neither flag,
// bootstrap is closed even for CN operator.
func TestBootstrapMTLSACC16b(t *testing.T) {
	closed := newTestServer(t, testServerOptions{mode: "mtls"})
	expect(t, do(t, closed.client("operator"), "POST", closed.url+"/api/v1/keys/bootstrap", "", `{"name":"first-admin"}`), 403,
		"bootstrap is closed: set --bootstrap-token-file or --bootstrap-cn, or create a key offline with keys create")
	if n := countRows(t, closed, "SELECT count(*) FROM api_key"); n != 0 {
		t.Fatalf("%d keys after a refused bootstrap", n)
	}

	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator", "web-01"}})
	web01 := ts.client("web-01")
	expect(t, do(t, web01, "POST", ts.url+"/api/v1/machines/web-01/report", "",
		reportBody("web-01", storePath('a', "sys"), true, "up-to-date")), 200, "")
	url := ts.url + "/api/v1/keys/bootstrap"
	expect(t, do(t, web01, "POST", url, "", `{"name":"stolen"}`), 403, "machine certificates cannot bootstrap")
	expect(t, do(t, web01, "POST", url, "", nil), 403, "machine certificates cannot bootstrap")
	r := do(t, ts.client("operator"), "POST", url, "", `{"name":"first-admin"}`)
	expect(t, r, 200, "")
	var k keyCreated
	r.json(t, &k)
	if k.Name != "first-admin" || k.Role != "admin" {
		t.Fatalf("bootstrap %+v", k)
	}
	r = do(t, ts.client("operator"), "GET", ts.url+"/api/v1/keys", k.Key, nil)
	expect(t, r, 200, "")
	var keys []keyInfo
	r.json(t, &keys)
	if len(keys) != 1 || keys[0].Name != "first-admin" {
		t.Fatalf("keys %+v: the refused machine bootstrap created a key", keys)
	}
}

// TestAuthorizationHeaderACC18 covers ACC-18 and §3.2: every malformed,
// unknown or non-Bearer credential is 401 with WWW-Authenticate, never 403,
// on an any-role route and on an admin-only route alike.
func TestAuthorizationHeaderACC18(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	for _, tc := range []struct {
		name    string
		header  *string // nil: no Authorization header
		wantErr string
	}{
		{"no header", nil, "missing API key"},
		{"unknown key", str("Bearer nfk-not-a-real-key"), "invalid API key"},
		{"unknown well-formed key", str("Bearer nfk-" + strings.Repeat("0", 64)), "invalid API key"},
		{"bare key without Bearer", str(admin), "invalid Authorization header"},
		{"Basic", str("Basic dXNlcjpwYXNzd29yZA=="), "invalid Authorization header"},
		{"lowercase bearer", str("bearer " + admin), "invalid Authorization header"},
		{"uppercase BEARER", str("BEARER " + admin), "invalid Authorization header"},
		{"Bearer with a tab", str("Bearer\t" + admin), "invalid Authorization header"},
		{"Bearer without token", str("Bearer"), "invalid Authorization header"},
		{"Token scheme", str("Token " + admin), "invalid Authorization header"},
		// The token after "Bearer " is not trimmed, so an extra space makes
		// it another (unknown) token.
		{"two spaces", str("Bearer  " + admin), "invalid API key"},
		{"key hash instead of key", str("Bearer " + hashKey(admin)), "invalid API key"},
	} {
		for _, route := range []struct{ method, path string }{
			{"GET", "/api/v1/machines"},  // any role
			{"POST", "/api/v1/keys"},     // admin only: still 401, not 403
			{"DELETE", "/api/v1/keys/1"}, // admin only, with a path id
		} {
			t.Run(tc.name+" "+route.method+" "+route.path, func(t *testing.T) {
				hdr := map[string]string{}
				if tc.header != nil {
					hdr["Authorization"] = *tc.header
				}
				body := ""
				if route.method == "POST" {
					body = `{"name":"x"}`
				}
				authExpect401(t, authSend(t, c, route.method, ts.url+route.path, hdr, body), tc.wantErr)
			})
		}
	}
	// The same admin key in proper form works.
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", admin, nil), 200, "")

	// §3.4: routes 1–5 never look at Authorization, however malformed.
	for _, h := range []string{"Basic dXNlcjpwYXNzd29yZA==", "Bearer nfk-not-a-real-key", "Bearer", "garbage"} {
		hdr := map[string]string{"Authorization": h}
		if r := authSend(t, c, "GET", ts.url+"/health", hdr, ""); r.status != 200 || string(r.body) != "ok" {
			t.Errorf("/health with %q: %d %s", h, r.status, r.body)
		}
		expect(t, authSend(t, c, "GET", ts.url+"/metrics", hdr, ""), 200, "")
		expect(t, authSend(t, c, "GET", ts.url+"/api/v1/machines/web-01/desired-generation", hdr, ""), 404, "no desired generation")
		body, _ := json.Marshal(reportBody("web-01", storePath('a', "sys"), true, "ok"))
		expect(t, authSend(t, c, "POST", ts.url+"/api/v1/machines/web-01/report", hdr, string(body)), 200, "")
		expect(t, authSend(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", hdr, ""), 409, "API keys already exist. Use an admin key to create more.")
	}
}

// TestKeyInsertedBySQLite covers ACC-19 (and the revocation half of §3.1): a
// row written into the live database by another process authorises its token
// on the very next request, and revoking it there takes effect at once.
func TestKeyInsertedBySQLite(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c := ts.client("")
	sum := sha256.Sum256([]byte("test-admin-key"))
	hash := hex.EncodeToString(sum[:])

	// Negative answers are not cached either.
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "test-admin-key", nil), 401, "invalid API key")

	exec1 := func(stmt string) {
		t.Helper()
		if path, err := exec.LookPath("sqlite3"); err == nil {
			out, err := exec.Command(path, "-cmd", ".timeout 5000", dbPath, stmt).CombinedOutput()
			if err != nil {
				t.Fatalf("sqlite3 %q: %v\n%s", stmt, err, out)
			}
			return
		}
		db := openDB(t, dbPath)
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	exec1(fmt.Sprintf("INSERT INTO api_key (key_hash, name, role, created_at) VALUES ('%s', 'sqlite-admin', 'admin', %d)",
		hash, time.Now().UnixMilli()))

	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "test-admin-key", nil), 200, "")
	r := do(t, c, "GET", ts.url+"/api/v1/keys", "test-admin-key", nil) // an admin-only route
	expect(t, r, 200, "")
	var keys []keyInfo
	r.json(t, &keys)
	if len(keys) != 1 || keys[0].Name != "sqlite-admin" || keys[0].Role != "admin" {
		t.Fatalf("keys %+v", keys)
	}
	// The actor of a key inserted by hand is its name.
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/register", "test-admin-key", nil), 201, "")
	if evs := auditRows(t, c, ts.url, "test-admin-key", "?action=register"); len(evs) != 1 || evs[0].Actor != "apikey:sqlite-admin" {
		t.Fatalf("register audit %+v", evs)
	}

	exec1(fmt.Sprintf("UPDATE api_key SET revoked_at = %d WHERE key_hash = '%s'", time.Now().UnixMilli(), hash))
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "test-admin-key", nil), 401, "API key revoked")
}

// TestAuthFailureMetrics covers §11 nixfleet_auth_failures_total and the
// `authentication failed` log line of §1.6: every reason is present from
// startup, and each kind of refusal raises exactly its own reason.
func TestAuthFailureMetrics(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator"}})
	op := ts.client("operator")
	reasons := []string{"missing", "invalid", "revoked", "expired", "forbidden", "cn_mismatch"}
	snapshot := func() map[string]float64 {
		t.Helper()
		m := map[string]float64{}
		for _, reason := range reasons {
			m[reason] = metricValue(t, op, ts.url, `nixfleet_auth_failures_total{reason="`+reason+`"}`)
		}
		return m
	}
	for reason, v := range snapshot() {
		if v != 0 {
			t.Fatalf("reason %s = %v at startup, want a 0 series", reason, v)
		}
	}
	admin := bootstrapKey(t, op, ts.url)
	readonly := createTestKey(t, op, ts.url, admin, "ro", "readonly")
	revoked := keysCreateAPI(t, op, ts.url, admin, `{"name":"gone"}`)
	expect(t, do(t, op, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, revoked.ID), admin, nil), 204, "")
	expiring := keysCreateAPI(t, op, ts.url, admin, map[string]any{"name": "old", "expires_at": ts.clock.now().Add(time.Second).Format(time.RFC3339)})
	ts.clock.advance(time.Minute)

	for _, tc := range []struct {
		name   string
		client *http.Client
		method string
		path   string
		hdr    map[string]string
		reason string // "" when nothing may be counted
	}{
		{"no key", op, "GET", "/api/v1/machines", nil, "missing"},
		{"no key on a 405 admin path", op, "PUT", "/api/v1/machines/web-01/desired-generation", nil, "missing"},
		{"unknown key", op, "GET", "/api/v1/machines", map[string]string{"Authorization": "Bearer nfk-unknown"}, "invalid"},
		{"malformed header", op, "GET", "/api/v1/machines", map[string]string{"Authorization": "Basic Zm9vOmJhcg=="}, "invalid"},
		{"revoked key", op, "GET", "/api/v1/machines", map[string]string{"Authorization": "Bearer " + revoked.Key}, "revoked"},
		{"expired key", op, "GET", "/api/v1/machines", map[string]string{"Authorization": "Bearer " + expiring.Key}, "expired"},
		{"role 403", op, "GET", "/api/v1/keys", map[string]string{"Authorization": "Bearer " + readonly}, "forbidden"},
		{"CN mismatch", ts.client("web-01"), "GET", "/api/v1/machines/web-02/desired-generation", nil, "cn_mismatch"},
		{"success", op, "GET", "/api/v1/machines", map[string]string{"Authorization": "Bearer " + admin}, ""},
		{"own agent route", ts.client("web-01"), "GET", "/api/v1/machines/web-01/desired-generation", nil, ""},
		{"unknown path", op, "GET", "/api/v1/nope", nil, ""},
		{"404 after authentication", op, "GET", "/api/v1/rollouts/r-ghost", map[string]string{"Authorization": "Bearer " + readonly}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot()
			logLines := strings.Count(ts.logs.String(), `msg="authentication failed" reason=`+tc.reason+" ")
			r := authSend(t, tc.client, tc.method, ts.url+tc.path, tc.hdr, "")
			if tc.reason == "" && (r.status == 401 || r.status == 403) {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			after := snapshot()
			for _, reason := range reasons {
				want := before[reason]
				if reason == tc.reason {
					want++
				}
				if after[reason] != want {
					t.Errorf("reason %s: %v -> %v, want %v", reason, before[reason], after[reason], want)
				}
			}
			if tc.reason != "" {
				if n := strings.Count(ts.logs.String(), `msg="authentication failed" reason=`+tc.reason+" "); n != logLines+1 {
					t.Errorf("%d new `authentication failed reason=%s` log lines, want 1", n-logLines, tc.reason)
				}
			}
		})
	}
}

// TestNoSecretsInLogs covers §1.6 and §3.1: a whole key life cycle at debug
// level (bootstrap with a token, create, use, revoke, failed
// authentications with wrong tokens, an offline `keys create`) never writes a
// token, a key hash, the bootstrap secret or PEM material to the logs.
func TestNoSecretsInLogs(t *testing.T) {
	const bootstrapSecret = "bootstrap-secret-0123456789"
	db := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapToken: bootstrapSecret, dbPath: db})
	op := ts.client("operator")
	url := ts.url + "/api/v1/keys/bootstrap"

	wrongBootstrap := "wrong-bootstrap-secret-42"
	expect(t, authSend(t, op, "POST", url, map[string]string{"X-Bootstrap-Token": wrongBootstrap}, ""), 403, "bootstrap token required")
	r := authSend(t, op, "POST", url, map[string]string{"X-Bootstrap-Token": bootstrapSecret}, `{"name":"first-admin"}`)
	expect(t, r, 200, "")
	var first keyCreated
	r.json(t, &first)
	admin := first.Key
	tokens := []string{admin}
	for _, role := range []string{"readonly", "deploy", "admin"} {
		k := createTestKey(t, op, ts.url, admin, "log-"+role, role)
		tokens = append(tokens, k)
		expect(t, do(t, op, "GET", ts.url+"/api/v1/machines", k, nil), 200, "")
	}
	expect(t, do(t, op, "POST", ts.url+"/api/v1/keys", tokens[1], `{"name":"nope"}`), 403, "admin role required")
	expect(t, do(t, op, "DELETE", ts.url+"/api/v1/keys/2", admin, nil), 204, "")
	authExpect401(t, do(t, op, "GET", ts.url+"/api/v1/machines", tokens[1], nil), "API key revoked")
	wrongKey := "nfk-" + strings.Repeat("ab", 32)
	authExpect401(t, do(t, op, "GET", ts.url+"/api/v1/machines", wrongKey, nil), "invalid API key")
	authExpect401(t, authSend(t, op, "GET", ts.url+"/api/v1/machines", map[string]string{"Authorization": "Basic " + admin}, ""),
		"invalid Authorization header")
	expect(t, do(t, ts.client("web-01"), "GET", ts.url+"/api/v1/machines/web-02/desired-generation", "", nil), 403, "")
	ts.clock.advance(2 * time.Minute) // last_used_at is rewritten on the next use
	expect(t, do(t, op, "GET", ts.url+"/api/v1/keys", admin, nil), 200, "")

	var cliOut, cliErr bytes.Buffer
	if err := run(context.Background(), []string{"keys", "create", "--name", "log-cli", "--role", "admin", "--db-path", db},
		func(string) string { return "" }, &cliOut, &cliErr); err != nil {
		t.Fatal(err)
	}
	cliKey := strings.TrimSpace(cliOut.String())
	tokens = append(tokens, cliKey)
	expect(t, do(t, op, "GET", ts.url+"/api/v1/machines", cliKey, nil), 200, "")

	logs := ts.logs.String()
	if !strings.Contains(logs, `msg="authentication failed"`) || !strings.Contains(logs, `msg=request`) {
		t.Fatalf("the session was not logged at debug level:\n%s", logs)
	}
	secrets := map[string]string{"bootstrap secret": bootstrapSecret, "wrong bootstrap secret": wrongBootstrap,
		"wrong key": wrongKey, "hash of wrong key": hashKey(wrongKey)}
	for i, tok := range tokens {
		secrets[fmt.Sprintf("token %d", i)] = tok
		secrets[fmt.Sprintf("hash of token %d", i)] = hashKey(tok)
	}
	for _, f := range []string{ts.pki.serverKey, ts.pki.serverCert, ts.pki.clientFile["operator"][1]} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Every base64 line of the PEM body.
		for i, line := range strings.Split(string(b), "\n") {
			if len(line) >= 32 && !strings.HasPrefix(line, "-----") {
				secrets[fmt.Sprintf("%s line %d", filepath.Base(f), i)] = line
			}
		}
	}
	for _, where := range []struct{ name, text string }{{"server log", logs}, {"keys create stderr", cliErr.String()}} {
		for what, s := range secrets {
			if strings.Contains(where.text, s) {
				t.Errorf("%s contains the %s", where.name, what)
			}
		}
		for _, marker := range []string{"-----BEGIN", "PRIVATE KEY", "nfk-", "Bearer", "X-Bootstrap-Token"} {
			if strings.Contains(where.text, marker) {
				t.Errorf("%s contains %q", where.name, marker)
			}
		}
	}
	// And the API never hands a hash back either (§4.28).
	r = do(t, op, "GET", ts.url+"/api/v1/keys", admin, nil)
	expect(t, r, 200, "")
	var list []map[string]any
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	for _, tok := range tokens {
		if bytes.Contains(r.body, []byte(tok)) || bytes.Contains(r.body, []byte(hashKey(tok))) {
			t.Errorf("GET /api/v1/keys exposes a token or hash: %s", r.body)
		}
	}
}

// TestBootstrapGuardLog checks that the startup log says exactly how
// bootstrap is guarded, for every combination of mode, token file and
// --bootstrap-cn, and that it is closed once a key exists (§3.3).
func TestBootstrapGuardLog(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    testServerOptions
		want string
	}{
		{"plain, no token", testServerOptions{},
			`level=WARN msg="no API keys exist: POST /api/v1/keys/bootstrap is open" hint="set --bootstrap-token-file to require a one-time secret"`},
		{"tls, no token", testServerOptions{mode: "tls"},
			`level=WARN msg="no API keys exist: POST /api/v1/keys/bootstrap is open"`},
		{"plain, token", testServerOptions{bootstrapToken: "0123456789abcdef"},
			`level=INFO msg="no API keys exist: POST /api/v1/keys/bootstrap requires the secret of --bootstrap-token-file"` + "\n"},
		{"mtls, token", testServerOptions{mode: "mtls", bootstrapToken: "0123456789abcdef"},
			`level=INFO msg="no API keys exist: POST /api/v1/keys/bootstrap requires the secret of --bootstrap-token-file and a client certificate with a single CN that is not a registered machine"`},
		{"mtls, CNs", testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator", "ops"}},
			`level=INFO msg="no API keys exist: POST /api/v1/keys/bootstrap accepts client certificates whose CN is in --bootstrap-cn and is not a registered machine" cns=operator,ops`},
		{"mtls, neither", testServerOptions{mode: "mtls"},
			`level=WARN msg="no API keys exist and ` + bootstrapClosed + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, tc.o)
			ts.srv.logBootstrapGuard(t.Context())
			if logs := ts.logs.String(); !strings.Contains(logs, tc.want) {
				t.Fatalf("log lacks %s:\n%s", tc.want, logs)
			}
		})
	}
	t.Run("a key exists", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{})
		bootstrapKey(t, ts.client(""), ts.url)
		ts.srv.logBootstrapGuard(t.Context())
		if logs := ts.logs.String(); !strings.Contains(logs, `level=INFO msg="bootstrap is closed: API keys exist"`) {
			t.Fatalf("log:\n%s", logs)
		}
	})
}
