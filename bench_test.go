package main

// BenchmarkReportIngestion measures durable report throughput (§12.3) through
// the real server: run() on a loopback port, the production HTTP server with
// its timeouts, group commit and synchronous=FULL SQLite in a temp dir.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
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
