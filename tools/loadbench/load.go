package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// latencies collects request outcomes: every successful latency (exact
// percentiles come from sorting them) and the errors counted by cause. It is
// safe for concurrent use; hot loops keep their own and merge at the end.
type latencies struct {
	mu      sync.Mutex
	samples []time.Duration
	errors  int
	causes  map[string]int // "status 503", "transport: …"
}

func newLatencies() *latencies { return &latencies{causes: map[string]int{}} }

// ok records a successful request.
func (l *latencies) ok(d time.Duration) {
	l.mu.Lock()
	l.samples = append(l.samples, d)
	l.mu.Unlock()
}

// fail records a failed request: a non-2xx status, or a transport error.
func (l *latencies) fail(status int, err error) {
	cause := fmt.Sprintf("status %d", status)
	if err != nil {
		cause = "transport: " + shortErr(err)
	}
	l.mu.Lock()
	l.errors++
	l.causes[cause]++
	l.mu.Unlock()
}

// merge adds o's outcomes to l.
func (l *latencies) merge(o *latencies) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.samples = append(l.samples, o.samples...)
	l.errors += o.errors
	for k, v := range o.causes {
		l.causes[k] += v
	}
}

// summary is what gets printed of a latencies.
type summary struct {
	n, errors     int
	p50, p99, max time.Duration
	causes        string  // "status 500 ×3, transport: EOF ×1"
	rps           float64 // successful requests per second of the window
}

// summarize sorts the samples and computes the percentiles; window is the
// measurement time used for the rate.
func (l *latencies) summarize(window time.Duration) summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.Sort(l.samples)
	s := summary{n: len(l.samples), errors: l.errors}
	if s.n > 0 {
		s.p50 = percentile(l.samples, 0.50)
		s.p99 = percentile(l.samples, 0.99)
		s.max = l.samples[s.n-1]
	}
	if window > 0 {
		s.rps = float64(s.n) / window.Seconds()
	}
	keys := make([]string, 0, len(l.causes))
	for k := range l.causes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return l.causes[keys[i]] > l.causes[keys[j]] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, l.causes[k]))
	}
	s.causes = strings.Join(parts, ", ")
	return s
}

// percentile returns the q-quantile of sorted samples (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// shortErr trims the URL and the operation from a client error, so that
// equal causes count together.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// request is one request of a closed-loop worker.
type request struct {
	method, path string
	body         []byte
}

// closedLoop runs one closed-loop measurement: every worker owns a few
// machine ids and, until the duration has elapsed, sends one request at a
// time for them in turn over its keep-alive connection(s). A request still in
// flight when the window closes is not counted. It returns the latencies of
// the requests completed in the window.
func closedLoop(parent context.Context, ac *agentClients, ids [][]string, d time.Duration, mk func(id string) request) (*latencies, error) {
	ctx, cancel := context.WithTimeout(parent, d)
	defer cancel()
	all := newLatencies()
	var wg sync.WaitGroup
	errc := make(chan error, len(ids))
	for _, mine := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := newLatencies()
			defer all.merge(local)
			clients := make([]*http.Client, len(mine))
			for k, id := range mine {
				c, err := ac.client(id)
				if err != nil {
					errc <- err
					return
				}
				clients[k] = c
			}
			for i := 0; ctx.Err() == nil; i++ {
				k := i % len(mine)
				c, r := clients[k], mk(mine[k])
				start := time.Now()
				status, _, err := call(ctx, c, r.method, ac.base+r.path, r.body, false)
				if ctx.Err() != nil {
					return // the window closed during the request
				}
				switch {
				case err != nil:
					local.fail(0, err)
				case status/100 != 2:
					local.fail(status, nil)
				default:
					local.ok(time.Since(start))
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	if err := parent.Err(); err != nil {
		return nil, err // interrupted by the caller, not by the end of the window
	}
	return all, nil
}

// parallel calls fn(i) for i in [0, n) from workers goroutines and returns
// the first error.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}
