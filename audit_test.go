package main

// Audit tests (audit.go, §4.25, §5.6, §10): one row per mutation with the
// actor, target and detail of §10.2 (ACC-105), timestamps (ACC-106), filters
// and paging (ACC-107) and the append-only triggers (ACC-110). The CSV export
// is in audit_export_test.go.

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// audWant is an expected audit row; detail nil means null.
type audWant struct {
	actor, action, target string
	detail                *string
}

func audW(actor, action, target string, detail ...string) audWant {
	w := audWant{actor: actor, action: action, target: target}
	if len(detail) > 0 {
		w.detail = &detail[0]
	}
	return w
}

func (w audWant) String() string {
	d := "null"
	if w.detail != nil {
		d = strconv.Quote(*w.detail)
	}
	return fmt.Sprintf("{%s %s %s %s}", w.actor, w.action, w.target, d)
}

// audDBRows reads the audit rows with id > after from the database, in
// ascending id order.
func audDBRows(t testing.TB, ts *testServer, after int64) []auditEvent {
	t.Helper()
	rows, err := ts.st.ro.QueryContext(context.Background(),
		"SELECT id, timestamp, actor, action, target, detail, prev_hash, hash FROM audit_event WHERE id > ? ORDER BY id", after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []auditEvent
	for rows.Next() {
		var ev auditEvent
		var ms int64
		var detail, prev, hash sql.NullString
		if err := rows.Scan(&ev.ID, &ms, &ev.Actor, &ev.Action, &ev.Target, &detail, &prev, &hash); err != nil {
			t.Fatal(err)
		}
		ev.Timestamp, ev.Detail, ev.PrevHash, ev.Hash = fmtTime(ms), nullStr(detail), nullStr(prev), nullStr(hash)
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// audKey renders a row with its id and timestamp, for comparisons.
func audKey(ev auditEvent) string {
	return fmt.Sprintf("%d %s %v", ev.ID, ev.Timestamp, audWant{ev.Actor, ev.Action, ev.Target, ev.Detail})
}

func audAsWant(evs []auditEvent) []audWant {
	out := make([]audWant, len(evs))
	for i, ev := range evs {
		out[i] = audWant{ev.Actor, ev.Action, ev.Target, ev.Detail}
	}
	return out
}

// TestAuditEveryMutation covers ACC-105 and ACC-110 (second half) and
// §10.2: it walks through one mutation of every kind the code paths
// produce (all 22 actions, both actors where two are possible, and the
// offline `keys create`) and checks that each writes exactly the expected
// rows, with their actor, target and detail, in the same order as the
// changes; that rejected requests write none; that every timestamp has the
// output format (ACC-106); and that nixfleet_audit_events_total counts
// exactly the rows this process committed.
func TestAuditEveryMutation(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c, u := ts.client(""), ts.url
	ctx := context.Background()
	var last int64
	var A, D, revokedKey string
	const admin, deployer = "apikey:first-admin", "apikey:deployer"

	// step runs act, which makes requests and returns the rows they must
	// have written, and compares them with the new rows of the database.
	step := func(name string, act func() []audWant) {
		t.Helper()
		want := act()
		got := audDBRows(t, ts, last)
		if len(got) > 0 {
			last = got[len(got)-1].ID
		}
		if fmt.Sprint(audAsWant(got)) != fmt.Sprint(want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("%s: audit rows\n got %v\nwant %v", name, audAsWant(got), want)
		}
	}
	ok := func(r response, status int) {
		t.Helper()
		expect(t, r, status, "")
	}
	post := func(path, key string, body any) response { return do(t, c, "POST", u+path, key, body) }
	report := func(body map[string]any) {
		ok(post("/api/v1/machines/"+body["machine_id"].(string)+"/report", "", body), 200)
	}
	P1, P2, P9, G0 := storePath('1', "p1"), storePath('2', "p2"), storePath('9', "p9"), storePath('0', "g0")
	relPath := func(h string, c byte) string { return storePath(c, "nixos-system-"+h) }
	rollout := func(body map[string]any) string {
		r := post("/api/v1/rollouts", D, body)
		ok(r, 201)
		var out createRolloutResponse
		r.json(t, &out)
		return out.RolloutID
	}
	var rel, rid1, rid2, rid3, rid4 string

	step("bootstrap", func() []audWant {
		A = bootstrapKey(t, c, u)
		return []audWant{audW("system:bootstrap", "bootstrap", "first-admin", "first admin key created")}
	})
	step("key.created", func() []audWant {
		D = createTestKey(t, c, u, A, "deployer", "deploy")
		return []audWant{audW(admin, "key.created", "2", "name=deployer role=deploy")}
	})
	step("key.created with expiry", func() []audWant {
		r := post("/api/v1/keys", A, map[string]any{"name": "temp", "role": "readonly", "expires_at": "2027-01-01T00:00:00+01:00"})
		ok(r, 201)
		var k keyCreated
		r.json(t, &k)
		revokedKey = k.Key
		return []audWant{audW(admin, "key.created", "3", "name=temp role=readonly expires_at=2026-12-31T23:00:00.000Z")}
	})
	step("key.revoked", func() []audWant {
		ok(do(t, c, "DELETE", u+"/api/v1/keys/3", A, nil), 204)
		ok(do(t, c, "DELETE", u+"/api/v1/keys/3", A, nil), 204) // already revoked: no row
		return []audWant{audW(admin, "key.revoked", "3", "name=temp role=readonly")}
	})
	step("register new", func() []audWant {
		ok(post("/api/v1/machines/web-01/register", A, nil), 201)
		return []audWant{audW(admin, "register", "web-01", "active")}
	})
	step("register new with lifecycle and tags", func() []audWant {
		ok(post("/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "pending", "tags": []string{"web"}}), 201)
		return []audWant{audW(admin, "register", "web-02", "pending"), audW(admin, "tags.update", "web-02", "[] -> [web]")}
	})
	step("register unchanged", func() []audWant {
		ok(post("/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "pending", "tags": []string{"web", "web"}}), 201)
		return []audWant{audW(admin, "register", "web-02", "pending")}
	})
	step("register transition", func() []audWant {
		ok(post("/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "provisioning"}), 201)
		return []audWant{audW(admin, "register", "web-02", "pending -> provisioning")}
	})
	step("update_lifecycle", func() []audWant {
		ok(do(t, c, "PATCH", u+"/api/v1/machines/web-01/lifecycle", A, map[string]any{"lifecycle": "maintenance"}), 200)
		ok(do(t, c, "PATCH", u+"/api/v1/machines/web-01/lifecycle", A, map[string]any{"lifecycle": "active"}), 200)
		return []audWant{
			audW(admin, "update_lifecycle", "web-01", "active -> maintenance"),
			audW(admin, "update_lifecycle", "web-01", "maintenance -> active"),
		}
	})
	step("tags.update", func() []audWant {
		ok(do(t, c, "PUT", u+"/api/v1/machines/web-01/tags", A, map[string]any{"tags": []string{"eu", "db", "eu"}}), 200)
		ok(do(t, c, "PUT", u+"/api/v1/machines/web-01/tags", A, map[string]any{"tags": []string{"db", "eu"}}), 200) // unchanged: no row
		ok(do(t, c, "PUT", u+"/api/v1/machines/web-01/tags", A, map[string]any{"tags": []string{}}), 200)
		return []audWant{audW(admin, "tags.update", "web-01", "[] -> [db,eu]"), audW(admin, "tags.update", "web-01", "[db,eu] -> []")}
	})
	step("notify_deploy", func() []audWant {
		ok(post("/api/v1/machines/web-01/notify-deploy", D, map[string]any{"store_path": P1}), 200)
		return []audWant{audW(deployer, "notify_deploy", "web-01", P1)}
	})
	step("notify_deploy registers an unknown machine", func() []audWant {
		ok(post("/api/v1/machines/ssh-01/notify-deploy", D, map[string]any{"store_path": P1}), 200)
		return []audWant{audW(deployer, "register", "ssh-01", "active"), audW(deployer, "notify_deploy", "ssh-01", P1)}
	})
	step("clear_desired", func() []audWant {
		ok(do(t, c, "DELETE", u+"/api/v1/machines/web-01/desired-generation", A, nil), 204)
		ok(do(t, c, "DELETE", u+"/api/v1/machines/web-01/desired-generation", A, nil), 204) // nothing set: no row
		return []audWant{audW(admin, "clear_desired", "web-01", P1)}
	})
	step("report: first report, auto-activation, tag sync", func() []audWant {
		b := reportBody("web-02", G0, true, "up-to-date")
		b["tags"] = []string{"web", "canary", "web"}
		report(b)
		m := "machine:web-02"
		return []audWant{
			audW(m, "report", "web-02", "first report"),
			audW(m, "update_lifecycle", "web-02", "provisioning -> active"),
			audW(m, "tags.update", "web-02", "[web] -> [canary,web]"),
		}
	})
	step("report: registered, then no change", func() []audWant {
		report(reportBody("web-03", "", true, "up-to-date"))
		report(reportBody("web-03", "", true, "up-to-date"))
		return []audWant{audW("machine:web-03", "report", "web-03", "registered")}
	})
	step("report: changes", func() []audWant {
		report(reportBody("web-03", P2, false, "rolled back: x"))
		report(reportBody("web-03", P2, true, "up-to-date"))
		report(reportBody("web-03", "", true, "up-to-date"))
		return []audWant{
			audW("machine:web-03", "report", "web-03", "generation (none) -> "+P2+"; state ok -> error"),
			audW("machine:web-03", "report", "web-03", "state error -> ok"),
			audW("machine:web-03", "report", "web-03", "generation "+P2+" -> (none)"),
		}
	})
	step("create_release", func() []audWant {
		rel = relCreate(t, &testEnv{ts: ts, c: c}, D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b')}})
		return []audWant{audW(deployer, "create_release", rel, "2 hosts")}
	})
	step("rollout.created", func() []audWant {
		rid1 = rollout(map[string]any{"release_id": rel, "strategy": "all_at_once", "target": map[string]any{"hosts": []string{"web-01", "ghost"}}})
		return []audWant{audW(deployer, "rollout.created", rid1, "strategy=all_at_once machines=1 batches=1 skipped=1")}
	})
	step("delete_release refused", func() []audWant {
		expect(t, do(t, c, "DELETE", u+"/api/v1/releases/"+rel, A, nil), 409, "")
		return nil
	})
	step("batch.deploying", func() []audWant {
		ts.pass(ctx)
		return []audWant{audW("executor", "batch.deploying", rid1+"-b0", "Rollout "+rid1+" batch 0 deploying 1 machines, 0 skipped")}
	})
	step("rollout.paused by operator", func() []audWant {
		ok(post("/api/v1/rollouts/"+rid1+"/pause", D, nil), 200)
		return []audWant{audW(deployer, "rollout.paused", rid1, "Paused by operator")}
	})
	step("rollout.resumed", func() []audWant {
		ok(post("/api/v1/rollouts/"+rid1+"/resume", D, nil), 200)
		return []audWant{audW(deployer, "rollout.resumed", rid1)}
	})
	step("rollout.cancelled with revert", func() []audWant {
		ok(post("/api/v1/rollouts/"+rid1+"/cancel", D, map[string]any{"revert": true}), 200)
		return []audWant{
			audW(deployer, "machine.reverted", "web-01", relPath("web-01", 'a')+" -> (cleared)"),
			audW(deployer, "rollout.cancelled", rid1, "revert: restored 0, cleared 1"),
		}
	})
	step("rollout.deleted", func() []audWant {
		ok(do(t, c, "DELETE", u+"/api/v1/rollouts/"+rid1, A, nil), 204)
		return []audWant{audW(admin, "rollout.deleted", rid1)}
	})
	step("rollout 2: created and deploying", func() []audWant {
		rid2 = rollout(map[string]any{"release_id": rel, "strategy": "canary", "target": map[string]any{"hosts": []string{"web-01"}}})
		ts.pass(ctx)
		return []audWant{
			audW(deployer, "rollout.created", rid2, "strategy=canary machines=1 batches=1 skipped=0"),
			audW("executor", "batch.deploying", rid2+"-b0", "Rollout "+rid2+" batch 0 deploying 1 machines, 0 skipped"),
		}
	})
	step("rollout 2: batch.succeeded and rollout.completed", func() []audWant {
		report(healthBody("web-01", relPath("web-01", 'a')))
		ts.pass(ctx)
		return []audWant{
			audW("machine:web-01", "report", "web-01", "first report"),
			audW("executor", "batch.succeeded", rid2+"-b0", "Batch 0 succeeded: 1 healthy, 0 unhealthy (threshold: 0)"),
			audW("executor", "rollout.completed", rid2, "All batches succeeded"),
		}
	})
	step("rollout 3: batch.failed and rollout.paused by the executor", func() []audWant {
		rid3 = rollout(map[string]any{"release_id": rel, "strategy": "staged", "batch_sizes": []string{"1"},
			"target": map[string]any{"tags": []string{"canary"}}})
		ts.pass(ctx)
		report(reportBody("web-02", G0, false, "rolled back: boom"))
		ts.pass(ctx)
		return []audWant{
			audW(deployer, "rollout.created", rid3, "strategy=staged machines=1 batches=1 skipped=0"),
			audW("executor", "batch.deploying", rid3+"-b0", "Rollout "+rid3+" batch 0 deploying 1 machines, 0 skipped"),
			audW("machine:web-02", "report", "web-02", "state ok -> error"),
			audW("executor", "batch.failed", rid3+"-b0", "Batch 0 failed: 1 unhealthy > threshold 0"),
			audW("executor", "rollout.paused", rid3, "Batch failure triggered pause"),
		}
	})
	step("rollout 3: cancelled without revert", func() []audWant {
		ok(post("/api/v1/rollouts/"+rid3+"/cancel", D, nil), 200)
		ok(post("/api/v1/machines/web-02/notify-deploy", D, map[string]any{"store_path": P9}), 200)
		return []audWant{audW(deployer, "rollout.cancelled", rid3), audW(deployer, "notify_deploy", "web-02", P9)}
	})
	step("rollout 4: rollout.failed with machine.reverted by the executor", func() []audWant {
		rid4 = rollout(map[string]any{"release_id": rel, "strategy": "all_at_once", "on_failure": "revert",
			"target": map[string]any{"hosts": []string{"web-02"}}})
		ts.pass(ctx)
		report(reportBody("web-02", G0, false, "rolled back: boom")) // nothing observable changed: no report row
		ts.pass(ctx)
		return []audWant{
			audW(deployer, "rollout.created", rid4, "strategy=all_at_once machines=1 batches=1 skipped=0"),
			audW("executor", "batch.deploying", rid4+"-b0", "Rollout "+rid4+" batch 0 deploying 1 machines, 0 skipped"),
			audW("executor", "batch.failed", rid4+"-b0", "Batch 0 failed: 1 unhealthy > threshold 0"),
			audW("executor", "machine.reverted", "web-02", relPath("web-02", 'b')+" -> "+P9),
			audW("executor", "rollout.failed", rid4, "Batch failure triggered revert"),
		}
	})
	step("rollouts deleted, then delete_release", func() []audWant {
		for _, rid := range []string{rid2, rid3, rid4} {
			ok(do(t, c, "DELETE", u+"/api/v1/rollouts/"+rid, A, nil), 204)
		}
		ok(do(t, c, "DELETE", u+"/api/v1/releases/"+rel, A, nil), 204)
		return []audWant{audW(admin, "rollout.deleted", rid2), audW(admin, "rollout.deleted", rid3), audW(admin, "rollout.deleted", rid4),
			audW(admin, "delete_release", rel)}
	})
	step("decommission by PATCH clears the desired generation", func() []audWant {
		ok(do(t, c, "PATCH", u+"/api/v1/machines/web-02/lifecycle", A, map[string]any{"lifecycle": "decommissioned"}), 200)
		return []audWant{audW(admin, "update_lifecycle", "web-02", "active -> decommissioned"), audW(admin, "clear_desired", "web-02", P9)}
	})
	step("decommission by register clears the desired generation", func() []audWant {
		ok(post("/api/v1/machines/web-01/register", A, map[string]any{"lifecycle": "decommissioned"}), 201)
		return []audWant{audW(admin, "register", "web-01", "active -> decommissioned"), audW(admin, "clear_desired", "web-01", relPath("web-01", 'a'))}
	})

	// Rejected requests write nothing (§10.1, ACC-110).
	big := bytes.Repeat([]byte(" "), maxBody+1)
	copy(big, "{")
	rejected := []struct {
		name, method, path, key string
		body                    any
		status                  int
	}{
		{"register bad lifecycle", "POST", "/api/v1/machines/web-03/register", A, `{"lifecycle":"bogus"}`, 400},
		{"register ACTIVE", "POST", "/api/v1/machines/web-03/register", A, `{"lifecycle":"ACTIVE"}`, 400},
		{"register decommissioned", "POST", "/api/v1/machines/web-01/register", A, `{"lifecycle":"active"}`, 409},
		{"register as deployer", "POST", "/api/v1/machines/web-04/register", D, nil, 403},
		{"register anonymous", "POST", "/api/v1/machines/web-04/register", "", nil, 401},
		{"register with a revoked key", "POST", "/api/v1/machines/web-04/register", revokedKey, nil, 401},
		{"register with an unknown key", "POST", "/api/v1/machines/web-04/register", "nfk-nope", nil, 401},
		{"register invalid id", "POST", "/api/v1/machines/a%2Ab/register", A, nil, 400},
		{"register 413", "POST", "/api/v1/machines/web-04/register", A, big, 413},
		{"patch unknown", "PATCH", "/api/v1/machines/ghost/lifecycle", A, `{"lifecycle":"active"}`, 404},
		{"patch self-transition", "PATCH", "/api/v1/machines/web-03/lifecycle", A, `{"lifecycle":"active"}`, 409},
		{"patch without lifecycle", "PATCH", "/api/v1/machines/web-03/lifecycle", A, `{}`, 400},
		{"tags without tags", "PUT", "/api/v1/machines/web-03/tags", A, `{}`, 400},
		{"tags unknown machine", "PUT", "/api/v1/machines/ghost/tags", A, `{"tags":["x"]}`, 404},
		{"notify bad path", "POST", "/api/v1/machines/ghost/notify-deploy", D, `{"store_path":"/tmp/x"}`, 400},
		{"notify decommissioned", "POST", "/api/v1/machines/web-01/notify-deploy", D, map[string]any{"store_path": P1}, 409},
		{"notify with a revoked key", "POST", "/api/v1/machines/web-03/notify-deploy", revokedKey, map[string]any{"store_path": P1}, 401},
		{"clear unknown", "DELETE", "/api/v1/machines/ghost/desired-generation", A, nil, 404},
		{"key name in use", "POST", "/api/v1/keys", A, `{"name":"deployer"}`, 409},
		{"key bad role", "POST", "/api/v1/keys", A, `{"name":"x","role":"root"}`, 400},
		{"key expired", "POST", "/api/v1/keys", A, `{"name":"x","expires_at":"2020-01-01T00:00:00Z"}`, 400},
		{"revoke unknown key", "DELETE", "/api/v1/keys/999", A, nil, 404},
		{"revoke last admin", "DELETE", "/api/v1/keys/1", A, nil, 409},
		{"bootstrap again", "POST", "/api/v1/keys/bootstrap", "", `{"name":"again"}`, 409},
		{"release empty", "POST", "/api/v1/releases", D, `{"entries":[]}`, 400},
		{"delete unknown release", "DELETE", "/api/v1/releases/rel-ghost", A, nil, 404},
		{"rollout unknown release", "POST", "/api/v1/rollouts", D, `{"release_id":"rel-ghost","strategy":"canary","target":{"hosts":["web-03"]}}`, 404},
		{"pause unknown", "POST", "/api/v1/rollouts/r-ghost/pause", D, nil, 404},
		{"resume deleted rollout", "POST", "/api/v1/rollouts/" + rid1 + "/resume", D, nil, 404},
		{"report decommissioned", "POST", "/api/v1/machines/web-01/report", "", reportBody("web-01", "", true, "x"), 403},
		{"report mismatched id", "POST", "/api/v1/machines/web-03/report", "", reportBody("web-04", "", true, "x"), 400},
		{"report missing field", "POST", "/api/v1/machines/web-04/report", "", `{"machine_id":"web-04"}`, 400},
		{"unknown path", "POST", "/api/v1/nothing", A, nil, 404},
		{"wrong method", "PUT", "/api/v1/releases", A, `{}`, 405},
	}
	for _, tc := range rejected {
		step("rejected: "+tc.name, func() []audWant {
			expect(t, do(t, c, tc.method, u+tc.path, tc.key, tc.body), tc.status, "")
			return nil
		})
	}
	step("rejected: 415", func() []audWant {
		expect(t, apiSend(t, c, "POST", u+"/api/v1/machines/web-04/register", A, "text/plain", []byte(`{}`), false), 415, "")
		return nil
	})

	// The offline emergency key (§1.3) writes key.created as system:cli.
	step("keys create", func() []audWant {
		var out, errb bytes.Buffer
		if err := run(ctx, []string{"keys", "create", "--name", "ops", "--role", "admin", "--db-path", dbPath},
			func(string) string { return "" }, &out, &errb); err != nil {
			t.Fatalf("keys create: %v\n%s", err, errb.String())
		}
		return []audWant{audW("system:cli", "key.created", "4", "name=ops role=admin")}
	})

	all := audDBRows(t, ts, 0)
	seen := map[string]int{}
	for _, ev := range all {
		if ev.Actor != "system:cli" {
			seen[ev.Action]++
		}
	}
	for _, a := range auditActions {
		if seen[a] == 0 {
			t.Errorf("the walk produced no %s row", a)
		}
		if got := ts.m.auditEvents.get(a); got != float64(seen[a]) {
			t.Errorf("nixfleet_audit_events_total{action=%q} = %v, want %d", a, got, seen[a])
		}
	}
	if len(seen) != len(auditActions) {
		t.Errorf("actions seen %v, want exactly %v", seen, auditActions)
	}

	// The API shows the same rows, newest first, with ACC-106 timestamps.
	api := auditRows(t, c, u, A, "?limit=1000")
	if len(api) != len(all) {
		t.Fatalf("API lists %d rows, database holds %d", len(api), len(all))
	}
	tsRE := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	for i, ev := range api {
		want := all[len(all)-1-i]
		if audKey(ev) != audKey(want) {
			t.Errorf("API row %d = %+v, database %+v", i, ev, want)
		}
		if !tsRE.MatchString(ev.Timestamp) {
			t.Errorf("timestamp %q does not match the output format", ev.Timestamp)
		}
	}
	r := do(t, c, "GET", u+"/api/v1/audit?action=delete_release", A, nil)
	if !bytes.Contains(r.body, []byte(`"detail":null`)) {
		t.Errorf("null detail not rendered as null: %s", r.body)
	}
}

// audInsert appends n audit rows through recordAudit in one transaction;
// row i gets the fields mk returns.
func audInsert(t testing.TB, ts *testServer, n int, mk func(i int) (actor, action, target string, detail *string)) {
	t.Helper()
	err := ts.st.write(context.Background(), func(tx *txn) error {
		for i := 0; i < n; i++ {
			a, act, tg, d := mk(i)
			if err := recordAudit(tx, a, act, tg, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// audRefFilter is an independent implementation of §4.25's filters, applied
// to rows in id-descending order.
func audRefFilter(t testing.TB, rows []auditEvent, q map[string]string) []int64 {
	t.Helper()
	parse := func(v string) int64 {
		tm, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UnixMilli()
	}
	var out []int64
	for _, ev := range rows {
		at := parse(ev.Timestamp)
		switch {
		case q["actor"] != "" && ev.Actor != q["actor"],
			q["action"] != "" && ev.Action != q["action"],
			q["target"] != "" && ev.Target != q["target"],
			q["since"] != "" && at < parse(q["since"]),
			q["until"] != "" && at >= parse(q["until"]):
			continue
		}
		if b := q["before"]; b != "" {
			if id, _ := strconv.ParseInt(b, 10, 64); ev.ID >= id {
				continue
			}
		}
		out = append(out, ev.ID)
	}
	limit := 100
	if l := q["limit"]; l != "" {
		limit, _ = strconv.Atoi(l)
		limit = min(limit, 1000)
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

func audIDs(evs []auditEvent) []int64 {
	out := []int64{}
	for _, ev := range evs {
		out = append(out, ev.ID)
	}
	return out
}

// TestAuditFilters covers ACC-107 and ACC-106: actor, action, target,
// since, until, before and limit combine with AND (checked against an
// independent filter), timestamps in any offset, paging with before that
// neither overlaps nor skips, and 400 for invalid values (also on the
// export, before anything is streamed).
func TestAuditFilters(t *testing.T) {
	e := newTestEnv(t)
	O := createTestKey(t, e.c, e.ts.url, e.A, "ops", "admin")
	t0 := e.ts.clock.now()
	at := func(k int) time.Time { return t0.Add(time.Duration(k) * time.Second) }
	for i := 0; i < 12; i++ {
		e.ts.clock.advance(time.Second)
		key, other := e.A, O
		if i%2 == 1 {
			key, other = O, e.A
		}
		id := fmt.Sprintf("m-%02d", i)
		expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/machines/"+id+"/register", key, nil), 201, "")
		if i%3 == 0 {
			expect(t, do(t, e.c, "PATCH", e.ts.url+"/api/v1/machines/"+id+"/lifecycle", other, `{"lifecycle":"maintenance"}`), 200, "")
		}
	}
	asc := audDBRows(t, e.ts, 0)
	all := slices.Clone(asc)
	slices.Reverse(all)
	mid := all[len(all)/2].ID

	for _, q := range []map[string]string{
		{},
		{"actor": "apikey:ops"},
		{"action": "register"},
		{"target": "m-03"},
		{"actor": "apikey:ops", "action": "register"},
		{"actor": "apikey:ops", "action": "update_lifecycle"},
		{"actor": "apikey:ops", "target": "m-03"},
		{"actor": "apikey:first-admin", "action": "update_lifecycle", "target": "m-03"},
		{"action": "register", "target": "m-05", "actor": "apikey:ops"},
		{"actor": "nobody"},
		{"actor": "apikey:OPS"},
		{"since": fmtTime(at(3).UnixMilli())},
		{"since": at(3).In(time.FixedZone("", 2*3600)).Format(time.RFC3339)},
		{"until": fmtTime(at(3).UnixMilli())},
		{"until": at(3).In(time.FixedZone("", -5*3600)).Format(time.RFC3339Nano)},
		{"since": fmtTime(at(3).UnixMilli()), "until": fmtTime(at(6).UnixMilli())},
		{"since": fmtTime(at(3).UnixMilli()), "until": fmtTime(at(3).UnixMilli())},
		{"since": fmtTime(at(6).UnixMilli()), "until": fmtTime(at(3).UnixMilli())},
		{"since": fmtTime(at(100).UnixMilli())},
		{"before": fmt.Sprint(mid)},
		{"before": "1"},
		{"before": "9223372036854775807"},
		{"limit": "5"},
		{"limit": "1"},
		{"limit": "2000"},
		{"action": "register", "since": fmtTime(at(2).UnixMilli()), "until": fmtTime(at(10).UnixMilli()), "before": fmt.Sprint(mid), "limit": "3"},
		{"actor": "apikey:first-admin", "action": "register", "since": fmtTime(at(2).UnixMilli()), "limit": "2"},
	} {
		vals := make([]string, 0, len(q))
		for k, v := range q {
			vals = append(vals, k+"="+strings.ReplaceAll(v, "+", "%2B"))
		}
		slices.Sort(vals)
		query := "?" + strings.Join(vals, "&")
		t.Run(query, func(t *testing.T) {
			got := auditRows(t, e.c, e.ts.url, e.R, query)
			want := audRefFilter(t, all, q)
			if !slices.Equal(audIDs(got), want) {
				t.Fatalf("ids %v, want %v", audIDs(got), want)
			}
		})
	}
	// Sanity: the fixture has rows on both sides of every bound used above.
	if n := len(audRefFilter(t, all, map[string]string{"actor": "apikey:ops", "action": "update_lifecycle"})); n < 2 {
		t.Fatalf("fixture too small: %d", n)
	}

	t.Run("repeated parameter uses the first value", func(t *testing.T) {
		got := auditRows(t, e.c, e.ts.url, e.R, "?action=bootstrap&action=register")
		if len(got) != 1 || got[0].Action != "bootstrap" {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("unknown parameters are ignored", func(t *testing.T) {
		if got := auditRows(t, e.c, e.ts.url, e.R, "?bogus=1&action=bootstrap"); len(got) != 1 {
			t.Fatalf("got %+v", got)
		}
	})

	t.Run("paging", func(t *testing.T) {
		want := audRefFilter(t, all, map[string]string{"action": "register"})
		var got []int64
		query := "?action=register&limit=3"
		for pages := 0; ; pages++ {
			if pages > len(want) {
				t.Fatal("paging does not end")
			}
			page := auditRows(t, e.c, e.ts.url, e.R, query)
			got = append(got, audIDs(page)...)
			if len(page) < 3 {
				break
			}
			query = fmt.Sprintf("?action=register&limit=3&before=%d", page[len(page)-1].ID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("pages gave %v, want %v", got, want)
		}
		for i := 1; i < len(got); i++ {
			if got[i] >= got[i-1] {
				t.Fatalf("ids not strictly decreasing: %v", got)
			}
		}
	})

	for _, q := range []string{
		"limit=abc", "limit=0", "limit=-5", "limit=", "limit=1.5", "limit=%2B5",
		"since=yesterday", "since=2026-04-11", "since=2026-04-11T09:30:00", "until=2026-13-01T00:00:00Z", "until=",
		"before=abc", "before=0", "before=-1", "before=1.5", "before=",
	} {
		param := q[:strings.IndexByte(q, '=')]
		for _, route := range []string{"/api/v1/audit", "/api/v1/audit/export"} {
			t.Run(route+"?"+q, func(t *testing.T) {
				r := do(t, e.c, "GET", e.ts.url+route+"?"+q, e.R, nil)
				expect(t, r, 400, "")
				if msg := r.errMsg(t); !strings.HasPrefix(msg, param+":") {
					t.Errorf("error %q does not start with %s:", msg, param)
				}
			})
		}
	}
}

// TestAuditAppendOnly covers ACC-110: the triggers reject UPDATE and
// DELETE on audit_event through database/sql on the live database file and
// through the sqlite3 command-line tool, and the rows stay unchanged. It
// also covers REPLACE (and INSERT OR REPLACE), which deletes the row it
// conflicts with without firing DELETE triggers: an append-only log must
// refuse it too (schema.sql's audit_event_no_replace).
func TestAuditAppendOnly(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c := ts.client("")
	a := bootstrapKey(t, c, ts.url)
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/web-01/register", a, nil), 201, "")
	before := audDBRows(t, ts, 0)

	db, err := sql.Open("sqlite", "file:"+dbPath+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range []string{
		"UPDATE audit_event SET detail = 'forged'",
		"UPDATE audit_event SET actor = 'x' WHERE id = 1",
		"DELETE FROM audit_event",
		"DELETE FROM audit_event WHERE id = 2",
		"INSERT INTO audit_event (id, timestamp, actor, action, target) VALUES (1, 0, 'x', 'x', 'x') ON CONFLICT (id) DO UPDATE SET actor = 'x'",
		// REPLACE deletes the conflicting row without firing DELETE triggers.
		"INSERT OR REPLACE INTO audit_event (id, timestamp, actor, action, target) VALUES (1, 0, 'forged', 'x', 'x')",
		"REPLACE INTO audit_event (id, timestamp, actor, action, target) VALUES (2, 0, 'forged', 'x', 'x')",
	} {
		t.Run("database/sql: "+stmt, func(t *testing.T) {
			_, err := db.Exec(stmt)
			if err == nil || !strings.Contains(err.Error(), "append-only") {
				t.Fatalf("got %v, want the append-only error", err)
			}
		})
	}
	t.Run("database/sql: INSERT is allowed", func(t *testing.T) {
		if _, err := db.Exec(`INSERT INTO audit_event (timestamp, actor, action, target) VALUES (0, 'sql', 'manual', 'x')`); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("sqlite3", func(t *testing.T) {
		bin, err := exec.LookPath("sqlite3")
		if err != nil {
			t.Skip("sqlite3 is not on PATH")
		}
		for _, stmt := range []string{"UPDATE audit_event SET detail = 'forged';", "DELETE FROM audit_event;",
			"DELETE FROM audit_event WHERE id = 1;", "REPLACE INTO audit_event (id, timestamp, actor, action, target) VALUES (1, 0, 'forged', 'x', 'x');"} {
			out, err := exec.Command(bin, "-cmd", ".timeout 5000", dbPath, stmt).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "append-only") {
				t.Errorf("sqlite3 %q: err %v, output %q; want a failure naming append-only", stmt, err, out)
			}
		}
	})

	after := audDBRows(t, ts, 0)
	if len(after) != len(before)+1 {
		t.Fatalf("%d rows before, %d after one INSERT", len(before), len(after))
	}
	for i := range before {
		if audKey(after[i]) != audKey(before[i]) {
			t.Errorf("row changed: %s -> %s", audKey(before[i]), audKey(after[i]))
		}
	}
}
