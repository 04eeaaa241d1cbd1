package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// runThroughput runs the closed-loop scenarios of one transport: report
// ingestion and desired-generation polls, each against the ceiling and then
// the daemon, with the same clients, machine ids and request bodies.
func (b *bench) runThroughput(ctx context.Context, mode string, ingest, poll bool) error {
	scenario := "throughput " + mode
	d, err := b.startDaemon(ctx, "daemon-"+mode, filepath.Join(b.tmp, "throughput-"+mode+".db"), mode)
	if err != nil {
		return err
	}
	defer b.stopDaemon(scenario, d)
	c, err := b.startCeiling(ctx, mode)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.stop(); err != nil {
			b.res.addProblem("%s: %v", scenario, err)
		}
	}()

	p := b.pkiFor(mode)
	a, err := newAdmin(baseURL(d.addr, mode), p)
	if err != nil {
		return err
	}
	defer a.close()
	if err := a.bootstrap(ctx); err != nil {
		return err
	}

	// Each client speaks for its own machine ids, over one keep-alive
	// connection per id: in mTLS mode the certificate's CN must be the id in
	// the path, so a connection can only ever speak for one machine.
	ids := make([][]string, b.cfg.clients)
	for i := range ids {
		for k := range b.cfg.idsPerClient {
			ids[i] = append(ids[i], fmt.Sprintf("lb-%s-%03d-%d", mode, i, k))
		}
	}
	servers := []target{
		{name: "ceiling", proc: c, ac: newAgentClients(baseURL(c.addr, mode), p, true, 0)},
		{name: "real", proc: d, ac: newAgentClients(baseURL(d.addr, mode), p, true, 0)},
	}
	defer func() {
		for _, s := range servers {
			s.ac.close()
		}
	}()

	if ingest {
		// One health-check report per machine, as the agent sends every
		// 60 s: about 500 bytes, three passing checks.
		now := time.Now()
		bodies := map[string][]byte{}
		for _, mine := range ids {
			for _, id := range mine {
				bodies[id] = healthCheckReport(id, benchStorePath, []string{"loadbench"}, now)
			}
		}
		name := "report ingestion, " + mode
		ratio, err := b.compare(ctx, name, servers, ids, func(id string) request {
			return request{method: "POST", path: "/api/v1/machines/" + id + "/report", body: bodies[id]}
		}, groupCommitNote(ctx, a))
		if err != nil {
			return err
		}
		target := 0.5
		b.res.addCheck(fmt.Sprintf("durable report ingestion over %s ≥ %.0f%% of the ceiling", mode, 100*target),
			fmt.Sprintf("%.0f%%", 100*ratio), ratio >= target)
	}

	if poll {
		// Give every polled machine a desired generation, so that the
		// daemon answers 200 with the same body as the ceiling.
		var all []string
		for _, mine := range ids {
			all = append(all, mine...)
		}
		err := parallel(ctx, len(all), 8, func(ctx context.Context, i int) error {
			return a.json(ctx, "POST", "/api/v1/machines/"+all[i]+"/notify-deploy",
				map[string]string{"store_path": benchStorePath}, nil)
		})
		if err != nil {
			return err
		}
		if err := samePollAnswer(ctx, servers, all[0]); err != nil {
			return err
		}
		name := "desired-generation polls, " + mode
		ratio, err := b.compare(ctx, name, servers, ids, func(id string) request {
			return request{method: "GET", path: "/api/v1/machines/" + id + "/desired-generation"}
		}, func() string { return daemonLatencyNote(ctx, a, false) })
		if err != nil {
			return err
		}
		target := 0.8
		b.res.addCheck(fmt.Sprintf("desired-generation polls over %s ≥ %.0f%% of the ceiling", mode, 100*target),
			fmt.Sprintf("%.0f%%", 100*ratio), ratio >= target)
	}
	return nil
}

// target is a server under test with the clients that drive it.
type target struct {
	name string
	proc *child
	ac   *agentClients
}

// compare measures the same closed-loop load on the ceiling (servers[0]) and
// the daemon (servers[1]) and adds a row for each. To cancel out a drift in
// the machine's background load, the measurement time is split in halves run
// in the order ceiling, real, real, ceiling (ABBA); each server gets an
// unmeasured warm-up before its first half. It returns the ratio of the
// daemon's throughput to the ceiling's. note, if not nil, is called after the
// measurements and its text goes in the daemon's row.
func (b *bench) compare(ctx context.Context, name string, servers []target, ids [][]string,
	mk func(id string) request, note func() string) (float64, error) {
	lats := make([]*latencies, len(servers))
	cpu := make([]time.Duration, len(servers)) // each server process's CPU time while measured
	half := b.cfg.duration / 2
	b.logf("  %s: %v per server in halves (ceiling, real, real, ceiling), %d clients, warm-up %v",
		name, 2*half, len(ids), b.cfg.warmup)
	for _, i := range []int{0, 1, 1, 0} {
		s := servers[i]
		if lats[i] == nil {
			lats[i] = newLatencies()
			if b.cfg.warmup > 0 {
				if _, err := closedLoop(ctx, s.ac, ids, b.cfg.warmup, mk); err != nil {
					return 0, err
				}
			}
		}
		before, err := s.proc.cpuTime()
		if err != nil {
			return 0, err
		}
		lat, err := closedLoop(ctx, s.ac, ids, half, mk)
		if err != nil {
			return 0, err
		}
		if err := s.proc.alive(); err != nil {
			return 0, err
		}
		after, err := s.proc.cpuTime()
		if err != nil {
			return 0, err
		}
		cpu[i] += after - before
		lats[i].merge(lat)
	}
	var rates []float64
	for i, s := range servers {
		sum := lats[i].summarize(2 * half)
		r := row{scenario: name, server: s.name, s: sum}
		// The server's own CPU per answered request: what the ratio comes
		// down to when the machine's CPUs are the bound.
		var cpuNote string
		if sum.n > 0 {
			cpuNote = fmt.Sprintf("server CPU %.0f µs per request", float64(cpu[i].Microseconds())/float64(sum.n))
		}
		r.notes = cpuNote
		if i > 0 && rates[0] > 0 {
			r.ratio = sum.rps / rates[0]
			if note != nil {
				r.notes = strings.TrimPrefix(cpuNote+", "+note(), ", ")
			}
		}
		if sum.errors > 0 {
			b.res.addProblem("%s: %s server: %d errors in %d requests: %s", name, s.name, sum.errors,
				sum.errors+sum.n, sum.causes)
		}
		b.logf("  %s: %s: %.0f req/s, p50 %s, p99 %s, %d errors", name, s.name, sum.rps, ms(sum.p50), ms(sum.p99), sum.errors)
		b.res.addRow(r)
		rates = append(rates, sum.rps)
	}
	if rates[0] == 0 {
		return 0, fmt.Errorf("%s: the ceiling answered no request", name)
	}
	return rates[1] / rates[0], nil
}

// samePollAnswer checks that the daemon and the ceiling answer a poll with
// the same bytes, so that the comparison is fair.
func samePollAnswer(ctx context.Context, servers []target, id string) error {
	var answers [][]byte
	for _, s := range servers {
		c, err := s.ac.client(id)
		if err != nil {
			return err
		}
		status, body, err := call(ctx, c, "GET", s.ac.base+"/api/v1/machines/"+id+"/desired-generation", nil, true)
		if err != nil {
			return fmt.Errorf("poll %s: %w", s.name, err)
		}
		if status != 200 {
			return fmt.Errorf("poll %s: status %d: %s", s.name, status, body)
		}
		answers = append(answers, body)
	}
	if !bytes.Equal(answers[0], answers[1]) {
		return fmt.Errorf("the ceiling's poll answer %q differs from the daemon's %q", answers[0], answers[1])
	}
	return nil
}
