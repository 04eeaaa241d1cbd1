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
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// ckLedger is what the server acknowledged with a 2xx, plus response
// statistics. Only 2xx answers are recorded as acknowledged.
type ckLedger struct {
	mu       sync.Mutex
	reports  map[string]string // unique report message → machine id
	machines map[string]bool   // machines whose creation or change was acknowledged
	releases map[string]int    // release id → host count
	rollouts []string          // acknowledged rollout ids, in creation order
	keys     map[int64]string  // key id → name
	revoked  map[int64]bool    // keys whose revocation was acknowledged
	audits   map[[2]string]int // (action, target) → acknowledged mutations that must each have written that audit row
	notify   map[string]string // notify-deploy store path (unique) → machine
	status   map[int]int       // answers by status code
	netErrs  int               // requests that got no HTTP answer (connection refused, reset, closed)
	bad      []string          // unexpected answers (500 and other non-503 5xx)
}

func newCkLedger() *ckLedger {
	return &ckLedger{reports: map[string]string{}, machines: map[string]bool{}, releases: map[string]int{},
		keys: map[int64]string{}, revoked: map[int64]bool{}, audits: map[[2]string]int{}, notify: map[string]string{},
		status: map[int]int{}}
}

// answered counts an answer; it returns whether it is a 2xx.
func (l *ckLedger) answered(op string, status int, body []byte, err error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.netErrs++
		return false
	}
	l.status[status]++
	if status >= 500 && status != http.StatusServiceUnavailable {
		l.bad = append(l.bad, fmt.Sprintf("%s: %d %s", op, status, strings.TrimSpace(string(body))))
	}
	return status >= 200 && status < 300
}

func (l *ckLedger) audit(action, target string) {
	l.mu.Lock()
	l.audits[[2]string{action, target}]++
	l.mu.Unlock()
}

func (l *ckLedger) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for s, c := range l.status {
		if s >= 200 && s < 300 {
			n += c
		}
	}
	return n
}

func (l *ckLedger) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	codes := make([]int, 0, len(l.status))
	for s := range l.status {
		codes = append(codes, s)
	}
	sort.Ints(codes)
	var b strings.Builder
	for _, s := range codes {
		fmt.Fprintf(&b, "%d×%d ", s, l.status[s])
	}
	fmt.Fprintf(&b, "no-answer×%d; acked: %d reports, %d releases, %d rollouts, %d keys", l.netErrs,
		len(l.reports), len(l.releases), len(l.rollouts), len(l.keys))
	return b.String()
}

// ckDo sends one request without failing the test: the server may die at any
// moment. body is JSON-encoded unless nil.
func ckDo(c *http.Client, method, url, key string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		// The status line arrived but the body did not: a 2xx is only
		// trusted once the whole answer has been read.
		return 0, nil, err
	}
	return resp.StatusCode, b, nil
}

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
		st, b, err := ckDo(c, "GET", ld.url+"/api/v1/machines/"+m+"/desired-generation", "", nil)
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
	st, b, err := ckDo(c, "POST", ld.url+"/api/v1/machines/"+m+"/report", "", body)
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
		st, b, err = ckDo(c, "POST", ld.url+"/api/v1/machines/"+id+"/register", ld.admin, body)
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
		st, b, err = ckDo(c, "POST", ld.url+"/api/v1/machines/"+id+"/register", ld.admin, body)
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
		st, b, err = ckDo(c, "PATCH", ld.url+"/api/v1/machines/"+id+"/lifecycle", ld.admin, map[string]any{"lifecycle": to})
		if ld.l.answered("lifecycle", st, b, err) {
			ld.l.audit("update_lifecycle", id)
		}
	case op < 8: // a tag set that is new every time, so it is always audited
		id := anyMachine()
		st, b, err = ckDo(c, "PUT", ld.url+"/api/v1/machines/"+id+"/tags", ld.admin,
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
		st, b, err = ckDo(c, "POST", ld.url+"/api/v1/machines/"+id+"/notify-deploy", ld.admin, map[string]any{"store_path": p})
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
		st, b, err := ckDo(c, "POST", ld.url+"/api/v1/rollouts/"+earlier+"/"+action, ld.admin, body)
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
	st, b, err := ckDo(c, "POST", ld.url+"/api/v1/releases", ld.admin, map[string]any{
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
	st, b, err = ckDo(c, "POST", ld.url+"/api/v1/rollouts", ld.admin, req)
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
		st, b, err := ckDo(c, "DELETE", ld.url+"/api/v1/keys/"+strconv.FormatInt(victim, 10), ld.admin, nil)
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
	st, b, err := ckDo(c, "POST", ld.url+"/api/v1/keys", ld.admin,
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

// ckOpenDB opens a database file for checking, read-only: the check
// neither modifies the database nor its -wal (it may rebuild the -shm, which
// the next opener rebuilds again), so a restart after it still recovers the
// WAL as the crash left it. Foreign keys are off so that PRAGMA
// foreign_key_check reports violations.
func ckOpenDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// ckCopyDB copies the database and whichever of its -wal and -shm files
// exist into dir, as a crash leaves them, and returns the copy's path.
func ckCopyDB(t testing.TB, path, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, filepath.Base(path))
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(path + suffix)
		if errors.Is(err, os.ErrNotExist) && suffix != "" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

type ckAuditRow struct {
	id                    int64
	actor, action, target string
	detail                sql.NullString
}

// ckVerifyDB checks a stopped (or copied) database: every write in l is
// present, and the consistency rules hold. It returns the problems found.
func ckVerifyDB(t testing.TB, db *sql.DB, l *ckLedger) []string {
	t.Helper()
	var bad []string
	fail := func(format string, args ...any) {
		if len(bad) < 40 {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	query := func(q string, scan func(*sql.Rows) error) {
		t.Helper()
		rows, err := db.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	var ic string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ic); err != nil || ic != "ok" {
		fail("integrity_check: %q %v", ic, err)
	}
	query("PRAGMA foreign_key_check", func(r *sql.Rows) error {
		var table, parent string
		var rowid, fkid sql.NullInt64
		if err := r.Scan(&table, &rowid, &parent, &fkid); err != nil {
			return err
		}
		fail("foreign key violation: %s row %v -> %s", table, rowid.Int64, parent)
		return nil
	})

	// Audit rows, by target.
	var audits []ckAuditRow
	byTarget := map[string][]ckAuditRow{}
	query("SELECT id, actor, action, target, detail FROM audit_event ORDER BY id", func(r *sql.Rows) error {
		var a ckAuditRow
		if err := r.Scan(&a.id, &a.actor, &a.action, &a.target, &a.detail); err != nil {
			return err
		}
		audits = append(audits, a)
		byTarget[a.target] = append(byTarget[a.target], a)
		return nil
	})
	count := func(target, action string, actorPrefix string) int {
		n := 0
		for _, a := range byTarget[target] {
			if a.action == action && strings.HasPrefix(a.actor, actorPrefix) {
				n++
			}
		}
		return n
	}
	for k, n := range l.audits {
		if got := count(k[1], k[0], "apikey:"); got < n {
			fail("acknowledged %d %s on %s, but %d audit rows", n, k[0], k[1], got)
		}
	}

	// Machines and their reports.
	type machineRow struct {
		lifecycle, gen string
		success        sql.NullInt64
		seen           sql.NullInt64
		tags           []string
		desired        bool
	}
	machines := map[string]*machineRow{}
	query("SELECT machine_id, lifecycle, current_generation, last_success, last_seen FROM machine", func(r *sql.Rows) error {
		var id string
		m := &machineRow{tags: []string{}}
		if err := r.Scan(&id, &m.lifecycle, &m.gen, &m.success, &m.seen); err != nil {
			return err
		}
		machines[id] = m
		return nil
	})
	query("SELECT machine_id, tag FROM machine_tag ORDER BY machine_id, tag", func(r *sql.Rows) error {
		var id, tag string
		if err := r.Scan(&id, &tag); err != nil {
			return err
		}
		if m := machines[id]; m != nil {
			m.tags = append(m.tags, tag)
		}
		return nil
	})
	query("SELECT machine_id FROM desired_generation", func(r *sql.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		if m := machines[id]; m != nil {
			m.desired = true
		}
		return nil
	})
	reportMsg := map[string]string{}
	reportsOf := map[string]int{}
	query("SELECT machine_id, message FROM report", func(r *sql.Rows) error {
		var id, msg string
		if err := r.Scan(&id, &msg); err != nil {
			return err
		}
		reportMsg[msg] = id
		reportsOf[id]++
		return nil
	})
	for msg, m := range l.reports {
		if got, ok := reportMsg[msg]; !ok || got != m {
			fail("acknowledged report %s of %s is missing", msg, m)
		}
	}
	for id := range l.machines {
		if machines[id] == nil {
			fail("acknowledged machine %s is missing", id)
		}
	}
	// The machine row is updated in the report's transaction: it shows the
	// latest stored report exactly.
	query(`SELECT r.machine_id, r.generation, r.success, r.received_at FROM report r
		JOIN (SELECT machine_id, max(id) AS id FROM report GROUP BY machine_id) l ON l.id = r.id`, func(r *sql.Rows) error {
		var id, gen string
		var success, received int64
		if err := r.Scan(&id, &gen, &success, &received); err != nil {
			return err
		}
		m := machines[id]
		if m == nil || m.gen != gen || m.success.Int64 != success || !m.success.Valid || m.seen.Int64 != received {
			fail("machine %s does not match its latest report (%s %d %d): %+v", id, gen, success, received, m)
		}
		return nil
	})
	for id, m := range machines {
		if reportsOf[id] == 0 && (m.seen.Valid || m.success.Valid || m.gen != "") {
			fail("machine %s has report fields but no report: %+v", id, m)
		}
		if m.lifecycle == "decommissioned" && m.desired {
			fail("decommissioned machine %s has a desired generation", id)
		}
		// Its first audit row is its creation, and the audit trail replays
		// to its lifecycle and tags.
		rows := byTarget[id]
		if len(rows) == 0 {
			fail("machine %s has no audit rows", id)
			continue
		}
		first := rows[0]
		if !(first.action == "register" && strings.HasPrefix(first.actor, "apikey:") ||
			first.action == "report" && first.detail.String == "registered") {
			fail("machine %s: first audit row is %s %q by %s, not its creation", id, first.action, first.detail.String, first.actor)
		}
		lifecycle, tags, registered, reportAudits := "active", "[]", 0, 0
		if first.action == "register" {
			lifecycle = first.detail.String
		}
		for _, a := range rows[1:] {
			switch a.action {
			case "register", "update_lifecycle":
				if _, to, ok := strings.Cut(a.detail.String, " -> "); ok {
					lifecycle = to
				} else if a.action == "register" {
					if a.detail.String != lifecycle {
						fail("machine %s: register row %d says %q while the trail says %s", id, a.id, a.detail.String, lifecycle)
					}
				}
			}
		}
		for _, a := range rows {
			switch a.action {
			case "tags.update":
				_, to, _ := strings.Cut(a.detail.String, " -> ")
				tags = to
			case "report":
				reportAudits++
				if a.detail.String == "registered" {
					registered++
				}
			}
		}
		if lifecycle != m.lifecycle {
			fail("machine %s: lifecycle %s, but its audit trail ends in %s", id, m.lifecycle, lifecycle)
		}
		if want := "[" + strings.Join(m.tags, ",") + "]"; tags != want {
			fail("machine %s: tags %s, but its audit trail ends in %s", id, want, tags)
		}
		if registered > 1 || reportAudits > reportsOf[id] {
			fail("machine %s: %d 'registered' and %d report audit rows for %d reports", id, registered, reportAudits, reportsOf[id])
		}
	}
	machineActions := []string{"register", "update_lifecycle", "tags.update", "clear_desired", "notify_deploy", "report", "machine.reverted"}
	for _, a := range audits {
		if slices.Contains(machineActions, a.action) && machines[a.target] == nil {
			fail("audit row %d (%s) names machine %s, which does not exist", a.id, a.action, a.target)
		}
	}
	for p, m := range l.notify {
		found := false
		for _, a := range byTarget[m] {
			found = found || a.action == "notify_deploy" && a.detail.String == p
		}
		if !found {
			fail("acknowledged notify-deploy %s to %s has no audit row", p, m)
		}
	}

	// Releases.
	releases := map[string]int{}
	query(`SELECT r.id, r.host_count, (SELECT count(*) FROM release_entry e WHERE e.release_id = r.id) FROM release r`,
		func(r *sql.Rows) error {
			var id string
			var hosts, entries int
			if err := r.Scan(&id, &hosts, &entries); err != nil {
				return err
			}
			releases[id] = hosts
			if hosts != entries || hosts == 0 {
				fail("release %s: host_count %d, %d entries", id, hosts, entries)
			}
			if n := count(id, "create_release", "apikey:"); n != 1 {
				fail("release %s has %d create_release audit rows", id, n)
			}
			return nil
		})
	for id, n := range l.releases {
		if got, ok := releases[id]; !ok || got != n {
			fail("acknowledged release %s (%d hosts) is missing or has %d hosts", id, n, got)
		}
	}

	// Rollouts: batches, members, events and audit rows come whole.
	type rolloutRow struct {
		status  string
		batches map[int]string // index → status
		members map[int]int    // batch index → members
	}
	rollouts := map[string]*rolloutRow{}
	query("SELECT id, status FROM rollout", func(r *sql.Rows) error {
		var id, status string
		if err := r.Scan(&id, &status); err != nil {
			return err
		}
		rollouts[id] = &rolloutRow{status: status, batches: map[int]string{}, members: map[int]int{}}
		return nil
	})
	query("SELECT rollout_id, id, batch_index, status FROM rollout_batch", func(r *sql.Rows) error {
		var rid, id, status string
		var i int
		if err := r.Scan(&rid, &id, &i, &status); err != nil {
			return err
		}
		if ro := rollouts[rid]; ro != nil {
			ro.batches[i] = status
		}
		if id != fmt.Sprintf("%s-b%d", rid, i) {
			fail("batch id %s for %s index %d", id, rid, i)
		}
		return nil
	})
	query("SELECT rollout_id, batch_index FROM rollout_machine", func(r *sql.Rows) error {
		var rid string
		var i int
		if err := r.Scan(&rid, &i); err != nil {
			return err
		}
		if ro := rollouts[rid]; ro != nil {
			ro.members[i]++
		}
		return nil
	})
	type event struct {
		typ, actor string
		detail     map[string]any
	}
	events := map[string][]event{}
	query("SELECT rollout_id, event_type, actor, detail FROM rollout_event ORDER BY id", func(r *sql.Rows) error {
		var rid, detail string
		var e event
		if err := r.Scan(&rid, &e.typ, &e.actor, &detail); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(detail), &e.detail); err != nil {
			fail("rollout %s: event detail %q: %v", rid, detail, err)
		}
		events[rid] = append(events[rid], e)
		return nil
	})
	for rid, ro := range rollouts {
		members := 0
		for i := range len(ro.batches) {
			if _, ok := ro.batches[i]; !ok {
				fail("rollout %s: batch indexes %v are not 0…%d", rid, ro.batches, len(ro.batches)-1)
			}
			if ro.members[i] == 0 {
				fail("rollout %s: batch %d has no machines", rid, i)
			}
			members += ro.members[i]
		}
		if len(ro.batches) == 0 || len(ro.members) != len(ro.batches) {
			fail("rollout %s: %d batches, members in %d batches", rid, len(ro.batches), len(ro.members))
		}
		created := 0
		for _, a := range byTarget[rid] {
			if a.action != "rollout.created" {
				continue
			}
			created++
			if !strings.Contains(a.detail.String, fmt.Sprintf(" machines=%d batches=%d ", members, len(ro.batches))) {
				fail("rollout %s: %d machines in %d batches, audit says %q", rid, members, len(ro.batches), a.detail.String)
			}
		}
		if created != 1 {
			fail("rollout %s has %d rollout.created audit rows", rid, created)
		}
		evs := events[rid]
		if len(evs) == 0 || evs[0].typ != "status_change" || evs[0].detail["from"] != "created" ||
			evs[0].detail["to"] != "running" || !strings.HasPrefix(evs[0].actor, "apikey:") {
			fail("rollout %s: first event is not created -> running: %+v", rid, evs)
			continue
		}
		// Every status change has its audit row and vice versa, and the
		// last one is the rollout's status.
		want := map[string]int{}
		batchWant := map[string]int{}
		status := ""
		for _, e := range evs {
			switch e.typ {
			case "status_change":
				from, _ := e.detail["from"].(string)
				to, _ := e.detail["to"].(string)
				status = to
				action := map[string]string{"paused": "rollout.paused", "cancelled": "rollout.cancelled",
					"completed": "rollout.completed", "failed": "rollout.failed"}[to]
				if to == "running" {
					action = map[string]string{"created": "rollout.created", "paused": "rollout.resumed"}[from]
				}
				want[action]++
			case "batch_started", "batch_completed", "batch_failed":
				idx, _ := e.detail["batch_index"].(float64)
				action := map[string]string{"batch_started": "batch.deploying", "batch_completed": "batch.succeeded",
					"batch_failed": "batch.failed"}[e.typ]
				batchWant[fmt.Sprintf("%s %s-b%d", action, rid, int(idx))]++
			}
		}
		if status != ro.status {
			fail("rollout %s: status %s, but its last status_change is to %s", rid, ro.status, status)
		}
		got := map[string]int{}
		for _, a := range byTarget[rid] {
			if strings.HasPrefix(a.action, "rollout.") && a.action != "rollout.deleted" {
				got[a.action]++
			}
		}
		if !maps.Equal(got, want) {
			fail("rollout %s: audit rows %v, status changes %v", rid, got, want)
		}
		batchGot := map[string]int{}
		for i := range len(ro.batches) {
			bid := fmt.Sprintf("%s-b%d", rid, i)
			for _, a := range byTarget[bid] {
				batchGot[a.action+" "+bid]++
			}
		}
		if !maps.Equal(batchGot, batchWant) {
			fail("rollout %s: batch audit rows %v, batch events %v", rid, batchGot, batchWant)
		}
	}
	for _, a := range audits {
		switch {
		case strings.HasPrefix(a.action, "rollout.") && a.action != "rollout.deleted":
			if rollouts[a.target] == nil {
				fail("audit row %d (%s) names rollout %s, which does not exist", a.id, a.action, a.target)
			}
		case strings.HasPrefix(a.action, "batch."):
			rid := a.target[:max(0, strings.LastIndex(a.target, "-b"))] // batch ids are <rollout id>-b<index>
			if rollouts[rid] == nil {
				fail("audit row %d (%s) names batch %s of a missing rollout", a.id, a.action, a.target)
			}
		case a.action == "create_release":
			if _, ok := releases[a.target]; !ok {
				fail("audit row %d names release %s, which does not exist", a.id, a.target)
			}
		}
	}
	for _, rid := range l.rollouts {
		if rollouts[rid] == nil {
			fail("acknowledged rollout %s is missing", rid)
		}
	}
	query(`SELECT rm.machine_id, group_concat(r.id) FROM rollout_machine rm JOIN rollout r ON r.id = rm.rollout_id
		WHERE r.status IN ('created', 'running', 'paused') GROUP BY rm.machine_id HAVING count(*) > 1`,
		func(r *sql.Rows) error {
			var m, ids string
			if err := r.Scan(&m, &ids); err != nil {
				return err
			}
			fail("machine %s is in several active rollouts: %s", m, ids)
			return nil
		})

	// API keys: each has exactly one creation row; revocations are audited.
	keys := map[int64]string{}
	bootstraps := 0
	for _, a := range audits {
		if a.action == "bootstrap" {
			bootstraps++
		}
	}
	if bootstraps != 1 {
		fail("%d bootstrap audit rows", bootstraps)
	}
	query("SELECT id, name, revoked_at IS NOT NULL FROM api_key ORDER BY id", func(r *sql.Rows) error {
		var id int64
		var name string
		var revoked bool
		if err := r.Scan(&id, &name, &revoked); err != nil {
			return err
		}
		keys[id] = name
		sid := strconv.FormatInt(id, 10)
		if n := count(sid, "key.created", ""); n != 1 && !(n == 0 && count(name, "bootstrap", "system:bootstrap") == 1 && len(keys) == 1) {
			fail("key %d (%s) has %d key.created audit rows", id, name, n)
		}
		if n := count(sid, "key.revoked", "apikey:"); n != map[bool]int{false: 0, true: 1}[revoked] {
			fail("key %d (%s): revoked %v with %d key.revoked audit rows", id, name, revoked, n)
		}
		if l.revoked[id] && !revoked {
			fail("acknowledged revocation of key %d is missing", id)
		}
		return nil
	})
	for _, a := range audits {
		if a.action == "key.created" || a.action == "key.revoked" {
			id, _ := strconv.ParseInt(a.target, 10, 64)
			if _, ok := keys[id]; !ok {
				fail("audit row %d (%s) names key %s, which does not exist", a.id, a.action, a.target)
			}
		}
	}
	for id, name := range l.keys {
		if keys[id] != name {
			fail("acknowledged key %d (%s) is missing", id, name)
		}
	}
	return bad
}

// ckCheckAPI checks through the API of a restarted server that the
// acknowledged machines, releases and rollouts are served again.
func ckCheckAPI(t *testing.T, url, admin string, l *ckLedger) {
	t.Helper()
	c := &http.Client{Timeout: 20 * time.Second}
	defer c.CloseIdleConnections()
	listed := map[string]bool{}
	for _, m := range listMachinesT(t, c, url, admin, "") {
		listed[m.MachineID] = true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.reports {
		if !listed[m] {
			t.Errorf("machine %s of an acknowledged report is not listed after the restart", m)
		}
	}
	for m := range l.machines {
		if !listed[m] {
			t.Errorf("acknowledged machine %s is not listed after the restart", m)
		}
	}
	for _, rid := range l.rollouts[max(0, len(l.rollouts)-5):] {
		if r := do(t, c, "GET", url+"/api/v1/rollouts/"+rid, admin, nil); r.status != 200 {
			t.Errorf("acknowledged rollout %s: %d %s", rid, r.status, r.body)
		}
	}
	n := 0
	for id := range l.releases {
		if n++; n > 5 {
			break
		}
		if r := do(t, c, "GET", url+"/api/v1/releases/"+id, admin, nil); r.status != 200 {
			t.Errorf("acknowledged release %s: %d %s", id, r.status, r.body)
		}
	}
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

func ckFileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
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
		time.Sleep(delay)
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
	time.Sleep(700 * time.Millisecond)
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
	time.Sleep(800 * time.Millisecond)
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
