package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

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
