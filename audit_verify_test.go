package main

// `audit verify` (audit_verify.go) as an operator runs it: the built binary
// against a real database written by the real server, tampered with by the
// sqlite3 CLI the way an attacker holding the file would (dropping the
// append-only triggers first), and against exports downloaded over HTTP and
// then edited (issue 17, part 1).

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chainFixture is a database written by the binary: 11 audit rows, all
// chained (register at seq 2..5 and 7..9, update_lifecycle at 6), including a target that the CSV formula guard changes (the
// bootstrap key is named "=calc") and a NULL detail (delete_release).
type chainFixture struct {
	bs    *binServer
	db    string // the live database
	admin string
	c     *http.Client
	head  auditHeadInfo
}

// newChainFixture starts the binary on a fresh database and writes the rows.
func newChainFixture(t *testing.T) *chainFixture {
	t.Helper()
	f := &chainFixture{db: filepath.Join(t.TempDir(), "state.db"), c: &http.Client{Timeout: 30 * time.Second}}
	f.bs = startBinary(t, "--db-path", f.db)
	r := do(t, f.c, "POST", f.bs.url+"/api/v1/keys/bootstrap", "", `{"name":"=calc"}`) // seq 1
	expect(t, r, 200, "")
	var k keyCreated
	r.json(t, &k)
	f.admin = k.Key
	for i := 1; i <= 7; i++ { // seq 2..5 and 7..9
		expect(t, do(t, f.c, "POST", fmt.Sprintf("%s/api/v1/machines/m%d/register", f.bs.url, i), f.admin, nil), 201, "")
		if i == 4 { // seq 6
			expect(t, do(t, f.c, "PATCH", f.bs.url+"/api/v1/machines/m1/lifecycle", f.admin, `{"lifecycle":"maintenance"}`), 200, "")
		}
	}
	rel := postCreated[struct{ ID string }](t, f.c, f.bs.url+"/api/v1/releases", f.admin, // seq 10
		map[string]any{"entries": []any{relEntry("m1", 'a')}}).ID
	expect(t, do(t, f.c, "DELETE", f.bs.url+"/api/v1/releases/"+rel, f.admin, nil), 204, "") // seq 11, detail NULL
	do(t, f.c, "GET", f.bs.url+"/api/v1/audit/head", f.admin, nil).json(t, &f.head)
	if f.head.Seq != 11 {
		t.Fatalf("head %+v, want seq 11", f.head)
	}
	return f
}

// stop stops the server gracefully, so that the database is one
// checkpointed file.
func (f *chainFixture) stop(t *testing.T) {
	t.Helper()
	f.bs.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-f.bs.done; err != nil {
		t.Fatalf("server exit: %v\n%s", err, f.bs.logs.String())
	}
	f.bs.done <- nil
}

// export downloads the audit export with query and writes it to a file.
func (f *chainFixture) export(t *testing.T, query string) string {
	t.Helper()
	r := do(t, f.c, "GET", f.bs.url+"/api/v1/audit/export"+query, f.admin, nil)
	expect(t, r, 200, "")
	path := filepath.Join(t.TempDir(), "export")
	if err := os.WriteFile(path, r.body, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// verify runs `audit verify args...` and returns its exit code and stdout
// followed by stderr.
func verify(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, buildBinary(t), append([]string{"audit", "verify"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String() + errOut.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), out.String() + errOut.String()
	}
	t.Fatalf("audit verify %v: %v", args, err)
	return -1, ""
}

// expectVerify runs the verifier and checks its exit code and that its
// output holds every string of want.
func expectVerify(t *testing.T, code int, want []string, args ...string) string {
	t.Helper()
	got, out := verify(t, args...)
	if got != code {
		t.Errorf("audit verify %v: exit %d, want %d\n%s", args, got, code, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("audit verify %v: output lacks %q:\n%s", args, w, out)
		}
	}
	return out
}

// tampered copies the database and runs script on the copy with the sqlite3
// CLI, as an attacker would; where the CLI is missing, the same script runs
// through database/sql, so the tampering cases never skip.
func tampered(t *testing.T, src, script string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "tampered.db")
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if bin, err := exec.LookPath("sqlite3"); err == nil {
		if out, err := exec.Command(bin, dst, script).CombinedOutput(); err != nil {
			t.Fatalf("sqlite3: %v\n%s", err, out)
		}
		return dst
	}
	t.Log("sqlite3 CLI not found: tampering through database/sql instead")
	if _, err := openDB(t, dst).Exec(script); err != nil {
		t.Fatalf("tamper: %v", err)
	}
	return dst
}

// dropTriggers is what an attacker runs first: the append-only triggers
// stop sqlite3 as well, until they are dropped.
const dropTriggers = "DROP TRIGGER audit_event_no_update; DROP TRIGGER audit_event_no_delete; DROP TRIGGER audit_event_no_replace; "

// chainRowsOf reads the audit rows of a database file in id order.
func chainRowsOf(t *testing.T, path string) []chainRow {
	t.Helper()
	var rows []chainRow
	err := walkAuditDB(context.Background(), path, func(r chainRow, _ func(string) (int64, bool, error)) error {
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// sqlText quotes s as an SQL string literal.
func sqlText(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// TestAuditVerifyDatabase tampers with a copy of the database in every way
// the chain must catch and checks that the verifier names the row and the
// kind of change, with exit code 1; the intact file gives 0.
func TestAuditVerifyDatabase(t *testing.T) {
	f := newChainFixture(t)
	f.stop(t)
	rows := chainRowsOf(t, f.db)
	head := fmt.Sprintf("%d:%s", f.head.Seq, f.head.Hash)

	// An attacker who knows the encoding forges a row 5 that links to row 4,
	// after moving rows 5.. up by one.
	forged := chainRow{id: 5, timestamp: rows[3].timestamp, actor: "apikey:=calc", action: "register", target: "evil", detail: str("active")}
	forgedHash := auditHash(*rows[3].hash, forged)
	// ... or edits row 3 and recomputes every hash after it: consistent, and
	// caught only against a head recorded elsewhere.
	var rewrite strings.Builder
	prev := *rows[1].hash
	for _, r := range rows[2:] {
		if r.id == 3 {
			r.detail = str("maintenance")
			fmt.Fprintf(&rewrite, "UPDATE audit_event SET detail = 'maintenance' WHERE id = 3; ")
		}
		h := auditHash(prev, r)
		fmt.Fprintf(&rewrite, "UPDATE audit_event SET prev_hash = %s, hash = %s WHERE id = %d; ", sqlText(prev), sqlText(h), r.id)
		prev = h
	}
	shift := "UPDATE audit_event SET id = -id WHERE id >= 5; UPDATE audit_event SET id = 1 - id WHERE id < 0; "

	for _, tc := range []struct {
		name, script string
		head         bool
		code         int
		want         []string
	}{
		{"intact", "", false, 0, []string{"11 audit rows", "chain: seq 1..11, head " + head, "result: intact"}},
		{"intact with head", "", true, 0, []string{"head " + head + ": present and matching", "result: intact"}},
		{"edit", "UPDATE audit_event SET detail = 'pending' WHERE id = 5", false, 1,
			[]string{"seq 5: hash mismatch: the row was edited", "result: BROKEN (1 problem)"}},
		{"edit the actor", "UPDATE audit_event SET actor = 'apikey:someone-else' WHERE id = 10", false, 1,
			[]string{"seq 10: hash mismatch: the row was edited"}},
		{"delete", "DELETE FROM audit_event WHERE id = 5", false, 1,
			[]string{"seq 5: missing: deleted (seq 6's prev_hash is not the hash of seq 4)", "result: BROKEN (1 problem)"}},
		{"delete two", "DELETE FROM audit_event WHERE id IN (5, 6)", false, 1, []string{"seq 5..6: missing: deleted"}},
		{"delete the first", "DELETE FROM audit_event WHERE id = 1", false, 1,
			[]string{"seq 2: the first chained row's prev_hash is not the genesis value"}},
		{"insert at the end", "INSERT INTO audit_event (timestamp, actor, action, target, detail) VALUES (0, 'apikey:=calc', 'register', 'evil', 'active')", false, 1,
			[]string{"seq 12: no hash, but the chain started at seq 1: the row was inserted"}},
		{"insert in the middle", shift + "INSERT INTO audit_event (id, timestamp, actor, action, target, detail) VALUES (5, 0, 'x', 'register', 'evil', 'active')", false, 1,
			[]string{"seq 5: no hash, but the chain started at seq 1: the row was inserted",
				"seq 6: hash mismatch: the row's content hashes as seq 5: it was moved"}},
		{"insert a forged row", shift + fmt.Sprintf("INSERT INTO audit_event VALUES (5, %d, 'apikey:=calc', 'register', 'evil', 'active', %s, %s)",
			forged.timestamp, sqlText(*rows[3].hash), sqlText(forgedHash)), false, 1,
			[]string{"seq 6: prev_hash is the hash of seq 4, not of seq 5: seq 5 inserted or moved here"}},
		{"reorder", "UPDATE audit_event SET id = -5 WHERE id = 5; UPDATE audit_event SET id = 5 WHERE id = 6; UPDATE audit_event SET id = 6 WHERE id = -5", false, 1,
			[]string{"seq 5: prev_hash is the hash of seq 6, which comes after it: rows reordered",
				"seq 5: hash mismatch: the row's content hashes as seq 6: it was moved (reordered or renumbered) from seq 6"}},
		{"reorder contents", "UPDATE audit_event SET target = CASE id WHEN 7 THEN 'm6' ELSE 'm5' END WHERE id IN (7, 8)", false, 1,
			[]string{"seq 7: hash mismatch: the row was edited", "seq 8: hash mismatch: the row was edited"}},
		{"hash removed", "UPDATE audit_event SET prev_hash = NULL, hash = NULL WHERE id = 7", false, 1,
			[]string{"seq 7: no hash, but the chain started at seq 1"}},
		{"truncate the tail", "DELETE FROM audit_event WHERE id > 9", false, 0, []string{"result: intact"}},
		{"truncate the tail, with head", "DELETE FROM audit_event WHERE id > 9", true, 1,
			[]string{"seq 11: the recorded head is missing: the log was truncated (the last row is seq 9)"}},
		{"truncate the head row only, with head", "DELETE FROM audit_event WHERE id = 11", true, 1,
			[]string{"seq 11: the recorded head is missing: the log was truncated (the last row is seq 10)"}},
		{"rewrite the whole chain", rewrite.String(), false, 0, []string{"result: intact"}},
		{"rewrite the whole chain, with head", rewrite.String(), true, 1,
			[]string{"seq 11: the recorded head hash is " + f.head.Hash, "the log was rewritten at or before seq 11"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := f.db
			if tc.script != "" {
				path = tampered(t, f.db, dropTriggers+tc.script)
			}
			args := []string{"--db-path", path}
			if tc.head {
				args = append(args, "--head", head)
			}
			out := expectVerify(t, tc.code, tc.want, args...)
			if tc.code == 1 && !strings.Contains(out, "audit chain is broken") {
				t.Errorf("no error line on stderr:\n%s", out)
			}
		})
	}
}

// TestAuditVerifyReadOnly checks that the verifier reads a database beside
// the running server (through its WAL: it sees the newest row) without
// creating any file, and leaves a stopped server's file byte-for-byte
// unchanged with no -wal or -shm.
func TestAuditVerifyReadOnly(t *testing.T) {
	f := newChainFixture(t)
	if !strings.Contains(f.bs.logs.String(), `msg="audit head" seq=0 hash=`+auditGenesis) {
		t.Errorf("no startup log line with the head:\n%s", f.bs.logs.String())
	}
	names := func() []string {
		ents, err := os.ReadDir(filepath.Dir(f.db))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	before := names()
	if !slices.Contains(before, "state.db-wal") || !slices.Contains(before, "state.db.lock") {
		t.Fatalf("the running server's files: %v", before)
	}
	head := fmt.Sprintf("%d:%s", f.head.Seq, f.head.Hash)
	expectVerify(t, 0, []string{"chain: seq 1..11, head " + head, "result: intact"}, "--db-path", f.db, "--head", head)
	if after := names(); !slices.Equal(after, before) {
		t.Errorf("files beside the database changed: %v -> %v", before, after)
	}
	// The server still writes: the verifier held no lock.
	expect(t, do(t, f.c, "POST", f.bs.url+"/api/v1/machines/m9/register", f.admin, nil), 201, "")

	f.stop(t)
	snap := snapFile(t, f.db)
	if len(snap.companion) != 0 {
		t.Fatalf("companions after a clean stop: %v", snap.companion)
	}
	expectVerify(t, 0, []string{"chain: seq 1..12", "result: intact"}, "--db-path", f.db)
	after := snapFile(t, f.db)
	if !bytes.Equal(after.data, snap.data) || len(after.companion) != 0 {
		t.Errorf("the verifier changed the stopped database (companions %v)", after.companion)
	}
}

// TestAuditVerifyExport verifies JSON and CSV exports downloaded over HTTP,
// intact and edited: the verifier names the row, says when an export is
// not contiguous, and checks a recorded head against an export.
func TestAuditVerifyExport(t *testing.T) {
	f := newChainFixture(t)
	head := fmt.Sprintf("%d:%s", f.head.Seq, f.head.Hash)
	jsonPath, csvPath := f.export(t, "?format=json"), f.export(t, "")
	filtered := f.export(t, "?format=json&action=register")
	filteredCSV := f.export(t, "?action=register")

	// The JSON export is one array of the rows GET /api/v1/audit lists.
	r := do(t, f.c, "GET", f.bs.url+"/api/v1/audit/export?format=json", f.admin, nil)
	if r.header.Get("Content-Type") != "application/json" || r.header.Get("Content-Disposition") != `attachment; filename="audit.json"` {
		t.Errorf("JSON export headers %v", r.header)
	}
	expect(t, do(t, f.c, "GET", f.bs.url+"/api/v1/audit/export?format=xml", f.admin, nil), 400, "format: must be csv or json")
	var events []auditEvent
	b, _ := os.ReadFile(jsonPath)
	if err := json.Unmarshal(b, &events); err != nil || len(events) != 11 || events[0].ID != 11 || *events[0].Hash != f.head.Hash {
		t.Fatalf("JSON export: %v, %d events\n%s", err, len(events), b)
	}
	if list := auditRows(t, f.c, f.bs.url, f.admin, ""); !reflect.DeepEqual(list, events) {
		t.Errorf("export %v differs from the list %v", events, list)
	}

	editJSON := func(fn func([]map[string]any) []map[string]any) string {
		var rows []map[string]any
		if err := json.Unmarshal(b, &rows); err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(fn(rows))
		p := filepath.Join(t.TempDir(), "edited.json")
		os.WriteFile(p, out, 0o600)
		return p
	}
	csvRecs := func() [][]string {
		cb, _ := os.ReadFile(csvPath)
		recs, err := csv.NewReader(bytes.NewReader(cb)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	editCSV := func(fn func([][]string) [][]string) string {
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		w.WriteAll(fn(csvRecs()))
		p := filepath.Join(t.TempDir(), "edited.csv")
		os.WriteFile(p, buf.Bytes(), 0o600)
		return p
	}
	byID := func(recs [][]string, id int) int { // index of the CSV record of row id
		for i, r := range recs {
			if r[5] == strconv.Itoa(id) {
				return i
			}
		}
		t.Fatalf("no CSV row %d", id)
		return -1
	}
	if recs := csvRecs(); recs[byID(recs, 1)][3] != "'=calc" || recs[byID(recs, 11)][4] != "" {
		t.Fatalf("fixture: the guarded target or the NULL detail is missing: %q", recs)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"JSON intact", []string{"--export", jsonPath}, 0,
			[]string{"JSON export", "chain: seq 1..11, head " + head, "export: contiguous", "result: intact"}},
		{"CSV intact (formula guard and NULL detail resolved)", []string{"--export", csvPath, "--head", head}, 0,
			[]string{"CSV export", "head " + head + ": present and matching", "result: intact"}},
		{"JSON edited", []string{"--export", editJSON(func(r []map[string]any) []map[string]any {
			r[6]["detail"] = "maintenance" // newest first: index 6 is seq 5
			return r
		})}, 1, []string{"seq 5: hash mismatch: the row was edited"}},
		{"JSON row deleted", []string{"--export", editJSON(func(r []map[string]any) []map[string]any {
			return slices.Delete(r, 6, 7)
		})}, 1, []string{"seq 5: not in the export: deleted from it, or the export was filtered (use --partial"}},
		{"JSON row deleted, --partial", []string{"--partial", "--export", editJSON(func(r []map[string]any) []map[string]any {
			return slices.Delete(r, 6, 7)
		})}, 0, []string{"export: NOT contiguous: 1 row is not in it (seq 5)", "result: intact"}},
		{"JSON reordered", []string{"--export", editJSON(func(r []map[string]any) []map[string]any {
			r[6]["id"], r[5]["id"] = r[5]["id"], r[6]["id"]
			return r
		})}, 1, []string{"seq 5: prev_hash is the hash of seq 6, which comes after it: rows reordered"}},
		{"JSON truncated download", []string{"--export", func() string {
			p := filepath.Join(t.TempDir(), "cut.json")
			os.WriteFile(p, b[:len(b)/2], 0o600)
			return p
		}()}, 1, []string{"not a JSON array of audit events"}},
		{"JSON newest row dropped, with head", []string{"--head", head, "--export", editJSON(func(r []map[string]any) []map[string]any {
			return r[1:]
		})}, 1, []string{"seq 11: the recorded head is missing: the log was truncated (the last row is seq 10)"}},
		{"JSON filtered, --partial", []string{"--partial", "--export", filtered}, 0,
			[]string{"export: NOT contiguous: 1 row is not in it (seq 6)", "export: begins inside the chain at seq 2", "result: intact"}},
		{"JSON filtered, without --partial", []string{"--export", filtered}, 1, []string{"seq 6: not in the export"}},
		{"CSV filtered, --partial", []string{"--partial", "--export", filteredCSV}, 0, []string{"CSV export", "NOT contiguous", "result: intact"}},
		{"CSV edited", []string{"--export", editCSV(func(r [][]string) [][]string {
			r[byID(r, 3)][3] = "m9"
			return r
		})}, 1, []string{"seq 3: hash mismatch: the row was edited"}},
		{"CSV guard removed", []string{"--export", editCSV(func(r [][]string) [][]string {
			r[byID(r, 1)][3] = "=calc" // not a reading the export could produce: still matches
			return r
		})}, 0, []string{"result: intact"}},
		{"CSV row deleted", []string{"--export", editCSV(func(r [][]string) [][]string {
			return slices.Delete(r, byID(r, 8), byID(r, 8)+1)
		})}, 1, []string{"seq 8: not in the export"}},
		{"CSV reordered", []string{"--export", editCSV(func(r [][]string) [][]string {
			i, j := byID(r, 7), byID(r, 8)
			r[i][5], r[j][5] = r[j][5], r[i][5]
			return r
		})}, 1, []string{"seq 7: prev_hash is the hash of seq 8, which comes after it: rows reordered"}},
		{"CSV without hash columns", []string{"--export", func() string {
			p := filepath.Join(t.TempDir(), "v1.csv")
			os.WriteFile(p, []byte("timestamp,actor,action,target,detail\n"), 0o600)
			return p
		}()}, 1, []string{`no "id" column: an export from a version without the hash chain cannot be verified`}},
	} {
		t.Run(tc.name, func(t *testing.T) { expectVerify(t, tc.code, tc.want, tc.args...) })
	}
}

// TestAuditVerifyUsage covers the exit codes of usage errors (2), a missing
// database (1) and the help text (0).
func TestAuditVerifyUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.db")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "give exactly one of --db-path and --export"},
		{[]string{"--db-path", "a", "--export", "b"}, 2, "give exactly one of --db-path and --export"},
		{[]string{"--db-path", missing, "--head", "5"}, 2, "--head: want SEQ:HASH"},
		{[]string{"--db-path", missing, "--head", "5:ABC"}, 2, "HASH must be 64 lowercase hex characters"},
		{[]string{"--db-path", missing, "--head", "0:" + strings.Repeat("a", 64)}, 2, "seq 0 (no chained row yet) goes only with the genesis hash"},
		{[]string{"--db-path", missing, "--partial"}, 2, "--partial applies only to --export"},
		{[]string{"--db-path", missing, "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"--db-path", missing}, 1, "database " + missing + " does not exist"},
		{[]string{"--help"}, 0, "Exit status: 0 intact, 1 broken (or unreadable), 2 usage error."},
	} {
		expectVerify(t, tc.code, []string{tc.want}, tc.args...)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("the verifier created the missing database")
	}
	code, out := runBinary(t, nil, "audit", "check")
	if code != 2 || !strings.Contains(out, `want "audit verify"`) {
		t.Errorf("audit check: exit %d\n%s", code, out)
	}
}
