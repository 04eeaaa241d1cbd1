package main

// The metrics exposition format (metrics.go, §11): label escaping, sorting,
// promtool and the content type (ACC-116), and a golden file of the whole
// output of a fixed scenario.

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The golden file is rewritten with `go test -run TestMetricsGolden -update`.
// The flag is registered only if no other test file already did.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files in testdata")
	}
}

func metUpdateGolden() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// TestMetricsLabelEscaping checks escapeLabel (only backslash, double
// quote and newline are escaped, §11 and STYLE.md) and that the escaped
// output parses back to the original value.
func TestMetricsLabelEscaping(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{`a\b`, `a\\b`},
		{`say "hi"`, `say \"hi\"`},
		{"two\nlines", `two\nlines`},
		{`\"` + "\n", `\\\"\n`},
		{"tab\there", "tab\there"},
		{"cr\rhere", "cr\rhere"},
		{"ünïcode ✓", "ünïcode ✓"},
		{"{}=,%", "{}=,%"},
		{"", ""},
	} {
		if got := escapeLabel(tc.in); got != tc.want {
			t.Errorf("escapeLabel(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// Through the writer: a counter series with awkward label values.
	m := newMetrics()
	m.fleet = newFleet()
	odd := []string{`back\slash`, `"quoted"`, "new\nline", "tab\tand ünïcode"}
	for _, v := range odd {
		m.httpRequests.inc("GET", v, "200")
	}
	var buf bytes.Buffer
	if err := m.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	f := metFind(metParse(t, buf.String()), "nixfleet_http_requests_total")
	var got []string
	for _, s := range f.samples {
		p, _ := s.label("path")
		got = append(got, p)
	}
	slices.Sort(got)
	want := slices.Clone(odd)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("round trip %q, want %q", got, want)
	}
	metPromtool(t, buf.String())
}

// metPromtool runs `promtool check metrics` on body, if promtool is installed.
func metPromtool(t *testing.T, body string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not on PATH (Debian package prometheus); skipping promtool check metrics")
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s\ninput:\n%s", err, out, body)
	}
}

// metScenario builds the fixed scenario of the golden test on a server
// with a fake clock: keys, machines in every lifecycle, reports (accepted
// and rejected), authentication failures, a release, a paused rollout and
// a few unmatched requests.
func metScenario(t *testing.T) *testEnv {
	t.Helper()
	e := newTestEnv(t)
	u := e.ts.url
	ok := func(r response, status int) {
		t.Helper()
		expect(t, r, status, "")
	}
	ok(do(t, e.c, "POST", u+"/api/v1/machines/web-01/register", e.A, `{"tags":["web"]}`), 201)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/web-02/register", e.A, `{"tags":["web","eu"]}`), 201)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/db-01/register", e.A, `{"lifecycle":"pending"}`), 201)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/pxe-01/register", e.A, `{"lifecycle":"provisioning"}`), 201)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/old-01/register", e.A, nil), 201)
	ok(do(t, e.c, "PATCH", u+"/api/v1/machines/old-01/lifecycle", e.A, `{"lifecycle":"decommissioned"}`), 200)
	e.ts.clock.advance(1500 * time.Millisecond)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/web-01/report", "", reportBody("web-01", storePath('0', "old"), true, "up-to-date")), 200)
	e.ts.clock.advance(250 * time.Millisecond)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/web-02/report", "", healthBody("web-02", storePath('0', "old"))), 200)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/web-03/report", "", reportBody("web-03", "", false, "rolled back: x")), 200)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/web-04/report", "", `{"machine_id":"web-04"}`), 400)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/old-01/report", "", reportBody("old-01", "", true, "x")), 403)
	ok(do(t, e.c, "PATCH", u+"/api/v1/machines/web-03/lifecycle", e.A, `{"lifecycle":"maintenance"}`), 200)
	ok(do(t, e.c, "GET", u+"/api/v1/machines", "", nil), 401)
	ok(do(t, e.c, "GET", u+"/api/v1/machines", "nfk-unknown", nil), 401)
	ok(do(t, e.c, "POST", u+"/api/v1/machines/x/register", e.D, nil), 403)
	rel := relCreate(t, e, e.D, map[string]any{"entries": []any{relEntry("web-01", 'a'), relEntry("web-02", 'b')}})
	rid := relRollout(t, e, rel, nil, "web-01", "web-02")
	e.ts.pass(context.Background())
	ok(do(t, e.c, "POST", u+"/api/v1/rollouts/"+rid+"/pause", e.D, nil), 200)
	ok(do(t, e.c, "GET", u+"/api/v1/rollouts/"+rid, e.R, nil), 200)
	ok(do(t, e.c, "GET", u+"/api/v1/releases/"+rel+"/diff/"+rel, e.R, nil), 200)
	ok(do(t, e.c, "HEAD", u+"/api/v1/machines", e.R, nil), 200)
	ok(do(t, e.c, "GET", u+"/never", "", nil), 404)
	ok(do(t, e.c, "PUT", u+"/api/v1/machines", e.A, nil), 405)
	ok(do(t, e.c, "GET", u+"/health", "", nil), 200)
	return e
}

// metNormalise replaces the only non-deterministic parts of the output:
// the bucket counts and sums of the two duration histograms, and the Go
// version. The +Inf buckets and _count stay: they count events.
func metNormalise(body string) string {
	bucket := regexp.MustCompile(`^(nixfleet_(?:http_request|db_commit)_duration_seconds_bucket\{.*le="([^"]+)"\}) \S+$`)
	sum := regexp.MustCompile(`^(nixfleet_(?:http_request|db_commit)_duration_seconds_sum(?:\{.*\})?) \S+$`)
	lines := strings.Split(body, "\n")
	for i, l := range lines {
		if m := bucket.FindStringSubmatch(l); m != nil && m[2] != "+Inf" {
			lines[i] = m[1] + " <count>"
		} else if m := sum.FindStringSubmatch(l); m != nil {
			lines[i] = m[1] + " <sum>"
		}
	}
	return regexp.MustCompile(`goversion="[^"]*"`).ReplaceAllString(strings.Join(lines, "\n"), `goversion="<goversion>"`)
}

// TestMetricsGolden compares the whole /metrics output of metScenario with
// testdata/metrics.golden, after metNormalise. Rewrite the file with
// `go test -run TestMetricsGolden -update` and review the diff.
func TestMetricsGolden(t *testing.T) {
	e := metScenario(t)
	got := metNormalise(metScrape(t, e.ts.url))
	path := filepath.Join("testdata", "metrics.golden")
	if metUpdateGolden() {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Errorf("line %d:\n got %q\nwant %q", i+1, g, w)
				break
			}
		}
		t.Fatalf("/metrics differs from %s (run with -update to rewrite it, then review the diff)", path)
	}
}

// TestMetricsPromtool covers ACC-116: the real output of the scenario and
// of a fresh server started through run pass `promtool check metrics`, and
// no name starts with nixfleet_policy or nixfleet_schedule.
func TestMetricsPromtool(t *testing.T) {
	t.Run("scenario", func(t *testing.T) {
		body := metScrape(t, metScenario(t).ts.url)
		for _, bad := range []string{"nixfleet_policy", "nixfleet_schedule"} {
			if strings.Contains(body, bad) {
				t.Errorf("output contains %s", bad)
			}
		}
		metPromtool(t, body)
	})
	t.Run("fresh server", func(t *testing.T) {
		rs := startRun(t, nil)
		metPromtool(t, metScrape(t, rs.url))
	})
}

// TestMetricsSorted checks §11's ordering on the scenario's output: one
// HELP/TYPE pair per family, families sorted by name, and series sorted by
// their label values (for histograms, each series' buckets together in
// bucket order).
func TestMetricsSorted(t *testing.T) {
	e := metScenario(t)
	for _, id := range []string{"zz-9", "aa-1", "mm-5", "AA-0"} {
		expect(t, do(t, e.c, "POST", e.ts.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, "", true, "x")), 200, "")
	}
	fams := metParse(t, metScrape(t, e.ts.url))
	var names []string
	for _, f := range fams {
		names = append(names, f.name)
	}
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Fatalf("families not sorted or repeated: %v", names)
	}
	for _, f := range fams {
		var prev []string
		for _, s := range f.samples {
			var vals []string
			for _, l := range s.labels {
				if l[0] != "le" {
					vals = append(vals, l[1])
				}
			}
			if prev != nil && slices.Compare(vals, prev) < 0 {
				t.Errorf("%s: series %q after %q", f.name, vals, prev)
			}
			if f.typ != "histogram" && prev != nil && slices.Equal(vals, prev) {
				t.Errorf("%s: series %q repeated", f.name, vals)
			}
			prev = vals
		}
		if f.typ == "histogram" {
			for i := 0; i+1 < len(f.samples); i++ {
				a, b := f.samples[i], f.samples[i+1]
				if a.name == f.name+"_bucket" && b.name == f.name+"_bucket" && a.value > b.value && len(a.labels) == len(b.labels) {
					la, _ := a.label("le")
					lb, _ := b.label("le")
					if la != "+Inf" {
						t.Errorf("%s: bucket le=%s (%v) above le=%s (%v)", f.name, la, a.value, lb, b.value)
					}
				}
			}
		}
	}
	seen := metFind(fams, "nixfleet_machine_last_seen_timestamp_seconds")
	var ids []string
	for _, s := range seen.samples {
		id, _ := s.label("machine_id")
		ids = append(ids, id)
	}
	if !slices.Equal(ids, []string{"AA-0", "aa-1", "mm-5", "web-01", "web-02", "web-03", "zz-9"}) {
		t.Fatalf("last-seen series %v", ids)
	}
}
