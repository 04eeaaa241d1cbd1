package main

// The audit CSV export (audit.go, §4.26, §10.4): its escaping and formula
// guard (ACC-108, ACC-109), filters, and its memory on a large log.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCSVField covers the escaping table of §10.4 (ACC-109) and the two
// rules behind it, as a unit test of csvField.
func TestCSVField(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// The table of §10.4, row by row.
		{"hello", "hello"},
		{"a,b", `"a,b"`},
		{`he said "hi"`, `"he said ""hi"""`},
		{"=SUM(A1:A9)", "'=SUM(A1:A9)"},
		{"=A,B", `"'=A,B"`},
		{`=HYPERLINK("http://evil")`, `"'=HYPERLINK(""http://evil"")"`},
		{"-1", "'-1"},
		{"", ""},
		// Every formula character, and where it does not count.
		{"+1", "'+1"},
		{"@SUM(A1)", "'@SUM(A1)"},
		{"\tx", "'\tx"},
		{"\rx", "\"'\rx\""},
		{"a=b", "a=b"},
		{" =1", " =1"},
		{"'=1", "'=1"},
		{"=", "'="},
		{"-", "'-"},
		// Quoting: comma, quote, LF, CR anywhere.
		{"a\nb", "\"a\nb\""},
		{"a\rb", "\"a\rb\""},
		{`"`, `""""`},
		{"a\tb", "a\tb"},
		{"naïve;ünïcode", "naïve;ünïcode"},
		{"-x,\"y\"\n", "\"'-x,\"\"y\"\"\n\""},
	} {
		if got := csvField(tc.in); got != tc.want {
			t.Errorf("csvField(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// audCSV fetches the export with query and returns the response.
func audCSV(t testing.TB, e *testEnv, query string) response {
	t.Helper()
	r := do(t, e.c, "GET", e.ts.url+"/api/v1/audit/export"+query, e.R, nil)
	expect(t, r, 200, "")
	return r
}

// audGuard is the formula guard of §10.4, step 1 only.
func audGuard(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}

// TestAuditExport covers ACC-108 and §10.4, and the limit clamp of ACC-107:
// headers, the header line, LF line endings, one line per row in id-descending
// order (1,500 rows give 1,501 lines), fields as an independent CSV parser
// reads them, filters and an unbounded limit on the export, and 1000 as the
// list's maximum.
func TestAuditExport(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	a := bootstrapKey(t, c, ts.url) // row 1
	e := &testEnv{ts: ts, c: c, A: a, R: a}
	details := []*string{nil, str("active"), str("a,b"), str(`he said "hi"`), str("=SUM(A1:A9)"), str("-1"), str("@x"), str("+1")}
	audInsert(t, ts, 1499, func(i int) (string, string, string, *string) {
		return fmt.Sprintf("apikey:bulk-%d", i%3), []string{"register", "notify_deploy", "tags.update"}[i%3],
			fmt.Sprintf("m-%04d", i), details[i%len(details)]
	})
	db := audDBRows(t, ts, 0)
	if len(db) != 1500 {
		t.Fatalf("%d rows", len(db))
	}
	slices.Reverse(db)

	r := audCSV(t, e, "")
	if ct := r.header.Get("Content-Type"); ct != "text/csv; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if cd := r.header.Get("Content-Disposition"); cd != `attachment; filename="audit.csv"` {
		t.Errorf("Content-Disposition %q", cd)
	}
	body := string(r.body)
	if !strings.HasSuffix(body, "\n") || strings.Contains(body, "\r\n") {
		t.Fatal("lines must end with LF, the last one included")
	}
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if len(lines) != 1501 {
		t.Fatalf("%d lines, want 1501", len(lines))
	}
	// §10.4's header with the hash chain's columns appended (issue 17).
	if lines[0] != "timestamp,actor,action,target,detail,id,prev_hash,hash" {
		t.Fatalf("header %q", lines[0])
	}
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range db {
		detail := ""
		if ev.Detail != nil {
			detail = *ev.Detail
		}
		want := []string{ev.Timestamp, audGuard(ev.Actor), audGuard(ev.Action), audGuard(ev.Target), audGuard(detail),
			fmt.Sprint(ev.ID), *ev.PrevHash, *ev.Hash}
		if !slices.Equal(recs[i+1], want) {
			t.Fatalf("record %d = %q, want %q", i+1, recs[i+1], want)
		}
	}
	if !strings.Contains(lines[1500], ",system:bootstrap,bootstrap,first-admin,first admin key created,1,"+auditGenesis+",") {
		t.Errorf("last line %q is not the oldest row", lines[1500])
	}

	for _, tc := range []struct {
		query string
		lines int
	}{
		{"?limit=10", 11},
		{"?limit=2000", 1501}, // no maximum on the export
		{"?limit=99999999999999999999", 1501},
		{"?action=bootstrap", 2},
		{"?actor=apikey:bulk-1", 501},
		{"?actor=apikey:bulk-1&target=m-0001", 2},
		{"?actor=nobody", 1},
		{fmt.Sprintf("?before=%d&limit=5", db[10].ID), 6},
	} {
		t.Run(tc.query, func(t *testing.T) {
			got := strings.Split(strings.TrimSuffix(string(audCSV(t, e, tc.query).body), "\n"), "\n")
			if len(got) != tc.lines || got[0] != strings.TrimSuffix(csvHeader, "\n") {
				t.Fatalf("%d lines, want %d; first %q", len(got), tc.lines, got[0])
			}
		})
	}

	t.Run("list limit clamp", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			n     int
		}{{"", 100}, {"?limit=1000", 1000}, {"?limit=2000", 1000}, {"?limit=1001", 1000}, {"?limit=999", 999}} {
			got := auditRows(t, c, ts.url, a, tc.query)
			if len(got) != tc.n || got[0].ID != db[0].ID || got[len(got)-1].ID != db[tc.n-1].ID {
				t.Errorf("%q: %d rows, want the newest %d", tc.query, len(got), tc.n)
			}
		}
	})
	t.Run("anonymous", func(t *testing.T) {
		expect(t, do(t, c, "GET", ts.url+"/api/v1/audit/export", "", nil), 401, "missing API key")
		expect(t, do(t, c, "GET", ts.url+"/api/v1/audit", "", nil), 401, "missing API key")
	})
}

// TestAuditExportFormulaGuard covers ACC-109 end to end. A key name is the
// one route by which a request puts a chosen string at the start of a
// field (bootstrap's target is the key name); no route writes a detail that
// starts with a formula character, so such details are inserted with SQL
// into audit_event, as `sqlite3` could.
func TestAuditExportFormulaGuard(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c := ts.client("")
	const evil = `=HYPERLINK("http://evil")`
	r := do(t, c, "POST", ts.url+"/api/v1/keys/bootstrap", "", map[string]any{"name": evil})
	expect(t, r, 200, "")
	var k keyCreated
	r.json(t, &k)
	e := &testEnv{ts: ts, c: c, A: k.Key, R: k.Key}
	// The admin's own mutations carry the name in the actor (apikey:=…) and
	// in key.created's detail (name==…).
	createTestKey(t, c, ts.url, k.Key, "-1", "readonly")

	db, err := sql.Open("sqlite", "file:"+dbPath+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sqlRows := []struct{ detail, csv string }{
		{evil, `"'=HYPERLINK(""http://evil"")"`},
		{"=SUM(A1:A9)", "'=SUM(A1:A9)"},
		{"=A,B", `"'=A,B"`},
		{"-1", "'-1"},
		{"+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"},
		{"@SUM(1+1)", "'@SUM(1+1)"},
		{"\t=1", "'\t=1"},
		{"\r=1", "\"'\r=1\""},
		{"two\nlines", "\"two\nlines\""},
	}
	for i, row := range sqlRows {
		if _, err := db.Exec(`INSERT INTO audit_event (timestamp, actor, action, target, detail) VALUES (?, 'sql', 'manual', ?, ?)`,
			ts.clock.now().UnixMilli(), fmt.Sprintf("row-%d", i), row.detail); err != nil {
			t.Fatal(err)
		}
	}

	body := string(audCSV(t, e, "").body)
	ts0 := fmtTime(ts.clock.now().UnixMilli())
	for _, want := range []string{
		ts0 + `,system:bootstrap,bootstrap,"'=HYPERLINK(""http://evil"")",first admin key created,1,`,
		ts0 + `,"apikey:=HYPERLINK(""http://evil"")",key.created,2,name=-1 role=readonly,2,`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("export lacks line %q:\n%s", want, body)
		}
	}
	for i, row := range sqlRows {
		want := fmt.Sprintf("%s,sql,manual,row-%d,%s,%d,,\n", ts0, i, row.csv, i+3) // inserted by SQL: unchained
		if !strings.Contains(body, want) {
			t.Errorf("export lacks %q", want)
		}
	}
	// Invariant: no field, as a CSV reader sees it, starts a formula.
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1+2+len(sqlRows) {
		t.Fatalf("%d records", len(recs))
	}
	for _, rec := range recs {
		for _, f := range rec {
			if f != "" && strings.ContainsRune("=+-@\t\r", rune(f[0])) {
				t.Errorf("field %q starts with a formula character", f)
			}
		}
	}
}

// audSeedBulk appends n audit rows in one INSERT … SELECT over a recursive
// CTE: far faster than n statements, which matters under -race.
func audSeedBulk(t testing.TB, ts *testServer, n int) {
	t.Helper()
	err := ts.st.write(context.Background(), func(tx *txn) error {
		_, err := tx.exec(`INSERT INTO audit_event (timestamp, actor, action, target, detail)
			WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?)
			SELECT ? + i, 'apikey:bulk', 'notify_deploy', printf('host-%06d', i),
				'/nix/store/' || ? || '-nixos-system-host-' || printf('%06d', i) FROM seq`,
			n, tx.now, strings.Repeat("a", 32))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := countRows(t, ts, "SELECT count(*) FROM audit_event WHERE actor = 'apikey:bulk'"); got != n {
		t.Fatalf("seeded %d rows, want %d", got, n)
	}
}

// audMeasureExport streams one export and reports its size in bytes and
// lines, and the Go heap: HeapInuse before (after a GC), the peak sampled
// while streaming, and the bytes allocated in all.
func audMeasureExport(t testing.TB, e *testEnv, query string) (size, lines int64, base, peak, alloc uint64) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak = ms.HeapInuse, ms.HeapInuse
	allocBefore := ms.TotalAlloc
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		p := peak
		for {
			select {
			case <-stop:
				done <- p
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				p = max(p, ms.HeapInuse)
			}
		}
	}()
	req, _ := http.NewRequest("GET", e.ts.url+"/api/v1/audit/export"+query, nil)
	req.Header.Set("Authorization", "Bearer "+e.R)
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		size += int64(n)
		lines += int64(bytes.Count(buf[:n], []byte{'\n'}))
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	resp.Body.Close()
	close(stop)
	peak = <-done
	runtime.ReadMemStats(&ms)
	return size, lines, base, peak, ms.TotalAlloc - allocBefore
}

// TestAuditExportMemory streams the export of 100,000 audit rows and shows
// that the heap stays flat: the export is written row by row from the
// database cursor, never built in memory. The figures are logged; the one
// assertion is that the heap grows by less than the export's size, which a
// buffered implementation (at least the CSV bytes) could not meet. GOGC is lowered while
// measuring so that the heap tracks live memory closely.
func TestAuditExportMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000-row export skipped in -short mode")
	}
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	a := bootstrapKey(t, c, ts.url)
	e := &testEnv{ts: ts, c: c, A: a, R: a}
	start := time.Now()
	audSeedBulk(t, ts, 100_000)
	t.Logf("inserted 100,000 audit rows in %v", time.Since(start))

	defer debug.SetGCPercent(debug.SetGCPercent(10))
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	for _, q := range []string{"?limit=10000", ""} {
		start := time.Now()
		size, lines, base, peak, alloc := audMeasureExport(t, e, q)
		t.Logf("export%s: %d lines, %s in %v; HeapInuse before %s, peak %s (+%s); allocated %s in all (nproc %d)",
			q, lines, mib(uint64(size)), time.Since(start), mib(base), mib(peak), mib(peak-base), mib(alloc), runtime.NumCPU())
		if q == "" {
			if lines != 100_002 {
				t.Fatalf("%d lines, want 100,002", lines)
			}
			if growth := peak - base; growth >= uint64(size) {
				t.Errorf("heap grew by %s while streaming a %s export: not flat", mib(growth), mib(uint64(size)))
			}
		}
	}
}

// BenchmarkAuditExport100k streams the export of 100,000 audit rows; B/op
// is the allocation churn per export (garbage, not the peak heap).
func BenchmarkAuditExport100k(b *testing.B) {
	ts := newTestServer(b, testServerOptions{})
	c := ts.client("")
	a := bootstrapKey(b, c, ts.url)
	e := &testEnv{ts: ts, c: c, A: a, R: a}
	audSeedBulk(b, ts, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		size, lines, _, _, _ := audMeasureExport(b, e, "")
		b.SetBytes(size)
		if lines != 100_002 {
			b.Fatalf("%d lines", lines)
		}
	}
}
