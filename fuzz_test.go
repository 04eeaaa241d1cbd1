package main

// Fuzz targets for the parsers that face untrusted input: the JSON decoding
// of every request body, the identifier, tag and store-path rules (§2.7), the
// threshold and batch-size specs with batch planning (§9.2), the two output
// escapers (CSV §10.4, metric labels §11) and the query-string decoding
// (§2.4). Each target checks an invariant against an independent oracle or
// a round trip, not just "no panic". Seed corpora live in
// testdata/fuzz/<FuzzName>/ and run with every plain `go test`.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// §2.7 rules written as regular expressions, independently of validate.go.
var (
	fzIDRE        = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	fzTagRE       = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)
	fzStorePathRE = regexp.MustCompile(`^/nix/store/[0-9abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+._?=-]+$`)
	// "N": 1–9 ASCII digits. "P%": an integer then %; parseSize allows up to
	// three digits, so leading zeros ("007%") are accepted and "0100%" is
	// not. The range checks are applied to the captured number.
	fzCountRE   = regexp.MustCompile(`^([0-9]{1,9})$`)
	fzPercentRE = regexp.MustCompile(`^([0-9]{1,3})%$`)
	fzKeyNameRE = regexp.MustCompile(`^[\x20-\x7e]{1,64}$`)
	fzPlatRE    = regexp.MustCompile(`^[\x21-\x7e]{1,64}$`)
)

// fzOracleSize parses a size spec with the regexps above.
func fzOracleSize(s string) (n int, pct, ok bool) {
	if m := fzCountRE.FindStringSubmatch(s); m != nil {
		n, _ = strconv.Atoi(m[1])
		return n, false, true
	}
	if m := fzPercentRE.FindStringSubmatch(s); m != nil {
		n, _ = strconv.Atoi(m[1])
		return n, true, true
	}
	return 0, false, false
}

// fzThresholdOK is the failure_threshold rule: "N" with N ≥ 0, "P%" with P 0–100.
func fzThresholdOK(s string) bool {
	n, pct, ok := fzOracleSize(s)
	return ok && (!pct || n <= 100)
}

// fzBatchSizeOK is the batch_sizes[] rule: "N" with N ≥ 1, "P%" with P 1–100.
func fzBatchSizeOK(s string) bool {
	n, pct, ok := fzOracleSize(s)
	return ok && n >= 1 && (!pct || n <= 100)
}

// fzCheck400 fails unless err is a *validationError (a 400) with a message.
func fzCheck400(t *testing.T, what string, err error) {
	t.Helper()
	var ve *validationError
	if !errors.As(err, &ve) {
		t.Fatalf("%s: error %T %v, want *validationError", what, err, err)
	}
	if status, msg := errorStatus(err); status != http.StatusBadRequest || msg == "" {
		t.Fatalf("%s: %d %q, want a 400 with a message", what, status, msg)
	}
}

// fzNormalisedTags fails unless tags is a valid normalised tag list: non-nil,
// sorted, without duplicates, at most 64, each tag matching the rule.
func fzNormalisedTags(t *testing.T, field string, tags []string) {
	t.Helper()
	if tags == nil {
		t.Fatalf("%s: nil after normalisation", field)
	}
	if len(tags) > 64 {
		t.Fatalf("%s: %d tags accepted, at most 64 allowed", field, len(tags))
	}
	for i, tag := range tags {
		if !fzTagRE.MatchString(tag) {
			t.Fatalf("%s[%d] = %q accepted but breaks the tag rule", field, i, tag)
		}
		if i > 0 && tags[i-1] >= tag {
			t.Fatalf("%s not sorted and unique: %q", field, tags)
		}
	}
}

// fzSameSet reports whether a and b hold the same distinct strings.
func fzSameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// fzKind is one request type for FuzzDecodeRequests.
type fzKind struct {
	name  string
	new   func() validator
	check func(t *testing.T, v validator) // invariants of an accepted value
}

func fzStr(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

var fzKinds = []fzKind{
	{"report", func() validator { return &reportRequest{} }, func(t *testing.T, v validator) {
		q := v.(*reportRequest)
		if q.MachineID == nil || q.CurrentGeneration == nil || q.Success == nil || q.Message == nil || q.Timestamp == nil {
			t.Fatalf("required field missing in accepted report %+v", q)
		}
		if !fzIDRE.MatchString(*q.MachineID) || *q.MachineID == "." || *q.MachineID == ".." {
			t.Fatalf("machine_id %q accepted", *q.MachineID)
		}
		if len(*q.CurrentGeneration) > 512 || len(*q.Message) > 4096 {
			t.Fatalf("oversized current_generation or message accepted")
		}
		if ms, err := parseTime(*q.Timestamp); err != nil || ms != q.agentTS {
			t.Fatalf("timestamp %q accepted as %d (%v)", *q.Timestamp, q.agentTS, err)
		}
		if q.AgentVersion == nil || len(*q.AgentVersion) > 128 {
			t.Fatalf("agent_version %q: default not filled or too long", fzStr(q.AgentVersion))
		}
		if q.UptimeSeconds == nil || *q.UptimeSeconds < 0 {
			t.Fatalf("uptime_seconds default not filled or negative")
		}
		fzNormalisedTags(t, "tags", q.tags)
		if !fzSameSet(q.tags, q.Tags) {
			t.Fatalf("normalised tags %q lost or invented tags of %q", q.tags, q.Tags)
		}
		if h := q.Health; h != nil {
			if h.Results == nil || h.AllPassed == nil || h.Timestamp == nil || len(h.Results) > 256 {
				t.Fatalf("invalid health payload accepted: %+v", h)
			}
			if ms, err := parseTime(*h.Timestamp); err != nil || ms != h.measuredAt {
				t.Fatalf("health.timestamp %q accepted as %d (%v)", *h.Timestamp, h.measuredAt, err)
			}
			var stored []storedResult
			if err := json.Unmarshal([]byte(h.resultsJSON), &stored); err != nil || len(stored) != len(h.Results) {
				t.Fatalf("resultsJSON %q does not hold the %d results (%v)", h.resultsJSON, len(h.Results), err)
			}
			var failed []string
			for i, r := range h.Results {
				if r.Status == nil || (*r.Status != "pass" && *r.Status != "fail") || r.CheckName == nil ||
					len(*r.CheckName) < 1 || len(*r.CheckName) > 256 || r.DurationMs == nil || *r.DurationMs < 0 {
					t.Fatalf("invalid health result %d accepted: %+v", i, r)
				}
				if stored[i].Status != *r.Status || stored[i].CheckName != *r.CheckName || stored[i].DurationMs != *r.DurationMs {
					t.Fatalf("stored result %d = %+v, want %+v", i, stored[i], r)
				}
				if *r.Status == "fail" {
					if r.Message == nil || len(*r.Message) > 4096 || stored[i].Message != *r.Message {
						t.Fatalf("failed check %d: message missing, too long or not stored", i)
					}
					failed = append(failed, *r.CheckName)
				} else if stored[i].Message != "" {
					t.Fatalf("passing check %d stored a message", i)
				}
			}
			if h.failedChecks != strings.Join(failed, ", ") {
				t.Fatalf("failedChecks %q, want %q", h.failedChecks, strings.Join(failed, ", "))
			}
		}
	}},
	{"register", func() validator { return &registerRequest{} }, func(t *testing.T, v validator) {
		q := v.(*registerRequest)
		if q.Lifecycle != nil && lifecycleIndex(lifecycle(*q.Lifecycle)) < 0 {
			t.Fatalf("lifecycle %q accepted", *q.Lifecycle)
		}
		fzNormalisedTags(t, "tags", q.Tags)
	}},
	{"lifecycle", func() validator { return &lifecycleRequest{} }, func(t *testing.T, v validator) {
		q := v.(*lifecycleRequest)
		if q.Lifecycle == nil || !slices.Contains([]string{"pending", "provisioning", "active", "maintenance", "decommissioned"}, *q.Lifecycle) {
			t.Fatalf("lifecycle %q accepted", fzStr(q.Lifecycle))
		}
	}},
	{"tags", func() validator { return &tagsRequest{} }, func(t *testing.T, v validator) {
		fzNormalisedTags(t, "tags", v.(*tagsRequest).Tags)
	}},
	{"notify-deploy", func() validator { return &notifyDeployRequest{} }, func(t *testing.T, v validator) {
		q := v.(*notifyDeployRequest)
		if q.StorePath == nil || !validStorePath(*q.StorePath) || !fzStorePathRE.MatchString(*q.StorePath) || len(*q.StorePath) > 512 {
			t.Fatalf("store_path %q accepted", fzStr(q.StorePath))
		}
	}},
	{"bootstrap", func() validator { return &bootstrapRequest{} }, func(t *testing.T, v validator) {
		q := v.(*bootstrapRequest)
		if q.Name == nil || !fzKeyNameRE.MatchString(*q.Name) {
			t.Fatalf("bootstrap name %q accepted (the default is \"admin\")", fzStr(q.Name))
		}
	}},
	{"create key", func() validator { return &createKeyRequest{} }, func(t *testing.T, v validator) {
		q := v.(*createKeyRequest)
		if q.Name == nil || !fzKeyNameRE.MatchString(*q.Name) {
			t.Fatalf("key name %q accepted", fzStr(q.Name))
		}
		if q.Role == nil || !slices.Contains([]string{"readonly", "deploy", "admin"}, *q.Role) {
			t.Fatalf("role %q accepted (the default is readonly)", fzStr(q.Role))
		}
	}},
	{"create release", func() validator { return &createReleaseRequest{} }, func(t *testing.T, v validator) {
		q := v.(*createReleaseRequest)
		if len(q.Entries) < 1 || len(q.Entries) > maxReleaseEntries {
			t.Fatalf("%d entries accepted", len(q.Entries))
		}
		seen := map[string]bool{}
		for i, e := range q.Entries {
			if e.Hostname == nil || e.StorePath == nil || e.Platform == nil {
				t.Fatalf("entries[%d]: required field missing: %+v", i, e)
			}
			if !fzIDRE.MatchString(*e.Hostname) || *e.Hostname == "." || *e.Hostname == ".." || seen[*e.Hostname] {
				t.Fatalf("entries[%d].hostname %q accepted (invalid or duplicate)", i, *e.Hostname)
			}
			seen[*e.Hostname] = true
			if !fzStorePathRE.MatchString(*e.StorePath) || len(*e.StorePath) > 512 {
				t.Fatalf("entries[%d].store_path %q accepted", i, *e.StorePath)
			}
			if !fzPlatRE.MatchString(*e.Platform) {
				t.Fatalf("entries[%d].platform %q accepted", i, *e.Platform)
			}
			fzNormalisedTags(t, fmt.Sprintf("entries[%d].tags", i), e.Tags)
		}
		if q.FlakeRef != nil && (len(*q.FlakeRef) > 1024 || hasControl(*q.FlakeRef)) {
			t.Fatalf("flake_ref %q accepted", *q.FlakeRef)
		}
		if q.FlakeRev != nil && (len(*q.FlakeRev) > 128 || hasControl(*q.FlakeRev)) {
			t.Fatalf("flake_rev %q accepted", *q.FlakeRev)
		}
		if q.CacheURL != nil {
			fzCheckCacheURL(t, *q.CacheURL)
		}
	}},
	{"create rollout", func() validator { return &createRolloutRequest{} }, func(t *testing.T, v validator) {
		q := v.(*createRolloutRequest)
		if q.ReleaseID == nil || !fzIDRE.MatchString(*q.ReleaseID) {
			t.Fatalf("release_id %q accepted", fzStr(q.ReleaseID))
		}
		if q.Strategy == nil || !slices.Contains([]string{"canary", "staged", "all_at_once"}, *q.Strategy) {
			t.Fatalf("strategy %q accepted", fzStr(q.Strategy))
		}
		tg := q.Target
		if tg == nil || (tg.Tags == nil) == (tg.Hosts == nil) {
			t.Fatalf("target %+v accepted: want exactly one of tags and hosts", tg)
		}
		if tg.Tags != nil {
			if len(tg.Tags) == 0 {
				t.Fatalf("empty target.tags accepted")
			}
			fzNormalisedTags(t, "target.tags", tg.Tags)
		} else {
			if len(tg.Hosts) == 0 {
				t.Fatalf("empty target.hosts accepted")
			}
			seen := map[string]bool{}
			for _, h := range tg.Hosts {
				if !fzIDRE.MatchString(h) || h == "." || h == ".." || seen[h] {
					t.Fatalf("target.hosts %q: invalid or duplicate host %q accepted", tg.Hosts, h)
				}
				seen[h] = true
			}
		}
		if len(q.BatchSizes) > maxBatches {
			t.Fatalf("%d batch sizes accepted", len(q.BatchSizes))
		}
		for _, s := range q.BatchSizes {
			if !fzBatchSizeOK(s) {
				t.Fatalf("batch size %q accepted", s)
			}
		}
		if q.FailureThreshold == nil || !fzThresholdOK(*q.FailureThreshold) {
			t.Fatalf("failure_threshold %q accepted (the default is \"0\")", fzStr(q.FailureThreshold))
		}
		if q.OnFailure == nil || (*q.OnFailure != "pause" && *q.OnFailure != "revert") {
			t.Fatalf("on_failure %q accepted", fzStr(q.OnFailure))
		}
		if q.HealthTimeout == nil || *q.HealthTimeout < 1 || *q.HealthTimeout > 86400 {
			t.Fatalf("health_timeout default not filled or out of range")
		}
		if q.SoakSeconds == nil || *q.SoakSeconds < 0 || *q.SoakSeconds > 86400 {
			t.Fatalf("soak_seconds default not filled or out of range")
		}
		if q.CacheURL != nil {
			fzCheckCacheURL(t, *q.CacheURL)
		}
	}},
	{"cancel", func() validator { return &cancelRequest{} }, func(t *testing.T, v validator) {}},
}

// fzCheckCacheURL fails unless v satisfies the cache_url rule of §2.7.
func fzCheckCacheURL(t *testing.T, v string) {
	t.Helper()
	u, err := url.Parse(v)
	if len(v) > 1024 || err != nil || u.Scheme == "" || (u.Host == "" && u.Path == "" && u.Opaque == "") ||
		strings.ContainsFunc(v, func(r rune) bool {
			return r <= 0x20 || r == 0x7f || (r >= 0x80 && r <= 0xa0) || r == 0x2028 || r == 0x2029
		}) {
		t.Fatalf("cache_url %q accepted", v)
	}
}

// FuzzDecodeRequests decodes data as the body of each request type with
// unmarshalObject + validate, as decode does. A rejection is always a 400
// *apiError with a message (never a panic, another error type or a 5xx). An
// accepted value satisfies the rules of §2.7/§5 with its defaults filled in,
// validate is idempotent on it, and it round-trips: re-encoded to JSON and
// decoded and validated again, it is deeply equal.
func FuzzDecodeRequests(f *testing.F) {
	sp := storePath('a', "nixos-system-web-01-25.05")
	seeds := []struct {
		kind int
		body string
	}{
		{0, `{"machine_id":"web-01","current_generation":"/nix/store/6cp643dzvlxxpkgbg5kzmwj47sam9zs2-nixos-system-web-01-25.05","success":false,"message":"health-check","timestamp":"2026-04-11T09:30:00.52Z","tags":["web","eu","web"],"health":{"results":[{"status":"pass","check_name":"sshd.service","duration_ms":4},{"status":"fail","check_name":"nginx.service","duration_ms":12,"message":"unit is failed"}],"all_passed":false,"timestamp":"2026-04-11T09:30:00.51Z"},"agent_version":"0.1.0","uptime_seconds":5123}`},
		{0, `{"machine_id":"web-01","current_generation":"","success":true,"message":"up-to-date","timestamp":"2026-04-11T09:30:00Z","tags":null,"health":null,"agent_version":null,"uptime_seconds":null,"future":{"nested":[1,2]}}`},
		{0, `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","uptime_seconds":1e2}`},
		{0, `{"machine_id":"..","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z"}`},
		{0, `{"Machine_ID":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z"}`},
		{1, `{"lifecycle":"pending","tags":["b","a","b"]}`},
		{1, `{}`},
		{1, `{"lifecycle":"bogus","lifecycle":"maintenance"}`},
		{2, `{"lifecycle":"maintenance"}`},
		{2, `{"lifecycle":"Active"}`},
		{3, `{"tags":[]}`},
		{3, `{"tags":["eu-west","web","a:b"]}`},
		{3, `{"tags":"web"}`},
		{4, `{"store_path":"` + sp + `"}`},
		{4, `{"store_path":"/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"}`},
		{5, `{"name":"first-admin"}`},
		{5, `{"name":""}`},
		{5, `{"name":"\u0001"}`},
		{6, `{"name":"ci","role":"deploy","expires_at":null}`},
		{6, `{"name":"ci","role":"Admin"}`},
		{7, `{"entries":[{"hostname":"web-01","store_path":"` + sp + `","platform":"x86_64-linux","tags":["web"]}],"flake_ref":"github:org/fleet","flake_rev":"9f1c","cache_url":"https://cache.example.org"}`},
		{7, `{"entries":[{"hostname":"a","store_path":"` + sp + `","platform":"p"},{"hostname":"a","store_path":"` + sp + `","platform":"p"}]}`},
		{8, `{"release_id":"rel-9b2e4f10-6c3d-4a7e-8f51-0d2c7b6a9e34","cache_url":null,"strategy":"staged","batch_sizes":["1","100%"],"failure_threshold":"50%","on_failure":"pause","health_timeout":300,"soak_seconds":0,"target":{"tags":["web"]},"policy":null}`},
		{8, `{"release_id":"r","strategy":"canary","target":{"hosts":["b","a","b"]}}`},
		{8, `{"release_id":"r","strategy":"all_at_once","target":{"hosts":["a"],"tags":null},"failure_threshold":"101%"}`},
		{8, `{"release_id":"r","strategy":"staged","target":{"tags":["x"]},"batch_sizes":["0"]}`},
		{9, `{"revert":true}`},
		{9, `{"revert":"yes"}`},
		{9, `[]`},
		{9, "\xef\xbb\xbf{}"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.body), uint8(s.kind))
	}
	f.Fuzz(func(t *testing.T, data []byte, kind uint8) {
		k := fzKinds[int(kind)%len(fzKinds)]
		v := k.new()
		err := unmarshalObject(data, v)
		if err == nil {
			err = v.validate()
		}
		if err != nil {
			fzCheck400(t, k.name, err)
			return
		}
		k.check(t, v)

		// validate is idempotent on an accepted value: it accepts it again and
		// changes nothing.
		snap := fzExported(v)
		if err := v.validate(); err != nil || !reflect.DeepEqual(fzExported(v), snap) {
			t.Fatalf("%s: validate is not idempotent: %v\n%+v\n%+v", k.name, err, snap, v)
		}

		// Round trip through the wire format.
		enc, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%s: re-encode %+v: %v", k.name, v, err)
		}
		back := k.new()
		if err := unmarshalObject(enc, back); err != nil {
			t.Fatalf("%s: re-decode %s: %v", k.name, enc, err)
		}
		if err := back.validate(); err != nil {
			t.Fatalf("%s: re-validate %s: %v", k.name, enc, err)
		}
		if !reflect.DeepEqual(fzExported(v), fzExported(back)) {
			t.Fatalf("%s: round trip changed the value\nin:  %q\nout: %s\n%+v\n%+v", k.name, data, enc, v, back)
		}
	})
}

// fzExported returns a copy of the struct behind the pointer v with every
// unexported field zeroed, recursively through pointers and slices, so that
// reflect.DeepEqual compares only what is on the wire.
func fzExported(v any) any {
	return fzCopyExported(reflect.ValueOf(v)).Interface()
}

func fzCopyExported(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(fzCopyExported(v.Elem()))
		return p
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		s := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			s.Index(i).Set(fzCopyExported(v.Index(i)))
		}
		return s
	case reflect.Struct:
		out := reflect.New(v.Type()).Elem()
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				out.Field(i).Set(fzCopyExported(v.Field(i)))
			}
		}
		return out
	}
	return v
}

// FuzzQueryValues checks queryValues (the regression fix for dropped query
// pairs): on a query string that url.ParseQuery accepts it decodes exactly
// as url.ParseQuery does, and on any query string it keeps every non-empty
// pair, so no parameter is silently dropped.
func FuzzQueryValues(f *testing.F) {
	for _, s := range []string{"", "limit=5", "limit=%zz", "limit=0;x=1", "tag=a&tag=b&tag=", "a+b=c+d&%41=%42", "%zz=1&x=%", "&&=&", "k=v=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got := queryValues(&http.Request{URL: &url.URL{RawQuery: raw}})
		if want, err := url.ParseQuery(raw); err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("queryValues(%q) = %v, url.ParseQuery gives %v", raw, got, want)
		}
		pairs := 0
		for _, p := range strings.Split(raw, "&") {
			if p != "" {
				pairs++
			}
		}
		n := 0
		for _, vs := range got {
			n += len(vs)
		}
		if n != pairs {
			t.Fatalf("queryValues(%q) kept %d of %d pairs", raw, n, pairs)
		}
	})
}

// FuzzMachineID compares the ID validators with the §2.7 regexps: machine IDs
// are 1–128 bytes of [A-Za-z0-9._-] other than "." and ".."; release and
// rollout IDs have the same characters. An accepted ID needs no escaping in a
// URL path, and any non-empty ID, escaped into a route, is routed back to
// exactly itself.
func FuzzMachineID(f *testing.F) {
	for _, s := range []string{"web-01", ".", "..", "...", "a", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"web 01", "web/01", "wéb", "", "web%2F01", "WEB_01.example", "a\x00", "-", "r-7c1d0e52-4a8f-4b1e-9d0c-61f2a3b4c5d6"} {
		f.Add(s)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/machines/{id}/report", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.PathValue("id"))
	})
	f.Fuzz(func(t *testing.T, s string) {
		want := fzIDRE.MatchString(s)
		if got := isIDChars(s); got != want {
			t.Fatalf("isIDChars(%q) = %v, regexp says %v", s, got, want)
		}
		wantMachine := want && s != "." && s != ".."
		if got := validMachineID(s); got != wantMachine {
			t.Fatalf("validMachineID(%q) = %v, want %v", s, got, wantMachine)
		}
		if err := checkMachineID("f", s); (err == nil) != wantMachine {
			t.Fatalf("checkMachineID(%q) = %v, want ok=%v", s, err, wantMachine)
		} else if err != nil {
			fzCheck400(t, "checkMachineID", err)
			if !strings.HasPrefix(err.Error(), "f: ") {
				t.Fatalf("error %q does not start with the field path", err)
			}
		}
		if wantMachine && url.PathEscape(s) != s {
			t.Fatalf("valid id %q needs escaping: %q", s, url.PathEscape(s))
		}
		if s != "" {
			// ServeMux redirects the path segments "." and ".." (§2.5); any
			// other id comes back from the pattern exactly.
			path := "/api/v1/machines/" + url.PathEscape(s) + "/report"
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest("POST", "http://cp"+path, nil))
			switch {
			case s == "." || s == "..":
				if rec.Code != http.StatusTemporaryRedirect {
					t.Fatalf("route %q: status %d, want a redirect", path, rec.Code)
				}
			case rec.Code != http.StatusOK || rec.Body.String() != s:
				t.Fatalf("route %q: status %d id %q, want %q", path, rec.Code, rec.Body.String(), s)
			}
		}
	})
}

// FuzzTag compares validTag with the §2.7 regexp, and normalizeTags on the
// comma-separated list s with the list rule: accepted exactly when every tag
// is valid and there are at most 64 distinct ones; the result is the sorted
// set of the input.
func FuzzTag(f *testing.F) {
	for _, s := range []string{"web", "eu-west:1", "a.b_c", "", "a b", "ä", strings.Repeat("t", 64), strings.Repeat("t", 65),
		"b,a,b", "a,,b", "web,WEB", "x\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validTag(s), fzTagRE.MatchString(s); got != want {
			t.Fatalf("validTag(%q) = %v, regexp says %v", s, got, want)
		}
		in := strings.Split(s, ",")
		distinct := map[string]bool{}
		wantOK := true
		for _, tag := range in {
			wantOK = wantOK && fzTagRE.MatchString(tag)
			distinct[tag] = true
		}
		wantOK = wantOK && len(distinct) <= 64
		out, err := normalizeTags("tags", in)
		if (err == nil) != wantOK {
			t.Fatalf("normalizeTags(%q) error %v, want ok=%v", in, err, wantOK)
		}
		if err != nil {
			fzCheck400(t, "normalizeTags", err)
			return
		}
		fzNormalisedTags(t, "tags", out)
		if len(out) != len(distinct) || !fzSameSet(out, in) {
			t.Fatalf("normalizeTags(%q) = %q, want the sorted set", in, out)
		}
	})
}

// FuzzStorePath compares validStorePath with the §2.7 regexp and 512-byte
// limit.
func FuzzStorePath(f *testing.F) {
	for _, s := range []string{
		storePath('a', "nixos-system-web-01-25.05"),
		"/nix/store/6cp643dzvlxxpkgbg5kzmwj47sam9zs2-nixos-system-web-01-25.05",
		"/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", // e is not in the Nix base32 alphabet
		"/nix/store/" + strings.Repeat("a", 32) + "-",
		"/nix/store/" + strings.Repeat("a", 32),
		"/nix/store/" + strings.Repeat("a", 31) + "-x",
		"/nix/store/" + strings.Repeat("a", 32) + "-a+b=c?d_e.f-g",
		"/nix/store/" + strings.Repeat("a", 32) + "-a/b",
		"/nix/store/" + strings.Repeat("a", 32) + "-" + strings.Repeat("x", 512-44),
		"/nix/store/" + strings.Repeat("a", 32) + "-" + strings.Repeat("x", 512-43),
		"/nix/store/" + strings.Repeat("A", 32) + "-x",
		"nix/store/" + strings.Repeat("a", 32) + "-x",
		"/nix/store/" + strings.Repeat("a", 32) + "-x\n",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := fzStorePathRE.MatchString(s) && len(s) <= 512
		if got := validStorePath(s); got != want {
			t.Fatalf("validStorePath(%q) = %v, want %v", s, got, want)
		}
		err := checkStorePath("store_path", s)
		if (err == nil) != want {
			t.Fatalf("checkStorePath(%q) = %v, want ok=%v", s, err, want)
		}
		if err != nil {
			fzCheck400(t, "checkStorePath", err)
		}
	})
}

// FuzzSizes checks the threshold and batch-size rules against the regexp and
// range oracle, thresholdFor's bounds and monotonicity, and planBatches: over
// n machines with accepted batch sizes every machine lands in exactly one
// batch, no batch is empty, ids are sorted within batches, and the batch
// sizes follow §9.2 (computed here in floating point).
func FuzzSizes(f *testing.F) {
	for _, s := range []struct {
		spec  string
		n     uint16
		specs string
		seed  uint64
	}{
		{"0", 10, "1,25%,100%", 1}, {"50%", 20, "1,25%,100%", 2}, {"100%", 1, "1,100%", 3}, {"101%", 6, "2,2,2", 4},
		{"007%", 10, "2,2", 5}, {"0100%", 10, "1,1", 6}, {"999999999", 10, "50%,50%,100%", 7}, {"1000000000", 3, "5,100%", 8},
		{"", 10, "100%", 9}, {"%", 0, "", 10}, {"-1", 5, "0", 11}, {"1e3", 5, "0%", 12}, {" 1", 5, "1 ", 13}, {"٣", 5, "٣", 14},
		{"33%", 65535, "1%,1%,1%,100%", 15}, {"1%", 7, "000000001,99%", 16},
	} {
		f.Add(s.spec, s.n, s.specs, s.seed)
	}
	f.Fuzz(func(t *testing.T, spec string, n16 uint16, specList string, seed uint64) {
		// The parsers against the oracle.
		on, opct, ook := fzOracleSize(spec)
		n, pct, ok := parseSize(spec)
		if ok != ook || ok && (n != on || pct != opct) {
			t.Fatalf("parseSize(%q) = %d,%v,%v; oracle %d,%v,%v", spec, n, pct, ok, on, opct, ook)
		}
		thOK := fzThresholdOK(spec)
		if err := checkThreshold(spec); (err == nil) != thOK {
			t.Fatalf("checkThreshold(%q) = %v, want ok=%v", spec, err, thOK)
		} else if err != nil {
			fzCheck400(t, "checkThreshold", err)
		}
		if err := checkBatchSize("b", spec); (err == nil) != fzBatchSizeOK(spec) {
			t.Fatalf("checkBatchSize(%q) = %v, want ok=%v", spec, err, fzBatchSizeOK(spec))
		} else if err != nil {
			fzCheck400(t, "checkBatchSize", err)
		}

		// thresholdFor on an accepted threshold.
		machines := int(n16)
		if thOK {
			prev := -1
			for _, m := range []int{0, 1, 2, machines / 2, machines, machines + 1} {
				th := thresholdFor(spec, m)
				if th < 0 || th > max(m, on) {
					t.Fatalf("thresholdFor(%q, %d) = %d, outside [0, %d]", spec, m, th, max(m, on))
				}
				if opct {
					if want := int(math.Ceil(float64(m) * float64(on) / 100)); th != want {
						t.Fatalf("thresholdFor(%q, %d) = %d, want ceil(%d×%d/100) = %d", spec, m, th, m, on, want)
					}
				} else if th != on {
					t.Fatalf("thresholdFor(%q, %d) = %d, want %d", spec, m, th, on)
				}
				if opct && m >= prev && prev >= 0 && th < thresholdFor(spec, prev) {
					t.Fatalf("thresholdFor(%q) not monotone: %d machines → %d, %d → %d", spec, prev, thresholdFor(spec, prev), m, th)
				}
				prev = m
			}
		}

		// planBatches over at most 2000 machines with accepted sizes.
		specs := strings.Split(specList, ",")
		if specList == "" || len(specs) > maxBatches {
			return
		}
		for _, s := range specs {
			if !fzBatchSizeOK(s) {
				return
			}
		}
		machines %= 2001
		ids := make([]string, machines)
		for i := range ids {
			ids[i] = fmt.Sprintf("m-%04d", (i*7919)%2003) // distinct, not in order
		}
		batches := planBatches(ids, specs, rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)))
		if len(batches) > len(specs) {
			t.Fatalf("%d batches for %d specs", len(batches), len(specs))
		}
		seen := map[string]int{}
		remaining := machines
		for i, b := range batches {
			if len(b) == 0 {
				t.Fatalf("batch %d is empty (specs %q, %d machines)", i, specs, machines)
			}
			if !slices.IsSorted(b) {
				t.Fatalf("batch %d not sorted: %q", i, b)
			}
			want := remaining
			if i < len(specs)-1 {
				v, p, _ := fzOracleSize(specs[i])
				if p {
					want = min(max(1, int(math.Ceil(float64(remaining)*float64(v)/100))), remaining)
				} else {
					want = min(v, remaining)
				}
			}
			if len(b) != want {
				t.Fatalf("batch %d has %d machines, §9.2 says %d (specs %q, %d machines)", i, len(b), want, specs, machines)
			}
			remaining -= len(b)
			for _, id := range b {
				seen[id]++
			}
		}
		if remaining != 0 {
			t.Fatalf("%d machines left unplanned (specs %q)", remaining, specs)
		}
		if len(seen) != machines {
			t.Fatalf("%d distinct machines planned, want %d", len(seen), machines)
		}
		for _, id := range ids {
			if seen[id] != 1 {
				t.Fatalf("machine %s is in %d batches", id, seen[id])
			}
		}
	})
}
