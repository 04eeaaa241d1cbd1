package main

// The crash-safety ledger and database verifier, shared by the crash tests
// (crash_test.go) and the storage fault tests (faults_test.go,
// faults_fs_test.go): a ledger of every write the server acknowledged
// (ckLedger), and ckVerifyDB, which checks the ledger and the consistency
// rules against a stopped or copied database file with plain SQL.

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
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

func ckFileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
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

type ckAuditRow struct {
	id, ts                int64 // ts: the row's timestamp (Unix ms)
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
	query("SELECT id, timestamp, actor, action, target, detail FROM audit_event ORDER BY id", func(r *sql.Rows) error {
		var a ckAuditRow
		if err := r.Scan(&a.id, &a.ts, &a.actor, &a.action, &a.target, &a.detail); err != nil {
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
		var agentTags []int64 // timestamps of the agent's own tags.update rows
		for _, a := range rows {
			switch a.action {
			case "tags.update":
				_, to, _ := strings.Cut(a.detail.String, " -> ")
				tags, _, _ = strings.Cut(to, " (+") // " (+N changes not audited individually)"
				if a.actor == "machine:"+id {
					agentTags = append(agentTags, a.ts)
				}
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
		// §6.5's flood bound: once an agent's last 10 tags.update rows lie
		// within 60 s, its next changes are applied without a row of their
		// own until the window moves on, so the trail may end behind them.
		bounded := len(agentTags) >= 10 && agentTags[len(agentTags)-10] > agentTags[len(agentTags)-1]-60_000
		if want := "[" + strings.Join(m.tags, ",") + "]"; tags != want && !bounded {
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
