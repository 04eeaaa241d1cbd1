package main

// Crash safety of the whole daemon (§1.5, §6.3, §9.1, §9.3, §10.1, §12.3):
// the built binary serves concurrent agent reports, machine, release, rollout
// and key mutations while it is killed with SIGKILL at random moments, or
// stopped with SIGTERM under load. A 2xx means committed and durable: every
// acknowledged write must be found again, and the database must never show
// half of a transaction (a rollout without its batches, a mutation without its
// audit row, an audit row without its mutation).
//
// The load (ckLoad) records every 2xx with what it acknowledged in a ledger
// (ckLedger); ckVerifyDB then checks the ledger and the consistency rules
// against the database file with plain SQL.

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Machines the load works on. Report machines are created by their first
// report and are the rollout targets; admin machines get lifecycle churn.
var (
	ckReportMachines = ckNames("m", 24)
	ckAdminMachines  = ckNames("a", 12)
	ckGenerations    = []string{storePath('a', "sys-1"), storePath('b', "sys-2"), storePath('c', "sys-3"), ""}
	ckLifecycles     = []string{"active", "pending", "provisioning", "maintenance"}
)

func ckNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	return out
}

// ckUniquePath returns a valid store path that no other call returns.
func ckUniquePath(seq int64, name string) string {
	return fmt.Sprintf("/nix/store/%032d-%s", seq, name)
}

// ckLoad drives concurrent writes against one server until stop is closed.
type ckLoad struct {
	url, admin string
	trial      int
	l          *ckLedger
	seq        *atomic.Int64 // shared across trials, for unique names
	stop       chan struct{}
	wg         sync.WaitGroup
}

type ckMix struct{ reporters, admins, rollouts, keys int }

// startCkLoad starts the workers of mix against url.
func startCkLoad(url, admin string, trial int, l *ckLedger, seq *atomic.Int64, mix ckMix) *ckLoad {
	ld := &ckLoad{url: url, admin: admin, trial: trial, l: l, seq: seq, stop: make(chan struct{})}
	start := func(n int, f func(w int, c *http.Client, rng *rand.Rand)) {
		for range n {
			w := int(seq.Add(1))
			ld.wg.Add(1)
			go func() {
				defer ld.wg.Done()
				c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
				defer c.CloseIdleConnections()
				rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
				for {
					select {
					case <-ld.stop:
						return
					default:
					}
					f(w, c, rng)
				}
			}()
		}
	}
	start(mix.reporters, ld.report)
	start(mix.admins, ld.machineAdmin)
	start(mix.rollouts, ld.rollout)
	start(mix.keys, ld.key)
	return ld
}

// halt stops the workers and waits for their last requests.
func (ld *ckLoad) halt() {
	close(ld.stop)
	ld.wg.Wait()
}

// pause slows a worker down after a request that got no answer, so that a
// dead server is not hammered with connection attempts.
func (ld *ckLoad) pause(err error) {
	if err != nil {
		select {
		case <-ld.stop:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// report sends one agent report; half of the time it first asks for the
// desired generation and reports it as deployed and healthy, so that
// rollouts can progress.
func (ld *ckLoad) report(w int, c *http.Client, rng *rand.Rand) {
	m := ckReportMachines[rng.IntN(len(ckReportMachines))]
	if rng.IntN(10) == 0 {
		m = ckAdminMachines[rng.IntN(len(ckAdminMachines))]
	}
	msg := fmt.Sprintf("t%d-w%d-%d", ld.trial, w, ld.seq.Add(1))
	gen, success := ckGenerations[rng.IntN(len(ckGenerations))], rng.IntN(4) != 0
	var body map[string]any
	if rng.IntN(2) == 0 {
		st, b, err := tryDo(c, "GET", ld.url+"/api/v1/machines/"+m+"/desired-generation", "", nil)
		if err != nil {
			ld.l.answered("desired-generation", 0, nil, err)
			ld.pause(err)
			return
		}
		var d desiredGeneration
		if st == 200 && json.Unmarshal(b, &d) == nil {
			gen, success = d.Hash, true
		}
	}
	if success && rng.IntN(2) == 0 {
		body = healthBody(m, gen)
	} else {
		body = reportBody(m, gen, success, "")
	}
	body["message"] = msg
	switch rng.IntN(6) {
	case 0:
		body["tags"] = []string{"fleet", "web"}
	case 1:
		body["tags"] = []string{"db", "fleet"}
	}
	st, b, err := tryDo(c, "POST", ld.url+"/api/v1/machines/"+m+"/report", "", body)
	if ld.l.answered("report", st, b, err) {
		ld.l.mu.Lock()
		ld.l.reports[msg] = m
		ld.l.mu.Unlock()
	}
	ld.pause(err)
}

// machineAdmin registers, changes lifecycles and tags, and notifies deploys.
func (ld *ckLoad) machineAdmin(w int, c *http.Client, rng *rand.Rand) {
	seq := ld.seq.Add(1)
	anyMachine := func() string {
		if rng.IntN(2) == 0 {
			return ckReportMachines[rng.IntN(len(ckReportMachines))]
		}
		return ckAdminMachines[rng.IntN(len(ckAdminMachines))]
	}
	var st int
	var b []byte
	var err error
	switch op := rng.IntN(10); {
	case op < 2: // a new machine, sometimes with tags
		id := fmt.Sprintf("n-t%d-%d", ld.trial, seq)
		body := map[string]any{"lifecycle": ckLifecycles[rng.IntN(len(ckLifecycles))]}
		tagged := rng.IntN(2) == 0
		if tagged {
			body["tags"] = []string{"fleet", fmt.Sprintf("u%d", seq)}
		}
		st, b, err = tryDo(c, "POST", ld.url+"/api/v1/machines/"+id+"/register", ld.admin, body)
		if ld.l.answered("register new", st, b, err) {
			ld.l.mu.Lock()
			ld.l.machines[id] = true
			ld.l.mu.Unlock()
			ld.l.audit("register", id)
			if tagged {
				ld.l.audit("tags.update", id)
			}
		}
	case op < 3: // register an existing (or new) admin machine, maybe with a lifecycle change
		id := ckAdminMachines[rng.IntN(len(ckAdminMachines))]
		body := map[string]any{"lifecycle": ckLifecycles[rng.IntN(len(ckLifecycles))]}
		st, b, err = tryDo(c, "POST", ld.url+"/api/v1/machines/"+id+"/register", ld.admin, body)
		if ld.l.answered("register", st, b, err) {
			ld.l.mu.Lock()
			ld.l.machines[id] = true
			ld.l.mu.Unlock()
			ld.l.audit("register", id)
		}
	case op < 6: // lifecycle change; rarely a decommission
		id := ckAdminMachines[rng.IntN(len(ckAdminMachines))]
		to := ckLifecycles[rng.IntN(len(ckLifecycles))]
		if rng.IntN(40) == 0 {
			to = "decommissioned"
		}
		st, b, err = tryDo(c, "PATCH", ld.url+"/api/v1/machines/"+id+"/lifecycle", ld.admin, map[string]any{"lifecycle": to})
		if ld.l.answered("lifecycle", st, b, err) {
			ld.l.audit("update_lifecycle", id)
		}
	case op < 8: // a tag set that is new every time, so it is always audited
		id := anyMachine()
		st, b, err = tryDo(c, "PUT", ld.url+"/api/v1/machines/"+id+"/tags", ld.admin,
			map[string]any{"tags": []string{"fleet", fmt.Sprintf("u%d", seq)}})
		if ld.l.answered("tags", st, b, err) {
			ld.l.audit("tags.update", id)
		}
	default: // notify-deploy with a unique path, sometimes to an unknown machine
		id := anyMachine()
		if rng.IntN(5) == 0 {
			id = fmt.Sprintf("n-t%d-%d", ld.trial, seq)
		}
		p := ckUniquePath(seq, "notify")
		st, b, err = tryDo(c, "POST", ld.url+"/api/v1/machines/"+id+"/notify-deploy", ld.admin, map[string]any{"store_path": p})
		if ld.l.answered("notify-deploy", st, b, err) {
			ld.l.mu.Lock()
			ld.l.notify[p] = id
			ld.l.machines[id] = true
			ld.l.mu.Unlock()
			ld.l.audit("notify_deploy", id)
		}
	}
	ld.pause(err)
}

// rollout creates a release and a rollout on a few report machines, or
// pauses, resumes or cancels an earlier rollout.
func (ld *ckLoad) rollout(w int, c *http.Client, rng *rand.Rand) {
	ld.l.mu.Lock()
	var earlier string
	if n := len(ld.l.rollouts); n > 0 && rng.IntN(2) == 0 {
		earlier = ld.l.rollouts[n-1-rng.IntN(min(n, 6))] // mostly recent ones
	}
	ld.l.mu.Unlock()
	if earlier != "" {
		action, body := []string{"pause", "resume", "cancel", "cancel"}[rng.IntN(4)], any(nil)
		if action == "cancel" && rng.IntN(2) == 0 {
			body = map[string]any{"revert": true}
		}
		st, b, err := tryDo(c, "POST", ld.url+"/api/v1/rollouts/"+earlier+"/"+action, ld.admin, body)
		if ld.l.answered("rollout "+action, st, b, err) {
			ld.l.audit(map[string]string{"pause": "rollout.paused", "resume": "rollout.resumed", "cancel": "rollout.cancelled"}[action], earlier)
		}
		ld.pause(err)
		return
	}

	hosts := slices.Clone(ckReportMachines)
	rng.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
	hosts = hosts[:2+rng.IntN(4)]
	seq := ld.seq.Add(1)
	var entries []map[string]any
	for i, h := range hosts {
		entries = append(entries, map[string]any{"hostname": h, "store_path": ckUniquePath(seq*10+int64(i), "rel"), "platform": "x86_64-linux"})
	}
	st, b, err := tryDo(c, "POST", ld.url+"/api/v1/releases", ld.admin, map[string]any{
		"entries": entries, "flake_ref": "github:org/fleet", "flake_rev": fmt.Sprintf("rev%d", seq)})
	if !ld.l.answered("create release", st, b, err) {
		ld.pause(err)
		return
	}
	var rel struct {
		ID        string `json:"id"`
		HostCount int    `json:"host_count"`
	}
	if json.Unmarshal(b, &rel) != nil || rel.ID == "" {
		ld.l.answered("create release body", 599, b, nil)
		return
	}
	ld.l.mu.Lock()
	ld.l.releases[rel.ID] = rel.HostCount
	ld.l.mu.Unlock()
	ld.l.audit("create_release", rel.ID)

	req := map[string]any{"release_id": rel.ID, "target": map[string]any{"hosts": hosts},
		"health_timeout": 1 + rng.IntN(2), "on_failure": []string{"pause", "revert"}[rng.IntN(2)]}
	switch rng.IntN(3) {
	case 0:
		req["strategy"] = "canary"
	case 1:
		req["strategy"], req["batch_sizes"] = "staged", []string{"1", "1", "100%"}
	default:
		req["strategy"] = "all_at_once"
	}
	st, b, err = tryDo(c, "POST", ld.url+"/api/v1/rollouts", ld.admin, req)
	if ld.l.answered("create rollout", st, b, err) {
		var ro createRolloutResponse
		if json.Unmarshal(b, &ro) != nil || ro.RolloutID == "" {
			ld.l.answered("create rollout body", 599, b, nil)
			return
		}
		ld.l.mu.Lock()
		ld.l.rollouts = append(ld.l.rollouts, ro.RolloutID)
		ld.l.mu.Unlock()
		ld.l.audit("rollout.created", ro.RolloutID)
	}
	ld.pause(err)
}

// key creates API keys and revokes some of the ones it created.
func (ld *ckLoad) key(w int, c *http.Client, rng *rand.Rand) {
	select {
	case <-ld.stop:
		return
	case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
	}
	ld.l.mu.Lock()
	var victim int64
	for id, name := range ld.l.keys {
		if !ld.l.revoked[id] && strings.HasPrefix(name, "k-") && rng.IntN(3) == 0 {
			victim = id
			break
		}
	}
	ld.l.mu.Unlock()
	if victim != 0 && rng.IntN(3) == 0 {
		st, b, err := tryDo(c, "DELETE", ld.url+"/api/v1/keys/"+strconv.FormatInt(victim, 10), ld.admin, nil)
		if ld.l.answered("revoke key", st, b, err) {
			// Not counted in audits: a revocation whose answer was lost to a
			// kill is committed, and the retry is a 204 without an audit row.
			ld.l.mu.Lock()
			ld.l.revoked[victim] = true
			ld.l.mu.Unlock()
		}
		ld.pause(err)
		return
	}
	name := fmt.Sprintf("k-t%d-%d", ld.trial, ld.seq.Add(1))
	st, b, err := tryDo(c, "POST", ld.url+"/api/v1/keys", ld.admin,
		map[string]any{"name": name, "role": []string{"readonly", "deploy"}[rng.IntN(2)]})
	if ld.l.answered("create key", st, b, err) {
		var k keyCreated
		if json.Unmarshal(b, &k) != nil || k.ID == 0 {
			ld.l.answered("create key body", 599, b, nil)
			return
		}
		ld.l.mu.Lock()
		ld.l.keys[k.ID] = name
		ld.l.mu.Unlock()
		ld.l.audit("key.created", strconv.FormatInt(k.ID, 10))
	}
	ld.pause(err)
}

// ckRaceEnabled reports whether the test binary was built with -race.
func ckRaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// TestCrashKill9UnderLoad kills the daemon with SIGKILL at random moments of
// a concurrent write load, ≥ 20 times on one database that accumulates. After
// every kill the files as the crash left them (database, -wal, -shm), read
// with a read-only connection, must show every acknowledged write and no
// partial transaction; the daemon is then restarted on them, must serve the
// acknowledged data again, and the load goes on.
func TestCrashKill9UnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 trials take about a minute")
	}
	// Not parallel: the load would slow down the timing-sensitive fault
	// tests (busy timeouts) that run in parallel after it.
	const trials = 22
	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	args := []string{"--db-path", db, "--executor-interval", "200ms"}
	bs := startBinary(t, args...)
	c := &http.Client{Timeout: 20 * time.Second}
	admin := bootstrapKey(t, c, bs.url)
	l := newCkLedger()
	var seq atomic.Int64
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	// Every check reads the whole database and WAL, which the race detector
	// makes several times slower: a lighter load keeps the test near a minute.
	mix, maxLoad := ckMix{reporters: 6, admins: 2, rollouts: 2, keys: 1}, 1200
	if ckRaceEnabled() {
		mix.reporters, maxLoad = 3, 700
	}
	for trial := range trials {
		ld := startCkLoad(bs.url, admin, trial, l, &seq, mix)
		// Mostly 0.1 s to maxLoad ms of load; sometimes a kill right after startup.
		delay := time.Duration(100+rng.IntN(maxLoad-100)) * time.Millisecond
		if rng.IntN(8) == 0 {
			delay = time.Duration(rng.IntN(20)) * time.Millisecond
		}
		time.Sleep(delay) // not a wait for a condition: the kill must land at a random moment of the load
		bs.kill9(t)
		ld.halt()

		walSize := ckFileSize(db + "-wal")
		check := ckOpenDB(t, db)
		bad := ckVerifyDB(t, check, l)
		check.Close()
		if len(bad) > 0 {
			t.Fatalf("trial %d (killed after %v): %d problems after kill -9:\n%s\nload: %s\nlogs:\n%s",
				trial, delay, len(bad), strings.Join(bad, "\n"), l.summary(), bs.logs.String())
		}
		start := time.Now()
		bs = startBinary(t, args...)
		t.Logf("trial %d: killed after %v; wal %d bytes; restart took %v; %s", trial, delay, walSize,
			time.Since(start).Round(time.Millisecond), l.summary())
		ckCheckAPI(t, bs.url, admin, l)
		if t.Failed() {
			t.FailNow()
		}
	}
	if len(l.bad) > 0 {
		t.Errorf("unexpected answers:\n%s", strings.Join(l.bad, "\n"))
	}
	if l.acked() < 20*trials {
		t.Errorf("only %d writes were acknowledged: the load did not run", l.acked())
	}
	if len(l.rollouts) == 0 || len(l.keys) == 0 || len(l.releases) == 0 {
		t.Errorf("some kinds of writes were never acknowledged: %s", l.summary())
	}

	// A last, clean stop, then the original file itself.
	if err := bs.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-bs.done; err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, bs.logs.String())
	}
	bs.done <- nil
	if bad := ckVerifyDB(t, ckOpenDB(t, db), l); len(bad) > 0 {
		t.Fatalf("%d problems in the final database:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}

// TestCrashSIGTERMUnderLoad stops the daemon with SIGTERM in the middle of a
// concurrent write load (§1.5): every answer is either a 2xx whose effect is
// then in the database, or a non-2xx, or no answer at all (the connection is
// closed); nothing answers 500; and the process exits 0 within the 15 s
// drain plus a margin.
func TestCrashSIGTERMUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the binary under load")
	}
	db := filepath.Join(t.TempDir(), "state.db")
	args := []string{"--db-path", db, "--executor-interval", "200ms"}
	bs := startBinary(t, args...)
	c := &http.Client{Timeout: 20 * time.Second}
	admin := bootstrapKey(t, c, bs.url)
	l := newCkLedger()
	var seq atomic.Int64
	ld := startCkLoad(bs.url, admin, 0, l, &seq, ckMix{reporters: 16, admins: 4, rollouts: 2, keys: 1})
	// The load runs on while SIGTERM comes; 500 acknowledged writes take
	// about 0.7 s here.
	waitFor(t, 30*time.Second, "500 acknowledged writes", func() bool { return l.acked() >= 500 })
	before := l.acked()
	if err := bs.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	var exitErr error
	select {
	case exitErr = <-bs.done:
		bs.done <- exitErr
	case <-time.After(16 * time.Second):
		t.Fatalf("the process did not exit within 16 s of SIGTERM\n%s", bs.logs.String())
	}
	took := time.Since(sent)
	ld.halt()
	if exitErr != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", exitErr, bs.logs.String())
	}
	if !strings.Contains(bs.logs.String(), "shutting down") {
		t.Errorf("no shutting down log:\n%s", bs.logs.String())
	}
	t.Logf("exited %v after SIGTERM; %d writes acknowledged before it, %d in all; %s",
		took.Round(time.Millisecond), before, l.acked(), l.summary())
	if len(l.bad) > 0 {
		t.Errorf("unexpected answers:\n%s", strings.Join(l.bad, "\n"))
	}
	if before < 50 {
		t.Errorf("only %d writes acknowledged before SIGTERM: the load did not run", before)
	}
	if bad := ckVerifyDB(t, ckOpenDB(t, db), l); len(bad) > 0 {
		t.Fatalf("%d problems after SIGTERM:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	// The clean shutdown checkpointed and removed the WAL.
	if n := ckFileSize(db + "-wal"); n > 0 {
		t.Errorf("the -wal file has %d bytes after a clean shutdown", n)
	}
	bs = startBinary(t, args...)
	ckCheckAPI(t, bs.url, admin, l)
}

// TestCrashVerifierDetectsPartialState makes sure the checks of ckVerifyDB
// bite: on a database written by a short load, each kind of partial or lost
// state the crash tests look for is planted by hand in a copy and must be
// reported.
func TestCrashVerifierDetectsPartialState(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the binary under load")
	}
	db := filepath.Join(t.TempDir(), "state.db")
	bs := startBinary(t, "--db-path", db, "--executor-interval", "200ms")
	admin := bootstrapKey(t, &http.Client{Timeout: 20 * time.Second}, bs.url)
	l := newCkLedger()
	var seq atomic.Int64
	ld := startCkLoad(bs.url, admin, 0, l, &seq, ckMix{reporters: 4, admins: 2, rollouts: 2, keys: 1})
	waitFor(t, 30*time.Second, "200 acknowledged writes of every kind", func() bool {
		if l.acked() < 200 {
			return false
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.rollouts) > 0 && len(l.releases) > 0 && len(l.keys) > 0 && len(l.reports) > 0
	})
	ld.halt()
	if err := bs.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-bs.done; err != nil {
		t.Fatalf("exit: %v\n%s", err, bs.logs.String())
	}
	bs.done <- nil
	if bad := ckVerifyDB(t, ckOpenDB(t, db), l); len(bad) > 0 {
		t.Fatalf("the untouched database already has problems:\n%s", strings.Join(bad, "\n"))
	}
	if len(l.rollouts) == 0 || len(l.releases) == 0 || len(l.keys) == 0 || len(l.reports) == 0 {
		t.Fatalf("the load did not write every kind of object: %s", l.summary())
	}
	var msg, machine, rel string
	var key int64
	for msg, machine = range l.reports {
		if strings.HasPrefix(machine, "m-") {
			break
		}
	}
	for rel = range l.releases {
		break
	}
	for key = range l.keys {
		break
	}
	rid := l.rollouts[0]
	var status string
	if err := ckOpenDB(t, db).QueryRow("SELECT status FROM rollout WHERE id = ?", rid).Scan(&status); err != nil {
		t.Fatal(err)
	}
	other := map[bool]string{true: "completed", false: "failed"}[status == "failed"]

	for _, tc := range []struct {
		name, want string
		stmts      []string
	}{
		{"rollout without its batches", "batches", []string{"DELETE FROM rollout_batch WHERE rollout_id = '" + rid + "'"}},
		{"rollout status without its event and audit row", "last status_change",
			[]string{"UPDATE rollout SET status = '" + other + "' WHERE id = '" + rid + "'"}},
		{"rollout without its audit row", "rollout.created audit rows", []string{"DROP TRIGGER audit_event_no_delete",
			"DELETE FROM audit_event WHERE action = 'rollout.created' AND target = '" + rid + "'"}},
		{"acknowledged report lost", "acknowledged report", []string{
			"DELETE FROM health_report WHERE report_id IN (SELECT id FROM report WHERE message = '" + msg + "')",
			"DELETE FROM report WHERE message = '" + msg + "'"}},
		{"machine row behind its latest report", "latest report",
			[]string{"UPDATE machine SET current_generation = 'x' WHERE machine_id = '" + machine + "'"}},
		{"lifecycle change without its audit row", "audit trail ends",
			[]string{"UPDATE machine SET lifecycle = 'decommissioned' WHERE machine_id = '" + machine + "'"}},
		{"audit row without its release", "names release", []string{"INSERT INTO audit_event (timestamp, actor, action, target, detail) " +
			"VALUES (0, 'apikey:x', 'create_release', 'rel-missing', '1 hosts')"}},
		{"half a release", "host_count", []string{"DELETE FROM release_entry WHERE release_id = '" + rel + "' AND hostname = " +
			"(SELECT min(hostname) FROM release_entry WHERE release_id = '" + rel + "')"}},
		{"key without its audit row", "key.created", []string{"DROP TRIGGER audit_event_no_delete",
			"DELETE FROM audit_event WHERE action = 'key.created' AND target = '" + strconv.FormatInt(key, 10) + "'"}},
		{"acknowledged key lost", "acknowledged key", []string{"DELETE FROM api_key WHERE id = " + strconv.FormatInt(key, 10)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := ckCopyDB(t, db, t.TempDir())
			w, err := sql.Open("sqlite", "file:"+cp)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.stmts {
				if _, err := w.Exec(s); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
			}
			w.Close()
			bad := ckVerifyDB(t, ckOpenDB(t, cp), l)
			if !slices.ContainsFunc(bad, func(s string) bool { return strings.Contains(s, tc.want) }) {
				t.Fatalf("not reported (want %q); problems found: %q", tc.want, bad)
			}
		})
	}
}
