package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"time"
)

// Request kinds of a fleet agent.
const (
	kindPoll     uint8 = iota // GET …/desired-generation every interval
	kindHealth                // POST …/report "health-check" every interval
	kindUpToDate              // POST …/report "up-to-date" after a 200 poll (-up-to-date)
)

var kindNames = [...]string{"polls", "health-check reports", "up-to-date reports"}

// agentInterval is the v0.1 agent's poll and health interval (SPEC §6.1).
const agentInterval = 60 * time.Second

// runFleet is the realistic fleet: N machines, already known to the daemon
// and pinned to their current generation, each polling and sending a
// health-check report every 60 s (divided by -fleet-compress) with jitter,
// at independent random phases. The offered load is open-loop, so at the
// real interval 100,000 machines offer about 3,333 requests per second.
func (b *bench) runFleet(ctx context.Context) error {
	n, mode := b.cfg.machines, b.cfg.fleetMode
	if mode == modeMTLS && uint64(n)+1000 > nofileLimit() {
		return fmt.Errorf("-fleet-mode mtls needs one connection per machine, but the open-file limit is %d for %d machines; "+
			"use -fleet-mode plain or fewer -machines", nofileLimit(), n)
	}
	dbPath := filepath.Join(b.tmp, "fleet.db")
	if _, err := b.createSchema(ctx, dbPath); err != nil {
		return err
	}
	b.logf("  seeding %d machines", n)
	if err := seedDB(ctx, dbPath, seedSpec{prefix: "fleet-", machines: n, tags: []string{"fleet"}, desired: true,
		now: time.Now()}); err != nil {
		return err
	}
	startAt := time.Now()
	d, err := b.startDaemon(ctx, "daemon-fleet", dbPath, mode)
	if err != nil {
		return err
	}
	defer b.stopDaemon("fleet", d)
	startup := time.Since(startAt)

	p := b.pkiFor(mode)
	ac := newAgentClients(baseURL(d.addr, mode), p, false, b.cfg.fleetWorkers)
	defer ac.close()
	if p != nil {
		// Certificates are the agents' own; make them before the clock runs.
		b.logf("  generating %d client certificates", n)
		if err := parallel(ctx, n, runtime.NumCPU(), func(ctx context.Context, i int) error {
			_, err := p.clientCert(machineID("fleet-", i))
			return err
		}); err != nil {
			return err
		}
		// Real agents keep their connection between polls (the server's idle
		// timeout exceeds the interval), so the steady state has no TLS
		// handshakes: open every machine's connection before measuring.
		b.logf("  connecting %d agents", n)
		connectStart := time.Now()
		if err := parallel(ctx, n, 64, func(ctx context.Context, i int) error {
			c, err := ac.client(machineID("fleet-", i))
			if err != nil {
				return err
			}
			status, _, err := call(ctx, c, "GET", ac.base+"/health", nil, false)
			if err != nil || status != 200 {
				return fmt.Errorf("connect agent %d: status %d, %v", i, status, err)
			}
			return nil
		}); err != nil {
			return err
		}
		b.logf("  %d mTLS connections opened in %s", n, secs(time.Since(connectStart)))
	}

	interval := time.Duration(float64(agentInterval) / b.cfg.fleetCompress)
	perInterval := 2.0
	if b.cfg.upToDate {
		perInterval = 3
	}
	offered := float64(n) * perInterval / interval.Seconds()
	b.logf("  %d machines, interval %v, offered %.0f req/s for %v (%s)", n, interval, offered, b.cfg.fleetDuration, mode)

	var lat [3]*latencies
	for k := range lat {
		lat[k] = newLatencies()
	}
	rng := rand.New(rand.NewPCG(1, 2)) // used by the dispatcher goroutine only
	jittered := func() time.Duration {
		return time.Duration(float64(interval) * (1 + b.cfg.jitter*(2*rng.Float64()-1)))
	}
	begin := time.Now().Add(200 * time.Millisecond)
	end := begin.Add(b.cfg.fleetDuration)
	events := make(eventHeap, 0, 2*n)
	for i := range n {
		for _, k := range []uint8{kindPoll, kindHealth} {
			phase := time.Duration(rng.Int64N(int64(interval)))
			events = append(events, agentEvent{at: begin.Add(phase), machine: int32(i), kind: k})
		}
	}
	loop := &openLoop{
		events:  events,
		workers: b.cfg.fleetWorkers,
		next: func(e agentEvent) (time.Time, bool) {
			return e.at.Add(jittered()), true
		},
		handle: func(ctx context.Context, e agentEvent) {
			id := machineID("fleet-", int(e.machine))
			c, err := ac.client(id)
			if err != nil {
				lat[e.kind].fail(0, err)
				return
			}
			gen := seedGeneration(id)
			base := ac.base + "/api/v1/machines/" + id
			switch e.kind {
			case kindPoll:
				status, _, err := call(ctx, c, "GET", base+"/desired-generation", nil, false)
				record(lat[kindPoll], e.at, status, err)
				if b.cfg.upToDate && err == nil && status == 200 {
					// The agent already runs the hash it was given: it says so.
					sent := time.Now()
					status, _, err := call(ctx, c, "POST", base+"/report", upToDateReport(id, gen, sent), false)
					record(lat[kindUpToDate], sent, status, err)
				}
			case kindHealth:
				sent := time.Now()
				body := healthCheckReport(id, gen, []string{"fleet"}, sent)
				status, _, err := call(ctx, c, "POST", base+"/report", body, false)
				record(lat[kindHealth], e.at, status, err)
			}
		},
	}
	loop.run(ctx, end)
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.alive(); err != nil {
		return err
	}
	elapsed := b.cfg.fleetDuration
	peak, current, err := d.memory()
	if err != nil {
		return err
	}
	a, err := newAdmin(ac.base, p) // /metrics needs no key
	if err != nil {
		return err
	}
	defer a.close()
	daemonView := daemonLatencyNote(ctx, a, true)

	all := newLatencies()
	for k, l := range lat {
		if k == int(kindUpToDate) && !b.cfg.upToDate {
			continue
		}
		s := l.summarize(elapsed)
		all.merge(l)
		b.res.addRow(row{scenario: fmt.Sprintf("fleet of %d, %s: %s", n, mode, kindNames[k]), server: "real", s: s,
			notes: fmt.Sprintf("max %s", ms(s.max))})
	}
	s := all.summarize(elapsed)
	notes := fmt.Sprintf("offered %.0f req/s (interval %v, ±%.0f%% jitter) for %v; max %s; daemon peak RSS %s "+
		"(now %s); daemon start on %d machines %s; %s", offered, interval, 100*b.cfg.jitter, b.cfg.fleetDuration,
		ms(s.max), mib(peak), mib(current), n, secs(startup), daemonView)
	b.res.addRow(row{scenario: fmt.Sprintf("fleet of %d, %s: all requests", n, mode), server: "real", s: s, notes: notes})
	b.logf("  fleet: %.0f req/s, p50 %s, p99 %s, max %s, %d errors, peak RSS %s; %s",
		s.rps, ms(s.p50), ms(s.p99), ms(s.max), s.errors, mib(peak), daemonView)

	where := fmt.Sprintf("%d machines at %v intervals", n, interval)
	b.res.addCheck("fleet: no errors ("+where+")", fmt.Sprintf("%d errors", s.errors), s.errors == 0)
	b.res.addCheck("fleet: p99 < 50 ms ("+where+")", ms(s.p99), s.p99 < 50*time.Millisecond)
	b.res.addCheck("fleet: daemon RSS < 512 MiB ("+where+")", mib(peak), peak < 512<<20)
	if s.errors > 0 {
		b.res.addProblem("fleet: %d errors: %s", s.errors, s.causes)
	}
	return nil
}

// record files one open-loop request: its latency counts from when it was
// due, so time spent waiting for a free worker is included.
func record(l *latencies, due time.Time, status int, err error) {
	switch {
	case err != nil:
		l.fail(0, err)
	case status/100 != 2:
		l.fail(status, nil)
	default:
		l.ok(time.Since(due))
	}
}
