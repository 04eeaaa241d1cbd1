package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// rolloutDetail is the part of RolloutDetail (SPEC §5.5) the scenario reads.
type rolloutDetail struct {
	Status    string `json:"status"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Batches   []struct {
		BatchIndex  int      `json:"batch_index"`
		MachineIDs  []string `json:"machine_ids"`
		Status      string   `json:"status"`
		StartedAt   *string  `json:"started_at"`
		CompletedAt *string  `json:"completed_at"`
	} `json:"batches"`
	Events []struct {
		EventType string `json:"event_type"`
		Detail    string `json:"detail"`
		CreatedAt string `json:"created_at"`
	} `json:"events"`
}

// rolloutBatchSizes is the staged rollout of the issue.
var rolloutBatchSizes = []string{"1", "10%", "100%"}

// runRollout is the staged rollout over N agents that answer instantly:
// each agent polls its desired generation every -rollout-poll (the daemon's
// poll_hint is 5 s) and, as soon as it sees its new store path, sends a
// passing health-check report on it. The rollout cannot finish faster than
// the agents' own intervals allow; the scenario compares its duration with
// that minimum, which shows whether the executor reacts to reports rather
// than to its timer.
func (b *bench) runRollout(ctx context.Context) error {
	n, mode := b.cfg.rolloutMachines, b.cfg.rolloutMode
	if mode == modeMTLS && uint64(n)+1000 > nofileLimit() {
		return fmt.Errorf("-rollout-mode mtls needs one connection per machine, but the open-file limit is %d for %d machines",
			nofileLimit(), n)
	}
	d, err := b.startDaemon(ctx, "daemon-rollout", filepath.Join(b.tmp, "rollout.db"), mode)
	if err != nil {
		return err
	}
	defer b.stopDaemon("rollout", d)
	p := b.pkiFor(mode)
	a, err := newAdmin(baseURL(d.addr, mode), p)
	if err != nil {
		return err
	}
	defer a.close()
	if err := a.bootstrap(ctx); err != nil {
		return err
	}
	ac := newAgentClients(baseURL(d.addr, mode), p, false, 256)
	defer ac.close()

	ids := make([]string, n)
	index := make(map[string]int, n)
	for i := range ids {
		ids[i] = machineID("ro-", i)
		index[ids[i]] = i
	}
	oldGen := func(i int) string { return storePath("old", ids[i]) }
	newGen := func(i int) string { return storePath("new", ids[i]) }

	// Every agent registers with a first report; in mTLS mode this also opens
	// its keep-alive connection (one TLS handshake per machine).
	b.logf("  registering %d machines through their agents (%s)", n, mode)
	err = parallel(ctx, n, b.cfg.clients, func(ctx context.Context, i int) error {
		c, err := ac.client(ids[i])
		if err != nil {
			return err
		}
		body := healthCheckReport(ids[i], oldGen(i), []string{"lb-rollout"}, time.Now())
		status, resp, err := call(ctx, c, "POST", ac.base+"/api/v1/machines/"+ids[i]+"/report", body, true)
		if err != nil {
			return fmt.Errorf("register %s: %w", ids[i], err)
		}
		if status != 200 {
			return fmt.Errorf("register %s: status %d: %s", ids[i], status, resp)
		}
		return nil
	})
	if err != nil {
		return err
	}

	type entry struct {
		Hostname  string `json:"hostname"`
		StorePath string `json:"store_path"`
		Platform  string `json:"platform"`
	}
	entries := make([]entry, n)
	for i := range entries {
		entries[i] = entry{Hostname: ids[i], StorePath: newGen(i), Platform: "x86_64-linux"}
	}
	var rel struct {
		ID string `json:"id"`
	}
	if err := a.json(ctx, "POST", "/api/v1/releases", map[string]any{"entries": entries}, &rel); err != nil {
		return err
	}

	// The agents. reported[i] is when machine i sent the report on the new
	// generation that was accepted (Unix ns; 0: not yet).
	interval := b.cfg.rolloutPoll
	reported := make([]atomic.Int64, n)
	polls, reports := newLatencies(), newLatencies()
	rng := rand.New(rand.NewPCG(3, 4)) // dispatcher goroutine only
	start := time.Now()
	events := make(eventHeap, n)
	for i := range events {
		events[i] = agentEvent{at: start.Add(time.Duration(rng.Int64N(int64(interval)))), machine: int32(i)}
	}
	agents := &openLoop{
		events:  events,
		workers: 256,
		// Exact intervals (random phases only), so that the minimum below
		// is exactly what the agents impose.
		next: func(e agentEvent) (time.Time, bool) { return e.at.Add(interval), true },
		handle: func(ctx context.Context, e agentEvent) {
			i := int(e.machine)
			c, err := ac.client(ids[i])
			if err != nil {
				polls.fail(0, err)
				return
			}
			base := ac.base + "/api/v1/machines/" + ids[i]
			status, body, err := call(ctx, c, "GET", base+"/desired-generation", nil, true)
			if ctx.Err() != nil {
				return
			}
			if err != nil || (status != 200 && status != 404) { // 404: nothing to do yet
				polls.fail(status, err)
				return
			}
			polls.ok(time.Since(e.at))
			if status != 200 || reported[i].Load() != 0 {
				return
			}
			var dg struct {
				Hash string `json:"hash"`
			}
			if err := json.Unmarshal(body, &dg); err != nil {
				polls.fail(status, fmt.Errorf("decode desired generation: %w", err))
				return
			}
			if dg.Hash != newGen(i) {
				return
			}
			// Instant agent: no closure to fetch, no switch; healthy at once.
			sent := time.Now()
			status, _, err = call(ctx, c, "POST", base+"/report", healthCheckReport(ids[i], newGen(i), nil, sent), false)
			if ctx.Err() != nil {
				return
			}
			record(reports, sent, status, err)
			if err == nil && status == 200 {
				reported[i].Store(sent.UnixNano())
			}
		},
	}
	agentsCtx, stopAgents := context.WithCancel(ctx)
	agentsDone := make(chan struct{})
	go func() {
		defer close(agentsDone)
		agents.run(agentsCtx, start.Add(24*time.Hour))
	}()
	defer func() {
		stopAgents()
		<-agentsDone
	}()

	// The rollout.
	t0 := time.Now()
	var created struct {
		RolloutID string `json:"rollout_id"`
	}
	err = a.json(ctx, "POST", "/api/v1/rollouts", map[string]any{
		"release_id":        rel.ID,
		"strategy":          "staged",
		"batch_sizes":       rolloutBatchSizes,
		"target":            map[string]any{"tags": []string{"lb-rollout"}},
		"failure_threshold": "0",
		"on_failure":        "pause",
		"health_timeout":    b.cfg.healthTimeout,
	}, &created)
	if err != nil {
		return err
	}
	b.logf("  rollout %s over %d machines, batches %v, agents poll every %v", created.RolloutID, n, rolloutBatchSizes, interval)

	// Watch it until it ends. The server's timestamps give the exact
	// duration; the watch interval only bounds how long we keep polling.
	tick := min(time.Second, interval/4)
	deadline := t0.Add(time.Duration(len(rolloutBatchSizes)+2)*interval*4 + time.Minute +
		time.Duration(b.cfg.healthTimeout)*time.Second)
	var det rolloutDetail
	for {
		if err := a.json(ctx, "GET", "/api/v1/rollouts/"+created.RolloutID, nil, &det); err != nil {
			return err
		}
		if det.Status != "running" && det.Status != "created" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rollout still %s after %v", det.Status, time.Since(t0).Round(time.Second))
		}
		if err := d.alive(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(tick):
		}
	}
	observed := time.Since(t0)
	stopAgents()
	<-agentsDone
	if det.Status != "completed" {
		b.res.addProblem("rollout: ended %s, not completed; events: %v", det.Status, det.Events)
		return fmt.Errorf("rollout ended %s", det.Status)
	}
	return b.analyseRollout(n, interval, &det, observed, polls, reports, reported, index, daemonLatencyNote(ctx, a, true))
}

// analyseRollout reports the rollout's duration against the minimum set by
// the agents, and per batch how long the agents took and how quickly the
// executor reacted to the last report.
func (b *bench) analyseRollout(n int, interval time.Duration, det *rolloutDetail, observed time.Duration,
	polls, reports *latencies, reported []atomic.Int64, index map[string]int, daemonView string) error {
	createdAt, err := time.Parse(time.RFC3339Nano, det.CreatedAt)
	if err != nil {
		return fmt.Errorf("rollout created_at: %w", err)
	}
	completedAt, err := time.Parse(time.RFC3339Nano, det.UpdatedAt)
	if err != nil {
		return fmt.Errorf("rollout updated_at: %w", err)
	}
	for _, e := range det.Events {
		if e.EventType == "status_change" && strings.Contains(e.Detail, `"to":"completed"`) {
			if t, err := time.Parse(time.RFC3339Nano, e.CreatedAt); err == nil {
				completedAt = t
			}
		}
	}
	wall := completedAt.Sub(createdAt)
	ps, rs := polls.summarize(observed), reports.summarize(observed)
	minimum := time.Duration(len(det.Batches)) * (interval + rs.p50)
	ratio := wall.Seconds() / minimum.Seconds()

	scenario := fmt.Sprintf("staged rollout over %d instant agents, %s", n, b.cfg.rolloutMode)
	b.res.addRow(row{scenario: scenario + ": agent polls", server: "real", s: ps})
	b.res.addRow(row{scenario: scenario + ": health reports on the new generation", server: "real", s: rs})
	b.res.addRow(row{scenario: scenario, server: "real", notes: fmt.Sprintf(
		"%d batches %v; wall %s (server: created → completed; %s seen by the client); minimum %d × (%v poll + %s report) = %s; ratio %.2f; %s",
		len(det.Batches), rolloutBatchSizes, secs(wall), secs(observed), len(det.Batches), interval, ms(rs.p50),
		secs(minimum), ratio, daemonView)})
	b.logf("  rollout: wall %s, minimum %s, ratio %.2f", secs(wall), secs(minimum), ratio)

	var prevDone time.Time
	for _, bt := range det.Batches {
		if bt.StartedAt == nil || bt.CompletedAt == nil {
			continue
		}
		started, err1 := time.Parse(time.RFC3339Nano, *bt.StartedAt)
		done, err2 := time.Parse(time.RFC3339Nano, *bt.CompletedAt)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("batch %d timestamps: %v %v", bt.BatchIndex, err1, err2)
		}
		// When the batch's last accepted report was sent: from then on, only
		// the daemon (commit, wake-up, executor pass) is working.
		var last int64
		for _, id := range bt.MachineIDs {
			if i, ok := index[id]; ok {
				last = max(last, reported[i].Load())
			}
		}
		lastReport := time.Unix(0, last)
		transition := ""
		if !prevDone.IsZero() {
			transition = fmt.Sprintf("; started %s after the previous batch completed", ms(started.Sub(prevDone)))
		}
		note := fmt.Sprintf("started +%s, completed +%s (%s); last agent report sent after %s, batch completed %s later%s",
			secs(started.Sub(createdAt)), secs(done.Sub(createdAt)), secs(done.Sub(started)),
			secs(lastReport.Sub(started)), ms(done.Sub(lastReport)), transition)
		b.res.addRow(row{scenario: fmt.Sprintf("%s: batch %d (%s)", scenario, bt.BatchIndex, plural(len(bt.MachineIDs), "machine")),
			server: "real", notes: note})
		b.logf("  batch %d (%s): %s", bt.BatchIndex, plural(len(bt.MachineIDs), "machine"), note)
		prevDone = done
	}

	b.res.addCheck(fmt.Sprintf("staged rollout over %d instant agents ≤ 1.2 × the agents' minimum", n),
		fmt.Sprintf("%.2f × (%s for a minimum of %s)", ratio, secs(wall), secs(minimum)), ratio <= 1.2)
	if ps.errors+rs.errors > 0 {
		b.res.addProblem("rollout: agent errors: polls %d (%s), reports %d (%s)", ps.errors, ps.causes, rs.errors, rs.causes)
	}
	return nil
}
