package main

// Tests for the decoding of request bodies (decode in api.go, §2.3, §2.4):
// content types and JSON shapes (ACC-11 … ACC-13), value rules, key matching,
// the cost of many keys, and the 1 MiB body limit (ACC-10).

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDecodeRejects covers ACC-12, ACC-15 and ACC-110's second half for every
// route that reads a JSON body (§2.4): null, arrays, other top-level values,
// trailing data, truncated JSON, invalid UTF-8, whitespace-only bodies and
// wrong content types are refused with a JSON error, store nothing and write
// no audit row; a zero-byte body is {} only for bootstrap, register and cancel.
func TestDecodeRejects(t *testing.T) {
	f := newAPIFixture(t)
	bad := []struct {
		name, ct, body string
		status         int
		prefix         string // required prefix of the error message
	}{
		{"null", "application/json", "null", 400, "invalid JSON body: "},
		{"array", "application/json", `[{"name":"x"}]`, 400, "invalid JSON body: "},
		{"string", "application/json", `"x"`, 400, "invalid JSON body: "},
		{"number", "application/json", `42`, 400, "invalid JSON body: "},
		{"trailing object", "application/json", `{} {}`, 400, "invalid JSON body: "},
		{"trailing garbage", "application/json", `{"name":"x"}x`, 400, "invalid JSON body: "},
		{"truncated", "application/json", `{"name":`, 400, "invalid JSON body: "},
		{"unterminated", "application/json", `{`, 400, "invalid JSON body: "},
		{"invalid UTF-8 in string", "application/json", "{\"name\":\"\xff\xfe\"}", 400, "invalid JSON body: "},
		{"invalid UTF-8 in key", "application/json", "{\"\xc3\x28\":1}", 400, "invalid JSON body: "},
		{"whitespace only", "application/json", "  \n", 400, "invalid JSON body: "},
		{"single quotes", "application/json", `{'name':'x'}`, 400, "invalid JSON body: "},
		{"text/plain", "text/plain", `{}`, 415, "Content-Type must be application/json"},
		{"form", "application/x-www-form-urlencoded", `{}`, 415, "Content-Type must be application/json"},
		{"jsonx", "application/jsonx", `{}`, 415, "Content-Type must be application/json"},
		{"text/json", "text/json", `{}`, 415, "Content-Type must be application/json"},
		{"malformed media type", "application/json;;;", `{}`, 415, "Content-Type must be application/json"},
	}
	for _, rt := range f.apiBodyRoutes() {
		t.Run(rt.name, func(t *testing.T) {
			cases := bad
			if !rt.emptyOK {
				cases = append(slices.Clone(bad),
					struct {
						name, ct, body string
						status         int
						prefix         string
					}{"empty body", "application/json", "", 400, "invalid JSON body: "},
					struct {
						name, ct, body string
						status         int
						prefix         string
					}{"empty body, text/plain", "text/plain", "", 415, "Content-Type must be application/json"})
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := f.fingerprint(t)
					r := apiSend(t, f.c, rt.method, f.url+rt.path, rt.key, tc.ct, []byte(tc.body), false)
					expect(t, r, tc.status, "")
					if msg := r.errMsg(t); !strings.HasPrefix(msg, tc.prefix) {
						t.Fatalf("error %q, want prefix %q", msg, tc.prefix)
					}
					if after := f.fingerprint(t); after != before {
						t.Fatalf("state changed:\n%s\n%s", before, after)
					}
				})
			}
		})
	}
}

// TestDecodeAccepts covers ACC-11's content-type half, ACC-13 and §2.4: the
// accepted content types (absent, parameters, case, +json), zero-byte bodies
// for the three routes without required fields, and unknown keys.
func TestDecodeAccepts(t *testing.T) {
	for _, ct := range []string{"", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON; Charset=UTF-8",
		"application/merge-patch+json", "application/vnd.nixfleet+json"} {
		t.Run("content type "+ct, func(t *testing.T) {
			f := newAPIFixture(t)
			for _, rt := range f.apiBodyRoutes() {
				r := apiSend(t, f.c, rt.method, f.url+rt.path, rt.key, ct, []byte(rt.valid), false)
				if rt.name == "bootstrap" {
					expect(t, r, 409, "API keys already exist. Use an admin key to create more.")
					continue
				}
				expect(t, r, rt.status, "")
			}
			if m := f.mustMachine(t, "web-01"); m.Lifecycle != "maintenance" || !slices.Equal(m.Tags, []string{"web"}) || *m.DesiredGeneration != f.p1 {
				t.Fatalf("web-01 %+v", m)
			}
		})
	}

	t.Run("zero-byte bodies", func(t *testing.T) {
		f := newAPIFixture(t)
		for _, ct := range []string{"", "text/plain"} { // the content type is not checked
			expect(t, apiSend(t, f.c, "POST", f.url+"/api/v1/machines/web-0"+map[string]string{"": "3", "text/plain": "4"}[ct]+"/register",
				f.A, ct, nil, false), 201, "")
		}
		if m := f.mustMachine(t, "web-04"); m.Lifecycle != "active" {
			t.Fatalf("web-04 %+v", m)
		}
		expect(t, apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts/"+f.rolloutID+"/cancel", f.D, "text/plain", nil, true), 200, "")
		var status string
		mustScan(t, f.ts.st.ro.QueryRow("SELECT status FROM rollout WHERE id = ?", f.rolloutID), &status)
		if status != "cancelled" {
			t.Fatalf("rollout %s after cancel with an empty body", status)
		}
		// A chunked zero-byte body is zero bytes too.
		expect(t, apiSend(t, f.c, "POST", f.url+"/api/v1/machines/web-05/register", f.A, "application/json", nil, true), 201, "")
		ts := newTestServer(t, testServerOptions{})
		r := apiSend(t, ts.client(""), "POST", ts.url+"/api/v1/keys/bootstrap", "", "text/plain", nil, true)
		expect(t, r, 200, "")
		var k keyCreated
		r.json(t, &k)
		if k.Name != "admin" {
			t.Fatalf("bootstrap name %q", k.Name)
		}
	})

	t.Run("ACC-13 unknown keys are ignored", func(t *testing.T) {
		f := newAPIFixture(t)
		body := `{"release_id":"` + f.releaseID + `","cache_url":null,"strategy":"all_at_once","batch_sizes":null,` +
			`"failure_threshold":"0","on_failure":"pause","health_timeout":300,"soak_seconds":0,"target":{"hosts":["web-01"],"extra":1},"policy":null}`
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, body), 201, "")
		rep := `{"machine_id":"web-01","current_generation":"","success":true,"message":"up-to-date","timestamp":"2026-04-11T09:30:00Z",` +
			`"tags":null,"health":null,"agent_version":null,"uptime_seconds":null,"future":{"nested":[1,2]},"x":"y"}`
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/machines/web-01/report", "", rep), 200, "")
		m := f.mustMachine(t, "web-01")
		if m.AgentVersion != "" || m.UptimeSeconds != 0 || m.CurrentGeneration != "" {
			t.Fatalf("null fields not treated as absent: %+v", m)
		}
	})
}

// TestDecodeValues covers ACC-12 (uptime_seconds 1.5, success "yes") and the
// rest of §2.4's value rules: duplicate keys (the last
// wins), integers without fraction or exponent and in range, wrong JSON
// types, and null for a required field.
func TestDecodeValues(t *testing.T) {
	f := newAPIFixture(t)
	t.Run("duplicate keys, last wins", func(t *testing.T) {
		expect(t, f.register(t, "dup-01", `{"lifecycle":"bogus","lifecycle":"pending"}`), 201, "")
		if m := f.mustMachine(t, "dup-01"); m.Lifecycle != "pending" {
			t.Fatalf("lifecycle %s", m.Lifecycle)
		}
		expect(t, f.register(t, "dup-02", `{"lifecycle":"pending","lifecycle":"bogus"}`), 400, "invalid lifecycle state: bogus")
		if _, ok := f.machine(t, "dup-02"); ok {
			t.Fatal("dup-02 created")
		}
		rep := `{"machine_id":"web-01","current_generation":"","success":false,"message":"x","timestamp":"2026-04-11T09:30:00Z","success":true}`
		expect(t, f.report(t, "web-01", rep), 200, "")
		if m := f.mustMachine(t, "web-01"); m.SystemState != "ok" {
			t.Fatalf("system_state %s, want ok (last success wins)", m.SystemState)
		}
	})
	t.Run("integers", func(t *testing.T) {
		for _, tc := range []struct {
			value string
			ok    bool
		}{
			{"0", true}, {"86400", true}, {"9223372036854775807", true},
			{"1.5", false}, {"1.0", false}, {"1e2", false}, {"1E2", false}, {"-1", false}, {"\"5\"", false},
			{"9223372036854775808", false}, {"true", false}, {"[]", false}, {"{}", false},
		} {
			t.Run("uptime "+tc.value, func(t *testing.T) {
				rep := `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","uptime_seconds":` + tc.value + `}`
				before := f.fingerprint(t)
				r := f.report(t, "web-01", rep)
				if tc.ok {
					expect(t, r, 200, "")
					return
				}
				expect(t, r, 400, "")
				if after := f.fingerprint(t); after != before {
					t.Fatalf("state changed:\n%s\n%s", before, after)
				}
			})
		}
		for _, v := range []string{"300.0", "3e2", "300.5"} {
			t.Run("health_timeout "+v, func(t *testing.T) {
				before := f.fingerprint(t)
				body := `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]},"health_timeout":` + v + `}`
				expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, body), 400, "")
				if after := f.fingerprint(t); after != before {
					t.Fatalf("state changed:\n%s\n%s", before, after)
				}
			})
		}
		body := `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]},"soak_seconds":1e1}`
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, body), 400, "")
	})
	t.Run("wrong types", func(t *testing.T) {
		for _, tc := range []struct{ path, key, body string }{
			{"/api/v1/machines/web-01/report", "", `{"machine_id":5,"current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z"}`},
			{"/api/v1/machines/web-01/report", "", `{"machine_id":"web-01","current_generation":"","success":"yes","message":"x","timestamp":"2026-04-11T09:30:00Z"}`},
			{"/api/v1/machines/web-01/report", "", `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","tags":"web"}`},
			{"/api/v1/machines/web-01/report", "", `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","health":[]}`},
			{"/api/v1/machines/web-01/register", f.A, `{"tags":[1]}`},
			{"/api/v1/keys", f.A, `{"name":"x","role":1}`},
			{"/api/v1/rollouts", f.D, `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]},"failure_threshold":1}`},
			{"/api/v1/rollouts", f.D, `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":["web-01"]}`},
		} {
			before := f.fingerprint(t)
			expect(t, do(t, f.c, "POST", f.url+tc.path, tc.key, tc.body), 400, "")
			if after := f.fingerprint(t); after != before {
				t.Fatalf("%s: state changed:\n%s\n%s", tc.body, before, after)
			}
		}
	})
	t.Run("null required field", func(t *testing.T) {
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/keys", f.A, `{"name":null,"role":"deploy"}`), 400, "name: required")
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/rollouts", f.D, `{"release_id":null,"strategy":"all_at_once","target":{"hosts":["web-01"]}}`), 400, "release_id: required")
		expect(t, do(t, f.c, "POST", f.url+"/api/v1/releases", f.D, `{"entries":null}`), 400, "entries: required")
	})
}

// TestDecodeKeyMatching: keys are decoded as encoding/json decodes them
// (SPEC §2.4): an exact match first, then a case-insensitive one, and the
// last of duplicate keys wins.
func TestDecodeKeyMatching(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	for i, tc := range []struct{ body, want string }{
		{`{"lifecycle":"pending"}`, "pending"},
		{`{"LIFECYCLE":"provisioning"}`, "provisioning"},
		{`{"lifecycle":"maintenance","lifecycle":"pending"}`, "pending"},
		{`{"Lifecycle":"pending","lifecycle":"maintenance"}`, "maintenance"},
		{`{"lifecycle":"pending","LIFECYCLE":"bogus"}`, "invalid lifecycle state: bogus"},
	} {
		id := fmt.Sprintf("m-%d", i)
		r := do(t, c, "POST", ts.url+"/api/v1/machines/"+id+"/register", admin, tc.body)
		if strings.HasPrefix(tc.want, "invalid") {
			expect(t, r, 400, tc.want)
			continue
		}
		expect(t, r, 201, "")
		if !strings.Contains(string(r.body), `"lifecycle":"`+tc.want+`"`) {
			t.Errorf("%s: %s, want lifecycle %s", tc.body, r.body, tc.want)
		}
	}
	// Enum values stay case-sensitive.
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/x/register", admin, `{"lifecycle":"ACTIVE"}`), 400,
		"invalid lifecycle state: ACTIVE")
}

// TestDecodeReport checks that a report decodes as SPEC §2.4 says through
// the real route: a key that differs only in case sets the field, the last
// duplicate wins, and a wrong type names the field.
func TestDecodeReport(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	post := func(body string) response {
		return do(t, c, "POST", ts.url+"/api/v1/machines/web-01/report", "", body)
	}
	base := `"machine_id":"web-01","current_generation":"","message":"x","timestamp":"2026-04-11T09:30:00Z"`
	expect(t, post(`{`+base+`,"success":true,"Success":false}`), 200, "")
	if m := listMachinesT(t, c, ts.url, bootstrapKey(t, c, ts.url), ""); m[0].SystemState != "error" {
		t.Fatalf(`"Success":false after "success":true: system_state %s, want error (last duplicate wins)`, m[0].SystemState)
	}
	expect(t, post(`{`+base+`,"success":"yes"}`), 400, "success: wrong type: got string, want boolean")
	expect(t, post(`{`+base+`,"success":true,"uptime_seconds":1.5}`), 400, "uptime_seconds: wrong type: got number 1.5, want integer")
	r := post(`{` + base + `,"success":true,"health":{"results":[{"status":"pass","check_name":"a","duration_ms":"1"}],"all_passed":true,"timestamp":"2026-04-11T09:30:00Z"}}`)
	expect(t, r, 400, "")
	if msg := r.errMsg(t); !strings.HasPrefix(msg, "health.results") || !strings.Contains(msg, "duration_ms") {
		t.Fatalf("error %q does not name health.results…duration_ms", msg)
	}
	expect(t, post(`[{`+base+`}]`), 400, "invalid JSON body: expected a JSON object")
	expect(t, post(`null`), 400, "invalid JSON body: expected a JSON object")
	expect(t, post(`{`+base+`,"success":true} {}`), 400, "")
	expect(t, post("{"+base+",\"success\":true,\"agent_version\":\"\xff\"}"), 400, "invalid JSON body: not valid UTF-8")
}

// manyKeys returns a JSON object of n keys, as long as the limit of bytes
// allows so that as many as possible are distinct (a quadratic duplicate
// scan is at its worst when no two keys are equal).
func manyKeys(n, limit int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	width := 1 // each key costs width + 5 bytes: "k":0,
	for n*(width+6)+1 <= limit {
		width++
	}
	wider := (limit - 1 - n*(width+5)) // keys that can be one byte wider
	var b bytes.Buffer
	b.WriteByte('{')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		w := width
		if i < wider {
			w++
		}
		b.WriteByte('"')
		for j, v := 0, i; j < w; j, v = j+1, v/len(alphabet) {
			b.WriteByte(alphabet[v%len(alphabet)])
		}
		b.WriteString(`":0`)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// TestDecodeCostIsLinear sends bodies of the maximum size made of as many
// keys as fit: 150,000 keys in 1 MiB to the report route and to bootstrap
// (after a key exists), and 32 MiB to the release route. A decoder that is
// quadratic in the number of keys takes tens of seconds on the first and
// hours on the last; the standard decoder takes milliseconds. The bound is
// generous (slow CI, the race detector) and fails only on the pathological
// case; the benchmark below reports the real cost.
func TestDecodeCostIsLinear(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url)
	small := manyKeys(150_000, maxBody)
	big := manyKeys(4_000_000, maxReleaseBody)
	if len(small) > maxBody || len(big) > maxReleaseBody {
		t.Fatalf("bodies of %d and %d bytes exceed the limits", len(small), len(big))
	}
	for _, tc := range []struct {
		path, key string
		body      []byte
		status    int
	}{
		{"/api/v1/machines/web-01/report", "", small, 400},
		{"/api/v1/keys/bootstrap", "", small, 409},
		{"/api/v1/releases", admin, big, 400},
	} {
		start := time.Now()
		r := do(t, c, "POST", ts.url+tc.path, tc.key, tc.body)
		d := time.Since(start)
		expect(t, r, tc.status, "")
		t.Logf("%s: %d bytes answered %d in %v", tc.path, len(tc.body), r.status, d)
		if d > 30*time.Second {
			t.Errorf("%s: %v to answer a body of many keys: decoding is not linear", tc.path, d)
		}
	}
}

// BenchmarkDecodeManyKeys reports the cost of decoding a 1 MiB report body
// of 150,000 keys.
func BenchmarkDecodeManyKeys(b *testing.B) {
	body := manyKeys(150_000, maxBody)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var req reportRequest
		if err := unmarshalObject(body, &req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBodyLimit covers ACC-10's 1 MiB half and §2.3: a body of 1,048,577
// bytes gets 413 with and without a Content-Length, stores nothing and
// writes no audit row; a body of exactly 1,048,576 bytes is read. A report
// refused for its size counts as rejected.
func TestBodyLimit(t *testing.T) {
	f := newAPIFixture(t)
	pad := func(body string, size int) []byte {
		b := []byte(body)
		// Pad inside the object with spaces so the JSON stays valid.
		out := append([]byte{}, b[:len(b)-1]...)
		out = append(out, bytes.Repeat([]byte(" "), size-len(b))...)
		return append(out, '}')
	}
	rollout1 := `{"release_id":"` + f.releaseID + `","strategy":"all_at_once","target":{"hosts":["web-01"]}}`
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("rollouts chunked=%v", chunked), func(t *testing.T) {
			before := f.fingerprint(t)
			r := apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "application/json", pad(rollout1, 1<<20+1), chunked)
			expect(t, r, 413, "request body too large")
			if after := f.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			// Also when the oversized body is not even JSON.
			r = apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "", bytes.Repeat([]byte("x"), 1<<20+1), chunked)
			expect(t, r, 413, "request body too large")
		})
	}
	t.Run("exactly 1 MiB is read", func(t *testing.T) {
		r := apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "application/json", pad(rollout1, 1<<20), false)
		expect(t, r, 201, "")
		// The same body, chunked: read in full and decoded (now a conflict).
		r = apiSend(t, f.c, "POST", f.url+"/api/v1/rollouts", f.A, "application/json", pad(rollout1, 1<<20), true)
		expect(t, r, 409, "")
	})
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("report chunked=%v", chunked), func(t *testing.T) {
			rep, _ := apiJSON(reportBody("web-01", f.p1, true, "up-to-date"))
			before, rej := f.fingerprint(t), f.metric(t, reportsRejected)
			r := apiSend(t, f.c, "POST", f.url+"/api/v1/machines/web-01/report", "", "application/json", pad(rep, 1<<20+1), chunked)
			expect(t, r, 413, "request body too large")
			if after := f.fingerprint(t); after != before {
				t.Fatalf("state changed:\n%s\n%s", before, after)
			}
			if got := f.metric(t, reportsRejected); got != rej+1 {
				t.Fatalf("nixfleet_reports_total{result=\"rejected\"} %v -> %v, want +1 (§11: 413 counts as rejected)", rej, got)
			}
		})
	}
	t.Run("other routes", func(t *testing.T) {
		for _, rt := range f.apiBodyRoutes() {
			if rt.path == "/api/v1/releases" {
				continue // 32 MiB
			}
			for _, chunked := range []bool{false, true} {
				before := f.fingerprint(t)
				r := apiSend(t, f.c, rt.method, f.url+rt.path, rt.key, "application/json", pad(rt.valid, 1<<20+1), chunked)
				expect(t, r, 413, "request body too large")
				if after := f.fingerprint(t); after != before {
					t.Fatalf("%s chunked=%v: state changed:\n%s\n%s", rt.name, chunked, before, after)
				}
			}
		}
	})
}
