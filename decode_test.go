package main

import (
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

func TestPlainKeys(t *testing.T) {
	for _, c := range []struct {
		in   string
		want bool
	}{
		{`{}`, true},
		{`{"machine_id":"Web-01","tags":["A","B"],"health":{"results":[{"status":"pass"}]}}`, true},
		{`{"Lifecycle":"active"}`, false},
		{`{"lifecycle":"active","LIFECYCLE":"x"}`, false},
		{`{"li\u0066ecycle":"active"}`, false},        // escaped key
		{`{"lifecycle":"a","lifecycle":"b"}`, false},  // repeated key
		{`{"h":{"a":1},"h":{"b":2}}`, false},          // repeated object key: json would merge
		{`{"a":{"x":1},"b":{"x":1}}`, true},           // same key in sibling objects
		{`{"a":[{"x":1},{"x":1}]}`, true},             // same key in array elements
		{`{"tags":["a,b","c\"d","{\"K\":1}"]}`, true}, // strings that look like JSON
		{`{"message":"a\\","tags":["x"]}`, true},      // escaped backslash at the end of a value
		{`{"a":{"b":{"c":{"Deep":1}}}}`, false},
		{`{"":1}`, false},
		{`{"ſuccess":true}`, false}, // folds to "success" in encoding/json
	} {
		if got := plainKeys([]byte(c.in)); got != c.want {
			t.Errorf("plainKeys(%s) = %v, want %v", c.in, got, c.want)
		}
	}
}

// FuzzDecodeFastPath checks that the fast path of unmarshalObject (one
// encoding/json pass when all keys are plain) decodes exactly as the exact,
// key-by-key slow path does: same acceptance, same values.
func FuzzDecodeFastPath(f *testing.F) {
	f.Add([]byte(`{"machine_id":"web-01","current_generation":"","success":true,"message":"m","timestamp":"2026-04-11T09:30:00Z","tags":["b","a"],"health":{"results":[{"status":"fail","check_name":"x","duration_ms":1,"message":"m"}],"all_passed":false,"timestamp":"2026-04-11T09:30:00Z"}}`))
	f.Add([]byte(`{"health":{"results":[]},"health":{"all_passed":true}}`))
	f.Add([]byte(`{"uptime_seconds":1.5}`))
	f.Add([]byte(`{"tags":null,"Tags":["x"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast, slow reportRequest
		errFast := unmarshalObject(b, &fast)
		var obj map[string]json.RawMessage
		var errSlow error
		if !utf8.Valid(b) || json.Unmarshal(b, &obj) != nil || obj == nil {
			errSlow = errFast // not a UTF-8 object: both paths share the checks before decoding
			if errFast == nil {
				t.Fatalf("accepted a non-object %q", b)
			}
		} else {
			errSlow = decodeFields(obj, reflect.ValueOf(&slow).Elem(), "")
		}
		if (errFast == nil) != (errSlow == nil) {
			t.Fatalf("%q: fast path error %v, slow path error %v", b, errFast, errSlow)
		}
		if errFast == nil && !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast path %+v, slow path %+v", b, fast, slow)
		}
	})
}
