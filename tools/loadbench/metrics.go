package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The daemon's own view of its latency, from GET /metrics, separates the
// time spent in its handlers from the time spent in the network, the TLS
// layer and the load generator.

// metricSample is one line of a Prometheus text page.
type metricSample struct {
	name   string
	labels string // the raw text between the braces
	value  float64
}

// parseMetrics reads every sample of a Prometheus text page.
func parseMetrics(b []byte) []metricSample {
	var out []metricSample
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name, labels := line[:i], ""
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name, labels = name[:j], strings.TrimSuffix(name[j+1:], "}")
		}
		out = append(out, metricSample{name: name, labels: labels, value: v})
	}
	return out
}

// unlabelled returns the value of a sample without labels.
func unlabelled(ms []metricSample, name string) float64 {
	for _, m := range ms {
		if m.name == name && m.labels == "" {
			return m.value
		}
	}
	return 0
}

// groupCommitNote returns a function that reads the daemon's metrics and
// describes, since its start, its group commits (reports per commit, commit
// time) and the time its report handler took.
func groupCommitNote(ctx context.Context, a *admin) func() string {
	return func() string {
		body, err := a.getRaw(ctx, "/metrics")
		if err != nil {
			return "metrics: " + err.Error()
		}
		ms := parseMetrics(body)
		var parts []string
		if n := unlabelled(ms, "nixfleet_report_group_commit_size_count"); n > 0 {
			parts = append(parts, fmt.Sprintf("%.1f reports per group commit",
				unlabelled(ms, "nixfleet_report_group_commit_size_sum")/n))
		}
		if n := unlabelled(ms, "nixfleet_db_commit_duration_seconds_count"); n > 0 {
			parts = append(parts, "mean commit "+ms2(unlabelled(ms, "nixfleet_db_commit_duration_seconds_sum")/n))
		}
		if h := serverLatency(ms, "POST", reportRoute); h != "" {
			parts = append(parts, "handler "+h)
		}
		return strings.Join(parts, ", ")
	}
}

// The route patterns of the agent routes, as the daemon labels them.
const (
	reportRoute  = "/api/v1/machines/{id}/report"
	desiredRoute = "/api/v1/machines/{id}/desired-generation"
)

// serverLatency summarises the daemon's request-duration histogram for one
// route: the mean, and the share of requests within 10 ms and 50 ms.
func serverLatency(ms []metricSample, method, route string) string {
	sel := fmt.Sprintf(`method="%s",path="%s"`, method, route)
	var count, sum, le10, le50 float64
	for _, m := range ms {
		if !strings.HasPrefix(m.name, "nixfleet_http_request_duration_seconds") || !strings.HasPrefix(m.labels, sel) {
			continue
		}
		switch m.name {
		case "nixfleet_http_request_duration_seconds_count":
			count = m.value
		case "nixfleet_http_request_duration_seconds_sum":
			sum = m.value
		case "nixfleet_http_request_duration_seconds_bucket":
			switch {
			case strings.HasSuffix(m.labels, `le="0.01"`):
				le10 = m.value
			case strings.HasSuffix(m.labels, `le="0.05"`):
				le50 = m.value
			}
		}
	}
	if count == 0 {
		return ""
	}
	return fmt.Sprintf("mean %s, %.2f%% ≤ 10 ms, %.2f%% ≤ 50 ms", ms2(sum/count), 100*le10/count, 100*le50/count)
}

// ms2 formats seconds as milliseconds.
func ms2(seconds float64) string { return ms(time.Duration(seconds * float64(time.Second))) }

// daemonLatencyNote fetches the daemon's metrics and describes its handler
// times of the poll route and, with reports set, of the report route and its
// group commits, since the daemon started.
func daemonLatencyNote(ctx context.Context, a *admin, reports bool) string {
	body, err := a.getRaw(ctx, "/metrics")
	if err != nil {
		return "metrics: " + err.Error()
	}
	ms := parseMetrics(body)
	var parts []string
	if h := serverLatency(ms, "GET", desiredRoute); h != "" {
		parts = append(parts, "poll handler "+h)
	}
	if !reports {
		return "daemon's own view: " + strings.Join(parts, "; ")
	}
	if h := serverLatency(ms, "POST", reportRoute); h != "" {
		parts = append(parts, "report handler "+h)
	}
	if n := unlabelled(ms, "nixfleet_report_group_commit_size_count"); n > 0 {
		parts = append(parts, fmt.Sprintf("%.1f reports per group commit", unlabelled(ms, "nixfleet_report_group_commit_size_sum")/n))
	}
	if n := unlabelled(ms, "nixfleet_db_commit_duration_seconds_count"); n > 0 {
		parts = append(parts, "mean commit "+ms2(unlabelled(ms, "nixfleet_db_commit_duration_seconds_sum")/n))
	}
	return "daemon's own view: " + strings.Join(parts, "; ")
}
