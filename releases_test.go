package main

// Release tests (releases.go, §4.13–§4.17, §5.4, §8): body limits (ACC-10),
// create, get, list, diff and delete (ACC-63–71), a 100,000-entry release in
// one request, and the invariant that bad input never produces a 500 or a
// partial release.

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// relBigBody encodes a valid release of n entries named host-000000… directly
// as JSON bytes (fast for 100,000 entries).
func relBigBody(n int) []byte {
	var b bytes.Buffer
	b.Grow(n * 140)
	b.WriteString(`{"flake_ref":"github:org/fleet","flake_rev":"9f1c2d3e","entries":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"hostname":"host-%06d","store_path":"%s","platform":"x86_64-linux","tags":["fleet","t%d"]}`,
			i, relBigPath(i), i%7)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func relBigPath(i int) string {
	return fmt.Sprintf("/nix/store/%032d-nixos-system-host-%06d", i, i)
}

func relGet(t testing.TB, e *testEnv, id string) release {
	t.Helper()
	r := do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+id, e.R, nil)
	expect(t, r, 200, "")
	var rel release
	r.json(t, &rel)
	return rel
}

func relList(t testing.TB, e *testEnv, query string) []release {
	t.Helper()
	r := do(t, e.c, "GET", e.ts.url+"/api/v1/releases"+query, e.R, nil)
	expect(t, r, 200, "")
	var rels []release
	r.json(t, &rels)
	return rels
}

var releaseIDRE = regexp.MustCompile(`^rel-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// relNothingStored fails unless the database holds no release, no entry and
// no create_release audit row, and the list is empty.
func relNothingStored(t testing.TB, e *testEnv) {
	t.Helper()
	if n := countRows(t, e.ts, "SELECT count(*) FROM release"); n != 0 {
		t.Fatalf("%d releases stored", n)
	}
	if n := countRows(t, e.ts, "SELECT count(*) FROM release_entry"); n != 0 {
		t.Fatalf("%d release entries stored", n)
	}
	if n := countRows(t, e.ts, "SELECT count(*) FROM audit_event WHERE action = 'create_release'"); n != 0 {
		t.Fatalf("%d create_release audit rows", n)
	}
	if rels := relList(t, e, ""); len(rels) != 0 {
		t.Fatalf("list shows %d releases", len(rels))
	}
}

// TestReleaseBodyLimits covers ACC-10: the release route accepts up to
// 32 MiB, one byte more is 413 with or without a Content-Length, a body of
// exactly 32 MiB is accepted, and a valid 20,000-entry release gets 201. The
// 1 MiB limit of the other routes is checked on POST /api/v1/rollouts.
func TestReleaseBodyLimits(t *testing.T) {
	e := newTestEnv(t)
	url := e.ts.url + "/api/v1/releases"

	over := bytes.Repeat([]byte(" "), maxReleaseBody+1)
	copy(over, `{"entries":[`)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("33554433 bytes chunked=%v", chunked), func(t *testing.T) {
			r := apiSend(t, e.c, "POST", url, e.D, "application/json", over, chunked)
			expect(t, r, 413, "request body too large")
			relNothingStored(t, e)
		})
	}
	t.Run("1048577 bytes to rollouts", func(t *testing.T) {
		body := bytes.Repeat([]byte(" "), maxBody+1)
		copy(body, `{"release_id":"rel-x",`)
		for _, chunked := range []bool{false, true} {
			r := apiSend(t, e.c, "POST", e.ts.url+"/api/v1/rollouts", e.D, "application/json", body, chunked)
			expect(t, r, 413, "request body too large")
		}
	})
	t.Run("exactly 33554432 bytes", func(t *testing.T) {
		valid := []byte(`{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "sys") + `","platform":"x86_64-linux"}]}`)
		body := append(valid, bytes.Repeat([]byte(" "), maxReleaseBody-len(valid))...)
		if len(body) != 33_554_432 {
			t.Fatalf("body is %d bytes", len(body))
		}
		for _, chunked := range []bool{false, true} {
			r := apiSend(t, e.c, "POST", url, e.D, "application/json", body, chunked)
			expect(t, r, 201, "")
			var out struct{ ID string }
			r.json(t, &out)
			if rel := relGet(t, e, out.ID); rel.HostCount != 1 || len(rel.Entries) != 1 {
				t.Fatalf("release %+v", rel)
			}
			r = do(t, e.c, "DELETE", url+"/"+out.ID, e.A, nil)
			expect(t, r, 204, "")
		}
	})
	t.Run("20000 entries", func(t *testing.T) {
		body := relBigBody(20_000)
		t.Logf("20,000-entry body: %d bytes", len(body))
		r := apiSend(t, e.c, "POST", url, e.D, "application/json", body, false)
		expect(t, r, 201, "")
		var out struct {
			ID        string `json:"id"`
			HostCount int    `json:"host_count"`
		}
		r.json(t, &out)
		if out.HostCount != 20_000 {
			t.Fatalf("host_count %d", out.HostCount)
		}
		if n := countRows(t, e.ts, "SELECT count(*) FROM release_entry WHERE release_id = ?", out.ID); n != 20_000 {
			t.Fatalf("%d entries stored", n)
		}
	})
}

// TestReleaseCreate covers ACC-63 and the create_release audit row (§8.1).
func TestReleaseCreate(t *testing.T) {
	e := newTestEnv(t)
	r := do(t, e.c, "POST", e.ts.url+"/api/v1/releases", e.D, map[string]any{
		"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b')},
	})
	expect(t, r, 201, "")
	var out map[string]any
	r.json(t, &out)
	id, _ := out["id"].(string)
	if !releaseIDRE.MatchString(id) || len(id) != 40 {
		t.Fatalf("id %q is not rel- + a lowercase UUIDv4", id)
	}
	if out["host_count"] != float64(2) || len(out) != 2 {
		t.Fatalf("response %s", r.body)
	}
	evs := auditRows(t, e.c, e.ts.url, e.R, "?action=create_release")
	if len(evs) != 1 || evs[0].Target != id || evs[0].Actor != "apikey:deployer" || evs[0].Detail == nil || *evs[0].Detail != "2 hosts" {
		t.Fatalf("audit %+v", evs)
	}
	// Two creates never share an id.
	if id2 := relCreate(t, e, e.A, map[string]any{"entries": []any{relEntry("web-01", 'a')}}); id2 == id || !releaseIDRE.MatchString(id2) {
		t.Fatalf("second id %q", id2)
	}
}

// TestReleaseRejectsBadInput covers ACC-64: every invalid body gets a 4xx
// (never a 500) with a JSON error, and nothing is stored: no release, no
// entry, no audit row. Anonymous creation gets 401 and R gets 403, even
// with a malformed body (§2.6).
func TestReleaseRejectsBadInput(t *testing.T) {
	e := newTestEnv(t)
	url := e.ts.url + "/api/v1/releases"
	good := func(host string) string {
		return `{"hostname":"` + host + `","store_path":"` + storePath('a', "sys") + `","platform":"x86_64-linux"}`
	}
	manyTags := make([]string, 65)
	for i := range manyTags {
		manyTags[i] = fmt.Sprintf("t%02d", i)
	}
	tags65 := `["` + strings.Join(manyTags, `","`) + `"]`
	cases := []struct {
		name, body string
		status     int
		msg        string // exact error, or "" for any
	}{
		{"empty entries", `{"entries":[]}`, 400, "entries must not be empty"},
		{"missing entries", `{"flake_ref":"x"}`, 400, "entries: required"},
		{"null entries", `{"entries":null}`, 400, "entries: required"},
		{"duplicate hostname", `{"entries":[` + good("web-01") + `,` + good("web-02") + `,` + good("web-01") + `]}`, 400,
			"entries[2].hostname: duplicate hostname web-01"},
		{"bad store path", `{"entries":[` + good("web-01") + `,{"hostname":"web-02","store_path":"/tmp/x","platform":"x86_64-linux"}]}`, 400,
			"entries[1].store_path: not a valid Nix store path"},
		{"31-char hash", `{"entries":[{"hostname":"web-01","store_path":"/nix/store/` + strings.Repeat("a", 31) + `-x","platform":"p"}]}`, 400,
			"entries[0].store_path: not a valid Nix store path"},
		{"hash with e", `{"entries":[{"hostname":"web-01","store_path":"/nix/store/` + strings.Repeat("e", 32) + `-x","platform":"p"}]}`, 400, ""},
		{"store path too long", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', strings.Repeat("x", 470)) + `","platform":"p"}]}`, 400, ""},
		{"empty platform", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":""}]}`, 400, ""},
		{"platform with space", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"x86 64"}]}`, 400, ""},
		{"platform too long", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"` + strings.Repeat("p", 65) + `"}]}`, 400, ""},
		{"missing platform", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `"}]}`, 400, "entries[0].platform: required"},
		{"missing hostname", `{"entries":[{"store_path":"` + storePath('a', "s") + `","platform":"p"}]}`, 400, "entries[0].hostname: required"},
		{"missing store path", `{"entries":[{"hostname":"web-01","platform":"p"}]}`, 400, "entries[0].store_path: required"},
		{"hostname dotdot", `{"entries":[` + good("..") + `]}`, 400, ""},
		{"hostname slash", `{"entries":[` + good("a/b") + `]}`, 400, ""},
		{"hostname 129 bytes", `{"entries":[` + good(strings.Repeat("h", 129)) + `]}`, 400, ""},
		{"hostname empty", `{"entries":[` + good("") + `]}`, 400, ""},
		{"hostname number", `{"entries":[{"hostname":1,"store_path":"` + storePath('a', "s") + `","platform":"p"}]}`, 400, ""},
		{"invalid tag", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"p","tags":["a b"]}]}`, 400, ""},
		{"65 tags", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"p","tags":` + tags65 + `}]}`, 400, ""},
		{"tags not a list", `{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"p","tags":"web"}]}`, 400, ""},
		{"entries not a list", `{"entries":{"hostname":"web-01"}}`, 400, ""},
		{"entry not an object", `{"entries":["web-01"]}`, 400, ""},
		{"null entry", `{"entries":[null]}`, 400, ""},
		{"flake_ref control char", `{"entries":[` + good("web-01") + `],"flake_ref":"a\u0007b"}`, 400, ""},
		{"flake_ref too long", `{"entries":[` + good("web-01") + `],"flake_ref":"` + strings.Repeat("r", 1025) + `"}`, 400, ""},
		{"flake_rev too long", `{"entries":[` + good("web-01") + `],"flake_rev":"` + strings.Repeat("r", 129) + `"}`, 400, ""},
		{"cache_url relative", `{"entries":[` + good("web-01") + `],"cache_url":"cache.example.org"}`, 400, ""},
		{"cache_url with space", `{"entries":[` + good("web-01") + `],"cache_url":"https://cache example.org"}`, 400, ""},
		{"cache_url number", `{"entries":[` + good("web-01") + `],"cache_url":5}`, 400, ""},
		{"malformed JSON", `{"entries":[`, 400, ""},
		{"trailing data", `{"entries":[` + good("web-01") + `]} {}`, 400, ""},
		{"null body", `null`, 400, ""},
		{"array body", `[` + good("web-01") + `]`, 400, ""},
		{"empty body", ``, 400, ""},
		{"invalid UTF-8", "{\"entries\":[" + good("web-01") + "],\"flake_ref\":\"\xff\"}", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := apiSend(t, e.c, "POST", url, e.D, "application/json", []byte(tc.body), false)
			expect(t, r, tc.status, tc.msg)
			relNothingStored(t, e)
		})
	}
	t.Run("content type", func(t *testing.T) {
		r := apiSend(t, e.c, "POST", url, e.D, "text/plain", []byte(`{"entries":[`+good("web-01")+`]}`), false)
		expect(t, r, 415, "Content-Type must be application/json")
		relNothingStored(t, e)
	})
	t.Run("anonymous", func(t *testing.T) {
		r := do(t, e.c, "POST", url, "", `{"entries":[`+good("web-01")+`]}`)
		expect(t, r, 401, "missing API key")
		relNothingStored(t, e)
	})
	t.Run("readonly", func(t *testing.T) {
		for _, body := range []string{`{"entries":[` + good("web-01") + `]}`, `{"entries":[`} {
			r := do(t, e.c, "POST", url, e.R, body)
			expect(t, r, 403, "deploy or admin role required")
		}
		relNothingStored(t, e)
	})
}

// FuzzReleaseCreateBody checks the invariant of ACC-64 on arbitrary bodies:
// the answer is 201, 400 or 413 (never a 500), a rejected body stores
// nothing, and an accepted one is stored whole.
func FuzzReleaseCreateBody(f *testing.F) {
	f.Add([]byte(`{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"x86_64-linux"}]}`))
	f.Add([]byte(`{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"p","tags":["b","a","b"]},{"hostname":"web-02","store_path":"` + storePath('b', "s") + `","platform":"p"}],"cache_url":"https://c.example"}`))
	f.Add([]byte(`{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"p"},{"hostname":"web-01","store_path":"` + storePath('a', "s") + `","platform":"p"}]}`))
	f.Add([]byte(`{"entries":[]}`))
	f.Add([]byte(`{"entries":[{"hostname":"..","store_path":"/nix/store/x","platform":""}]}`))
	f.Add([]byte(`{"entries":[{"hostname":"a","store_path":"` + storePath('a', "s") + `","platform":"p","tags":[1]}],"flake_rev":null}`))
	f.Add([]byte(`{"entries":[{"hostname":"a","store_path":"` + storePath('a', "s") + `","platform":"p"}],"entries":null}`))
	f.Add([]byte(`{"entries":[{"hostname":"a","store_path":"` + storePath('a', "s") + `","platform":"p","hostname":"b"}]}`))
	f.Add([]byte("{\"entries\":[{\"hostname\":\"a\u0000\"}]}"))
	f.Add([]byte(`{"entries":[{"hostname":"a","store_path":"` + storePath('a', "s") + `","platform":"p"}]`))
	e := newTestEnv(f)
	url := e.ts.url + "/api/v1/releases"
	f.Fuzz(func(t *testing.T, body []byte) {
		before := countRows(t, e.ts, "SELECT count(*) FROM release")
		beforeEntries := countRows(t, e.ts, "SELECT count(*) FROM release_entry")
		r := apiSend(t, e.c, "POST", url, e.D, "application/json", body, false)
		switch r.status {
		case 201:
			var out struct {
				ID        string `json:"id"`
				HostCount int    `json:"host_count"`
			}
			r.json(t, &out)
			rel := relGet(t, e, out.ID)
			if rel.HostCount != out.HostCount || len(rel.Entries) != out.HostCount || out.HostCount < 1 {
				t.Fatalf("stored %d entries, host_count %d, response %d", len(rel.Entries), rel.HostCount, out.HostCount)
			}
			if n := countRows(t, e.ts, "SELECT count(*) FROM release"); n != before+1 {
				t.Fatalf("%d releases after a create, want %d", n, before+1)
			}
		case 400, 413:
			expect(t, r, r.status, "")
			if n := countRows(t, e.ts, "SELECT count(*) FROM release"); n != before {
				t.Fatalf("rejected body changed the release count %d -> %d", before, n)
			}
			if n := countRows(t, e.ts, "SELECT count(*) FROM release_entry"); n != beforeEntries {
				t.Fatalf("rejected body changed the entry count %d -> %d", beforeEntries, n)
			}
		default:
			t.Fatalf("status %d for %q: %s", r.status, body, r.body)
		}
	})
}

// TestReleaseGet covers ACC-65: entries sorted by hostname, tags [] when
// sent without tags (sorted and deduplicated otherwise), created_by, the
// optional fields, and 404/400 for unknown and invalid ids.
func TestReleaseGet(t *testing.T) {
	e := newTestEnv(t)
	id := relCreate(t, e, e.D, map[string]any{
		"flake_ref": "github:org/fleet", "flake_rev": "9f1c2d3e", "cache_url": nil,
		"entries": []any{relEntry("web-02", 'b', "web", "eu", "web"), relEntry("api-01", 'c'), relEntry("web-01", 'a', "web"), relEntry("Zed", 'd', []string{}...)},
		"policy":  "ignored",
	})
	rel := relGet(t, e, id)
	if rel.ID != id || rel.HostCount != 4 || rel.CreatedBy != "apikey:deployer" || rel.CacheURL != nil ||
		rel.FlakeRef == nil || *rel.FlakeRef != "github:org/fleet" || rel.FlakeRev == nil || *rel.FlakeRev != "9f1c2d3e" {
		t.Fatalf("release %+v", rel)
	}
	if want := fmtTime(e.ts.clock.now().UnixMilli()); rel.CreatedAt != want {
		t.Errorf("created_at %s, want %s", rel.CreatedAt, want)
	}
	var hosts []string
	for _, en := range rel.Entries {
		hosts = append(hosts, en.Hostname)
	}
	if !slices.Equal(hosts, []string{"Zed", "api-01", "web-01", "web-02"}) {
		t.Fatalf("entries not sorted by hostname (byte order): %v", hosts)
	}
	wantTags := [][]string{{}, {}, {"web"}, {"eu", "web"}}
	for i, en := range rel.Entries {
		if en.Tags == nil || !slices.Equal(en.Tags, wantTags[i]) {
			t.Errorf("%s tags %#v, want %v", en.Hostname, en.Tags, wantTags[i])
		}
		if en.Platform != "x86_64-linux" || en.StorePath != storePath(map[string]byte{"Zed": 'd', "api-01": 'c', "web-01": 'a', "web-02": 'b'}[en.Hostname], "nixos-system-"+en.Hostname) {
			t.Errorf("entry %+v", en)
		}
	}
	// The raw JSON shows tags as [] and cache_url as null, never omitted.
	r := do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+id, e.R, nil)
	for _, want := range []string{`"tags":[]`, `"cache_url":null`, `"created_by":"apikey:deployer"`} {
		if !bytes.Contains(r.body, []byte(want)) {
			t.Errorf("body lacks %s: %s", want, r.body)
		}
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}

	for _, tc := range []struct {
		path   string
		status int
		msg    string
	}{
		{"rel-ghost", 404, "release rel-ghost not found"},
		{"a%2Ab", 400, "invalid release id"},
		{strings.Repeat("r", 129), 400, "invalid release id"},
		{strings.Repeat("r", 128), 404, "release " + strings.Repeat("r", 128) + " not found"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			expect(t, do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+tc.path, e.R, nil), tc.status, tc.msg)
		})
	}
	t.Run("cache_url", func(t *testing.T) {
		id := relCreate(t, e, e.A, map[string]any{"cache_url": "https://cache.example.org", "flake_ref": "", "entries": []any{relEntry("web-01", 'a')}})
		rel := relGet(t, e, id)
		if rel.CacheURL == nil || *rel.CacheURL != "https://cache.example.org" || rel.FlakeRef == nil || *rel.FlakeRef != "" ||
			rel.FlakeRev != nil || rel.CreatedBy != "apikey:first-admin" {
			t.Fatalf("release %+v", rel)
		}
	})
	t.Run("anonymous", func(t *testing.T) {
		expect(t, do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+id, "", nil), 401, "missing API key")
	})
	t.Run("HEAD", func(t *testing.T) {
		r := do(t, e.c, "HEAD", e.ts.url+"/api/v1/releases/"+id, e.R, nil)
		if r.status != 200 {
			t.Fatalf("HEAD status %d", r.status)
		}
	})
}

// TestReleaseList covers ACC-66: newest first with ties broken by creation
// order (later first), limit default 20 and maximum 500, and 400 for a
// limit that is not an integer of at least 1.
func TestReleaseList(t *testing.T) {
	e := newTestEnv(t)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry(fmt.Sprintf("web-%02d", i), 'a')}}))
		if i == 0 {
			e.ts.clock.advance(time.Second) // releases 1 and 2 share a created_at
		}
	}
	got := relList(t, e, "")
	if len(got) != 3 || got[0].ID != ids[2] || got[1].ID != ids[1] || got[2].ID != ids[0] {
		t.Fatalf("order %v, want %v reversed", relIDs(got), ids)
	}
	for _, rel := range got {
		if len(rel.Entries) != 1 || rel.HostCount != 1 {
			t.Errorf("list item %+v lacks its entries", rel)
		}
	}
	if got := relList(t, e, "?limit=1"); len(got) != 1 || got[0].ID != ids[2] {
		t.Fatalf("limit=1: %v", relIDs(got))
	}
	if got := relList(t, e, "?limit=2&limit=1"); len(got) != 2 {
		t.Fatalf("repeated limit: first value not used, got %d", len(got))
	}
	for _, q := range []string{"?limit=abc", "?limit=0", "?limit=-1", "?limit=1.5", "?limit=", "?limit=1e3", "?limit=+5"} {
		t.Run(q, func(t *testing.T) {
			r := do(t, e.c, "GET", e.ts.url+"/api/v1/releases"+q, e.R, nil)
			expect(t, r, 400, "")
			if msg := r.errMsg(t); !strings.HasPrefix(msg, "limit") {
				t.Errorf("error %q does not name limit", msg)
			}
		})
	}

	// 600 releases in all: the default is 20 and the maximum 500.
	err := e.ts.st.write(context.Background(), func(tx *txn) error {
		for i := 0; i < 597; i++ {
			id := "rel-bulk-" + fmt.Sprint(i)
			if _, err := tx.exec(`INSERT INTO release (id, host_count, created_at, created_by)
				VALUES (?, 1, ?, 'test')`, id, tx.now-int64(10_000+i)); err != nil {
				return err
			}
			if _, err := tx.exec(`INSERT INTO release_entry (release_id, hostname, store_path, platform, tags)
				VALUES (?, 'web-00', ?, 'p', '[]')`, id, storePath('b', "x")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := relList(t, e, ""); len(got) != 20 || got[0].ID != ids[2] {
		t.Fatalf("default page: %d items", len(got))
	}
	for _, q := range []string{"?limit=100000", "?limit=501", "?limit=99999999999999999999999"} {
		if got := relList(t, e, q); len(got) != 500 {
			t.Fatalf("%s: %d items, want 500", q, len(got))
		}
	}
}

func relIDs(rels []release) []string {
	var out []string
	for _, r := range rels {
		out = append(out, r.ID)
	}
	return out
}

// TestReleaseListHost covers ACC-67: ?host= returns only the releases that
// have an entry for that exact hostname; the value is not validated.
func TestReleaseListHost(t *testing.T) {
	e := newTestEnv(t)
	a := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b')}})
	e.ts.clock.advance(time.Second)
	relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("db-01", 'c'), relEntry("web-010", 'c')}})
	e.ts.clock.advance(time.Second)
	c := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'd')}})
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"?host=web-01", []string{c, a}},
		{"?host=web-01&limit=1", []string{c}},
		{"?host=web-01&host=db-01", []string{c, a}},
		{"?host=WEB-01", nil},
		{"?host=web-0", nil},
		{"?host=ghost", nil},
		{"?host=..%2F%00x", nil},
		{"?host=", nil},
	} {
		t.Run(tc.query, func(t *testing.T) {
			got := relList(t, e, tc.query)
			if !slices.Equal(relIDs(got), tc.want) {
				t.Fatalf("got %v, want %v", relIDs(got), tc.want)
			}
			for _, rel := range got {
				if len(rel.Entries) == 0 {
					t.Errorf("release %s listed without entries", rel.ID)
				}
			}
		})
	}
}

// TestReleaseDiff covers ACC-68 and ACC-69: the example of §8.5, 404 for
// an unknown A or B (A checked first), 400 for an invalid id, a release
// diffed with itself, and platform/tag changes that are not reported.
func TestReleaseDiff(t *testing.T) {
	e := newTestEnv(t)
	entry := func(h, p string) map[string]any {
		return map[string]any{"hostname": h, "store_path": storePath(p[0], "sys-"+p), "platform": "x86_64-linux"}
	}
	a := relCreate(t, e, e.D, map[string]any{"entries": []any{entry("web-01", "a1"), entry("web-02", "a2"), entry("db-01", "a3")}})
	b := relCreate(t, e, e.D, map[string]any{"entries": []any{entry("web-01", "b1"), entry("web-02", "a2"), entry("api-01", "b4")}})
	diff := func(t *testing.T, x, y string) releaseDiff {
		t.Helper()
		r := do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+x+"/diff/"+y, e.R, nil)
		expect(t, r, 200, "")
		var d releaseDiff
		r.json(t, &d)
		return d
	}
	d := diff(t, a, b)
	want := releaseDiff{
		Added: []string{"api-01"}, Removed: []string{"db-01"}, Unchanged: []string{"web-02"},
		Changed: []diffChanged{{"web-01", storePath('a', "sys-a1"), storePath('b', "sys-b1")}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("diff %+v, want %+v", d, want)
	}
	d = diff(t, b, a)
	if !slices.Equal(d.Added, []string{"db-01"}) || !slices.Equal(d.Removed, []string{"api-01"}) ||
		len(d.Changed) != 1 || d.Changed[0].OldStorePath != storePath('b', "sys-b1") {
		t.Fatalf("reverse diff %+v", d)
	}
	d = diff(t, a, a)
	if !slices.Equal(d.Unchanged, []string{"db-01", "web-01", "web-02"}) || len(d.Added)+len(d.Removed)+len(d.Changed) != 0 {
		t.Fatalf("self diff %+v", d)
	}
	// Lists are [] rather than null.
	r := do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+a+"/diff/"+a, e.R, nil)
	if !bytes.Contains(r.body, []byte(`"added":[]`)) || !bytes.Contains(r.body, []byte(`"changed":[]`)) {
		t.Fatalf("empty lists not []: %s", r.body)
	}
	// Only platform and tags differ: unchanged.
	c := relCreate(t, e, e.D, map[string]any{"entries": []any{
		map[string]any{"hostname": "web-01", "store_path": storePath('a', "sys-a1"), "platform": "aarch64-linux", "tags": []string{"x"}},
		entry("web-02", "a2"), entry("db-01", "a3"),
	}})
	if d := diff(t, a, c); !slices.Equal(d.Unchanged, []string{"db-01", "web-01", "web-02"}) {
		t.Fatalf("platform/tag change reported: %+v", d)
	}

	for _, tc := range []struct {
		x, y   string
		status int
		msg    string
	}{
		{"rel-ghost", b, 404, "release rel-ghost not found"},
		{a, "rel-ghost", 404, "release rel-ghost not found"},
		{"rel-ghost-a", "rel-ghost-b", 404, "release rel-ghost-a not found"},
		{"a%2Ab", b, 400, "invalid release id"},
		{a, "a%2Ab", 400, "invalid release id"},
		{"a%2Ab", "rel-ghost", 400, "invalid release id"},
	} {
		t.Run(tc.x+"/"+tc.y, func(t *testing.T) {
			expect(t, do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+tc.x+"/diff/"+tc.y, e.R, nil), tc.status, tc.msg)
		})
	}
}

func relRolloutStatus(t testing.TB, e *testEnv, id string) string {
	t.Helper()
	r := do(t, e.c, "GET", e.ts.url+"/api/v1/rollouts/"+id, e.R, nil)
	expect(t, r, 200, "")
	var d rolloutDetail
	r.json(t, &d)
	return d.Status
}

// TestReleaseDeleteReferenced covers ACC-70 and §8.4: a release referenced
// by a rollout cannot be deleted whatever the rollout's status (running,
// paused, cancelled, completed, failed), stays retrievable, and becomes
// deletable only once every rollout referencing it has been deleted. No
// refused delete writes an audit row.
func TestReleaseDeleteReferenced(t *testing.T) {
	e := newTestEnv(t)
	relRegister(t, e, "web-01", "web-02")
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b')}})
	refused := func(t *testing.T, when string) {
		t.Helper()
		r := do(t, e.c, "DELETE", e.ts.url+"/api/v1/releases/"+rel, e.A, nil)
		expect(t, r, 409, "release "+rel+" is referenced by a rollout")
		if got := relGet(t, e, rel); got.HostCount != 2 || len(got.Entries) != 2 {
			t.Fatalf("%s: release damaged by a refused delete: %+v", when, got)
		}
		if n := countRows(t, e.ts, "SELECT count(*) FROM audit_event WHERE action = 'delete_release'"); n != 0 {
			t.Fatalf("%s: a refused delete wrote %d audit rows", when, n)
		}
	}
	ctx := context.Background()

	// Rollout 1 on web-01: running, paused, then cancelled.
	r1 := relRollout(t, e, rel, nil, "web-01")
	refused(t, "running (not yet deployed)")
	e.ts.pass(ctx)
	refused(t, "running")
	expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/rollouts/"+r1+"/pause", e.D, nil), 200, "")
	refused(t, "paused")
	expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/rollouts/"+r1+"/cancel", e.D, nil), 200, "")
	if s := relRolloutStatus(t, e, r1); s != "cancelled" {
		t.Fatalf("rollout 1 is %s", s)
	}
	refused(t, "cancelled")

	// Rollout 2 on web-01 completes: a passing health report on its path.
	r2 := relRollout(t, e, rel, nil, "web-01")
	e.ts.pass(ctx)
	expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/machines/web-01/report", "", healthBody("web-01", storePath('a', "nixos-system-web-01"))), 200, "")
	e.ts.pass(ctx)
	if s := relRolloutStatus(t, e, r2); s != "completed" {
		t.Fatalf("rollout 2 is %s", s)
	}
	refused(t, "completed")

	// Rollout 3 on web-02 fails and reverts.
	r3 := relRollout(t, e, rel, map[string]any{"on_failure": "revert"}, "web-02")
	e.ts.pass(ctx)
	expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/machines/web-02/report", "", reportBody("web-02", "", false, "rolled back: boom")), 200, "")
	e.ts.pass(ctx)
	if s := relRolloutStatus(t, e, r3); s != "failed" {
		t.Fatalf("rollout 3 is %s", s)
	}
	refused(t, "failed")

	// Deleting the rollouts one by one: the release stays referenced until
	// the last one is gone.
	for i, rid := range []string{r1, r2, r3} {
		expect(t, do(t, e.c, "DELETE", e.ts.url+"/api/v1/rollouts/"+rid, e.A, nil), 204, "")
		if i < 2 {
			refused(t, "after deleting rollout "+rid)
		}
	}
	expect(t, do(t, e.c, "DELETE", e.ts.url+"/api/v1/releases/"+rel, e.A, nil), 204, "")
	expect(t, do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+rel, e.R, nil), 404, "release "+rel+" not found")
	// Audit rows about the release and the rollouts remain (§10.1).
	if n := countRows(t, e.ts, "SELECT count(*) FROM audit_event WHERE target = ?", rel); n != 2 {
		t.Fatalf("%d audit rows target the release, want create_release and delete_release", n)
	}
}

// TestReleaseDeleteUnreferenced covers ACC-71 and §8.2: 204 with a
// delete_release audit row (detail null), then GET and DELETE get 404; PUT
// and PATCH get 405 with Allow; the role checks come first.
func TestReleaseDeleteUnreferenced(t *testing.T) {
	e := newTestEnv(t)
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b')}})
	url := e.ts.url + "/api/v1/releases/" + rel

	expect(t, do(t, e.c, "DELETE", url, e.D, nil), 403, "admin role required")
	expect(t, do(t, e.c, "DELETE", url, "", nil), 401, "missing API key")
	expect(t, do(t, e.c, "DELETE", e.ts.url+"/api/v1/releases/a%2Ab", e.A, nil), 400, "invalid release id")
	for _, m := range []string{"PUT", "PATCH"} {
		r := do(t, e.c, m, url, e.A, `{"entries":[]}`)
		expect(t, r, 405, "method not allowed")
		if allow := r.header.Get("Allow"); !strings.Contains(allow, "DELETE") || !strings.Contains(allow, "GET") || strings.Contains(allow, m) {
			t.Errorf("%s Allow %q", m, allow)
		}
		expect(t, do(t, e.c, m, url, "", nil), 401, "missing API key")
	}
	if got := relGet(t, e, rel); len(got.Entries) != 2 {
		t.Fatalf("release changed: %+v", got)
	}

	r := do(t, e.c, "DELETE", url, e.A, nil)
	expect(t, r, 204, "")
	if len(r.body) != 0 {
		t.Errorf("204 with body %q", r.body)
	}
	expect(t, do(t, e.c, "GET", url, e.R, nil), 404, "release "+rel+" not found")
	expect(t, do(t, e.c, "DELETE", url, e.A, nil), 404, "release "+rel+" not found")
	if n := countRows(t, e.ts, "SELECT count(*) FROM release_entry WHERE release_id = ?", rel); n != 0 {
		t.Fatalf("%d entries left behind", n)
	}
	evs := auditRows(t, e.c, e.ts.url, e.R, "?action=delete_release")
	if len(evs) != 1 || evs[0].Target != rel || evs[0].Actor != "apikey:first-admin" || evs[0].Detail != nil {
		t.Fatalf("audit %+v", evs)
	}
	if rels := relList(t, e, ""); len(rels) != 0 {
		t.Fatalf("list still shows %v", relIDs(rels))
	}
}

// TestReleaseLarge100k creates a release of 100,000 entries (the maximum)
// in one request and reads it back intact; one more entry is refused
// without storing anything. The durations are logged, never asserted.
func TestReleaseLarge100k(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000-entry release skipped in -short mode")
	}
	e := newTestEnv(t)
	body := relBigBody(100_000)
	t.Logf("100,000-entry body: %d bytes", len(body))

	start := time.Now()
	r := apiSend(t, e.c, "POST", e.ts.url+"/api/v1/releases", e.D, "application/json", body, false)
	created := time.Since(start)
	expect(t, r, 201, "")
	var out struct {
		ID        string `json:"id"`
		HostCount int    `json:"host_count"`
	}
	r.json(t, &out)
	if out.HostCount != 100_000 {
		t.Fatalf("host_count %d", out.HostCount)
	}

	start = time.Now()
	got := do(t, e.c, "GET", e.ts.url+"/api/v1/releases/"+out.ID, e.R, nil)
	read := time.Since(start)
	expect(t, got, 200, "")
	var rel release
	got.json(t, &rel)
	t.Logf("100,000-entry release: create %v, read back %v (%d-byte response)", created, read, len(got.body))
	if rel.HostCount != 100_000 || len(rel.Entries) != 100_000 {
		t.Fatalf("read back %d entries, host_count %d", len(rel.Entries), rel.HostCount)
	}
	for i, en := range rel.Entries {
		host := fmt.Sprintf("host-%06d", i)
		if en.Hostname != host || en.StorePath != relBigPath(i) || en.Platform != "x86_64-linux" ||
			!slices.Equal(en.Tags, []string{"fleet", fmt.Sprintf("t%d", i%7)}) {
			t.Fatalf("entry %d is %+v", i, en)
		}
	}
	if got := relList(t, e, "?host=host-099999"); len(got) != 1 || got[0].ID != out.ID {
		t.Fatalf("?host=host-099999: %v", relIDs(got))
	}

	t.Run("100001 entries", func(t *testing.T) {
		body := relBigBody(100_001)
		r := apiSend(t, e.c, "POST", e.ts.url+"/api/v1/releases", e.D, "application/json", body, false)
		expect(t, r, 400, "")
		if n := countRows(t, e.ts, "SELECT count(*) FROM release"); n != 1 {
			t.Fatalf("%d releases after a refused create", n)
		}
		if n := countRows(t, e.ts, "SELECT count(*) FROM release_entry"); n != 100_000 {
			t.Fatalf("%d entries after a refused create", n)
		}
	})
}

// BenchmarkCreateRelease100k measures one POST of a 100,000-entry release
// (about 13 MB of JSON) over loopback, committed durably.
func BenchmarkCreateRelease100k(b *testing.B) {
	e := newTestEnv(b)
	body := relBigBody(100_000)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		r := apiSend(b, e.c, "POST", e.ts.url+"/api/v1/releases", e.D, "application/json", body, false)
		if r.status != 201 {
			b.Fatalf("status %d: %s", r.status, r.body)
		}
	}
}
