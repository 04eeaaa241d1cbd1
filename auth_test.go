package main

// Authentication and authorisation tests (SPEC §3, §4.4, §2.6 steps 2–4):
// bootstrap and its hardening, the Authorization header rules, the roles
// matrix of every route, the mTLS CN rule, and that no secret is ever logged.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

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
		expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, first.ID), second.Key, nil), 204, "")
		ts.clock.advance(2 * time.Hour)
		authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", second.Key, nil), "API key expired")
		authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", first.Key, nil), "API key revoked")
		expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil), 409,
			"API keys already exist. Use an admin key to create more.")
	})
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

// TestBootstrapMTLSACC16b covers the mTLS half of ACC-16b: once web-01 has
// reported, its certificate cannot bootstrap; CN operator can.
func TestBootstrapMTLSACC16b(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls"})
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

// TestRoleChecksACC20to23 covers ACC-20 to ACC-23 and the order of §2.6:
// authentication and role come before IDs, bodies and existence.
func TestRoleChecksACC20to23(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	deploy := createTestKey(t, c, ts.url, admin, "deployer", "deploy")
	readonly := createTestKey(t, c, ts.url, admin, "viewer", "readonly")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", storePath('a', "sys"), true, "ok")), 200, "")
	r := do(t, c, "POST", ts.url+"/api/v1/releases", deploy, map[string]any{"entries": []map[string]any{
		{"hostname": "web-01", "store_path": storePath('b', "sys"), "platform": "x86_64-linux"}}})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	validRollout := map[string]any{"release_id": rel.ID, "strategy": "all_at_once", "target": map[string]any{"hosts": []string{"web-01"}}}

	for _, tc := range []struct {
		acc, name    string
		key          string
		method, path string
		body         any
		ctype        string // overrides the JSON Content-Type when set
		wantStatus   int
		wantErr      string
	}{
		{"ACC-20", "readonly with malformed body", readonly, "POST", "/api/v1/rollouts", `{"release_id":`, "", 403, "deploy or admin role required"},
		{"ACC-20", "readonly with valid body", readonly, "POST", "/api/v1/rollouts", validRollout, "", 403, "deploy or admin role required"},
		{"ACC-20", "readonly with wrong content type", readonly, "POST", "/api/v1/rollouts", `x`, "text/plain", 403, "deploy or admin role required"},
		{"ACC-20", "anonymous with malformed body", "", "POST", "/api/v1/rollouts", `{`, "", 401, "missing API key"},
		{"ACC-20", "deploy with valid body", deploy, "POST", "/api/v1/rollouts", validRollout, "", 201, ""},
		{"ACC-21", "anonymous get unknown rollout", "", "GET", "/api/v1/rollouts/r-ghost", nil, "", 401, "missing API key"},
		{"ACC-21", "anonymous delete unknown release", "", "DELETE", "/api/v1/releases/rel-ghost", nil, "", 401, "missing API key"},
		{"ACC-21", "anonymous invalid rollout id", "", "GET", "/api/v1/rollouts/bad%20id", nil, "", 401, "missing API key"},
		{"ACC-21", "anonymous invalid key id", "", "DELETE", "/api/v1/keys/abc", nil, "", 401, "missing API key"},
		{"ACC-21", "readonly get unknown rollout", readonly, "GET", "/api/v1/rollouts/r-ghost", nil, "", 404, "rollout r-ghost not found"},
		{"ACC-21", "deploy delete release", deploy, "DELETE", "/api/v1/releases/rel-ghost", nil, "", 403, "admin role required"},
		{"ACC-21", "admin delete unknown release", admin, "DELETE", "/api/v1/releases/rel-ghost", nil, "", 404, "release rel-ghost not found"},
		// §2.6 step 2: a known admin path with the wrong method authenticates first.
		{"§2.6", "anonymous GET on bootstrap path", "", "GET", "/api/v1/keys/bootstrap", nil, "", 401, "missing API key"},
		{"§2.6", "anonymous PUT desired-generation", "", "PUT", "/api/v1/machines/web-01/desired-generation", nil, "", 401, "missing API key"},
		{"§2.6", "admin PUT desired-generation", admin, "PUT", "/api/v1/machines/web-01/desired-generation", nil, "", 405, "method not allowed"},
		{"§2.6", "anonymous unknown path", "", "GET", "/api/v1/nope", nil, "", 404, "not found"},
		// §2.6: the role check (step 4) comes before path ids (step 5).
		{"§2.6", "readonly revoke with a bad key id", readonly, "DELETE", "/api/v1/keys/abc", nil, "", 403, "admin role required"},
		{"§2.6", "deploy lifecycle with a bad machine id", deploy, "PATCH", "/api/v1/machines/bad%20id/lifecycle", `{`, "", 403, "admin role required"},
		{"§2.6", "admin revoke with a bad key id", admin, "DELETE", "/api/v1/keys/abc", nil, "", 400, "invalid key id"},
		{"ACC-22", "deploy delete existing release", deploy, "DELETE", "/api/v1/releases/" + rel.ID, nil, "", 403, "admin role required"},
		{"ACC-22", "deploy register", deploy, "POST", "/api/v1/machines/x/register", `{}`, "", 403, "admin role required"},
		{"ACC-22", "deploy list keys", deploy, "GET", "/api/v1/keys", nil, "", 403, "admin role required"},
		{"ACC-23", "readonly machines", readonly, "GET", "/api/v1/machines", nil, "", 200, ""},
		{"ACC-23", "readonly releases", readonly, "GET", "/api/v1/releases", nil, "", 200, ""},
		{"ACC-23", "readonly rollouts", readonly, "GET", "/api/v1/rollouts", nil, "", 200, ""},
		{"ACC-23", "readonly audit", readonly, "GET", "/api/v1/audit", nil, "", 200, ""},
		{"ACC-23", "readonly audit export", readonly, "GET", "/api/v1/audit/export", nil, "", 200, ""},
	} {
		t.Run(tc.acc+" "+tc.name, func(t *testing.T) {
			var r response
			if tc.ctype != "" {
				hdr := map[string]string{"Content-Type": tc.ctype}
				if tc.key != "" {
					hdr["Authorization"] = "Bearer " + tc.key
				}
				r = authSend(t, c, tc.method, ts.url+tc.path, hdr, tc.body.(string))
			} else {
				r = do(t, c, tc.method, ts.url+tc.path, tc.key, tc.body)
			}
			expect(t, r, tc.wantStatus, tc.wantErr)
			if tc.wantStatus == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="nixfleet"` {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
			if tc.wantStatus == 405 && r.header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
}

// authRolesMatrix is SPEC §3.4, copied with the backticks removed and the
// columns aligned. TestRolesMatrix checks it against SPEC.md when the spec is
// at hand, and against the server's route table always.
const authRolesMatrix = `
| #  | Route                                           | public                       | agent (mTLS CN) | readonly | deploy | admin |
|--- |---                                              |---                           |---              |---       |---     |---    |
| 1  | GET /health                                     | ✓                            |                 |          |        |       |
| 2  | GET /metrics                                    | ✓                            |                 |          |        |       |
| 3  | POST /api/v1/keys/bootstrap                     | ✓ (only while no key exists) |                 |          |        |       |
| 4  | GET /api/v1/machines/{id}/desired-generation    |                              | ✓               |          |        |       |
| 5  | POST /api/v1/machines/{id}/report               |                              | ✓               |          |        |       |
| 6  | GET /api/v1/machines                            |                              |                 | ✓        | ✓      | ✓     |
| 7  | POST /api/v1/machines/{id}/register             |                              |                 | ✗        | ✗      | ✓     |
| 8  | PATCH /api/v1/machines/{id}/lifecycle           |                              |                 | ✗        | ✗      | ✓     |
| 9  | PUT /api/v1/machines/{id}/tags                  |                              |                 | ✗        | ✗      | ✓     |
| 10 | DELETE /api/v1/machines/{id}/desired-generation |                              |                 | ✗        | ✗      | ✓     |
| 11 | POST /api/v1/machines/{id}/notify-deploy        |                              |                 | ✗        | ✓      | ✓     |
| 12 | POST /api/v1/releases                           |                              |                 | ✗        | ✓      | ✓     |
| 13 | GET /api/v1/releases                            |                              |                 | ✓        | ✓      | ✓     |
| 14 | GET /api/v1/releases/{id}                       |                              |                 | ✓        | ✓      | ✓     |
| 15 | DELETE /api/v1/releases/{id}                    |                              |                 | ✗        | ✗      | ✓     |
| 16 | GET /api/v1/releases/{id}/diff/{other_id}       |                              |                 | ✓        | ✓      | ✓     |
| 17 | POST /api/v1/rollouts                           |                              |                 | ✗        | ✓      | ✓     |
| 18 | GET /api/v1/rollouts                            |                              |                 | ✓        | ✓      | ✓     |
| 19 | GET /api/v1/rollouts/{id}                       |                              |                 | ✓        | ✓      | ✓     |
| 20 | DELETE /api/v1/rollouts/{id}                    |                              |                 | ✗        | ✗      | ✓     |
| 21 | POST /api/v1/rollouts/{id}/pause                |                              |                 | ✗        | ✓      | ✓     |
| 22 | POST /api/v1/rollouts/{id}/resume               |                              |                 | ✗        | ✓      | ✓     |
| 23 | POST /api/v1/rollouts/{id}/cancel               |                              |                 | ✗        | ✓      | ✓     |
| 24 | GET /api/v1/audit                               |                              |                 | ✓        | ✓      | ✓     |
| 25 | GET /api/v1/audit/export                        |                              |                 | ✓        | ✓      | ✓     |
| 26 | POST /api/v1/keys                               |                              |                 | ✗        | ✗      | ✓     |
| 27 | GET /api/v1/keys                                |                              |                 | ✗        | ✗      | ✓     |
| 28 | DELETE /api/v1/keys/{id}                        |                              |                 | ✗        | ✗      | ✓     |
`

// authParseTable returns the cells of the body rows of the first
// markdown table in text (header and separator rows skipped), trimmed, with
// backticks removed.
func authParseTable(text string) [][]string {
	var rows [][]string
	started := false
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if started {
				break
			}
			continue
		}
		started = true
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(strings.ReplaceAll(cells[i], "`", ""))
		}
		if cells[0] == "#" || strings.HasPrefix(cells[0], "---") {
			continue
		}
		rows = append(rows, cells)
	}
	return rows
}

// authMatrixCaller is one column of callers in TestRolesMatrix.
type authMatrixCaller struct {
	name string
	key  string
	role string // readonly, deploy or admin for a valid key; "" otherwise
	deny string // for anonymous, revoked and expired: the 401 message
}

// TestRolesMatrix covers §3.4, §3.6 and ACC-20–23 on every route: each of
// the 28 routes is called by anonymous, readonly, deploy, admin, a revoked
// admin key and an expired admin key, and the answer must be exactly 401,
// exactly 403 (with the role message), or allowed (neither 401 nor 403: the
// handler ran). Public and agent routes never look at Authorization.
func TestRolesMatrix(t *testing.T) {
	rows := authParseTable(authRolesMatrix)
	if spec, err := os.ReadFile(filepath.Join("..", "shared", "SPEC.md")); err == nil {
		_, section, ok := strings.Cut(string(spec), "### 3.4 Roles matrix")
		if !ok {
			t.Fatal("SPEC.md has no §3.4 Roles matrix")
		}
		want := authParseTable(section)
		if fmt.Sprint(want) != fmt.Sprint(rows) {
			t.Fatalf("authRolesMatrix differs from SPEC.md §3.4:\nspec: %q\ntest: %q", want, rows)
		}
	} else {
		t.Logf("SPEC.md not available (%v): using the copy in the test", err)
	}

	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")

	// The server's route table has exactly the routes of the matrix.
	var serverRoutes, matrixRoutes []string
	serverRoutes = append(serverRoutes, ts.srv.patterns...)
	for _, row := range rows {
		matrixRoutes = append(matrixRoutes, row[1])
	}
	if len(rows) != 28 || fmt.Sprint(serverRoutes) != fmt.Sprint(matrixRoutes) {
		t.Fatalf("routes differ:\nserver: %q\nmatrix: %q", serverRoutes, matrixRoutes)
	}

	// Fixtures: keys of every kind, machines, releases and a rollout, so that
	// every allowed call reaches a handler that can do its work.
	admin := bootstrapKey(t, c, ts.url)
	readonly := createTestKey(t, c, ts.url, admin, "matrix-readonly", "readonly")
	deploy := createTestKey(t, c, ts.url, admin, "matrix-deploy", "deploy")
	createTestKey(t, c, ts.url, admin, "matrix-spare", "readonly")
	revoked := createTestKey(t, c, ts.url, admin, "matrix-revoked", "admin")
	r := do(t, c, "POST", ts.url+"/api/v1/keys", admin, map[string]any{"name": "matrix-expired", "role": "admin",
		"expires_at": ts.clock.now().Add(time.Minute).Format(time.RFC3339Nano)})
	expect(t, r, 201, "")
	var expiredKey keyCreated
	r.json(t, &expiredKey)
	var keys []keyInfo
	do(t, c, "GET", ts.url+"/api/v1/keys", admin, nil).json(t, &keys)
	ids := map[string]int64{}
	for _, k := range keys {
		ids[k.Name] = k.ID
	}
	expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, ids["matrix-revoked"]), admin, nil), 204, "")
	ts.clock.advance(2 * time.Minute)

	for _, id := range []string{"web-01", "web-02"} {
		expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, storePath('a', "sys"), true, "ok")), 200, "")
	}
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-03/register", admin, `{"tags":["web"]}`), 201, "")
	newRelease := func() string {
		r := do(t, c, "POST", ts.url+"/api/v1/releases", admin, map[string]any{"entries": []map[string]any{
			{"hostname": "web-01", "store_path": storePath('c', "sys"), "platform": "x86_64-linux"},
			{"hostname": "web-02", "store_path": storePath('d', "sys"), "platform": "x86_64-linux"}}})
		expect(t, r, 201, "")
		var rel struct{ ID string }
		r.json(t, &rel)
		return rel.ID
	}
	rel1, rel2, rel3 := newRelease(), newRelease(), newRelease()
	r = do(t, c, "POST", ts.url+"/api/v1/rollouts", admin, map[string]any{"release_id": rel1, "strategy": "all_at_once",
		"target": map[string]any{"hosts": []string{"web-01"}}})
	expect(t, r, 201, "")
	var ro createRolloutResponse
	r.json(t, &ro)

	// One valid request per route, and the statuses its handler may give an
	// allowed caller (a later caller may find the work already done).
	type call struct {
		path    string
		body    any
		allowed []int
	}
	calls := map[string]call{
		"GET /health":                 {"/health", nil, []int{200}},
		"GET /metrics":                {"/metrics", nil, []int{200}},
		"POST /api/v1/keys/bootstrap": {"/api/v1/keys/bootstrap", `{"name":"again"}`, []int{409}},
		"GET /api/v1/machines/{id}/desired-generation": {"/api/v1/machines/web-01/desired-generation", nil, []int{404}},
		"POST /api/v1/machines/{id}/report": {"/api/v1/machines/web-02/report",
			reportBody("web-02", storePath('a', "sys"), true, "ok"), []int{200}},
		"GET /api/v1/machines":                            {"/api/v1/machines", nil, []int{200}},
		"POST /api/v1/machines/{id}/register":             {"/api/v1/machines/web-04/register", `{"tags":["db"]}`, []int{201}},
		"PATCH /api/v1/machines/{id}/lifecycle":           {"/api/v1/machines/web-03/lifecycle", `{"lifecycle":"maintenance"}`, []int{200}},
		"PUT /api/v1/machines/{id}/tags":                  {"/api/v1/machines/web-03/tags", `{"tags":["web","eu"]}`, []int{200}},
		"DELETE /api/v1/machines/{id}/desired-generation": {"/api/v1/machines/web-03/desired-generation", nil, []int{204}},
		"POST /api/v1/machines/{id}/notify-deploy": {"/api/v1/machines/web-03/notify-deploy",
			map[string]any{"store_path": storePath('g', "sys")}, []int{200}},
		"POST /api/v1/releases": {"/api/v1/releases", map[string]any{"entries": []map[string]any{
			{"hostname": "web-02", "store_path": storePath('f', "sys"), "platform": "x86_64-linux"}}}, []int{201}},
		"GET /api/v1/releases":                      {"/api/v1/releases", nil, []int{200}},
		"GET /api/v1/releases/{id}":                 {"/api/v1/releases/" + rel1, nil, []int{200}},
		"DELETE /api/v1/releases/{id}":              {"/api/v1/releases/" + rel3, nil, []int{204}},
		"GET /api/v1/releases/{id}/diff/{other_id}": {"/api/v1/releases/" + rel1 + "/diff/" + rel2, nil, []int{200}},
		"POST /api/v1/rollouts": {"/api/v1/rollouts", map[string]any{"release_id": rel2, "strategy": "all_at_once",
			"target": map[string]any{"hosts": []string{"web-02"}}}, []int{201, 409}},
		"GET /api/v1/rollouts":              {"/api/v1/rollouts", nil, []int{200}},
		"GET /api/v1/rollouts/{id}":         {"/api/v1/rollouts/" + ro.RolloutID, nil, []int{200}},
		"DELETE /api/v1/rollouts/{id}":      {"/api/v1/rollouts/" + ro.RolloutID, nil, []int{409}},
		"POST /api/v1/rollouts/{id}/pause":  {"/api/v1/rollouts/" + ro.RolloutID + "/pause", nil, []int{200, 409}},
		"POST /api/v1/rollouts/{id}/resume": {"/api/v1/rollouts/" + ro.RolloutID + "/resume", nil, []int{200, 409}},
		"POST /api/v1/rollouts/{id}/cancel": {"/api/v1/rollouts/" + ro.RolloutID + "/cancel", nil, []int{200, 409}},
		"GET /api/v1/audit":                 {"/api/v1/audit", nil, []int{200}},
		"GET /api/v1/audit/export":          {"/api/v1/audit/export", nil, []int{200}},
		"POST /api/v1/keys":                 {"/api/v1/keys", `{"name":"matrix-new","role":"readonly"}`, []int{201}},
		"GET /api/v1/keys":                  {"/api/v1/keys", nil, []int{200}},
		"DELETE /api/v1/keys/{id}":          {fmt.Sprintf("/api/v1/keys/%d", ids["matrix-spare"]), nil, []int{204}},
	}
	callers := []authMatrixCaller{
		{name: "anonymous", deny: "missing API key"},
		{name: "readonly", key: readonly, role: "readonly"},
		{name: "deploy", key: deploy, role: "deploy"},
		{name: "admin", key: admin, role: "admin"},
		{name: "revoked key", key: revoked, deny: "API key revoked"},
		{name: "expired key", key: expiredKey.Key, deny: "API key expired"},
	}

	for _, row := range rows {
		num, route, public, agentCol := row[0], row[1], row[2], row[3]
		roleCell := map[string]string{"readonly": row[4], "deploy": row[5], "admin": row[6]}
		cl, ok := calls[route]
		if !ok {
			t.Fatalf("no request for route %s", route)
		}
		method, _, _ := strings.Cut(route, " ")
		open := strings.HasPrefix(public, "✓") || strings.HasPrefix(agentCol, "✓")
		roleMsg := "admin role required"
		if roleCell["deploy"] == "✓" {
			roleMsg = "deploy or admin role required"
		}
		t.Run(num+" "+route, func(t *testing.T) {
			for _, who := range callers {
				t.Run(who.name, func(t *testing.T) {
					r := do(t, c, method, ts.url+cl.path, who.key, cl.body)
					switch {
					case open:
						// Routes 1–5 never look at Authorization.
					case who.role == "":
						authExpect401(t, r, who.deny)
						return
					case roleCell[who.role] == "✗":
						expect(t, r, 403, roleMsg)
						return
					case roleCell[who.role] != "✓":
						t.Fatalf("matrix cell %q for %s", roleCell[who.role], who.role)
					}
					if r.status == 401 || r.status == 403 || !slices.Contains(cl.allowed, r.status) {
						t.Fatalf("allowed caller got %d, want one of %v: %s", r.status, cl.allowed, r.body)
					}
				})
			}
		})
	}
}

// TestAgentCNRuleACC31to34 covers ACC-31, ACC-33 and ACC-34 and the
// byte-for-byte CN comparison of §3.5 (ACC-32's refusals are in
// TestMTLSMatrix).
func TestAgentCNRuleACC31to34(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls"})
	op, web01 := ts.client("operator"), ts.client("web-01")
	admin := bootstrapKey(t, op, ts.url)
	desired := ts.url + "/api/v1/machines/web-01/desired-generation"

	// ACC-31: the machine's own routes are never 403.
	expect(t, do(t, web01, "GET", desired, "", nil), 404, "no desired generation")
	expect(t, do(t, web01, "POST", ts.url+"/api/v1/machines/web-01/report", "",
		reportBody("web-01", storePath('a', "sys"), true, "up-to-date")), 200, "")
	expect(t, do(t, web01, "GET", desired, "", nil), 404, "no desired generation")
	target := storePath('b', "sys")
	expect(t, do(t, op, "POST", ts.url+"/api/v1/machines/web-01/notify-deploy", admin, map[string]any{"store_path": target}), 200, "")
	r := do(t, web01, "GET", desired, "", nil)
	expect(t, r, 200, "")
	var dg desiredGeneration
	r.json(t, &dg)
	if dg.Hash != target {
		t.Fatalf("desired %+v, want %s", dg, target)
	}
	// The CN is compared with the decoded path id, byte for byte.
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines/web%2D01/desired-generation", "", nil), 200, "")
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines/WEB-01/desired-generation", "", nil), 403,
		"client certificate CN does not match machine id")
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines/web-01.x/desired-generation", "", nil), 403,
		"client certificate CN does not match machine id")

	// ACC-33: admin routes need the key, and do not check the CN.
	ms := listMachinesT(t, op, ts.url, admin, "")
	if len(ms) != 1 || ms[0].MachineID != "web-01" {
		t.Fatalf("machines %+v", ms)
	}
	authExpect401(t, do(t, web01, "GET", ts.url+"/api/v1/machines", "", nil), "missing API key")
	expect(t, do(t, web01, "GET", ts.url+"/api/v1/machines", admin, nil), 200, "")
	expect(t, do(t, ts.client("web-02"), "GET", ts.url+"/api/v1/machines", admin, nil), 200, "")

	// ACC-34: without a verified certificate (plain and TLS modes) the agent
	// routes are open for any machine id.
	for _, mode := range []string{"plain", "tls"} {
		t.Run("ACC-34 "+mode, func(t *testing.T) {
			ts := newTestServer(t, testServerOptions{mode: mode})
			c := ts.client("")
			for _, id := range []string{"web-01", "db-7", "anything.at_all"} {
				expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/report", "",
					reportBody(id, storePath('a', "sys"), true, "ok")), 200, "")
				expect(t, do(t, c, "GET", ts.url+"/api/v1/machines/"+id+"/desired-generation", "", nil), 404, "no desired generation")
			}
			if mode == "tls" {
				// A certificate offered by the client is not even requested.
				expect(t, do(t, ts.client("web-01"), "POST", ts.url+"/api/v1/machines/web-02/report", "",
					reportBody("web-02", storePath('a', "sys"), true, "ok")), 200, "")
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
