package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

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
