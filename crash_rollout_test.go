package main

// Crash safety of the rollout executor (§9.3, §12.1): the built binary is
// killed with SIGKILL at different moments of a running rollout and restarted
// on the same database. After every kill the database must show each step
// either whole or not at all, and the rollout must still complete.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rtAgents simulates v0.1 agents for a set of machines against whatever
// server URL is current: each sweep polls the desired generation, "switches"
// to it (reports "applying" on the old generation, then "deployed" on the new
// one) and then sends a passing health-check on what it runs. Errors (the
// server being killed) are ignored; agents just try again.
type rtAgents struct {
	url      atomic.Pointer[string]
	machines []string
	current  map[string]string // what each machine runs; owned by the agent goroutine
	client   *http.Client
	stop     chan struct{}
	done     sync.WaitGroup
	reports  atomic.Int64
}

func rtStartAgents(url string, machines []string, current map[string]string) *rtAgents {
	a := &rtAgents{machines: machines, current: current, stop: make(chan struct{}),
		client: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	a.url.Store(&url)
	a.done.Add(1)
	go func() {
		defer a.done.Done()
		for {
			select {
			case <-a.stop:
				return
			default:
			}
			a.sweep()
			select { // the agents' poll interval, as a real agent's timer: not a wait for a condition
			case <-a.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return a
}

func (a *rtAgents) setURL(url string) { a.url.Store(&url) }

func (a *rtAgents) halt() {
	close(a.stop)
	a.done.Wait()
}

// post sends one report and reports whether it was acknowledged.
func (a *rtAgents) post(base, m string, body map[string]any) bool {
	status, _, err := tryDo(a.client, "POST", base+"/api/v1/machines/"+m+"/report", "", body)
	if err != nil || status != 200 {
		return false
	}
	a.reports.Add(1)
	return true
}

func (a *rtAgents) sweep() {
	base := *a.url.Load()
	for _, m := range a.machines {
		resp, err := a.client.Get(base + "/api/v1/machines/" + m + "/desired-generation")
		if err != nil {
			return
		}
		var dg desiredGeneration
		ok := resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&dg) == nil
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !ok {
			continue
		}
		if dg.Hash != a.current[m] {
			a.post(base, m, reportBody(m, a.current[m], true, "applying"))
			if !a.post(base, m, reportBody(m, dg.Hash, true, "deployed")) {
				continue
			}
			a.current[m] = dg.Hash
		}
		a.post(base, m, healthBody(m, a.current[m]))
	}
}

// rtCrashState is what the database says about one rollout.
type rtCrashState struct {
	status      string
	batches     []string // status by index
	started     []bool   // started_at set, by index
	members     map[string]memberRow
	desired     map[string]string // machine → hash; absent: none
	events      map[string]int    // event type → count ("status_change:<to>" for status changes)
	audits      map[string]int    // action → count of rows about this rollout or its batches
	doubleBooks []string          // machines in more than one active rollout
}

// String renders the state for failure messages.
func (st rtCrashState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rollout %s, batches %v, events %v, audit %v, double-booked %v", st.status, st.batches, st.events, st.audits, st.doubleBooks)
	ids := make([]string, 0, len(st.members))
	for m := range st.members {
		ids = append(ids, m)
	}
	slices.Sort(ids)
	orNone := func(p *string) string {
		if p == nil {
			return "none"
		}
		return *p
	}
	for _, m := range ids {
		mem := st.members[m]
		desired := st.desired[m]
		fmt.Fprintf(&b, "\n  %s: batch %d, captured %v, prev %s, health %s, desired %q", m, mem.BatchIndex, mem.PrevCaptured,
			orNone(mem.PrevHash), mem.Health, desired)
	}
	return b.String()
}

// rtReadCrashState reads the database file directly; the server must be dead.
func rtReadCrashState(t *testing.T, dbPath, rid string) rtCrashState {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	st := rtCrashState{members: map[string]memberRow{}, desired: map[string]string{}, events: map[string]int{}, audits: map[string]int{}}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(db.QueryRowContext(ctx, "SELECT status FROM rollout WHERE id = ?", rid).Scan(&st.status))
	d := dbq{ctx, db}
	bs, err := d.batches(rid)
	must(err)
	for _, b := range bs {
		st.batches = append(st.batches, string(b.Status))
		st.started = append(st.started, b.StartedAt != nil)
	}
	ms, err := d.members(rid, -1)
	must(err)
	for _, m := range ms {
		st.members[m.MachineID] = m
	}
	rows, err := db.QueryContext(ctx, "SELECT machine_id, hash FROM desired_generation")
	must(err)
	for rows.Next() {
		var m, h string
		must(rows.Scan(&m, &h))
		st.desired[m] = h
	}
	must(rows.Err())
	must(rows.Close())
	rows, err = db.QueryContext(ctx, "SELECT event_type, detail FROM rollout_event WHERE rollout_id = ?", rid)
	must(err)
	for rows.Next() {
		var typ, detail string
		must(rows.Scan(&typ, &detail))
		if typ == "status_change" {
			var d struct {
				To string `json:"to"`
			}
			json.Unmarshal([]byte(detail), &d)
			typ += ":" + d.To
		}
		st.events[typ]++
	}
	must(rows.Err())
	must(rows.Close())
	rows, err = db.QueryContext(ctx, "SELECT action FROM audit_event WHERE target = ? OR target LIKE ? || '-b%'", rid, rid)
	must(err)
	for rows.Next() {
		var a string
		must(rows.Scan(&a))
		st.audits[a]++
	}
	must(rows.Err())
	must(rows.Close())
	rows, err = db.QueryContext(ctx, `SELECT rm.machine_id FROM rollout_machine rm JOIN rollout r ON r.id = rm.rollout_id
		WHERE r.status IN ('created', 'running', 'paused') GROUP BY rm.machine_id HAVING count(*) > 1`)
	must(err)
	for rows.Next() {
		var m string
		must(rows.Scan(&m))
		st.doubleBooks = append(st.doubleBooks, m)
	}
	must(rows.Err())
	must(rows.Close())
	return st
}

// rtCheckCrashInvariants checks that the database holds whole steps only.
// initial is each machine's desired generation before the rollout ("" for
// none); no machine is ever skipped, and nothing fails, in this scenario.
func rtCheckCrashInvariants(t *testing.T, dbPath, rid string, initial map[string]string, stage string) rtCrashState {
	t.Helper()
	st := rtReadCrashState(t, dbPath, rid)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: %s\nstate: %s", stage, fmt.Sprintf(format, args...), st)
	}
	if len(st.doubleBooks) > 0 {
		fail("machines in two active rollouts: %v", st.doubleBooks)
	}
	if st.status != "running" && st.status != "completed" {
		fail("rollout status %s", st.status)
	}
	// Batch order: succeeded…, at most one under evaluation, pending….
	phase := 0
	succeeded, begun := 0, 0
	for i, s := range st.batches {
		switch {
		case s == "succeeded" && phase == 0:
			succeeded++
		case (s == "deploying" || s == "waiting_health") && phase == 0:
			phase = 1
		case s == "pending":
			phase = 2
		default:
			fail("batch %d is %s out of order: %v", i, s, st.batches)
		}
		if s != "pending" {
			begun++
			if !st.started[i] {
				fail("batch %d is %s without started_at", i, s)
			}
		} else if st.started[i] {
			fail("pending batch %d has started_at", i)
		}
	}
	if st.status == "completed" && succeeded != len(st.batches) {
		fail("completed with batches %v", st.batches)
	}
	for m, mem := range st.members {
		started := st.batches[mem.BatchIndex] != "pending"
		var wantPrev *string
		if initial[m] != "" {
			p := initial[m]
			wantPrev = &p
		}
		switch {
		case started:
			if !mem.PrevCaptured || !equalStrPtr(mem.PrevHash, wantPrev) {
				fail("%s (batch %d deployed): prev_captured %v prev_hash %v, want captured %v", m, mem.BatchIndex, mem.PrevCaptured, mem.PrevHash, wantPrev)
			}
			if st.desired[m] != mem.StorePath {
				fail("%s (batch %d deployed): desired %q, want the release path", m, mem.BatchIndex, st.desired[m])
			}
			if mem.Health == healthSkipped || mem.Health == healthUnhealthy {
				fail("%s: health %s", m, mem.Health)
			}
		default:
			if mem.PrevCaptured || mem.PrevHash != nil {
				fail("%s (batch %d pending): previous generation captured", m, mem.BatchIndex)
			}
			if st.desired[m] != initial[m] {
				fail("%s (batch %d pending): desired %q, want %q", m, mem.BatchIndex, st.desired[m], initial[m])
			}
			if mem.Health != healthPending {
				fail("%s (batch %d pending): health %s", m, mem.BatchIndex, mem.Health)
			}
		}
	}
	completed := 0
	if st.status == "completed" {
		completed = 1
	}
	for _, c := range []struct {
		what      string
		got, want int
	}{
		{"batch_started events", st.events["batch_started"], begun},
		{"batch.deploying audit rows", st.audits["batch.deploying"], begun},
		{"batch_completed events", st.events["batch_completed"], succeeded},
		{"batch.succeeded audit rows", st.audits["batch.succeeded"], succeeded},
		{"completion events", st.events["status_change:completed"], completed},
		{"rollout.completed audit rows", st.audits["rollout.completed"], completed},
		{"creation events", st.events["status_change:running"], 1},
		{"rollout.created audit rows", st.audits["rollout.created"], 1},
		{"failure events", st.events["batch_failed"] + st.events["status_change:paused"] + st.events["status_change:failed"], 0},
	} {
		if c.got != c.want {
			fail("%d %s, want %d", c.got, c.what, c.want)
		}
	}
	return st
}

func equalStrPtr(a, b *string) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// TestRolloutCrashSafety kills the server with SIGKILL right after a
// rollout is created, right after its batch 0 is deployed, at batch
// transitions and at random moments while agents report, restarting it on the
// same database each time (ACC-98, §9.3). After each kill the database holds
// only whole steps, no machine is in two active rollouts, and the previous
// generations are the ones from before the rollout; in the end every rollout
// completes. Five rollouts run one after the other over the same machines,
// so the later ones capture the earlier ones' paths as previous generations.
func TestRolloutCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: builds the binary and kills it repeatedly")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 42))
	db := filepath.Join(t.TempDir(), "state.db")
	start := func() *binServer {
		return startBinary(t, "--db-path", db, "--executor-interval", "100ms")
	}
	bs := start()
	c := &http.Client{Timeout: 10 * time.Second}
	admin := bootstrapKey(t, c, bs.url)
	dep := createTestKey(t, c, bs.url, admin, "deployer", "deploy")

	var ms []string
	initial := map[string]string{} // desired generation before the current rollout
	current := map[string]string{} // what the agents run
	for i := 1; i <= 12; i++ {
		m := fmt.Sprintf("web-%02d", i)
		ms = append(ms, m)
		current[m] = rtOldPath(m)
	}
	rtRegister(t, c, bs.url, admin, ms...)
	for i, m := range ms {
		if i%2 == 0 { // half the fleet was pinned before the first rollout
			rtNotify(t, c, bs.url, dep, m, rtOldPath(m))
			initial[m] = rtOldPath(m)
		}
	}

	kills := 0
	var agents *rtAgents
	defer func() {
		if agents != nil {
			agents.halt()
		}
	}()
	var rid string
	crash := func(stage string) rtCrashState {
		t.Helper()
		bs.kill9(t)
		kills++
		st := rtCheckCrashInvariants(t, db, rid, initial, stage)
		t.Logf("kill %d (%s): rollout %s, batches %v, %d reports so far", kills, stage, st.status, st.batches, agentReports(agents))
		bs = start()
		if agents != nil {
			agents.setURL(bs.url)
		}
		return st
	}
	detail := func() rolloutDetail { return rtDetail(t, c, bs.url, admin, rid) }

	for round := range 5 {
		pathOf := func(m string) string { return storePath('b', fmt.Sprintf("nixos-system-%s-r%d", m, round)) }
		rel := rtRelease(t, c, bs.url, dep, nil, pathOf, ms...)
		body := rtHostsRollout(rel, "staged", ms...)
		body["batch_sizes"] = []string{"1", "25%", "50%", "100%"} // 1, 3, 4, 4
		body["health_timeout"] = 3600
		rid = rtCreate(t, c, bs.url, dep, body).RolloutID

		crash(fmt.Sprintf("round %d, right after create", round))
		// The executor deploys batch 0 once the server is back.
		waitFor(t, 10*time.Second, "batch 0 to deploy", func() bool { return detail().Batches[0].Status != "pending" })
		crash(fmt.Sprintf("round %d, after batch 0 deployed", round))
		expect(t, do(t, c, "POST", bs.url+"/api/v1/rollouts", dep, rtHostsRollout(rel, "canary", ms[0])), 409,
			fmt.Sprintf("machine %s is in active rollout %s", ms[0], rid))

		agents = rtStartAgents(bs.url, ms, current)
		deadline := time.Now().Add(15 * time.Second)
		lastSucceeded := 0
		restarted := time.Now()
		delay := time.Duration(rng.IntN(150)) * time.Millisecond
		for {
			// Watch the rollout until it is no longer running or a kill is
			// due: at a batch transition (half of the time), or delay after
			// the last restart.
			var d rolloutDetail
			var stage string
			watched := poll(time.Until(deadline), func() bool {
				d = detail()
				if d.Status != "running" {
					return true
				}
				succeeded := 0
				for _, b := range d.Batches {
					if b.Status == "succeeded" {
						succeeded++
					}
				}
				switch {
				case succeeded > lastSucceeded && rng.IntN(2) == 0:
					stage = fmt.Sprintf("round %d, at the transition after batch %d succeeded", round, succeeded-1)
				case time.Since(restarted) > delay:
					stage = fmt.Sprintf("round %d, %v after a restart, while agents report", round, delay)
				default:
					return false
				}
				lastSucceeded = succeeded
				return true
			})
			if !watched {
				t.Fatalf("round %d: rollout did not complete after %d kills: %v", round, kills, rtBatchStatuses(detail()))
			}
			if d.Status == "completed" {
				break
			}
			if d.Status != "running" {
				t.Fatalf("rollout %s", d.Status)
			}
			crash(stage)
			restarted = time.Now()
			delay = time.Duration(rng.IntN(150)) * time.Millisecond
		}
		agents.halt()
		agents = nil
		st := crash(fmt.Sprintf("round %d, after completion", round))
		if st.status != "completed" {
			t.Fatalf("rollout %s after the final restart", st.status)
		}
		for _, m := range ms {
			if st.desired[m] != pathOf(m) {
				t.Fatalf("%s: desired %q after completion", m, st.desired[m])
			}
			initial[m] = pathOf(m)
		}
	}
	if kills < 12 {
		t.Fatalf("only %d kills", kills)
	}
	if !strings.Contains(bs.logs.String(), "Control plane listening") {
		t.Fatal("no startup log")
	}
}

func agentReports(a *rtAgents) int64 {
	if a == nil {
		return 0
	}
	return a.reports.Load()
}
