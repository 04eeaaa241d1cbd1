package main

// Health evidence (evidence.go, §9.5): the pure classifier, every row of the
// §9.5 table driven through real reports and executor passes (ACC-87,
// ACC-89), and the incremental evidence cache against a full read.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestClassifyPure checks rows 2–4 of §9.5 and the reason strings on the
// pure classifier.
func TestClassifyPure(t *testing.T) {
	const D, O = "/nix/store/d", "/nix/store/o"
	pass := func(id int64, gen string) evidence {
		return evidence{id: id, generation: gen, success: true, message: "health-check", hasHealth: true, allPassed: true}
	}
	fail := func(id int64, gen, checks string) evidence {
		return evidence{id: id, generation: gen, message: "health-check", hasHealth: true, failedChecks: checks}
	}
	plain := func(id int64, gen string, ok bool, msg string) evidence {
		return evidence{id: id, generation: gen, success: ok, message: msg}
	}
	long := strings.Repeat("a", 199) + "é" + "tail" // é straddles byte 200
	cases := []struct {
		name    string
		reports []evidence
		want    string
	}{
		{"no report", nil, "pending"},
		{"applying on the old generation", []evidence{plain(1, O, true, "applying")}, "pending"},
		{"deployed on D", []evidence{plain(1, D, true, "deployed")}, "pending"},
		{"passing health on D", []evidence{pass(1, D)}, "healthy"},
		{"passing health on another generation", []evidence{pass(1, O)}, "pending"},
		{"passing, then last on another generation", []evidence{pass(1, D), plain(2, O, true, "up-to-date")}, "pending"},
		{"reported failure", []evidence{plain(1, O, false, "rolled back: x")}, "unhealthy:reported failure: rolled back: x"},
		{"failed checks", []evidence{fail(1, D, "a, b")}, "unhealthy:health check failed: a, b"},
		{"all_passed=false without failed results", []evidence{{id: 1, generation: D, success: true, hasHealth: true}}, "unhealthy:health check failed"},
		{"failure then success on the old generation", []evidence{plain(1, O, false, "rolled back: y"), pass(2, O)}, "unhealthy:reported failure: rolled back: y"},
		{"failure then passing health on D", []evidence{fail(1, D, "a"), pass(2, D)}, "healthy"},
		{"passing then failure", []evidence{pass(1, D), plain(2, D, false, "boom")}, "unhealthy:reported failure: boom"},
		{"the latest negative report gives the reason", []evidence{fail(1, D, "a"), plain(2, O, false, "later")}, "unhealthy:reported failure: later"},
		{"message cut at 200 bytes on a UTF-8 boundary", []evidence{plain(1, O, false, long)}, "unhealthy:reported failure: " + strings.Repeat("a", 199)},
		{"message of exactly 200 bytes is kept", []evidence{plain(1, O, false, strings.Repeat("ü", 100))}, "unhealthy:reported failure: " + strings.Repeat("ü", 100)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, reason := classify(D, tc.reports)
			got := h
			if h == healthUnhealthy {
				got += ":" + reason
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// rtHealthNoFailed is a health-check report with all_passed=false but without
// any failed result.
func rtHealthNoFailed(id, gen string, success bool) map[string]any {
	b := reportBody(id, gen, success, "health-check")
	b["health"] = map[string]any{
		"results":    []map[string]any{{"status": "pass", "check_name": "sshd.service", "duration_ms": 3}},
		"all_passed": false, "timestamp": "2026-04-11T09:30:00.51Z",
	}
	return b
}

// TestExecutorHealthEvaluationTable drives every row of the §9.5 table, one
// case each, through real reports and executor passes (ACC-87, ACC-89). The
// subject web-01 shares an all_at_once batch with a silent web-02 and the
// threshold is "1", so web-01's classification can be watched without the
// verdict ending the batch.
func TestExecutorHealthEvaluationTable(t *testing.T) {
	const m1, m2 = "web-01", "web-02"
	D, O, X := rtRelPath(m1), rtOldPath(m1), rtOtherPath(m1)
	type act struct {
		advance   time.Duration // before the action; 0 means 1s
		report    map[string]any
		lifecycle string
		want      string // web-01's machine_health after a pass
	}
	failedX := healthBody(m1, X, "nginx.service")
	successNotPassedX := healthBody(m1, X, "nginx.service")
	successNotPassedX["success"] = true
	longMsg := strings.Repeat("x", 150) + strings.Repeat("€", 30) // € is 3 bytes: 150+3×16 = 198, the 17th would end at 201
	cases := []struct {
		name      string
		before    []act // before the deploy step: evidence older than S
		acts      []act
		wantBatch string // default waiting_health
		check     func(t *testing.T, e *rtExecEnv)
	}{
		{name: "row 4: no fresh report", acts: []act{{want: "pending"}, {advance: time.Minute, want: "pending"}}},
		{name: "row 4: applying on the old generation", acts: []act{{report: reportBody(m1, O, true, "applying"), want: "pending"}}},
		{name: "row 4: dry-run on the old generation", acts: []act{{report: reportBody(m1, O, true, "dry-run: would apply"), want: "pending"}}},
		{name: "row 4: deployed on D without health (ACC-87)", acts: []act{{report: reportBody(m1, D, true, "deployed"), want: "pending"}}},
		{name: "row 4: deployed and up-to-date alone never healthy", acts: []act{
			{report: reportBody(m1, D, true, "deployed"), want: "pending"},
			{report: reportBody(m1, D, true, "up-to-date"), want: "pending"},
			{report: reportBody(m1, D, true, "up-to-date"), want: "pending"},
		}},
		{name: "row 4: passing health on a non-desired path (ACC-87)", acts: []act{{report: healthBody(m1, X), want: "pending"}}},
		{name: "row 4: passing health on the old generation", acts: []act{{report: healthBody(m1, O), want: "pending"}}},
		{name: "row 4: last report on another generation", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{report: reportBody(m1, X, true, "up-to-date"), want: "pending"},
		}},
		{name: "row 4: a failing-but-successful health report on another generation is no evidence", acts: []act{
			{report: successNotPassedX, want: "pending"},
		}},
		{name: "row 4: passing evidence from before S is ignored", before: []act{{report: healthBody(m1, D)}},
			acts: []act{{want: "pending"}}},
		{name: "row 4: negative evidence from before S is ignored", before: []act{{report: reportBody(m1, O, false, "rolled back: old")}},
			acts: []act{{want: "pending"}, {report: healthBody(m1, D), want: "healthy"}}},
		{name: "row 3: passing health on D after deployed", acts: []act{
			{report: reportBody(m1, D, true, "deployed"), want: "pending"},
			{report: healthBody(m1, D), want: "healthy"},
		}},
		{name: "row 3: healthy stays healthy with up-to-date on D", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{report: reportBody(m1, D, true, "up-to-date"), want: "healthy"},
		}},
		{name: "row 2: reported failure", acts: []act{
			{report: reportBody(m1, O, false, "rolled back: switch failed"), want: "unhealthy:reported failure: rolled back: switch failed"},
		}},
		{name: "row 2: failed checks on D (ACC-89)", acts: []act{
			{report: healthBody(m1, D, "nginx.service", "postgresql.service"), want: "unhealthy:health check failed: nginx.service, postgresql.service"},
		}},
		{name: "row 2: all_passed=false without failed results", acts: []act{
			{report: rtHealthNoFailed(m1, D, false), want: "unhealthy:health check failed"},
		}},
		{name: "row 2: all_passed=false on D with success=true", acts: []act{
			{report: rtHealthNoFailed(m1, D, true), want: "unhealthy:health check failed"},
		}},
		{name: "row 2: failing health on another generation", acts: []act{
			{report: failedX, want: "unhealthy:health check failed: nginx.service"},
		}},
		{name: "row 2: failure then success on the old generation stays unhealthy (agent rolled back)", acts: []act{
			{report: reportBody(m1, O, true, "applying"), want: "pending"},
			{report: reportBody(m1, O, false, "rolled back: health checks failed"), want: "unhealthy:reported failure: rolled back: health checks failed"},
			{report: reportBody(m1, O, true, "up-to-date"), want: "unhealthy:reported failure: rolled back: health checks failed"},
			{report: healthBody(m1, O), want: "unhealthy:reported failure: rolled back: health checks failed"},
		}},
		{name: "row 2 then 3: a later passing health report on D makes the machine healthy again", acts: []act{
			{report: healthBody(m1, D, "nginx.service"), want: "unhealthy:health check failed: nginx.service"},
			{report: healthBody(m1, D), want: "healthy"},
		}},
		{name: "row 2: a failure after a passing report", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{report: reportBody(m1, D, false, "rolled back: oops"), want: "unhealthy:reported failure: rolled back: oops"},
		}},
		{name: "row 2: the latest negative report gives the reason", acts: []act{
			{report: healthBody(m1, D, "a.service", "b.service"), want: "unhealthy:health check failed: a.service, b.service"},
			{report: reportBody(m1, O, false, "rolled back: second"), want: "unhealthy:reported failure: rolled back: second"},
		}},
		{name: "row 2: the reason is cut at 200 bytes on a UTF-8 boundary", acts: []act{
			{report: reportBody(m1, O, false, longMsg), want: "unhealthy:reported failure: " + longMsg[:198]},
		}},
		{name: "row 1: skipped at deploy time", before: []act{{lifecycle: "maintenance"}},
			acts: []act{
				{want: "unhealthy:skipped: lifecycle maintenance"},
				{report: healthBody(m1, D), want: "unhealthy:skipped: lifecycle maintenance"},
			},
			check: func(t *testing.T, e *rtExecEnv) {
				rtWantDesired(t, e.c, e.url, m1, "", "", "") // the release path was never written
			}},
		{name: "row 1: decommissioned after deploy", acts: []act{
			{report: healthBody(m1, D), want: "healthy"},
			{lifecycle: "decommissioned", want: "unhealthy:skipped: lifecycle decommissioned"},
		}},
		{name: "§7.5: maintenance after deploy is still evaluated", acts: []act{
			{lifecycle: "maintenance", want: "pending"},
			{report: healthBody(m1, D), want: "healthy"},
		}},
		{name: "row 5: health timeout", acts: []act{
			{advance: 299 * time.Second, want: "pending"},
			// Silent since its registration for longer than --stale-after (4m): the reason says so (attention.go).
			{advance: time.Second, want: "unhealthy:health timeout after 300s: no report since registration at 2026-04-11T09:30:00.000Z"},
		}, wantBatch: "failed"},
		{name: "row 5: the timeout converts only pending machines", acts: []act{
			{report: reportBody(m1, O, false, "rolled back: early"), want: "unhealthy:reported failure: rolled back: early"},
			{advance: 300 * time.Second, want: "unhealthy:reported failure: rolled back: early"},
		}, wantBatch: "failed", check: func(t *testing.T, e *rtExecEnv) {
			if !strings.Contains(e.ts.logs.String(), `msg="Health timeout elapsed"`) {
				t.Fatal("no Health timeout elapsed log line")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := rtNewExecEnv(t)
			e.register(m1, m2)
			rel := e.release(nil, m1, m2)
			body := rtHostsRollout(rel, "all_at_once", m1, m2)
			body["failure_threshold"] = "1"
			rid := e.create(body).RolloutID
			apply := func(a act) {
				t.Helper()
				d := a.advance
				if d == 0 {
					d = time.Second
				}
				e.advance(d)
				if a.report != nil {
					e.report(a.report)
				}
				if a.lifecycle != "" {
					rtLifecycle(t, e.c, e.url, e.admin, m1, a.lifecycle)
				}
			}
			for _, a := range tc.before {
				apply(a)
			}
			e.advance(time.Second)
			e.pass() // deploy, then a first evaluation
			d := e.detail(rid)
			if got := d.Batches[0].Status; got != "waiting_health" {
				t.Fatalf("after deploy: batch %s, want waiting_health", got)
			}
			for i, a := range tc.acts {
				apply(a)
				e.pass()
				d = e.detail(rid)
				if got := rtMachineHealth(t, d, m1); got != a.want {
					t.Fatalf("after action %d: web-01 is %q, want %q", i, got, a.want)
				}
			}
			want := tc.wantBatch
			if want == "" {
				want = "waiting_health"
			}
			if got := d.Batches[0].Status; got != want {
				t.Fatalf("batch %s, want %s", got, want)
			}
			if tc.check != nil {
				tc.check(t, e)
			}
		})
	}
}

// TestEvidenceCacheMatchesFullRead checks the incremental evidence of the
// executor against a full read: after every burst of random reports, the
// classification from the cached summaries (folded pass by pass) equals the
// classification of all fresh reports read afresh (§9.5).
func TestEvidenceCacheMatchesFullRead(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	key := bootstrapKey(t, c, ts.url)
	const n = 12
	var entries []map[string]any
	for i := range n {
		id := fmt.Sprintf("m-%02d", i)
		expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, storePath('a', id), true, "up-to-date")), 200, "")
		entries = append(entries, map[string]any{"hostname": id, "store_path": storePath('b', id), "platform": "x86_64-linux"})
	}
	r := do(t, c, "POST", ts.url+"/api/v1/releases", key, map[string]any{"entries": entries})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	r = do(t, c, "POST", ts.url+"/api/v1/rollouts", key, map[string]any{
		"release_id": rel.ID, "strategy": "all_at_once", "target": map[string]any{"tags": nil, "hosts": hostsOf(n)},
		"failure_threshold": "100%", "health_timeout": 86400})
	expect(t, r, 201, "")
	var created createRolloutResponse
	r.json(t, &created)
	rid := created.RolloutID
	ctx := context.Background()
	ts.clock.advance(time.Second)
	if _, err := ts.exec.advance(ctx, rid, ts.clock.now().UnixMilli()); err != nil { // deploy
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 40 {
		ts.clock.advance(time.Second)
		for range rng.IntN(8) {
			id := fmt.Sprintf("m-%02d", rng.IntN(n))
			gen := storePath('b', id)
			if rng.IntN(3) == 0 {
				gen = storePath('a', id)
			}
			var body map[string]any
			switch rng.IntN(4) {
			case 0:
				body = healthBody(id, gen)
			case 1:
				body = healthBody(id, gen, "nginx.service")
			case 2:
				body = reportBody(id, gen, true, "deployed")
			default:
				body = reportBody(id, gen, false, "rolled back: switch failed")
			}
			expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/report", "", body), 200, "")
		}
		err := ts.st.read(ctx, func(tx dbq) error {
			bs, err := tx.batches(rid)
			if err != nil {
				return err
			}
			members, err := tx.members(rid, 0)
			if err != nil {
				return err
			}
			ro, err := tx.rollout(rid)
			if err != nil {
				return err
			}
			_, sums, err := ts.exec.evidence.update(tx, ro, bs[0])
			if err != nil {
				return err
			}
			for _, m := range members {
				rows, err := tx.query(`SELECT r.id, r.generation, r.success, r.message,
					h.all_passed IS NOT NULL, coalesce(h.all_passed, 0), coalesce(h.failed_checks, '')
					FROM report r LEFT JOIN health_report h ON h.report_id = r.id
					WHERE r.machine_id = ? AND r.received_at >= ? ORDER BY r.id`, m.MachineID, *bs[0].StartedAt)
				if err != nil {
					return err
				}
				var all []evidence
				for rows.Next() {
					var ev evidence
					if err := rows.Scan(&ev.id, &ev.generation, &ev.success, &ev.message, &ev.hasHealth, &ev.allPassed, &ev.failedChecks); err != nil {
						rows.Close()
						return err
					}
					all = append(all, ev)
				}
				if err := rows.Err(); err != nil {
					rows.Close()
					return err
				}
				rows.Close()
				wh, wr := classify(m.StorePath, all)
				gh, gr := healthPending, ""
				if s := sums[m.MachineID]; s != nil {
					gh, gr = s.classify(m.StorePath)
				}
				if gh != wh || gr != wr {
					t.Errorf("round %d, %s: cached %s %q, full read %s %q", round, m.MachineID, gh, gr, wh, wr)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func hostsOf(n int) []string {
	var hs []string
	for i := range n {
		hs = append(hs, fmt.Sprintf("m-%02d", i))
	}
	return hs
}
