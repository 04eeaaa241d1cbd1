package main

// Metrics tests (metrics.go, §11): the families and series present from
// startup (ACC-111), HTTP request counting with route-pattern path labels
// (ACC-112, ACC-113), histograms (ACC-114), nixfleet_rollouts_active
// (ACC-115), the last-seen series (ACC-56, in part) and the report counters.
// The exposition format is in metrics_format_test.go.

import (
	"bytes"
	"context"
	"math"
	"net/http"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metClient scrapes /metrics.
var metClient = &http.Client{Timeout: 30 * time.Second}

// metSample is one sample line of the exposition.
type metSample struct {
	name   string
	labels [][2]string // in the order written
	value  float64
	line   string
}

func (s metSample) label(name string) (string, bool) {
	for _, l := range s.labels {
		if l[0] == name {
			return l[1], true
		}
	}
	return "", false
}

// metFamily is a metric family: its HELP and TYPE lines and its samples.
type metFamily struct {
	name, typ, help string
	samples         []metSample
}

var metSampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$`)

// metParse parses the text exposition strictly: HELP then TYPE for every
// family, samples only under their family (a histogram's _bucket, _sum and
// _count included), label values with the three escapes of the format.
func metParse(t testing.TB, body string) []metFamily {
	t.Helper()
	if !strings.HasSuffix(body, "\n") {
		t.Fatalf("exposition does not end with a newline")
	}
	var fams []metFamily
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, help, _ := strings.Cut(rest, " ")
			if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "# TYPE "+name+" ") {
				t.Fatalf("HELP %s is not followed by its TYPE line", name)
			}
			i++
			fams = append(fams, metFamily{name: name, help: help, typ: strings.TrimPrefix(lines[i], "# TYPE "+name+" ")})
			continue
		}
		m := metSampleRE.FindStringSubmatch(line)
		if m == nil || len(fams) == 0 {
			t.Fatalf("unexpected line %q", line)
		}
		f := &fams[len(fams)-1]
		ok := m[1] == f.name
		if f.typ == "histogram" {
			ok = slices.Contains([]string{f.name + "_bucket", f.name + "_sum", f.name + "_count"}, m[1])
		}
		if !ok {
			t.Fatalf("sample %q outside its family %s", line, f.name)
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			t.Fatalf("value of %q: %v", line, err)
		}
		s := metSample{name: m[1], value: v, line: line}
		s.labels = metParseLabels(t, m[3])
		f.samples = append(f.samples, s)
	}
	return fams
}

func metParseLabels(t testing.TB, s string) [][2]string {
	t.Helper()
	var out [][2]string
	for s != "" {
		name, rest, ok := strings.Cut(s, `="`)
		if !ok {
			t.Fatalf("bad labels %q", s)
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' {
				i++
				switch rest[i] {
				case '\\':
					v.WriteByte('\\')
				case '"':
					v.WriteByte('"')
				case 'n':
					v.WriteByte('\n')
				default:
					t.Fatalf("bad escape in %q", s)
				}
				continue
			}
			if rest[i] == '\n' {
				t.Fatalf("raw newline in label value")
			}
			v.WriteByte(rest[i])
		}
		if i == len(rest) {
			t.Fatalf("unterminated label value in %q", s)
		}
		out = append(out, [2]string{name, v.String()})
		s = strings.TrimPrefix(rest[i+1:], ",")
	}
	return out
}

func metFind(fams []metFamily, name string) *metFamily {
	for i := range fams {
		if fams[i].name == name {
			return &fams[i]
		}
	}
	return nil
}

// metScrape fetches /metrics and checks its status and content type.
func metScrape(t testing.TB, base string) string {
	t.Helper()
	r := do(t, metClient, "GET", base+"/metrics", "", nil)
	if r.status != 200 {
		t.Fatalf("/metrics status %d", r.status)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Fatalf("/metrics Content-Type %q", ct)
	}
	return string(r.body)
}

// metVal returns a series' value in the current output, 0 if absent.
func metVal(t testing.TB, base, series string) float64 {
	t.Helper()
	return max(metricValue(t, metClient, base, series), 0)
}

// metFamilies is every family of §11 (and of §6.5's flood bound, and of
// issue 17's stale, drift and rollout-status gauges and busy counter) with its type.
var metFamilies = map[string]string{
	"nixfleet_http_requests_total":                 "counter",
	"nixfleet_http_request_duration_seconds":       "histogram",
	"nixfleet_fleet_size":                          "gauge",
	"nixfleet_machines_by_lifecycle":               "gauge",
	"nixfleet_machine_last_seen_timestamp_seconds": "gauge",
	"nixfleet_rollouts_total":                      "counter",
	"nixfleet_rollouts_active":                     "gauge",
	"nixfleet_reports_total":                       "counter",
	"nixfleet_auth_failures_total":                 "counter",
	"nixfleet_audit_events_total":                  "counter",
	"nixfleet_audit_suppressed_total":              "counter",
	"nixfleet_executor_ticks_total":                "counter",
	"nixfleet_executor_errors_total":               "counter",
	"nixfleet_db_commit_duration_seconds":          "histogram",
	"nixfleet_report_group_commit_size":            "histogram",
	"nixfleet_build_info":                          "gauge",
	"nixfleet_machines_stale":                      "gauge",
	"nixfleet_machines_drifted":                    "gauge",
	"nixfleet_rollouts_by_status":                  "gauge",
	"nixfleet_db_busy_total":                       "counter",
	"nixfleet_event_streams":                       "gauge",
	"nixfleet_event_streams_dropped_total":         "counter",
}

// TestMetricsStartup covers ACC-111 and §11's "from startup" rules on a
// server started through run: every family has its HELP and TYPE lines
// (the 7 v0.1 names among them), the fixed-label series exist at 0, and the
// observed-label series (HTTP, last seen) do not exist yet.
func TestMetricsStartup(t *testing.T) {
	rs := startRun(t, nil, "--executor-interval", "1m")
	body := metScrape(t, rs.url)
	fams := metParse(t, body)
	var names []string
	for _, f := range fams {
		names = append(names, f.name)
		want, ok := metFamilies[f.name]
		if !ok {
			t.Errorf("unexpected family %s", f.name)
		} else if f.typ != want {
			t.Errorf("%s has TYPE %s, want %s", f.name, f.typ, want)
		}
		if strings.TrimSpace(f.help) == "" {
			t.Errorf("%s has an empty HELP", f.name)
		}
	}
	if len(fams) != len(metFamilies) {
		t.Errorf("families %v, want the %d of §11, §6.5 and issue 17", names, len(metFamilies))
	}
	for _, name := range []string{ // the v0.1 names
		"nixfleet_http_requests_total", "nixfleet_http_request_duration_seconds", "nixfleet_fleet_size",
		"nixfleet_machines_by_lifecycle", "nixfleet_machine_last_seen_timestamp_seconds",
		"nixfleet_rollouts_total", "nixfleet_rollouts_active",
	} {
		if metFind(fams, name) == nil {
			t.Errorf("v0.1 family %s missing", name)
		}
	}
	zero := []string{
		"nixfleet_fleet_size", "nixfleet_rollouts_active", "nixfleet_executor_errors_total",
		"nixfleet_machines_stale", "nixfleet_machines_drifted", "nixfleet_db_busy_total",
	}
	for _, s := range rolloutStatuses {
		zero = append(zero, `nixfleet_rollouts_by_status{status="`+string(s)+`"}`)
	}
	for _, l := range lifecycles {
		zero = append(zero, `nixfleet_machines_by_lifecycle{lifecycle="`+string(l)+`"}`)
	}
	for _, s := range []string{"paused", "completed", "failed", "cancelled"} {
		zero = append(zero, `nixfleet_rollouts_total{status="`+s+`"}`)
	}
	for _, r := range []string{"success", "failure", "rejected"} {
		zero = append(zero, `nixfleet_reports_total{result="`+r+`"}`)
	}
	for _, r := range []string{"missing", "invalid", "revoked", "expired", "forbidden", "cn_mismatch"} {
		zero = append(zero, `nixfleet_auth_failures_total{reason="`+r+`"}`)
	}
	for _, a := range auditActions {
		zero = append(zero, `nixfleet_audit_events_total{action="`+a+`"}`)
	}
	for _, a := range []string{"report", "tags.update"} { // the actions of §6.5's flood bound
		zero = append(zero, `nixfleet_audit_suppressed_total{action="`+a+`"}`)
	}
	for _, series := range zero {
		if !strings.Contains(body, "\n"+series+" 0\n") {
			t.Errorf("series %s 0 missing", series)
		}
	}
	for _, name := range []string{"nixfleet_http_requests_total", "nixfleet_http_request_duration_seconds", "nixfleet_machine_last_seen_timestamp_seconds"} {
		if f := metFind(fams, name); f != nil && len(f.samples) != 0 {
			t.Errorf("%s has series before anything was observed: %v", name, f.samples[0].line)
		}
	}
	bi := metFind(fams, "nixfleet_build_info")
	if bi == nil || len(bi.samples) != 1 || bi.samples[0].value != 1 {
		t.Fatalf("build_info %+v", bi)
	}
	if v, _ := bi.samples[0].label("goversion"); v != runtime.Version() {
		t.Errorf("goversion %q", v)
	}
	if v, _ := bi.samples[0].label("version"); v != version {
		t.Errorf("version %q, want %q", v, version)
	}
	for _, h := range []string{"nixfleet_db_commit_duration_seconds", "nixfleet_report_group_commit_size"} {
		if f := metFind(fams, h); f == nil || len(f.samples) == 0 {
			t.Errorf("unlabelled histogram %s has no series at startup", h)
		}
	}
	if strings.Contains(body, "nixfleet_policy") || strings.Contains(body, "nixfleet_schedule") {
		t.Error("forbidden metric name present")
	}
}

// TestMetricsHTTPRequests covers ACC-112 and ACC-113: requests are counted
// under the route pattern, whatever the status; a report under
// /api/v1/machines/{id}/report; unmatched paths and methods under
// "unmatched"; /health and /metrics never; unknown methods as OTHER; and no
// path label ever contains an ID.
func TestMetricsHTTPRequests(t *testing.T) {
	e := newTestEnv(t)
	u := e.ts.url
	series := func(method, path, status string) string {
		return `nixfleet_http_requests_total{method="` + method + `",path="` + path + `",status="` + status + `"}`
	}
	machines := series("GET", "/api/v1/machines", "200")
	before := metVal(t, u, machines)
	for i := 0; i < 3; i++ {
		listMachinesT(t, e.c, u, e.R, "")
	}
	if got := metVal(t, u, machines); got != before+3 {
		t.Fatalf("%s = %v after 3 requests from %v", machines, got, before)
	}

	expect(t, do(t, e.c, "POST", u+"/api/v1/machines/web-01/report", "", reportBody("web-01", "", true, "up-to-date")), 200, "")
	if got := metVal(t, u, series("POST", "/api/v1/machines/{id}/report", "200")); got != 1 {
		t.Fatalf("report counted %v times", got)
	}

	// Every route with an ID in its path, and some failures.
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a')}})
	reqs := []struct{ method, path, key string }{
		{"GET", "/api/v1/machines/web-01/desired-generation", ""},
		{"DELETE", "/api/v1/machines/web-01/desired-generation", e.A},
		{"POST", "/api/v1/machines/web-01/register", e.A},
		{"PATCH", "/api/v1/machines/web-01/lifecycle", e.A},
		{"PUT", "/api/v1/machines/web-01/tags", e.A},
		{"POST", "/api/v1/machines/web-01/notify-deploy", e.D},
		{"GET", "/api/v1/releases/" + rel, e.R},
		{"GET", "/api/v1/releases/" + rel + "/diff/" + rel, e.R},
		{"GET", "/api/v1/releases/rel-ghost", e.R},
		{"DELETE", "/api/v1/releases/rel-ghost", e.A},
		{"GET", "/api/v1/rollouts/r-ghost", e.R},
		{"DELETE", "/api/v1/rollouts/r-ghost", e.A},
		{"POST", "/api/v1/rollouts/r-ghost/pause", e.D},
		{"POST", "/api/v1/rollouts/r-ghost/resume", e.D},
		{"POST", "/api/v1/rollouts/r-ghost/cancel", e.D},
		{"DELETE", "/api/v1/keys/123", e.A},
		{"GET", "/api/v1/machines/web-01%2A/desired-generation", ""},
		{"GET", "/api/v1/releases/rel-ghost", ""},
	}
	for _, rq := range reqs {
		do(t, e.c, rq.method, u+rq.path, rq.key, nil)
	}
	fixed := []struct {
		method, path, key string
		label, status     string
	}{
		{"GET", "/never", "", "unmatched", "404"},
		{"GET", "/api/v1/machines/web-01/nothing", e.R, "unmatched", "404"},
		{"PUT", "/api/v1/machines", e.A, "unmatched", "405"},
		{"PUT", "/api/v1/machines", "", "unmatched", "401"}, // no method matches: authenticated first (§2.6)
		{"PURGE", "/api/v1/releases", e.A, "unmatched", "405"},
		{"HEAD", "/api/v1/machines", e.R, "/api/v1/machines", "200"},
		{"GET", "/api/v1/machines", "", "/api/v1/machines", "401"},
		{"POST", "/api/v1/machines/web-02/register", e.R, "/api/v1/machines/{id}/register", "403"},
	}
	for _, f := range fixed {
		do(t, e.c, f.method, u+f.path, f.key, nil)
	}
	// /health and /metrics are never counted, whatever the method.
	for _, m := range []string{"GET", "HEAD", "POST", "DELETE"} {
		do(t, e.c, m, u+"/health", "", nil)
		do(t, e.c, m, u+"/metrics", "", nil)
	}

	fams := metParse(t, metScrape(t, u))
	patterns := map[string]bool{"unmatched": true}
	for _, p := range e.ts.srv.patterns {
		_, path, _ := strings.Cut(p, " ")
		patterns[path] = true
	}
	counted := map[string]float64{}
	for _, name := range []string{"nixfleet_http_requests_total", "nixfleet_http_request_duration_seconds"} {
		for _, s := range metFind(fams, name).samples {
			p, _ := s.label("path")
			if !patterns[p] || p == "/health" || p == "/metrics" {
				t.Errorf("path label %q in %s", p, s.line)
			}
			for _, id := range []string{"web-01", rel, "rel-ghost", "r-ghost", "123"} {
				if strings.Contains(p, id) {
					t.Errorf("path label %q contains the ID %s", p, id)
				}
			}
			if name == "nixfleet_http_requests_total" {
				m, _ := s.label("method")
				st, _ := s.label("status")
				counted[m+" "+p+" "+st] += s.value
			}
		}
	}
	for _, f := range fixed {
		method := f.method
		if method == "PURGE" {
			method = "OTHER"
		}
		if counted[method+" "+f.label+" "+f.status] < 1 {
			t.Errorf("%s %s not counted as %s %s %s", f.method, f.path, method, f.label, f.status)
		}
	}
	for _, want := range []string{
		"GET /api/v1/machines/{id}/desired-generation 404", "GET /api/v1/machines/{id}/desired-generation 400",
		"GET /api/v1/releases/{id}/diff/{other_id} 200", "GET /api/v1/releases/{id} 404", "GET /api/v1/releases/{id} 401",
		"DELETE /api/v1/keys/{id} 404", "POST /api/v1/rollouts/{id}/cancel 404",
	} {
		if counted[want] != 1 {
			t.Errorf("%q counted %v times, want 1", want, counted[want])
		}
	}
	if counted["GET unmatched 404"] != 2 {
		t.Errorf("unmatched 404s counted %v times, want 2", counted["GET unmatched 404"])
	}
}

// TestMetricsHistograms covers ACC-114: the request duration histogram has
// the buckets 0.005 … 10 and +Inf in order, cumulative counts, _sum and
// _count, and _count equals the requests counted for the same series; the
// other two histograms have the buckets of §11.
func TestMetricsHistograms(t *testing.T) {
	e := newTestEnv(t)
	for i := 0; i < 4; i++ {
		listMachinesT(t, e.c, e.ts.url, e.R, "")
		expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", "", true, "x")), 200, "")
	}
	do(t, e.c, "GET", e.ts.url+"/api/v1/machines", "", nil) // a 401 in the same series
	fams := metParse(t, metScrape(t, e.ts.url))
	requests := map[string]float64{}
	for _, s := range metFind(fams, "nixfleet_http_requests_total").samples {
		m, _ := s.label("method")
		p, _ := s.label("path")
		requests[m+" "+p] += s.value
	}
	for _, h := range []struct {
		name    string
		buckets []string
		labels  []string
	}{
		{"nixfleet_http_request_duration_seconds", []string{"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"}, []string{"method", "path"}},
		{"nixfleet_db_commit_duration_seconds", []string{"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "+Inf"}, nil},
		{"nixfleet_report_group_commit_size", []string{"1", "2", "4", "8", "16", "32", "64", "128", "256", "+Inf"}, nil},
	} {
		t.Run(h.name, func(t *testing.T) {
			f := metFind(fams, h.name)
			per := len(h.buckets) + 2
			if f == nil || len(f.samples) == 0 || len(f.samples)%per != 0 {
				t.Fatalf("%d samples, want a multiple of %d", len(f.samples), per)
			}
			for i := 0; i < len(f.samples); i += per {
				series := f.samples[i : i+per]
				var prev float64
				for j, le := range h.buckets {
					s := series[j]
					if got, _ := s.label("le"); s.name != h.name+"_bucket" || got != le || s.labels[len(s.labels)-1][0] != "le" {
						t.Fatalf("sample %d is %q, want le=%q last", j, s.line, le)
					}
					if s.value < prev {
						t.Fatalf("buckets not cumulative at %q", s.line)
					}
					prev = s.value
				}
				sum, count := series[per-2], series[per-1]
				if sum.name != h.name+"_sum" || count.name != h.name+"_count" || count.value != prev || sum.value < 0 {
					t.Fatalf("sum %q count %q, +Inf bucket %v", sum.line, count.line, prev)
				}
				var names []string
				for _, l := range count.labels {
					names = append(names, l[0])
				}
				if !slices.Equal(names, h.labels) {
					t.Fatalf("labels %v, want %v", names, h.labels)
				}
				if h.labels != nil {
					m, _ := count.label("method")
					p, _ := count.label("path")
					if count.value != requests[m+" "+p] {
						t.Errorf("%s %s: _count %v, requests_total %v", m, p, count.value, requests[m+" "+p])
					}
				}
			}
		})
	}
	if v := metVal(t, e.ts.url, `nixfleet_http_request_duration_seconds_count{method="GET",path="/api/v1/machines"}`); v != 5 {
		t.Errorf("GET /api/v1/machines _count %v, want 5", v)
	}
	if v := metVal(t, e.ts.url, `nixfleet_report_group_commit_size_count`); v != 4 {
		t.Errorf("group commits %v, want 4 (one per sequential report)", v)
	}
}

// TestMetricsRolloutsActive covers ACC-115 and the nixfleet_rollouts_total
// transitions: the gauge follows creates, pauses, cancels, completion,
// failure and deletes, and both are recomputed or reset on a restart.
func TestMetricsRolloutsActive(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	t.Run("before restart", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{dbPath: dbPath})
		c := ts.client("")
		a := bootstrapKey(t, c, ts.url)
		e := &testEnv{ts: ts, c: c, A: a, D: a, R: a}
		u := ts.url
		active := func(want float64) {
			t.Helper()
			if got := metVal(t, u, "nixfleet_rollouts_active"); got != want {
				t.Fatalf("nixfleet_rollouts_active %v, want %v", got, want)
			}
		}
		total := func(status string, want float64) {
			t.Helper()
			if got := metVal(t, u, `nixfleet_rollouts_total{status="`+status+`"}`); got != want {
				t.Fatalf("rollouts_total{%s} %v, want %v", status, got, want)
			}
		}
		relRegister(t, e, "web-01", "web-02", "web-03", "web-04")
		rel := relCreate(t, e, a, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b'), relEntry("web-03", 'c'), relEntry("web-04", 'd')}})
		active(0)
		r1 := relRollout(t, e, rel, nil, "web-01")
		active(1)
		r2 := relRollout(t, e, rel, nil, "web-02")
		active(2)
		expect(t, do(t, c, "POST", u+"/api/v1/rollouts/"+r1+"/pause", a, nil), 200, "")
		active(2)
		total("paused", 1)
		expect(t, do(t, c, "POST", u+"/api/v1/rollouts/"+r1+"/cancel", a, nil), 200, "")
		active(1)
		total("cancelled", 1)
		expect(t, do(t, c, "POST", u+"/api/v1/rollouts/"+r1+"/pause", a, nil), 409, "")
		total("paused", 1)
		expect(t, do(t, c, "DELETE", u+"/api/v1/rollouts/"+r1, a, nil), 204, "")
		active(1)

		ctx := context.Background()
		ts.pass(ctx)
		expect(t, do(t, c, "POST", u+"/api/v1/machines/web-02/report", "", healthBody("web-02", storePath('b', "nixos-system-web-02"))), 200, "")
		ts.pass(ctx)
		active(0)
		total("completed", 1)

		relRollout(t, e, rel, map[string]any{"on_failure": "revert"}, "web-03")
		active(1)
		ts.pass(ctx)
		expect(t, do(t, c, "POST", u+"/api/v1/machines/web-03/report", "", reportBody("web-03", "", false, "boom")), 200, "")
		ts.pass(ctx)
		active(0)
		total("failed", 1)

		relRollout(t, e, rel, nil, "web-04") // left running
		r5 := relRollout(t, e, rel, nil, "web-01")
		expect(t, do(t, c, "POST", u+"/api/v1/rollouts/"+r5+"/pause", a, nil), 200, "")
		active(2)
		total("paused", 2)
		total("cancelled", 1)
		_ = r2
	})
	t.Run("after restart", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{dbPath: dbPath})
		if got := metVal(t, ts.url, "nixfleet_rollouts_active"); got != 2 {
			t.Fatalf("nixfleet_rollouts_active %v after restart, want 2 (one running, one paused)", got)
		}
		for _, s := range []string{"paused", "completed", "failed", "cancelled"} {
			if got := metVal(t, ts.url, `nixfleet_rollouts_total{status="`+s+`"}`); got != 0 {
				t.Errorf("rollouts_total{%s} %v after restart, want 0 (this process committed none)", s, got)
			}
		}
	})
}

// TestMetricsLastSeen covers the metrics part of ACC-56 and §11's
// last-seen rules: a series per reporting machine with the receive time in
// seconds (millisecond fraction), none before the first report, removed on
// decommission (by PATCH and by register), and loaded at startup.
func TestMetricsLastSeen(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	series := func(id string) string {
		return `nixfleet_machine_last_seen_timestamp_seconds{machine_id="` + id + `"}`
	}
	var at04 float64
	t.Run("before restart", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{dbPath: dbPath})
		c, u := ts.client(""), ts.url
		a := bootstrapKey(t, c, u)
		report := func(id string) {
			expect(t, do(t, c, "POST", u+"/api/v1/machines/"+id+"/report", "", reportBody(id, "", true, "x")), 200, "")
		}
		expect(t, do(t, c, "POST", u+"/api/v1/machines/web-03/register", a, nil), 201, "")
		ts.clock.advance(1500 * time.Millisecond)
		report("web-01")
		want := float64(ts.clock.now().UnixMilli()) / 1000
		ts.clock.advance(1234 * time.Millisecond)
		report("web-02")
		report("web-04")
		at04 = float64(ts.clock.now().UnixMilli()) / 1000
		if got := metricValue(t, c, u, series("web-01")); got != want || math.Trunc(got) == got {
			t.Fatalf("web-01 last seen %v, want %v", got, want)
		}
		if got := metricValue(t, c, u, series("web-03")); got != -1 {
			t.Fatalf("web-03 never reported but has a series: %v", got)
		}
		body := metScrape(t, u)
		if !strings.Contains(body, "\n"+series("web-02")+" "+strconv.FormatFloat(at04, 'f', -1, 64)+"\n") {
			t.Fatalf("web-02 series not rendered with its millisecond fraction:\n%s", body)
		}
		expect(t, do(t, c, "PATCH", u+"/api/v1/machines/web-01/lifecycle", a, `{"lifecycle":"decommissioned"}`), 200, "")
		expect(t, do(t, c, "POST", u+"/api/v1/machines/web-02/register", a, `{"lifecycle":"decommissioned"}`), 201, "")
		for _, id := range []string{"web-01", "web-02"} {
			if got := metricValue(t, c, u, series(id)); got != -1 {
				t.Errorf("%s decommissioned but its series remains: %v", id, got)
			}
		}
		if got := metricValue(t, c, u, series("web-04")); got != at04 {
			t.Errorf("web-04 %v, want %v", got, at04)
		}
		if got := metricValue(t, c, u, `nixfleet_machines_by_lifecycle{lifecycle="decommissioned"}`); got != 2 {
			t.Errorf("decommissioned gauge %v", got)
		}
	})
	t.Run("after restart", func(t *testing.T) {
		ts := newTestServer(t, testServerOptions{dbPath: dbPath})
		fams := metParse(t, metScrape(t, ts.url))
		f := metFind(fams, "nixfleet_machine_last_seen_timestamp_seconds")
		if len(f.samples) != 1 || f.samples[0].line != series("web-04")+" "+strconv.FormatFloat(at04, 'f', -1, 64) {
			t.Fatalf("last-seen series after restart: %+v", f.samples)
		}
		if got := metricValue(t, ts.client(""), ts.url, "nixfleet_fleet_size"); got != 4 {
			t.Errorf("fleet size %v after restart, want 4", got)
		}
	})
}

// TestMetricsReportsTotal checks nixfleet_reports_total (§11): stored
// reports by success, and every refused report that passed the CN check as
// rejected (400, 403 decommissioned, 413 with and without a Content-Length,
// 415); a CN mismatch is an authentication failure, not a report.
func TestMetricsReportsTotal(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator"}})
	op := ts.client("operator")
	u := ts.url
	a := bootstrapKey(t, op, u)
	web01, web02 := ts.client("web-01"), ts.client("web-02")
	path := u + "/api/v1/machines/web-01/report"
	big := bytes.Repeat([]byte(" "), maxBody+1)
	copy(big, "{")
	val := func(series string) float64 { return max(metricValue(t, op, u, series), 0) }
	steps := []struct {
		name    string
		send    func() response
		status  int
		result  string // the reports_total series that rises, "" for none
		failure string // the auth_failures_total reason that rises, "" for none
	}{
		{"success", func() response { return do(t, web01, "POST", path, "", reportBody("web-01", "", true, "x")) }, 200, "success", ""},
		{"failure", func() response { return do(t, web01, "POST", path, "", reportBody("web-01", "", false, "x")) }, 200, "failure", ""},
		{"400", func() response { return do(t, web01, "POST", path, "", `{"machine_id":"web-01"}`) }, 400, "rejected", ""},
		{"413", func() response { return apiSend(t, web01, "POST", path, "", "application/json", big, false) }, 413, "rejected", ""},
		{"413 chunked", func() response { return apiSend(t, web01, "POST", path, "", "application/json", big, true) }, 413, "rejected", ""},
		{"415", func() response { return apiSend(t, web01, "POST", path, "", "text/plain", []byte(`{}`), false) }, 415, "rejected", ""},
		{"CN mismatch", func() response { return do(t, web02, "POST", path, "", reportBody("web-01", "", true, "x")) }, 403, "", "cn_mismatch"},
		{"decommissioned", func() response {
			expect(t, do(t, op, "PATCH", u+"/api/v1/machines/web-01/lifecycle", a, `{"lifecycle":"decommissioned"}`), 200, "")
			return do(t, web01, "POST", path, "", reportBody("web-01", "", true, "x"))
		}, 403, "rejected", ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := map[string]float64{}
			for _, r := range reportResults {
				before[r] = val(`nixfleet_reports_total{result="` + r + `"}`)
			}
			cn := val(`nixfleet_auth_failures_total{reason="cn_mismatch"}`)
			expect(t, st.send(), st.status, "")
			for _, r := range reportResults {
				want := before[r]
				if r == st.result {
					want++
				}
				if got := val(`nixfleet_reports_total{result="` + r + `"}`); got != want {
					t.Errorf("reports_total{result=%q} %v, want %v", r, got, want)
				}
			}
			if want := cn + map[bool]float64{true: 1}[st.failure == "cn_mismatch"]; val(`nixfleet_auth_failures_total{reason="cn_mismatch"}`) != want {
				t.Errorf("cn_mismatch failures not %v", want)
			}
		})
	}
}

// TestMetricsRolloutsByStatus: nixfleet_rollouts_by_status follows creation, every status change and deletion,
// always with all six statuses, and is recomputed from the database at startup.
func TestMetricsRolloutsByStatus(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: db})
	c := ts.client("")
	e := &testEnv{ts: ts, c: c, url: ts.url}
	e.A = bootstrapKey(t, c, ts.url)
	e.D = createTestKey(t, c, ts.url, e.A, "deployer", "deploy")
	want := func(what string, counts map[string]float64) {
		t.Helper()
		for _, s := range rolloutStatuses {
			series := `nixfleet_rollouts_by_status{status="` + string(s) + `"}`
			if got := metricValue(t, e.c, e.url, series); got != counts[string(s)] {
				t.Fatalf("%s: %s = %v, want %v", what, series, got, counts[string(s)])
			}
		}
	}
	want("at startup", nil)
	relRegister(t, e, "web-01", "web-02")
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'a')}})
	r1 := relRollout(t, e, rel, nil, "web-01")
	want("created", map[string]float64{"running": 1})
	expect(t, do(t, c, "POST", e.url+"/api/v1/rollouts/"+r1+"/pause", e.D, nil), 200, "")
	want("paused", map[string]float64{"paused": 1})
	expect(t, do(t, c, "POST", e.url+"/api/v1/rollouts/"+r1+"/cancel", e.D, nil), 200, "")
	relRollout(t, e, rel, nil, "web-02")
	want("cancelled and a second one", map[string]float64{"cancelled": 1, "running": 1})
	expect(t, do(t, c, "DELETE", e.url+"/api/v1/rollouts/"+r1, e.A, nil), 204, "")
	want("deleted", map[string]float64{"running": 1})

	ts.ts.Close()
	if err := ts.close(); err != nil {
		t.Fatal(err)
	}
	ts2 := newTestServer(t, testServerOptions{dbPath: db})
	e.url = ts2.url
	want("after a restart", map[string]float64{"running": 1})
}
