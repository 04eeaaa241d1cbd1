package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// row is one line of the results table.
type row struct {
	scenario string
	server   string // "ceiling", "real" or "" when there is no comparison
	s        summary
	ratio    float64 // real/ceiling requests per second; 0: not applicable
	notes    string
}

// check compares one measured figure with a target of the issue.
type check struct {
	target   string
	measured string
	ok       bool
}

// results gathers everything a run prints at the end. Scenarios append to it
// from the main goroutine only; the mutex keeps it safe if that changes.
type results struct {
	mu       sync.Mutex
	rows     []row
	checks   []check
	problems []string // daemon misbehaviour and failed scenarios
}

func (r *results) addRow(x row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, x)
}

func (r *results) addCheck(target, measured string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks = append(r.checks, check{target, measured, ok})
}

func (r *results) addProblem(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// secs formats a duration in seconds.
func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// mib formats a byte count in MiB.
func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// writeMarkdown writes the results table, the target checks and the
// problems as Markdown.
func (r *results) writeMarkdown(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(w, "| Scenario | Server | Requests/s | p50 | p99 | Errors | Real/ceiling | Notes |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---|")
	for _, x := range r.rows {
		// Rows without requests (durations, batch timings) leave these empty.
		rps, p50, p99, errs := "", "", "", ""
		if x.s.n > 0 || x.s.errors > 0 {
			rps = fmt.Sprintf("%.0f", x.s.rps)
			p50, p99 = ms(x.s.p50), ms(x.s.p99)
			errs = fmt.Sprint(x.s.errors)
			if x.s.causes != "" {
				errs += " (" + x.s.causes + ")"
			}
		}
		ratio := ""
		if x.ratio > 0 {
			ratio = fmt.Sprintf("%.0f%%", 100*x.ratio)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			x.scenario, x.server, rps, p50, p99, errs, ratio, mdEscape(x.notes))
	}
	if len(r.checks) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Target (issue) | Measured | Met |")
		fmt.Fprintln(w, "|---|---|---|")
		for _, c := range r.checks {
			met := "no"
			if c.ok {
				met = "yes"
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", mdEscape(c.target), mdEscape(c.measured), met)
		}
	}
	if len(r.problems) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Problems observed:")
		fmt.Fprintln(w)
		for _, p := range r.problems {
			fmt.Fprintln(w, "- "+strings.ReplaceAll(p, "\n", "\n  "))
		}
	}
}

// plural formats a count and a noun: "1 machine", "20 machines".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
