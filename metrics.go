package main

import (
	"bufio"
	"io"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// metrics holds every metric of the Prometheus exposition. Counters and
// histograms are updated by the code paths they count (after the commit, for
// anything about stored state); the fleet gauges are read from the in-memory
// fleet index at scrape time, so a scrape never queries SQLite.
type metrics struct {
	httpRequests    *counterVec
	httpDuration    *histogramVec
	rolloutsTotal   *counterVec
	reports         *counterVec
	authFailures    *counterVec
	auditEvents     *counterVec
	auditSuppressed *counterVec
	executorTicks   atomic.Uint64
	executorErrors  atomic.Uint64
	commitDuration  *histogram
	groupCommitSize *histogram
	rolloutsActive  atomic.Int64
	rolloutsBy      [6]atomic.Int64 // per rollout status, in the order of rolloutStatuses
	dbBusy          atomic.Uint64

	eventStreams        atomic.Int64  // open GET /api/v1/events streams
	eventStreamsDropped atomic.Uint64 // streams ended because the client fell behind

	fleet *fleet           // set by newApp
	now   func() time.Time // set by newApp: the stale and drifted gauges are as of the scrape
}

var (
	httpDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	commitBuckets       = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
	groupCommitBuckets  = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}

	rolloutCountedStatuses = []string{"paused", "completed", "failed", "cancelled"}
	reportResults          = []string{"success", "failure", "rejected"}
	authFailureReasons     = []string{"missing", "invalid", "revoked", "expired", "forbidden", "cn_mismatch"}
)

func newMetrics() *metrics {
	m := &metrics{
		httpRequests:    newCounterVec("method", "path", "status"),
		httpDuration:    newHistogramVec(httpDurationBuckets, "method", "path"),
		rolloutsTotal:   newCounterVec("status"),
		reports:         newCounterVec("result"),
		authFailures:    newCounterVec("reason"),
		auditEvents:     newCounterVec("action"),
		auditSuppressed: newCounterVec("action"),
		commitDuration:  newHistogram(commitBuckets),
		groupCommitSize: newHistogram(groupCommitBuckets),
		now:             time.Now,
	}
	// Series whose label values come from a fixed list exist from startup.
	for _, s := range rolloutCountedStatuses {
		m.rolloutsTotal.add(0, s)
	}
	for _, r := range reportResults {
		m.reports.add(0, r)
	}
	for _, r := range authFailureReasons {
		m.authFailures.add(0, r)
	}
	for _, a := range auditActions {
		m.auditEvents.add(0, a)
	}
	m.auditSuppressed.add(0, "report")
	m.auditSuppressed.add(0, "tags.update")
	return m
}

// storeRolloutsByStatus sets the nixfleet_rollouts_by_status gauges.
func (m *metrics) storeRolloutsByStatus(counts [6]int64) {
	for i, n := range counts {
		m.rolloutsBy[i].Store(n)
	}
}

// counterVec is a counter family with labels.
type counterVec struct {
	labels []string
	mu     sync.Mutex
	series map[string]*labeledValue
}

type labeledValue struct {
	values []string
	v      float64
}

func newCounterVec(labels ...string) *counterVec {
	return &counterVec{labels: labels, series: map[string]*labeledValue{}}
}

func (c *counterVec) inc(values ...string) { c.add(1, values...) }

func (c *counterVec) add(d float64, values ...string) {
	key := strings.Join(values, "\xff")
	c.mu.Lock()
	s := c.series[key]
	if s == nil {
		s = &labeledValue{values: slices.Clone(values)}
		c.series[key] = s
	}
	s.v += d
	c.mu.Unlock()
}

// snapshot returns a sorted copy of the series.
func (c *counterVec) snapshot() []labeledValue {
	c.mu.Lock()
	out := make([]labeledValue, 0, len(c.series))
	for _, s := range c.series {
		out = append(out, *s)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b labeledValue) int { return slices.Compare(a.values, b.values) })
	return out
}

// histogram counts observations in cumulative buckets (upper bounds, +Inf implied).
type histogram struct {
	bounds []float64
	mu     sync.Mutex
	counts []uint64 // per bucket, not cumulative; last is +Inf
	sum    float64
	count  uint64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(h.bounds, v) // first bound >= v: le is inclusive
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.count++
	h.mu.Unlock()
}

type histogramSnapshot struct {
	counts []uint64
	sum    float64
	count  uint64
}

func (h *histogram) snapshot() histogramSnapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return histogramSnapshot{counts: slices.Clone(h.counts), sum: h.sum, count: h.count}
}

// histogramVec is a histogram family with labels.
type histogramVec struct {
	labels []string
	bounds []float64
	mu     sync.Mutex
	series map[string]*labeledHistogram
}

type labeledHistogram struct {
	values []string
	h      *histogram
}

func newHistogramVec(bounds []float64, labels ...string) *histogramVec {
	return &histogramVec{labels: labels, bounds: bounds, series: map[string]*labeledHistogram{}}
}

func (hv *histogramVec) observe(v float64, values ...string) {
	key := strings.Join(values, "\xff")
	hv.mu.Lock()
	s := hv.series[key]
	if s == nil {
		s = &labeledHistogram{values: slices.Clone(values), h: newHistogram(hv.bounds)}
		hv.series[key] = s
	}
	hv.mu.Unlock()
	s.h.observe(v)
}

// escapeLabel escapes a label value for the text exposition format: only
// backslash, double quote and newline are escaped (not %q, which would also
// escape other bytes and produce values Prometheus reads differently).
func escapeLabel(v string) string {
	if !strings.ContainsAny(v, "\\\"\n") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// expoWriter writes the text exposition format.
type expoWriter struct{ w *bufio.Writer }

func (e expoWriter) header(name, typ, help string) {
	e.w.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n")
}

func (e expoWriter) sample(name string, labels, values []string, v float64) {
	e.w.WriteString(name)
	if len(labels) > 0 {
		e.w.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				e.w.WriteByte(',')
			}
			e.w.WriteString(l + `="` + escapeLabel(values[i]) + `"`)
		}
		e.w.WriteByte('}')
	}
	e.w.WriteByte(' ')
	e.w.WriteString(formatFloat(v))
	e.w.WriteByte('\n')
}

func (e expoWriter) counterVec(name, help string, c *counterVec) {
	e.header(name, "counter", help)
	for _, s := range c.snapshot() {
		e.sample(name, c.labels, s.values, s.v)
	}
}

func (e expoWriter) histogram(name string, labels, values []string, bounds []float64, s histogramSnapshot) {
	bl := append(slices.Clone(labels), "le")
	var cum uint64
	for i, c := range s.counts {
		cum += c
		le := math.Inf(1)
		if i < len(bounds) {
			le = bounds[i]
		}
		e.sample(name+"_bucket", bl, append(slices.Clone(values), formatFloat(le)), float64(cum))
	}
	e.sample(name+"_sum", labels, values, s.sum)
	e.sample(name+"_count", labels, values, float64(s.count))
}

// writeTo writes the whole exposition, families sorted by name and series by
// label values.
func (m *metrics) writeTo(out io.Writer) error {
	e := expoWriter{w: bufio.NewWriterSize(out, 32<<10)}

	e.counterVec("nixfleet_audit_events_total", "Audit rows committed by this process, by action.", m.auditEvents)
	e.counterVec("nixfleet_audit_suppressed_total", "Agent changes not audited one by one because of the per-machine flood bound, by action.", m.auditSuppressed)
	e.counterVec("nixfleet_auth_failures_total", "Authentication and authorisation failures (401s, role 403s, CN 403s), by reason.", m.authFailures)

	e.header("nixfleet_build_info", "gauge", "Build information; always 1.")
	e.sample("nixfleet_build_info", []string{"goversion", "version"}, []string{runtime.Version(), versionString()}, 1)

	e.header("nixfleet_db_busy_total", "counter", "Write transactions refused because another process held the database's write lock past the busy timeout (answered 503).")
	e.sample("nixfleet_db_busy_total", nil, nil, float64(m.dbBusy.Load()))

	e.header("nixfleet_db_commit_duration_seconds", "histogram", "Duration of write-transaction commits.")
	e.histogram("nixfleet_db_commit_duration_seconds", nil, nil, commitBuckets, m.commitDuration.snapshot())

	e.header("nixfleet_event_streams", "gauge", "Open event streams (GET /api/v1/events).")
	e.sample("nixfleet_event_streams", nil, nil, float64(m.eventStreams.Load()))
	e.header("nixfleet_event_streams_dropped_total", "counter", "Event streams ended because the client fell behind and its buffer filled.")
	e.sample("nixfleet_event_streams_dropped_total", nil, nil, float64(m.eventStreamsDropped.Load()))

	e.header("nixfleet_executor_errors_total", "counter", "Rollout executor steps that failed with an error.")
	e.sample("nixfleet_executor_errors_total", nil, nil, float64(m.executorErrors.Load()))
	e.header("nixfleet_executor_ticks_total", "counter", "Rollout executor passes (timer or wake-up).")
	e.sample("nixfleet_executor_ticks_total", nil, nil, float64(m.executorTicks.Load()))

	size, byLifecycle := m.fleet.counts()
	e.header("nixfleet_fleet_size", "gauge", "Machines in the database, all lifecycles.")
	e.sample("nixfleet_fleet_size", nil, nil, float64(size))

	e.header("nixfleet_http_request_duration_seconds", "histogram", "Time from routing to the end of the response.")
	m.httpDuration.mu.Lock()
	hs := make([]*labeledHistogram, 0, len(m.httpDuration.series))
	for _, s := range m.httpDuration.series {
		hs = append(hs, s)
	}
	m.httpDuration.mu.Unlock()
	slices.SortFunc(hs, func(a, b *labeledHistogram) int { return slices.Compare(a.values, b.values) })
	for _, s := range hs {
		e.histogram("nixfleet_http_request_duration_seconds", m.httpDuration.labels, s.values, httpDurationBuckets, s.h.snapshot())
	}

	e.counterVec("nixfleet_http_requests_total", "HTTP requests answered (except /health and /metrics), by method, route pattern and status.", m.httpRequests)

	e.header("nixfleet_machine_last_seen_timestamp_seconds", "gauge", "Unix time of the last accepted report of each machine that is not decommissioned.")
	type seen struct {
		id string
		at int64
	}
	var seens []seen
	m.fleet.each(func(r *machineRec) {
		if r.LastSeen > 0 && r.Lifecycle != "decommissioned" {
			seens = append(seens, seen{r.ID, r.LastSeen})
		}
	})
	slices.SortFunc(seens, func(a, b seen) int { return strings.Compare(a.id, b.id) })
	for _, s := range seens {
		e.sample("nixfleet_machine_last_seen_timestamp_seconds", []string{"machine_id"}, []string{s.id}, float64(s.at)/1000)
	}

	e.header("nixfleet_machines_by_lifecycle", "gauge", "Machines per lifecycle state.")
	order := slices.Clone(lifecycles)
	slices.Sort(order)
	for _, l := range order {
		e.sample("nixfleet_machines_by_lifecycle", []string{"lifecycle"}, []string{string(l)}, float64(byLifecycle[lifecycleIndex(l)]))
	}

	var stale, drifted int
	cond := m.fleet.conditions(m.now().UnixMilli())
	m.fleet.each(func(r *machineRec) {
		c := cond(r)
		if c.stale {
			stale++
		}
		if c.drifted {
			drifted++
		}
	})
	e.header("nixfleet_machines_drifted", "gauge", "Machines running another generation than their desired one, outside an unfinished batch of a running rollout, for longer than --drift-grace.")
	e.sample("nixfleet_machines_drifted", nil, nil, float64(drifted))
	e.header("nixfleet_machines_stale", "gauge", "Machines, neither pending nor decommissioned, whose last report (or registration) is older than --stale-after.")
	e.sample("nixfleet_machines_stale", nil, nil, float64(stale))

	e.header("nixfleet_report_group_commit_size", "histogram", "Reports committed per group commit.")
	e.histogram("nixfleet_report_group_commit_size", nil, nil, groupCommitBuckets, m.groupCommitSize.snapshot())

	e.counterVec("nixfleet_reports_total", "Agent report requests that passed the CN check, by result.", m.reports)

	e.header("nixfleet_rollouts_active", "gauge", "Rollouts in created, running or paused status.")
	e.sample("nixfleet_rollouts_active", nil, nil, float64(m.rolloutsActive.Load()))

	e.header("nixfleet_rollouts_by_status", "gauge", "Rollouts stored, per status.")
	byStatus := slices.Clone(rolloutStatuses)
	slices.Sort(byStatus)
	for _, st := range byStatus {
		e.sample("nixfleet_rollouts_by_status", []string{"status"}, []string{string(st)}, float64(m.rolloutsBy[slices.Index(rolloutStatuses, st)].Load()))
	}

	e.counterVec("nixfleet_rollouts_total", "Rollout transitions into paused, completed, failed or cancelled committed by this process.", m.rolloutsTotal)

	return e.w.Flush()
}
