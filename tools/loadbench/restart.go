package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// runRestart measures a restart on a large database: the daemon is started
// once to create the schema and bootstrap a key, stopped, the database is
// filled directly with N machines and the reports, and the daemon is started
// again. It reports the time from exec to the first 200 of /health, and the
// time of GET /api/v1/machines over the whole fleet.
func (b *bench) runRestart(ctx context.Context) error {
	n, reports := b.cfg.machines, b.cfg.reports
	dbPath := filepath.Join(b.tmp, "restart.db")
	key, err := b.createSchema(ctx, dbPath)
	if err != nil {
		return err
	}
	b.logf("  seeding %d machines and %d reports", n, reports)
	seedStart := time.Now()
	if err := seedDB(ctx, dbPath, seedSpec{prefix: "host-", machines: n, tags: []string{"eu-west", "web"},
		desired: true, reports: reports, now: time.Now()}); err != nil {
		return err
	}
	seeding := time.Since(seedStart)
	fi, err := os.Stat(dbPath)
	if err != nil {
		return err
	}
	b.logf("  seeded in %s: %s", secs(seeding), mib(fi.Size()))

	// The address must be known before the daemon logs it: /health is
	// polled from the moment the process starts.
	addr, err := freePort()
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: newTransport(nil, 1), Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	t0 := time.Now()
	d, err := startChild(ctx, startOptions{name: "daemon-restart", path: b.bin,
		args: b.daemonArgs(dbPath, addr, modePlain), log: b.logFile("daemon-restart")})
	if err != nil {
		return err
	}
	defer b.stopDaemon("restart", d)
	var healthy time.Duration
	for {
		status, _, err := call(ctx, hc, "GET", "http://"+addr+"/health", nil, false)
		if err == nil && status == 200 {
			healthy = time.Since(t0)
			break
		}
		if err := d.alive(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(t0) > 2*time.Minute {
			return fmt.Errorf("/health did not answer 200 within 2 minutes (last: status %d, %v)", status, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	listening := d.logs.listenedAt().Sub(t0)
	_, startRSS, err := d.memory()
	if err != nil {
		return err
	}

	// GET /api/v1/machines, all of them, three times: the first right after
	// the start, then with warm caches.
	a := &admin{base: "http://" + addr, c: &http.Client{Transport: newTransport(nil, 1), Timeout: 5 * time.Minute}, key: key}
	defer a.close()
	var list []time.Duration
	var size int
	for range 3 {
		start := time.Now()
		body, err := a.getRaw(ctx, "/api/v1/machines")
		if err != nil {
			return err
		}
		list = append(list, time.Since(start))
		size = len(body)
		if got := bytes.Count(body, []byte(`"machine_id":`)); got != n {
			return fmt.Errorf("GET /api/v1/machines returned %d machines, want %d", got, n)
		}
	}
	peak, _, err := d.memory()
	if err != nil {
		return err
	}

	where := fmt.Sprintf("%d machines, %d reports", n, reports)
	b.res.addRow(row{scenario: "restart (" + where + ")", server: "real", notes: fmt.Sprintf(
		"/health 200 after %s (listening logged after %s); database %s, seeded in %s; daemon RSS %s once started, "+
			"peak %s after the listings below", secs(healthy), secs(listening), mib(fi.Size()), secs(seeding),
		mib(startRSS), mib(peak))})
	b.res.addRow(row{scenario: fmt.Sprintf("GET /api/v1/machines (%d machines)", n), server: "real", notes: fmt.Sprintf(
		"%s, then %s and %s; %s of JSON", secs(list[0]), secs(list[1]), secs(list[2]), mib(int64(size)))})
	b.logf("  restart: /health after %s; GET /api/v1/machines %s, %s, %s (%s)",
		secs(healthy), secs(list[0]), secs(list[1]), secs(list[2]), mib(int64(size)))
	b.res.addCheck("restart to /health < 2 s ("+where+")", secs(healthy), healthy < 2*time.Second)
	b.res.addCheck(fmt.Sprintf("GET /api/v1/machines < 1 s (%d machines)", n), secs(list[0]), list[0] < time.Second)
	return nil
}
