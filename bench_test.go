package main

// Benchmarks through the real server: durable report throughput (§12.3)
// with run() on a loopback port, the production HTTP server with its
// timeouts, group commit and synchronous=FULL SQLite in a temp dir; and a
// staged rollout over 10,000 simulated machines through the real HTTP API
// and the real executor loop.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReportIngestion (§12.3 design target; ACC-117's durability is what
// it pays for) posts valid v0.1 reports for 1,000 machines from
// many concurrent clients over keep-alive connections (one shared transport).
// ns/op is wall time per committed report; reports/s is the throughput.
func BenchmarkReportIngestion(b *testing.B) {
	b.Run("up-to-date", func(b *testing.B) { benchmarkReportIngestion(b, false) })
	b.Run("health-check", func(b *testing.B) { benchmarkReportIngestion(b, true) })
}

// benchmarkReportIngestion posts "up-to-date" reports, or with health the
// agent's periodic "health-check" reports that also store a health record.
func benchmarkReportIngestion(b *testing.B, health bool) {
	const machines = 1000
	rs := startRun(b, nil) // plain mode, info logging, default timeouts
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	urls := make([]string, machines)
	bodies := make([][]byte, machines)
	for i := range machines {
		id := fmt.Sprintf("bench-%04d", i)
		urls[i] = rs.url + "/api/v1/machines/" + id + "/report"
		body := reportBody(id, storePath('a', "nixos-system-"+id), true, "up-to-date")
		if health {
			body = healthBody(id, storePath('a', "nixos-system-"+id))
		}
		body["tags"] = []string{"bench", fmt.Sprintf("rack-%d", i%10)}
		bodies[i], _ = json.Marshal(body)
	}
	post := func(i int) error {
		req, err := http.NewRequest("POST", urls[i], bytes.NewReader(bodies[i]))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	// Register every machine first, so the measured reports are steady-state
	// ones (no creation, no audit row).
	for i := range machines {
		if err := post(i); err != nil {
			b.Fatal(err)
		}
	}

	var next atomic.Int64
	b.SetParallelism(16) // 16 × GOMAXPROCS concurrent clients
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := post(int(next.Add(1) % machines)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}

// rtParallel runs fn for every item on workers goroutines and returns the
// first error.
func rtParallel(workers int, items []string, fn func(string) error) error {
	ch := make(chan string)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				if err := fn(it); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
	return first
}

// rtPostReport sends one report from any goroutine.
func rtPostReport(c *http.Client, base string, body map[string]any) error {
	m := body["machine_id"].(string)
	status, _, err := tryDo(c, "POST", base+"/api/v1/machines/"+m+"/report", "", body)
	if err != nil {
		return err
	}
	if status != 200 {
		return fmt.Errorf("report %s: status %d", m, status)
	}
	return nil
}

// BenchmarkStagedRollout10k runs staged ["1","10%","100%"] over 10,000
// machines (batches of 1, 1,000 and 8,999) behind the real HTTP API, with
// agents that answer at once: a watcher polls GET /api/v1/rollouts/{id}, and
// as soon as a batch is deploying it sends every machine's passing
// health-check report on the new path. It reports the wall time per rollout
// and, from the batches' started_at/completed_at, the server-side time of each
// batch and of each transition between batches.
func BenchmarkStagedRollout10k(b *testing.B) {
	const n = 10000
	const workers = 64
	rs := startRun(b, nil, "--executor-interval", "100ms")
	c := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConns: 2 * workers, MaxIdleConnsPerHost: 2 * workers}}
	admin := bootstrapKey(b, c, rs.url)
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf("bench-%05d", i)
	}
	// First reports register the machines (active, tagged "bench").
	if err := rtParallel(workers, ms, func(m string) error {
		body := reportBody(m, rtOldPath(m), true, "up-to-date")
		body["tags"] = []string{"bench"}
		return rtPostReport(c, rs.url, body)
	}); err != nil {
		b.Fatal(err)
	}
	b.Logf("nproc %d, GOMAXPROCS %d", runtime.NumCPU(), runtime.GOMAXPROCS(0))

	var batchSum [3]time.Duration
	var gapSum [2]time.Duration
	var startSum, doneSum, wall time.Duration
	b.ResetTimer()
	for iter := range b.N {
		b.StopTimer()
		pathOf := func(m string) string { return storePath('b', fmt.Sprintf("nixos-system-%s-i%d", m, iter)) }
		rel := rtRelease(b, c, rs.url, admin, nil, pathOf, ms...)
		b.StartTimer()

		start := time.Now()
		cr := rtCreate(b, c, rs.url, admin, map[string]any{
			"release_id": rel, "strategy": "staged", "batch_sizes": []string{"1", "10%", "100%"},
			"target": map[string]any{"tags": []string{"bench"}}, "health_timeout": 3600,
		})
		sizes := []int{len(cr.Batches[0].MachineIDs), len(cr.Batches[1].MachineIDs), len(cr.Batches[2].MachineIDs)}
		if len(cr.Batches) != 3 || sizes[0] != 1 || sizes[1] != 1000 || sizes[2] != 8999 {
			b.Fatalf("batches %v", sizes)
		}
		answered := map[int]bool{}
		var d rolloutDetail
		for {
			d = rtDetail(b, c, rs.url, admin, cr.RolloutID)
			if d.Status == "completed" {
				break
			}
			if d.Status != "running" {
				b.Fatalf("rollout %s: %v", d.Status, rtBatchStatuses(d))
			}
			idle := true
			for _, bt := range d.Batches {
				if (bt.Status == "deploying" || bt.Status == "waiting_health") && !answered[bt.BatchIndex] {
					answered[bt.BatchIndex], idle = true, false
					if err := rtParallel(workers, bt.MachineIDs, func(m string) error {
						return rtPostReport(c, rs.url, healthBody(m, pathOf(m)))
					}); err != nil {
						b.Fatal(err)
					}
				}
			}
			if idle {
				// The watcher's poll interval: short, so that the measured wall
				// time stays close to the server's, and fixed, so that runs compare.
				time.Sleep(2 * time.Millisecond)
			}
		}
		w := time.Since(start)
		wall += w
		created := rtParseTime(b, &d.CreatedAt)
		startSum += rtParseTime(b, d.Batches[0].StartedAt).Sub(created)
		for i, bt := range d.Batches {
			batchSum[i] += rtParseTime(b, bt.CompletedAt).Sub(rtParseTime(b, bt.StartedAt))
			if i > 0 {
				gapSum[i-1] += rtParseTime(b, bt.StartedAt).Sub(rtParseTime(b, d.Batches[i-1].CompletedAt))
			}
		}
		doneSum += rtParseTime(b, &d.UpdatedAt).Sub(rtParseTime(b, d.Batches[2].CompletedAt))
		b.Logf("iteration %d: wall %v; created→b0 %v; b0 %v; b0→b1 %v; b1 %v; b1→b2 %v; b2 %v; b2→completed %v", iter, w,
			rtParseTime(b, d.Batches[0].StartedAt).Sub(created),
			rtParseTime(b, d.Batches[0].CompletedAt).Sub(rtParseTime(b, d.Batches[0].StartedAt)),
			rtParseTime(b, d.Batches[1].StartedAt).Sub(rtParseTime(b, d.Batches[0].CompletedAt)),
			rtParseTime(b, d.Batches[1].CompletedAt).Sub(rtParseTime(b, d.Batches[1].StartedAt)),
			rtParseTime(b, d.Batches[2].StartedAt).Sub(rtParseTime(b, d.Batches[1].CompletedAt)),
			rtParseTime(b, d.Batches[2].CompletedAt).Sub(rtParseTime(b, d.Batches[2].StartedAt)),
			rtParseTime(b, &d.UpdatedAt).Sub(rtParseTime(b, d.Batches[2].CompletedAt)))
	}
	ms1 := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms1(wall), "wall-ms/rollout")
	b.ReportMetric(ms1(startSum), "ms-create-to-b0")
	b.ReportMetric(ms1(batchSum[0]), "ms-b0")
	b.ReportMetric(ms1(gapSum[0]), "ms-b0-to-b1")
	b.ReportMetric(ms1(batchSum[1]), "ms-b1")
	b.ReportMetric(ms1(gapSum[1]), "ms-b1-to-b2")
	b.ReportMetric(ms1(batchSum[2]), "ms-b2")
	b.ReportMetric(ms1(doneSum), "ms-b2-to-completed")
}

// BenchmarkGroupCommit measures the report writer alone: groups of
// health-check reports from a fleet of 10,000 machines committed by
// commitReports, without HTTP. writer-µs/report is the process CPU time per
// report (user + system, fsync waits excluded), which a busy machine
// disturbs less than the wall time.
func BenchmarkGroupCommit(b *testing.B) {
	for _, size := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("group-%d", size), func(b *testing.B) { benchmarkGroupCommit(b, size) })
	}
}

func benchmarkGroupCommit(b *testing.B, size int) {
	const machines = 10_000
	ts := newTestServer(b, testServerOptions{})
	reqs := make([]*reportRequest, machines)
	for i := range machines {
		id := fmt.Sprintf("bench-%05d", i)
		raw, _ := json.Marshal(healthBody(id, storePath('a', "nixos-system-"+id)))
		var req reportRequest
		if err := unmarshalObject(raw, &req); err != nil {
			b.Fatal(err)
		}
		if err := req.validate(); err != nil {
			b.Fatal(err)
		}
		reqs[i] = &req
	}
	commit := func(first, n int) {
		batch := make([]*reportJob, n)
		for k := range batch {
			i := (first + k) % machines
			batch[k] = &reportJob{id: *reqs[i].MachineID, req: reqs[i], done: make(chan error, 1)}
		}
		ts.st.commitReports(batch, ts.log)
		for _, j := range batch {
			if err := <-j.done; err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := 0; i < machines; i += 128 { // register every machine first
		commit(i, 128)
	}
	b.ReportAllocs()
	before := cpuTime(b)
	b.ResetTimer()
	next := 0
	for n := b.N; n > 0; n -= size {
		commit(next, min(n, size))
		next += size * 7919 % machines // spread the groups over the fleet
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(b)-before).Microseconds())/float64(b.N), "writer-µs/report")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}

// cpuTime is the process's user plus system CPU time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
