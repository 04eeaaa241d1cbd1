package main

// API key tests (keys.go, SPEC §1.3, §3.1, §4.27–§4.29, §5.8, §10.2): the
// offline `keys create` subcommand, creation and validation, expiry on the
// fake clock, last_used_at, revocation, the last-admin rule and the audit
// rows. Authentication with keys is in auth_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// keysList returns GET /api/v1/keys decoded.
func keysList(t testing.TB, c *http.Client, base, admin string) []keyInfo {
	t.Helper()
	r := do(t, c, "GET", base+"/api/v1/keys", admin, nil)
	expect(t, r, 200, "")
	var ks []keyInfo
	r.json(t, &ks)
	return ks
}

// keysByName returns the listed key with the given name that is not revoked,
// or the last one with that name.
func keysByName(t testing.TB, ks []keyInfo, name string) keyInfo {
	t.Helper()
	var found *keyInfo
	for i := range ks {
		if ks[i].Name == name {
			found = &ks[i]
			if ks[i].RevokedAt == nil {
				return ks[i]
			}
		}
	}
	if found == nil {
		t.Fatalf("no key named %q in %+v", name, ks)
	}
	return *found
}

// keysRunCLI runs `keys create` through run and returns its output and error.
func keysRunCLI(getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var out, errOut bytes.Buffer
	err = run(context.Background(), append([]string{"keys", "create"}, args...), getenv, &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestKeysCreateCLIACC7 covers ACC-7 and §1.3: `keys create` against the
// database of a running server prints the key alone on stdout and a summary
// on stderr; the server accepts the key on the next request; the audit row
// is key.created by system:cli.
func TestKeysCreateCLIACC7(t *testing.T) {
	rs := startRun(t, nil)
	c := &http.Client{Timeout: 30 * time.Second}
	admin := bootstrapKey(t, c, rs.url)

	stdout, stderr, err := keysRunCLI(nil, "--name", "ops", "--role", "admin", "--db-path", rs.dbPath)
	if err != nil {
		t.Fatalf("keys create: %v\nstderr: %s", err, stderr)
	}
	key := strings.TrimSuffix(stdout, "\n")
	if !authKeyTokenRE.MatchString(key) || stdout != key+"\n" {
		t.Fatalf("stdout %q: want the key alone on one line", stdout)
	}
	if stderr != "created key id=2 name=ops role=admin\n" {
		t.Fatalf("stderr %q", stderr)
	}
	// The running server sees the new row on the next request.
	ks := keysList(t, c, rs.url, key)
	ops := keysByName(t, ks, "ops")
	if ops.ID != 2 || ops.Role != "admin" || ops.ExpiresAt != nil || ops.RevokedAt != nil {
		t.Fatalf("listed %+v", ops)
	}
	rows := auditRows(t, c, rs.url, admin, "?action=key.created")
	if len(rows) != 1 || rows[0].Actor != "system:cli" || rows[0].Target != "2" ||
		rows[0].Detail == nil || *rows[0].Detail != "name=ops role=admin" {
		t.Fatalf("audit %+v", rows)
	}

	t.Run("default role, expiry and NIXFLEET_CP_DB_PATH", func(t *testing.T) {
		getenv := func(k string) string {
			if k == "NIXFLEET_CP_DB_PATH" {
				return rs.dbPath
			}
			return ""
		}
		stdout, stderr, err := keysRunCLI(getenv, "--name", "ci viewer", "--expires-at", "2099-01-01T01:00:00.25+01:00")
		if err != nil {
			t.Fatalf("keys create: %v\n%s", err, stderr)
		}
		if !strings.HasPrefix(stderr, "created key id=") || !strings.HasSuffix(stderr, " name=ci viewer role=readonly\n") {
			t.Fatalf("stderr %q", stderr)
		}
		k := keysByName(t, keysList(t, c, rs.url, admin), "ci viewer")
		if k.Role != "readonly" || k.ExpiresAt == nil || *k.ExpiresAt != "2099-01-01T00:00:00.250Z" {
			t.Fatalf("listed %+v", k)
		}
		expect(t, do(t, c, "GET", rs.url+"/api/v1/machines", strings.TrimSpace(stdout), nil), 200, "")
		rows := auditRows(t, c, rs.url, admin, "?action=key.created&target="+strconv.FormatInt(k.ID, 10))
		if len(rows) != 1 || rows[0].Actor != "system:cli" || *rows[0].Detail != "name=ci viewer role=readonly expires_at=2099-01-01T00:00:00.250Z" {
			t.Fatalf("audit %+v", rows)
		}
	})

	t.Run("usage errors", func(t *testing.T) {
		before := len(keysList(t, c, rs.url, admin))
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"missing --name", []string{"--role", "admin"}},
			{"empty --name", []string{"--name", ""}},
			{"65-byte name", []string{"--name", strings.Repeat("n", 65)}},
			{"control character in name", []string{"--name", "a\tb"}},
			{"bad role", []string{"--name", "x", "--role", "superuser"}},
			{"role is case-sensitive", []string{"--name", "x", "--role", "Admin"}},
			{"past --expires-at", []string{"--name", "x", "--expires-at", "2000-01-01T00:00:00Z"}},
			{"--expires-at not RFC 3339", []string{"--name", "x", "--expires-at", "tomorrow"}},
			{"unknown flag", []string{"--name", "x", "--bogus"}},
			{"positional argument", []string{"--name", "x", "extra"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				stdout, _, err := keysRunCLI(nil, append(tc.args, "--db-path", rs.dbPath)...)
				var ue *usageError
				if !errors.As(err, &ue) {
					t.Fatalf("got %v, want a usage error (exit 2)", err)
				}
				if stdout != "" {
					t.Errorf("stdout %q on error", stdout)
				}
			})
		}
		if n := len(keysList(t, c, rs.url, admin)); n != before {
			t.Fatalf("%d keys after usage errors, want %d", n, before)
		}
	})

	t.Run("missing database is not a usage error and is not created", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope", "state.db")
		stdout, _, err := keysRunCLI(nil, "--name", "x", "--db-path", missing)
		var ue *usageError
		if err == nil || errors.As(err, &ue) {
			t.Fatalf("got %v, want a runtime error (exit 1)", err)
		}
		if err.Error() != "database "+missing+" does not exist" {
			t.Errorf("error %q, want %q", err, "database "+missing+" does not exist")
		}
		if stdout != "" {
			t.Errorf("stdout %q", stdout)
		}
		if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("keys create created the database (stat: %v)", err)
		}
	})

	t.Run("name conflict is not a usage error", func(t *testing.T) {
		stdout, _, err := keysRunCLI(nil, "--name", "ops", "--db-path", rs.dbPath)
		var ue *usageError
		if err == nil || errors.As(err, &ue) {
			t.Fatalf("got %v, want a runtime error (exit 1)", err)
		}
		if !strings.Contains(err.Error(), "in use") {
			t.Errorf("error %q does not say the name is in use", err)
		}
		if stdout != "" {
			t.Errorf("stdout %q", stdout)
		}
	})
}

// TestKeysCreateExitCodes checks the real exit statuses of `keys create`
// (§1.3, §1.6): 0 with the key alone on stdout, 2 for usage errors, 1 for a
// missing database or a name conflict.
func TestKeysCreateExitCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	db := filepath.Join(t.TempDir(), "state.db")
	// Create the database by starting and stopping a server on it.
	rs := startRun(t, nil, "--db-path", db)
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.db")
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
	}{
		{"success", []string{"--name", "ops", "--role", "deploy", "--db-path", db}, 0},
		{"missing --name", []string{"--db-path", db}, 2},
		{"bad role", []string{"--name", "x", "--role", "root", "--db-path", db}, 2},
		{"past expiry", []string{"--name", "x", "--expires-at", "2001-01-01T00:00:00Z", "--db-path", db}, 2},
		{"missing database", []string{"--name", "x", "--db-path", missing}, 1},
		{"name conflict", []string{"--name", "ops", "--db-path", db}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"keys", "create"}, tc.args...)...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.wantCode, stderr.String())
			}
			if tc.wantCode == 0 {
				if !authKeyTokenRE.MatchString(strings.TrimSuffix(stdout.String(), "\n")) ||
					!strings.HasPrefix(stderr.String(), "created key id=") {
					t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
				}
			} else if stdout.Len() != 0 {
				t.Errorf("stdout %q on failure", stdout.String())
			}
			if tc.name == "missing database" && !strings.Contains(stderr.String(), "database "+missing+" does not exist") {
				t.Errorf("stderr %q", stderr.String())
			}
		})
	}
}

// TestCreateKeyACC24ACC25 covers ACC-24 and ACC-25 and §4.27: the 201
// KeyCreated body, the default role, expires_at normalisation, validation,
// and name uniqueness among unrevoked keys.
func TestCreateKeyACC24ACC25(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)

	// ACC-24: the exact shape, and the key works for its role.
	r := do(t, c, "POST", ts.url+"/api/v1/keys", admin, `{"name":"ci","role":"deploy"}`)
	expect(t, r, 201, "")
	var raw map[string]any
	r.json(t, &raw)
	var gotKeys []string
	for k := range raw {
		gotKeys = append(gotKeys, k)
	}
	slices.Sort(gotKeys)
	if !slices.Equal(gotKeys, []string{"created_at", "expires_at", "id", "key", "name", "role"}) || raw["expires_at"] != nil {
		t.Fatalf("KeyCreated %s", r.body)
	}
	var ci keyCreated
	r.json(t, &ci)
	if ci.ID != 2 || !authKeyTokenRE.MatchString(ci.Key) || ci.Name != "ci" || ci.Role != "deploy" ||
		ci.CreatedAt != "2026-04-11T09:30:00.000Z" || ci.ExpiresAt != nil {
		t.Fatalf("KeyCreated %+v", ci)
	}
	expect(t, do(t, c, "POST", ts.url+"/api/v1/releases", ci.Key, map[string]any{"entries": []map[string]any{
		{"hostname": "web-01", "store_path": storePath('a', "sys"), "platform": "x86_64-linux"}}}), 201, "")

	// ACC-25: the default role.
	viewer := keysCreateAPI(t, c, ts.url, admin, `{"name":"viewer"}`)
	if viewer.Role != "readonly" {
		t.Fatalf("default role %q", viewer.Role)
	}
	expect(t, do(t, c, "POST", ts.url+"/api/v1/releases", viewer.Key, `{}`), 403, "deploy or admin role required")
	if k := keysCreateAPI(t, c, ts.url, admin, `{"name":"nullrole","role":null,"expires_at":null}`); k.Role != "readonly" || k.ExpiresAt != nil {
		t.Fatalf("null role and expiry: %+v", k)
	}
	// Input timestamps take any offset and are stored at millisecond precision.
	k := keysCreateAPI(t, c, ts.url, admin, `{"name":"later","role":"admin","expires_at":"2026-04-11T11:30:00.5+01:00"}`)
	if k.ExpiresAt == nil || *k.ExpiresAt != "2026-04-11T10:30:00.500Z" {
		t.Fatalf("expires_at %v", k.ExpiresAt)
	}
	if k := keysCreateAPI(t, c, ts.url, admin, map[string]any{"name": strings.Repeat("n", 64)}); k.Name != strings.Repeat("n", 64) {
		t.Fatalf("64-byte name: %+v", k)
	}
	if k := keysCreateAPI(t, c, ts.url, admin, map[string]any{"name": " !~ printable ASCII ~! "}); k.Name != " !~ printable ASCII ~! " {
		t.Fatalf("printable name: %+v", k)
	}

	before := keysList(t, c, ts.url, admin)
	auditBefore := auditRows(t, c, ts.url, admin, "?limit=1000")
	for _, tc := range []struct {
		name       string
		body       any
		wantStatus int
		wantErr    string // exact message, or a prefix ending in ":"
	}{
		{"role superuser", `{"name":"x","role":"superuser"}`, 400, "role:"},
		{"role is case-sensitive", `{"name":"x","role":"Admin"}`, 400, "role:"},
		{"expires_at in the past", `{"name":"x","expires_at":"2020-01-01T00:00:00Z"}`, 400, "expires_at:"},
		{"expires_at equal to now", `{"name":"x","expires_at":"2026-04-11T10:30:00+01:00"}`, 400, "expires_at:"},
		{"expires_at not RFC 3339", `{"name":"x","expires_at":"next week"}`, 400, "expires_at:"},
		{"expires_at wrong type", `{"name":"x","expires_at":1760000000}`, 400, "expires_at:"},
		{"65-byte name", map[string]any{"name": strings.Repeat("n", 65)}, 400, "name:"},
		{"empty name", `{"name":""}`, 400, "name:"},
		{"non-ASCII name", `{"name":"näme"}`, 400, "name:"},
		{"control character in name", `{"name":"a\u0007b"}`, 400, "name:"},
		{"missing name", `{"role":"admin"}`, 400, "name: required"},
		{"null name", `{"name":null}`, 400, "name: required"},
		{"empty body", nil, 400, ""},
		{"array body", `[]`, 400, ""},
		{"name of an active key", `{"name":"ci","role":"admin"}`, 409, "key name already in use"},
		{"name of the admin key", `{"name":"first-admin"}`, 409, "key name already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, c, "POST", ts.url+"/api/v1/keys", admin, tc.body)
			if strings.HasSuffix(tc.wantErr, ":") {
				expect(t, r, tc.wantStatus, "")
				if msg := r.errMsg(t); !strings.HasPrefix(msg, tc.wantErr+" ") {
					t.Fatalf("error %q, want it to start with %q", msg, tc.wantErr)
				}
				return
			}
			expect(t, r, tc.wantStatus, tc.wantErr)
		})
	}
	if after := keysList(t, c, ts.url, admin); len(after) != len(before) {
		t.Fatalf("%d keys after refused creations, want %d", len(after), len(before))
	}
	if after := auditRows(t, c, ts.url, admin, "?limit=1000"); len(after) != len(auditBefore) {
		t.Fatalf("refused creations wrote audit rows: %+v", after[:len(after)-len(auditBefore)])
	}
}

// TestKeyExpiryACC26 covers ACC-26 on the fake clock: a key that expires in
// 2 s works until then, and is refused with 401 "API key expired" from the
// instant of expiry (active means expires_at later than now).
func TestKeyExpiryACC26(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	exp := ts.clock.now().Add(2 * time.Second)
	k := keysCreateAPI(t, c, ts.url, admin, map[string]any{"name": "short", "role": "readonly", "expires_at": exp.Format(time.RFC3339)})
	if k.ExpiresAt == nil || *k.ExpiresAt != "2026-04-11T09:30:02.000Z" {
		t.Fatalf("expires_at %v", k.ExpiresAt)
	}
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", k.Key, nil), 200, "")
	ts.clock.advance(1999 * time.Millisecond)
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", k.Key, nil), 200, "")
	ts.clock.advance(time.Millisecond)
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", k.Key, nil), "API key expired")
	ts.clock.advance(time.Second) // "3 s later"
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", k.Key, nil), "API key expired")
	// Expired is 401 on every admin route, never 403.
	authExpect401(t, do(t, c, "POST", ts.url+"/api/v1/keys", k.Key, `{"name":"x"}`), "API key expired")
	// Names are unique among unrevoked keys (§3.1): an expired key keeps its name.
	expect(t, do(t, c, "POST", ts.url+"/api/v1/keys", admin, `{"name":"short"}`), 409, "key name already in use")
	// The expired key is still listed, unrevoked.
	listed := keysByName(t, keysList(t, c, ts.url, admin), "short")
	if listed.RevokedAt != nil || listed.ExpiresAt == nil || *listed.ExpiresAt != "2026-04-11T09:30:02.000Z" {
		t.Fatalf("listed %+v", listed)
	}
}

// TestKeyListAndLastUsedACC27 covers ACC-27 and §3.1: the list never shows a
// token or hash, shows revoked keys with revoked_at, and last_used_at is set
// on use and rewritten only when more than 60 s old (never on a failed
// authentication).
func TestKeyListAndLastUsedACC27(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	k := keysCreateAPI(t, c, ts.url, admin, `{"name":"user","role":"readonly"}`)
	gone := keysCreateAPI(t, c, ts.url, admin, `{"name":"gone","role":"deploy"}`)
	expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, gone.ID), admin, nil), 204, "")

	r := do(t, c, "GET", ts.url+"/api/v1/keys", admin, nil)
	expect(t, r, 200, "")
	var raw []map[string]json.RawMessage
	r.json(t, &raw)
	if len(raw) != 3 {
		t.Fatalf("keys %s", r.body)
	}
	for _, entry := range raw {
		var fields []string
		for f := range entry {
			fields = append(fields, f)
		}
		slices.Sort(fields)
		if !slices.Equal(fields, []string{"created_at", "expires_at", "id", "last_used_at", "name", "revoked_at", "role"}) {
			t.Fatalf("KeyInfo fields %q", fields)
		}
	}
	for _, tok := range []string{admin, k.Key, gone.Key} {
		if bytes.Contains(r.body, []byte(tok)) || bytes.Contains(r.body, []byte(hashKey(tok))) {
			t.Fatalf("list exposes a token or hash: %s", r.body)
		}
	}
	var ks []keyInfo
	r.json(t, &ks)
	if ks[0].Name != "first-admin" || ks[1].Name != "user" || ks[2].Name != "gone" {
		t.Fatalf("not ordered by id: %+v", ks)
	}
	if ks[2].RevokedAt == nil || *ks[2].RevokedAt != "2026-04-11T09:30:00.000Z" || ks[1].RevokedAt != nil {
		t.Fatalf("revoked_at: %+v", ks)
	}
	if ks[1].LastUsedAt != nil {
		t.Fatalf("unused key has last_used_at %v", *ks[1].LastUsedAt)
	}

	lastUsed := func() *string {
		t.Helper()
		return keysByName(t, keysList(t, c, ts.url, admin), "user").LastUsedAt
	}
	use := func() { expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", k.Key, nil), 200, "") }
	ts.clock.advance(time.Second)
	use()
	if got := lastUsed(); got == nil || *got != "2026-04-11T09:30:01.000Z" {
		t.Fatalf("last_used_at %v after first use", got)
	}
	ts.clock.advance(30 * time.Second)
	use()
	ts.clock.advance(30 * time.Second) // exactly 60 s since the recorded use
	use()
	if got := lastUsed(); got == nil || *got != "2026-04-11T09:30:01.000Z" {
		t.Fatalf("last_used_at %v rewritten within 60 s", got)
	}
	ts.clock.advance(time.Millisecond)
	use()
	if got := lastUsed(); got == nil || *got != "2026-04-11T09:31:01.001Z" {
		t.Fatalf("last_used_at %v, want it rewritten after more than 60 s", got)
	}
	// A revoked key's failed authentication does not touch it.
	ts.clock.advance(5 * time.Minute)
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", gone.Key, nil), "API key revoked")
	if g := keysByName(t, keysList(t, c, ts.url, admin), "gone"); g.LastUsedAt != nil {
		t.Fatalf("revoked key got last_used_at %v", *g.LastUsedAt)
	}
}

// TestRevokeKeyACC28 covers ACC-28 and §4.29: revocation takes effect on the
// next request, a second DELETE is 204 with no change and no audit row, and
// a revoked key's name can be used again.
func TestRevokeKeyACC28(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	ci := keysCreateAPI(t, c, ts.url, admin, `{"name":"ci","role":"deploy"}`)
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", ci.Key, nil), 200, "")

	url := fmt.Sprintf("%s/api/v1/keys/%d", ts.url, ci.ID)
	ts.clock.advance(time.Second)
	r := do(t, c, "DELETE", url, admin, nil)
	expect(t, r, 204, "")
	if len(r.body) != 0 {
		t.Fatalf("204 with body %q", r.body)
	}
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", ci.Key, nil), "API key revoked")
	authExpect401(t, do(t, c, "POST", ts.url+"/api/v1/releases", ci.Key, `{}`), "API key revoked")

	ts.clock.advance(time.Minute)
	expect(t, do(t, c, "DELETE", url, admin, nil), 204, "")
	rows := auditRows(t, c, ts.url, admin, "?action=key.revoked")
	if len(rows) != 1 {
		t.Fatalf("key.revoked rows %+v, want exactly one", rows)
	}
	listed := keysByName(t, keysList(t, c, ts.url, admin), "ci")
	if listed.RevokedAt == nil || *listed.RevokedAt != "2026-04-11T09:30:01.000Z" {
		t.Fatalf("revoked_at %v, want the first revocation's time", listed.RevokedAt)
	}

	// Names are unique among unrevoked keys only.
	again := keysCreateAPI(t, c, ts.url, admin, `{"name":"ci","role":"readonly"}`)
	if again.ID == ci.ID || again.Key == ci.Key {
		t.Fatalf("reused name got the old key: %+v", again)
	}
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", again.Key, nil), 200, "")
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/machines", ci.Key, nil), "API key revoked")
	var named []keyInfo
	for _, k := range keysList(t, c, ts.url, admin) {
		if k.Name == "ci" {
			named = append(named, k)
		}
	}
	if len(named) != 2 || named[0].RevokedAt == nil || named[1].RevokedAt != nil {
		t.Fatalf("keys named ci: %+v", named)
	}
	expect(t, do(t, c, "POST", ts.url+"/api/v1/keys", admin, `{"name":"ci"}`), 409, "key name already in use")

	// A key may revoke itself, taking effect on its next request.
	other := keysCreateAPI(t, c, ts.url, admin, `{"name":"admin-2","role":"admin"}`)
	expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, other.ID), other.Key, nil), 204, "")
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/keys", other.Key, nil), "API key revoked")
}

// TestRevokeLastAdminACC29 covers ACC-29 and §4.29: the last non-expiring
// admin key cannot be revoked; another non-expiring admin lifts the rule, an
// admin key that expires (before or after it has expired) or a revoked one
// does not; bad and unknown key ids.
func TestRevokeLastAdminACC29(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	keyURL := func(id int64) string { return fmt.Sprintf("%s/api/v1/keys/%d", ts.url, id) }

	expect(t, do(t, c, "DELETE", keyURL(1), admin, nil), 409, "cannot revoke the last non-expiring admin key")
	// Non-admin keys are no help, and can always be revoked.
	deploy := keysCreateAPI(t, c, ts.url, admin, `{"name":"deployer","role":"deploy"}`)
	expect(t, do(t, c, "DELETE", keyURL(1), admin, nil), 409, "cannot revoke the last non-expiring admin key")
	expect(t, do(t, c, "DELETE", keyURL(deploy.ID), admin, nil), 204, "")

	// An admin key that expires does not count, before or after it expires.
	soon := keysCreateAPI(t, c, ts.url, admin, map[string]any{"name": "soon", "role": "admin",
		"expires_at": ts.clock.now().Add(time.Hour).Format(time.RFC3339)})
	expect(t, do(t, c, "DELETE", keyURL(1), admin, nil), 409, "cannot revoke the last non-expiring admin key")
	ts.clock.advance(2 * time.Hour)
	expect(t, do(t, c, "DELETE", keyURL(1), admin, nil), 409, "cannot revoke the last non-expiring admin key")
	// The expired admin itself is not active, so revoking it is allowed.
	expect(t, do(t, c, "DELETE", keyURL(soon.ID), admin, nil), 204, "")

	// With a second active admin, either can go, but not both.
	second := keysCreateAPI(t, c, ts.url, admin, `{"name":"second-admin","role":"admin"}`)
	expect(t, do(t, c, "DELETE", keyURL(1), second.Key, nil), 204, "")
	authExpect401(t, do(t, c, "GET", ts.url+"/api/v1/keys", admin, nil), "API key revoked")
	expect(t, do(t, c, "DELETE", keyURL(second.ID), second.Key, nil), 409, "cannot revoke the last non-expiring admin key")
	expect(t, do(t, c, "GET", ts.url+"/api/v1/keys", second.Key, nil), 200, "")

	for _, tc := range []struct {
		id         string
		wantStatus int
		wantErr    string
	}{
		{"999999", 404, "key 999999 not found"},
		{"9223372036854775807", 404, "key 9223372036854775807 not found"},
		{"abc", 400, "invalid key id"},
		{"0", 400, "invalid key id"},
		{"-1", 400, "invalid key id"},
		{"+1", 400, "invalid key id"},
		{"1.0", 400, "invalid key id"},
		{"9223372036854775808", 400, "invalid key id"},
	} {
		t.Run("id "+tc.id, func(t *testing.T) {
			expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/"+tc.id, second.Key, nil), tc.wantStatus, tc.wantErr)
		})
	}
	// Authentication comes before the key id check (§2.6).
	authExpect401(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/abc", "", nil), "missing API key")
}

// TestKeyAuditACC30 covers ACC-30 and §10.2: bootstrap, key.created (with
// and without expires_at) and key.revoked rows with their actors, targets
// and details; and §3.2/§10.1: failed authentications and refused requests
// write no audit row.
func TestKeyAuditACC30(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	r := do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", `{"name":"root"}`)
	expect(t, r, 200, "")
	var root keyCreated
	r.json(t, &root)
	admin := root.Key
	ci := keysCreateAPI(t, c, ts.url, admin, `{"name":"ci","role":"deploy"}`)
	tmp := keysCreateAPI(t, c, ts.url, admin, `{"name":"tmp","expires_at":"2027-01-01T00:00:00Z"}`)
	ts.clock.advance(time.Second)
	expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, ci.ID), admin, nil), 204, "")

	rows := auditRows(t, c, ts.url, admin, "")
	type row struct{ actor, action, target, detail string }
	var got []row
	for i := len(rows) - 1; i >= 0; i-- { // oldest first
		d := "<null>"
		if rows[i].Detail != nil {
			d = *rows[i].Detail
		}
		got = append(got, row{rows[i].Actor, rows[i].Action, rows[i].Target, d})
	}
	want := []row{
		{"system:bootstrap", "bootstrap", "root", "first admin key created"},
		{"apikey:root", "key.created", strconv.FormatInt(ci.ID, 10), "name=ci role=deploy"},
		{"apikey:root", "key.created", strconv.FormatInt(tmp.ID, 10), "name=tmp role=readonly expires_at=2027-01-01T00:00:00.000Z"},
		{"apikey:root", "key.revoked", strconv.FormatInt(ci.ID, 10), "name=ci role=deploy"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("audit rows\n got %+v\nwant %+v", got, want)
	}
	if rows[0].Timestamp != "2026-04-11T09:30:01.000Z" || rows[len(rows)-1].Timestamp != "2026-04-11T09:30:00.000Z" {
		t.Errorf("timestamps %s … %s", rows[len(rows)-1].Timestamp, rows[0].Timestamp)
	}

	// None of these may add a row: 401s of every kind, role 403s, refused
	// bootstrap, refused creations and revocations.
	readonly := keysCreateAPI(t, c, ts.url, admin, `{"name":"ro"}`)
	baseline := len(auditRows(t, c, ts.url, admin, "?limit=1000"))
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "", nil), 401, "missing API key")
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", "nfk-wrong", nil), 401, "invalid API key")
	expect(t, do(t, c, "GET", ts.url+"/api/v1/machines", ci.Key, nil), 401, "API key revoked")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/keys", readonly.Key, `{"name":"x"}`), 403, "admin role required")
	expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/1", readonly.Key, nil), 403, "admin role required")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", nil), 409, "")
	expect(t, do(t, c, "POST", ts.url+"/api/v1/keys", admin, `{"name":"ci","role":"bogus"}`), 400, "")
	expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/1", admin, nil), 409, "cannot revoke the last non-expiring admin key")
	expect(t, do(t, c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", ts.url, ci.ID), admin, nil), 204, "") // already revoked
	expect(t, do(t, c, "DELETE", ts.url+"/api/v1/keys/4242", admin, nil), 404, "key 4242 not found")
	if n := len(auditRows(t, c, ts.url, admin, "?limit=1000")); n != baseline {
		t.Fatalf("%d audit rows after refused requests, want %d", n, baseline)
	}
}
