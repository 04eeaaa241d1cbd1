package main

// Hostile clients over the wire. TestMalformedRequests sends one table of
// malformed requests (bodies, headers, paths, query strings, methods,
// encodings), each of which must get its specified 4xx with a JSON error,
// never a 500 or a hang, and a raw-TCP table of requests that net/http itself
// answers. Slow and idle connections are in hostile_conns_test.go.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
)

// hostileEnv is a server with keys, two reported machines, a release for
// both and a running rollout over web-02, reached over raw connections.
type hostileEnv struct {
	ts                      *testServer
	addr                    string
	dial                    func() (net.Conn, error)
	admin, deploy, readonly string
	releaseID, rolloutID    string
}

func newHostileEnv(t *testing.T, mode string) *hostileEnv {
	t.Helper()
	o := testServerOptions{mode: mode}
	if mode == "mtls" {
		o.bootstrapCNs = []string{"operator"} // the admin key comes from bootstrap with the operator certificate
	}
	ts := newTestServer(t, o)
	e := &hostileEnv{ts: ts, addr: ts.ts.Listener.Addr().String()}
	op := ts.client("operator")
	e.admin = bootstrapKey(t, op, ts.url)
	e.deploy = createTestKey(t, op, ts.url, e.admin, "deployer", "deploy")
	e.readonly = createTestKey(t, op, ts.url, e.admin, "viewer", "readonly")
	for _, id := range []string{"web-01", "web-02"} {
		r := do(t, ts.client(id), "POST", ts.url+"/api/v1/machines/"+id+"/report", "", reportBody(id, storePath('a', "sys"), true, "up-to-date"))
		expect(t, r, 200, "")
	}
	r := do(t, op, "POST", ts.url+"/api/v1/releases", e.deploy, map[string]any{"entries": []map[string]any{
		{"hostname": "web-01", "store_path": storePath('b', "sys-web-01"), "platform": "x86_64-linux"},
		{"hostname": "web-02", "store_path": storePath('c', "sys-web-02"), "platform": "x86_64-linux"},
	}})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)
	e.releaseID = rel.ID
	r = do(t, op, "POST", ts.url+"/api/v1/rollouts", e.deploy, map[string]any{
		"release_id": e.releaseID, "strategy": "all_at_once", "target": map[string]any{"hosts": []string{"web-02"}}})
	expect(t, r, 201, "")
	var ro createRolloutResponse
	r.json(t, &ro)
	e.rolloutID = ro.RolloutID

	if mode == "plain" {
		e.dial = func() (net.Conn, error) { return net.DialTimeout("tcp", e.addr, 5*time.Second) }
	} else {
		cert := ts.pki.clients["operator"]
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
			RootCAs:              ts.pki.caPool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		}}
		e.dial = func() (net.Conn, error) { return d.Dial("tcp", e.addr) }
	}
	return e
}

// expand fills in the {rel} and {ro} placeholders.
func (e *hostileEnv) expand(s string) string {
	return strings.NewReplacer("{rel}", e.releaseID, "{ro}", e.rolloutID).Replace(s)
}

// newestAuditID returns the id of the newest audit row (0 if none).
func (e *hostileEnv) newestAuditID(t *testing.T) int64 {
	t.Helper()
	evs := auditRows(t, e.ts.client("operator"), e.ts.url, e.admin, "?limit=1")
	if len(evs) == 0 {
		return 0
	}
	return evs[0].ID
}

// Body framing of a hostile request.
const (
	frameLength  = iota // Content-Length: len(body) (for bodies and POST/PUT/PATCH)
	frameChunked        // Transfer-Encoding: chunked
	frameRaw            // the header lines carry the framing; the body is sent as is
)

// hostileCase is one malformed request and its specified answer.
type hostileCase struct {
	cat       string // body, header, path, query, method or encoding
	name      string
	method    string
	target    string   // the request-target exactly as sent; {rel} and {ro} are expanded
	key       string   // "A" admin, "D" deploy, "R" readonly, "" none
	ct        string   // Content-Type; "" is application/json when there is a body, "-" none
	header    []string // extra header lines, sent in order (may repeat names)
	body      []byte   // {rel} and {ro} are expanded
	frame     int
	halfClose bool // close the write side after the request (a short body then EOF)

	status int
	msg    string // the exact error, or a prefix when it ends in "*"; "" = any non-empty error
	allow  string // for 405: the exact Allow header
}

// hostileRequest renders the case as raw HTTP/1.1 bytes.
func (e *hostileEnv) hostileRequest(c hostileCase) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", c.method, e.expand(c.target), e.addr)
	body := c.body
	if body != nil {
		body = bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("{rel}"), []byte(e.releaseID)), []byte("{ro}"), []byte(e.rolloutID))
	}
	switch {
	case c.ct == "" && body != nil:
		b.WriteString("Content-Type: application/json\r\n")
	case c.ct != "" && c.ct != "-":
		b.WriteString("Content-Type: " + c.ct + "\r\n")
	}
	for _, h := range c.header {
		b.WriteString(h + "\r\n")
	}
	// After the extra headers, so that a row can send another Authorization first.
	switch c.key {
	case "A":
		b.WriteString("Authorization: Bearer " + e.admin + "\r\n")
	case "D":
		b.WriteString("Authorization: Bearer " + e.deploy + "\r\n")
	case "R":
		b.WriteString("Authorization: Bearer " + e.readonly + "\r\n")
	}
	switch c.frame {
	case frameLength:
		if body != nil || c.method == "POST" || c.method == "PUT" || c.method == "PATCH" {
			fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
		}
	case frameChunked:
		b.WriteString("Transfer-Encoding: chunked\r\n")
		body = hostileChunked(body)
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// hostileChunked encodes body in the chunked transfer coding.
func hostileChunked(body []byte) []byte {
	var b bytes.Buffer
	for len(body) > 0 {
		n := min(len(body), 32<<10)
		fmt.Fprintf(&b, "%x\r\n", n)
		b.Write(body[:n])
		b.WriteString("\r\n")
		body = body[n:]
	}
	b.WriteString("0\r\n\r\n")
	return b.Bytes()
}

// hostileExchange sends req on a new connection (written concurrently with
// reading, so a server that answers before reading the whole body is not
// deadlocked), reads the response, and checks that the server then closes the
// connection. Everything must finish within the deadline: a timeout is a hang.
func hostileExchange(dial func() (net.Conn, error), req []byte, halfClose bool, method string) (response, error) {
	conn, err := dial()
	if err != nil {
		return response{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		conn.Write(req)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok && halfClose {
			cw.CloseWrite()
		}
	}()
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return response{}, fmt.Errorf("no response (hang or reset): %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, body: body}
	// The connection must end now (Connection: close, or the server's own
	// decision after an error), not linger until our deadline.
	if _, err := br.ReadByte(); err == nil {
		return r, errors.New("data after the response")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return r, errors.New("connection left open after the response")
	}
	return r, nil
}

// checkHostile asserts the specified status, the JSON error body and, for
// 405 and 401, the Allow and WWW-Authenticate headers.
func checkHostile(t *testing.T, c hostileCase, r response) {
	t.Helper()
	if r.status >= 500 {
		t.Fatalf("status %d: a malformed request must never give a 5xx; body %q", r.status, r.body)
	}
	if r.status != c.status {
		t.Fatalf("status %d, want %d; body %q", r.status, c.status, r.body)
	}
	if r.status == http.StatusTemporaryRedirect {
		// ServeMux cleans the path with a redirect, before any route runs (§2.5).
		if r.header.Get("Location") == "" {
			t.Fatalf("redirect without Location")
		}
		return
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json; body %q", ct, r.body)
	}
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == nil || *e.Error == "" {
		t.Fatalf("body %q is not a JSON error with a message (%v)", r.body, err)
	}
	switch msg := *e.Error; {
	case c.msg == "":
	case strings.HasSuffix(c.msg, "*"):
		if !strings.HasPrefix(msg, strings.TrimSuffix(c.msg, "*")) {
			t.Fatalf("error %q, want prefix %q", msg, strings.TrimSuffix(c.msg, "*"))
		}
	case msg != c.msg:
		t.Fatalf("error %q, want %q", msg, c.msg)
	}
	if c.status == 405 {
		if got := r.header.Get("Allow"); got == "" || c.allow != "" && got != c.allow {
			t.Fatalf("Allow %q, want %q", got, c.allow)
		}
	}
	if c.status == 401 {
		if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="nixfleet"` {
			t.Fatalf("WWW-Authenticate %q", got)
		}
	}
}

// Bodies reused by several rows.
func hostileBodies() (deepArray, deepObject, bigNumber, utf16LE, utf16BE, gzipped []byte) {
	deepArray = []byte(`{"x":` + strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000) + `}`)
	deepObject = []byte(strings.Repeat(`{"a":`, 20_000) + "1" + strings.Repeat("}", 20_000))
	bigNumber = []byte(`{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z","uptime_seconds":1` + strings.Repeat("0", 5000) + `}`)
	u16 := utf16.Encode([]rune(`{"lifecycle":"maintenance"}`))
	utf16LE = []byte{0xff, 0xfe}
	for _, c := range u16 {
		utf16LE = append(utf16LE, byte(c), byte(c>>8))
		utf16BE = append(utf16BE, byte(c>>8), byte(c))
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(`{"tags":["web"]}`))
	zw.Close()
	gzipped = gz.Bytes()
	return
}

// hostileCases is the table of malformed requests. Every row is answered by
// the application, so every answer is JSON.
func hostileCases() []hostileCase {
	deepArray, deepObject, bigNumber, utf16LE, utf16BE, gzipped := hostileBodies()
	pad := func(body string, size int) []byte { // valid JSON padded with spaces to size bytes
		return []byte(body[:len(body)-1] + strings.Repeat(" ", size-len(body)) + "}")
	}
	tags := `{"tags":["web"]}`
	report := `{"machine_id":"web-01","current_generation":"","success":true,"message":"x","timestamp":"2026-04-11T09:30:00Z"`
	rollout := `{"release_id":"{rel}","strategy":"all_at_once","target":{"hosts":["web-01"]}`
	var tooManyTags, tooManyResults, tooManyBatches []string
	for i := 0; i < 65; i++ {
		tooManyTags = append(tooManyTags, fmt.Sprintf(`"t%d"`, i))
	}
	for i := 0; i < 257; i++ {
		tooManyResults = append(tooManyResults, fmt.Sprintf(`{"status":"pass","check_name":"c%d","duration_ms":1}`, i))
	}
	for i := 0; i < 101; i++ {
		tooManyBatches = append(tooManyBatches, `"1"`)
	}
	var manyHeaders []string
	for i := 0; i < 1000; i++ {
		manyHeaders = append(manyHeaders, fmt.Sprintf("X-Filler-%d: %s", i, strings.Repeat("v", 40)))
	}
	const (
		lc       = "/api/v1/machines/web-01/lifecycle"
		tg       = "/api/v1/machines/web-01/tags"
		reg      = "/api/v1/machines/web-09/register"
		rep      = "/api/v1/machines/web-01/report"
		nd       = "/api/v1/machines/web-01/notify-deploy"
		bad      = "invalid JSON body: *"
		badUTF8  = "invalid JSON body: not valid UTF-8"
		notObj   = "invalid JSON body: expected a JSON object"
		tooLarge = "request body too large"
		ct415    = "Content-Type must be application/json"
		limit400 = "limit: must be an integer of at least 1"
	)
	b := func(s string) []byte { return []byte(s) }
	return []hostileCase{
		// Bodies.
		{cat: "body", name: "truncated value", method: "PATCH", target: lc, key: "A", body: b(`{"lifecycle":"mainten`), status: 400, msg: bad},
		{cat: "body", name: "truncated key", method: "PUT", target: tg, key: "A", body: b(`{"ta`), status: 400, msg: bad},
		{cat: "body", name: "unterminated array", method: "POST", target: reg, key: "A", body: b(`{"tags":["web"`), status: 400, msg: bad},
		{cat: "body", name: "100k nested arrays", method: "POST", target: reg, key: "A", body: deepArray, status: 400, msg: bad},
		{cat: "body", name: "20k nested objects", method: "POST", target: rep, body: deepObject, status: 400, msg: bad},
		{cat: "body", name: "nested arrays in a string list", method: "PUT", target: tg, key: "A", body: b(`{"tags":` + strings.Repeat("[", 50) + strings.Repeat("]", 50) + `}`), status: 400, msg: "tags: wrong type*"},
		{cat: "body", name: "5000-digit integer", method: "POST", target: rep, body: bigNumber, status: 400, msg: "uptime_seconds: *"},
		{cat: "body", name: "1e999", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(rollout + `,"health_timeout":1e999}`), status: 400, msg: "health_timeout: *"},
		{cat: "body", name: "-0.0 for an integer", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(rollout + `,"soak_seconds":-0.0}`), status: 400, msg: "soak_seconds: *"},
		{cat: "body", name: "int64 overflow", method: "POST", target: rep, body: b(report + `,"uptime_seconds":9223372036854775808}`), status: 400, msg: "uptime_seconds: *"},
		{cat: "body", name: "NaN", method: "POST", target: rep, body: b(report + `,"uptime_seconds":NaN}`), status: 400, msg: bad},
		{cat: "body", name: "Infinity", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(rollout + `,"health_timeout":Infinity}`), status: 400, msg: bad},
		{cat: "body", name: "duplicate key, wrong type last", method: "PUT", target: tg, key: "A", body: b(`{"tags":["web"],"tags":"web"}`), status: 400, msg: "tags: wrong type*"},
		{cat: "body", name: "duplicate key, null last", method: "PATCH", target: lc, key: "A", body: b(`{"lifecycle":"maintenance","lifecycle":null}`), status: 400, msg: "lifecycle: required"},
		{cat: "body", name: "duplicate nested key, wrong type last", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(`{"release_id":"{rel}","strategy":"all_at_once","target":{"hosts":["web-01"]},"target":"web-01"}`), status: 400, msg: "target: wrong type*"},
		{cat: "body", name: "string for an array", method: "POST", target: reg, key: "A", body: b(`{"tags":"web"}`), status: 400, msg: "tags: wrong type*"},
		{cat: "body", name: "string for target.hosts", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(`{"release_id":"{rel}","strategy":"all_at_once","target":{"hosts":"web-01"}}`), status: 400, msg: "target.hosts: wrong type*"},
		{cat: "body", name: "array for an object", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(`{"release_id":"{rel}","strategy":"all_at_once","target":["web-01"]}`), status: 400, msg: "target: wrong type: got array, want object"},
		{cat: "body", name: "object for a string", method: "POST", target: "/api/v1/keys", key: "A", body: b(`{"name":{"x":1}}`), status: 400, msg: "name: wrong type*"},
		{cat: "body", name: "string for a bool", method: "POST", target: rep, body: b(`{"machine_id":"web-01","current_generation":"","success":"true","message":"x","timestamp":"2026-04-11T09:30:00Z"}`), status: 400, msg: "success: wrong type*"},
		{cat: "body", name: "number for failure_threshold", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(rollout + `,"failure_threshold":1}`), status: 400, msg: "failure_threshold: wrong type*"},
		{cat: "body", name: "1 MiB + 1 with Content-Length", method: "PUT", target: tg, key: "A", body: pad(tags, 1<<20+1), status: 413, msg: tooLarge},
		{cat: "body", name: "1 MiB + 1 chunked", method: "POST", target: nd, key: "D", body: pad(`{"store_path":"`+storePath('a', "x")+`"}`, 1<<20+1), frame: frameChunked, status: 413, msg: tooLarge},
		{cat: "body", name: "1 MiB + 1 of garbage", method: "POST", target: rep, body: bytes.Repeat([]byte("x"), 1<<20+1), status: 413, msg: tooLarge},
		{cat: "body", name: "1 MiB + 1 declared, not sent", method: "POST", target: "/api/v1/keys/bootstrap", ct: "application/json", header: []string{"Content-Length: 1048577"}, frame: frameRaw, status: 413, msg: tooLarge},
		{cat: "body", name: "32 MiB + 1 declared to releases", method: "POST", target: "/api/v1/releases", key: "D", ct: "application/json", header: []string{"Content-Length: 33554433"}, frame: frameRaw, status: 413, msg: tooLarge},
		{cat: "body", name: "invalid UTF-8 byte", method: "POST", target: reg, key: "A", body: b("{\"tags\":[\"\xff\"]}"), status: 400, msg: badUTF8},
		{cat: "body", name: "overlong UTF-8", method: "PUT", target: tg, key: "A", body: b("{\"tags\":[\"\xc0\xaf\"]}"), status: 400, msg: badUTF8},
		{cat: "body", name: "UTF-8 encoded surrogate", method: "POST", target: "/api/v1/keys", key: "A", body: b("{\"name\":\"\xed\xa0\x80\"}"), status: 400, msg: badUTF8},
		{cat: "body", name: "UTF-8 BOM", method: "PATCH", target: lc, key: "A", body: b("\xef\xbb\xbf{\"lifecycle\":\"maintenance\"}"), status: 400, msg: bad},
		{cat: "body", name: "UTF-16LE with BOM", method: "PATCH", target: lc, key: "A", body: utf16LE, status: 400, msg: badUTF8},
		{cat: "body", name: "UTF-16BE, charset=utf-16", method: "PATCH", target: lc, key: "A", ct: "application/json; charset=utf-16", body: utf16BE, status: 400, msg: bad},
		{cat: "body", name: "raw control character in a string", method: "POST", target: "/api/v1/keys", key: "A", body: b("{\"name\":\"a\x01b\"}"), status: 400, msg: bad},
		{cat: "body", name: "escaped NUL in a key name", method: "POST", target: "/api/v1/keys", key: "A", body: b(`{"name":"a\u0000"}`), status: 400, msg: "name: must be printable ASCII"},
		{cat: "body", name: "lone surrogate escape", method: "POST", target: "/api/v1/keys/bootstrap", body: b(`{"name":"\ud800"}`), status: 400, msg: "name: must be printable ASCII"},
		{cat: "body", name: "top-level null", method: "PUT", target: tg, key: "A", body: b(`null`), status: 400, msg: notObj},
		{cat: "body", name: "top-level array", method: "PUT", target: tg, key: "A", body: b(`[{"tags":[]}]`), status: 400, msg: notObj},
		{cat: "body", name: "trailing object", method: "PUT", target: tg, key: "A", body: b(`{"tags":[]}{}`), status: 400, msg: bad},
		{cat: "body", name: "comment", method: "PUT", target: tg, key: "A", body: b(`{"tags":[] /* x */}`), status: 400, msg: bad},
		{cat: "body", name: "empty body on a required route", method: "PATCH", target: lc, key: "A", body: b(""), status: 400, msg: "invalid JSON body: empty body"},
		{cat: "body", name: "whitespace only", method: "POST", target: "/api/v1/releases", key: "D", body: b(" \r\n\t "), status: 400, msg: "invalid JSON body: empty body"},
		{cat: "body", name: "machine_id differs from the path", method: "POST", target: rep, body: b(strings.Replace(report, "web-01", "web-02", 1) + "}"), status: 400, msg: "machine_id: does not match the machine id in the path"},
		{cat: "body", name: "negative uptime", method: "POST", target: rep, body: b(report + `,"uptime_seconds":-1}`), status: 400, msg: "uptime_seconds: must not be negative"},
		{cat: "body", name: "257 health results", method: "POST", target: rep, body: b(report + `,"health":{"results":[` + strings.Join(tooManyResults, ",") + `],"all_passed":true,"timestamp":"2026-04-11T09:30:00Z"}}`), status: 400, msg: "health.results: at most 256 results"},
		{cat: "body", name: "65 distinct tags", method: "PUT", target: tg, key: "A", body: b(`{"tags":[` + strings.Join(tooManyTags, ",") + `]}`), status: 400, msg: "tags: at most 64 distinct tags"},
		{cat: "body", name: "101 batch sizes", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(rollout + `,"batch_sizes":[` + strings.Join(tooManyBatches, ",") + `]}`), status: 400, msg: "batch_sizes: at most 100 entries"},
		{cat: "body", name: "all-at-once", method: "POST", target: "/api/v1/rollouts", key: "D", body: b(strings.Replace(rollout, "all_at_once", "all-at-once", 1) + "}"), status: 400, msg: "strategy: must be canary, staged or all_at_once"},
		{cat: "body", name: "no release entries", method: "POST", target: "/api/v1/releases", key: "D", body: b(`{"entries":[]}`), status: 400, msg: "entries must not be empty"},
		{cat: "body", name: "duplicate release hostname", method: "POST", target: "/api/v1/releases", key: "D", body: b(`{"entries":[{"hostname":"web-01","store_path":"` + storePath('a', "x") + `","platform":"p"},{"hostname":"web-01","store_path":"` + storePath('b', "x") + `","platform":"p"}]}`), status: 400, msg: "entries[1].hostname: duplicate hostname web-01"},
		{cat: "body", name: "store path with a subdirectory", method: "POST", target: nd, key: "D", body: b(`{"store_path":"` + storePath('a', "x") + `/bin/sh"}`), status: 400, msg: "store_path: not a valid Nix store path"},
		{cat: "body", name: "expires_at in the past", method: "POST", target: "/api/v1/keys", key: "A", body: b(`{"name":"old","expires_at":"2020-01-01T00:00:00Z"}`), status: 400, msg: "expires_at: must be in the future"},
		{cat: "body", name: "cancel of an unknown rollout with a bad body", method: "POST", target: "/api/v1/rollouts/r-ghost/cancel", key: "D", body: b(`{"revert":"yes"}`), status: 400, msg: "revert: wrong type*"},
		{cat: "body", name: "bootstrap name of the wrong type", method: "POST", target: "/api/v1/keys/bootstrap", header: []string{"Authorization: Bearer nfk-bogus"}, body: b(`{"name":5}`), status: 400, msg: "name: wrong type*"},

		// Headers.
		{cat: "header", name: "text/plain", method: "PUT", target: tg, key: "A", ct: "text/plain", body: b(tags), status: 415, msg: ct415},
		{cat: "header", name: "application/xml", method: "POST", target: rep, ct: "application/xml", body: b(report + "}"), status: 415, msg: ct415},
		{cat: "header", name: "multipart/form-data", method: "POST", target: "/api/v1/keys", key: "A", ct: "multipart/form-data; boundary=x", body: b(`{"name":"x"}`), status: 415, msg: ct415},
		{cat: "header", name: "parameter without a value", method: "PUT", target: tg, key: "A", ct: "application/json;charset", body: b(tags), status: 415, msg: ct415},
		{cat: "header", name: "two media types in one header", method: "PUT", target: tg, key: "A", ct: "application/json, text/plain", body: b(tags), status: 415, msg: ct415},
		{cat: "header", name: "bare json", method: "PUT", target: tg, key: "A", ct: "json", body: b(tags), status: 415, msg: ct415},
		{cat: "header", name: "*/*", method: "POST", target: "/api/v1/rollouts/{ro}/cancel", key: "D", ct: "*/*", body: b(`{}`), status: 415, msg: ct415},
		{cat: "header", name: "two Content-Type headers, text/plain first", method: "PUT", target: tg, key: "A", ct: "text/plain", header: []string{"Content-Type: application/json"}, body: b(tags), status: 415, msg: ct415},
		{cat: "header", name: "415 before 413", method: "PUT", target: tg, key: "A", ct: "text/plain", body: pad(tags, 1<<20+1), status: 415, msg: ct415},
		{cat: "header", name: "Content-Length above the body, then EOF", method: "PUT", target: tg, key: "A", header: []string{"Content-Length: 100"}, body: b(tags), frame: frameRaw, halfClose: true, status: 400, msg: bad},
		{cat: "header", name: "Content-Length below the body", method: "PATCH", target: lc, key: "A", header: []string{"Content-Length: 5"}, body: b(`{"lifecycle":"maintenance"}`), frame: frameRaw, status: 400, msg: bad},
		{cat: "header", name: "lowercase bearer", method: "GET", target: "/api/v1/machines", header: []string{"Authorization: bearer nfk-x"}, status: 401, msg: "invalid Authorization header"},
		{cat: "header", name: "Bearer without a token", method: "GET", target: "/api/v1/machines", header: []string{"Authorization: Bearer"}, status: 401, msg: "invalid Authorization header"},
		{cat: "header", name: "Bearer and a space (trimmed by net/http)", method: "GET", target: "/api/v1/machines", header: []string{"Authorization: Bearer "}, status: 401, msg: "invalid Authorization header"},
		{cat: "header", name: "Bearer with two spaces", method: "GET", target: "/api/v1/audit", header: []string{"Authorization: Bearer  nfk-x"}, status: 401, msg: "invalid API key"},
		{cat: "header", name: "Basic credentials", method: "GET", target: "/api/v1/keys", header: []string{"Authorization: Basic dXNlcjpwYXNz"}, status: 401, msg: "invalid Authorization header"},
		{cat: "header", name: "empty Authorization", method: "DELETE", target: "/api/v1/keys/1", header: []string{"Authorization:"}, status: 401, msg: "invalid Authorization header"},
		{cat: "header", name: "two Authorization headers, bogus first", method: "GET", target: "/api/v1/machines", header: []string{"Authorization: Bearer nfk-bogus"}, key: "A", status: 401, msg: "invalid API key"},
		{cat: "header", name: "60 KiB bearer token", method: "GET", target: "/api/v1/releases", header: []string{"Authorization: Bearer " + strings.Repeat("a", 60<<10)}, status: 401, msg: "invalid API key"},
		{cat: "header", name: "60 KiB unrelated header", method: "GET", target: "/api/v1/rollouts", header: []string{"X-Padding: " + strings.Repeat("p", 60<<10)}, status: 401, msg: "missing API key"},
		{cat: "header", name: "1000 headers", method: "GET", target: "/api/v1/machines?limit=0", key: "R", header: manyHeaders, status: 400, msg: limit400},
		{cat: "header", name: "readonly key, malformed body", method: "POST", target: "/api/v1/rollouts", key: "R", body: b(`{`), status: 403, msg: "deploy or admin role required"},
		{cat: "header", name: "deploy key on an admin route", method: "PUT", target: tg, key: "D", body: b(`{`), status: 403, msg: "admin role required"},
		{cat: "header", name: "bootstrap token header without the flag", method: "POST", target: "/api/v1/keys/bootstrap", header: []string{"X-Bootstrap-Token: guess"}, body: b(`{"name":"again"}`), status: 409, msg: "API keys already exist. Use an admin key to create more."},

		// Paths.
		{cat: "path", name: "encoded slash in an id", method: "POST", target: "/api/v1/machines/web%2F01/register", key: "A", status: 400, msg: "invalid machine id"},
		{cat: "path", name: "%00 id", method: "GET", target: "/api/v1/machines/%00/desired-generation", status: 400, msg: "invalid machine id"},
		{cat: "path", name: "%00 inside an id", method: "POST", target: "/api/v1/machines/web-01%00/report", body: b(report + "}"), status: 400, msg: "invalid machine id"},
		{cat: "path", name: "129-byte machine id", method: "PUT", target: "/api/v1/machines/" + strings.Repeat("m", 129) + "/tags", key: "A", body: b(tags), status: 400, msg: "invalid machine id"},
		{cat: "path", name: "encoded unicode id", method: "GET", target: "/api/v1/machines/w%C3%A9b-01/desired-generation", status: 400, msg: "invalid machine id"},
		{cat: "path", name: "raw UTF-8 id", method: "PATCH", target: "/api/v1/machines/wéb-01/lifecycle", key: "A", body: b(`{"lifecycle":"active"}`), status: 400, msg: "invalid machine id"},
		{cat: "path", name: "encoded question mark", method: "POST", target: "/api/v1/machines/web-01%3Fx/notify-deploy", key: "D", body: b(`{}`), status: 400, msg: "invalid machine id"},
		{cat: "path", name: "encoded dot-dot id", method: "DELETE", target: "/api/v1/machines/%2E%2E/desired-generation", key: "A", status: 400, msg: "invalid machine id"},
		{cat: "path", name: "release id with encoded slashes", method: "GET", target: "/api/v1/releases/rel%2F..%2Fx", key: "R", status: 400, msg: "invalid release id"},
		{cat: "path", name: "bad other release id", method: "GET", target: "/api/v1/releases/{rel}/diff/a%20b", key: "R", status: 400, msg: "invalid release id"},
		{cat: "path", name: "129-byte rollout id", method: "POST", target: "/api/v1/rollouts/" + strings.Repeat("r", 129) + "/pause", key: "D", status: 400, msg: "invalid rollout id"},
		{cat: "path", name: "right-to-left override in a rollout id", method: "POST", target: "/api/v1/rollouts/r-%E2%80%AE/resume", key: "D", status: 400, msg: "invalid rollout id"},
		{cat: "path", name: "signed key id", method: "DELETE", target: "/api/v1/keys/+1", key: "A", status: 400, msg: "invalid key id"},
		{cat: "path", name: "hex key id", method: "DELETE", target: "/api/v1/keys/0x1", key: "A", status: 400, msg: "invalid key id"},
		{cat: "path", name: "trailing slash", method: "POST", target: "/api/v1/machines/web-01/register/", key: "A", status: 404, msg: "not found"},
		{cat: "path", name: "empty id segment", method: "POST", target: "/api/v1/machines//register", key: "A", status: 307},
		{cat: "path", name: "trailing slash on a collection", method: "GET", target: "/api/v1/releases/", key: "R", status: 404, msg: "not found"},
		{cat: "path", name: "leading double slash", method: "GET", target: "//health", status: 307},
		{cat: "path", name: "unknown version", method: "GET", target: "/api/v2/machines", key: "A", status: 404, msg: "not found"},
		{cat: "path", name: "case-different route", method: "GET", target: "/Health", status: 404, msg: "not found"},
		{cat: "path", name: "asterisk target", method: "GET", target: "*", status: 307},
		{cat: "path", name: "4 KiB unknown path", method: "GET", target: "/" + strings.Repeat("x/", 2048), status: 404, msg: "not found"},

		// Query strings.
		{cat: "query", name: "limit=0", method: "GET", target: "/api/v1/machines?limit=0", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit=-1", method: "GET", target: "/api/v1/machines?limit=-1", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit=abc", method: "GET", target: "/api/v1/releases?limit=abc", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "empty limit", method: "GET", target: "/api/v1/rollouts?limit=", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit=1.5", method: "GET", target: "/api/v1/audit?limit=1.5", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit=1e3", method: "GET", target: "/api/v1/audit/export?limit=1e3", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit=%2B5", method: "GET", target: "/api/v1/machines?limit=%2B5", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit with a space", method: "GET", target: "/api/v1/machines?limit=%205", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "limit=0x10", method: "GET", target: "/api/v1/releases?limit=0x10", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "Arabic-Indic digit", method: "GET", target: "/api/v1/rollouts?limit=%D9%A3", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "repeated limit, the first is bad", method: "GET", target: "/api/v1/machines?limit=0&limit=5", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "export limit=0", method: "GET", target: "/api/v1/audit/export?limit=0", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "lifecycle in capitals", method: "GET", target: "/api/v1/machines?lifecycle=Active", key: "R", status: 400, msg: "invalid lifecycle state: Active"},
		{cat: "query", name: "repeated lifecycle, one empty", method: "GET", target: "/api/v1/machines?lifecycle=active&lifecycle=", key: "R", status: 400, msg: "invalid lifecycle state: "},
		{cat: "query", name: "tag with a space", method: "GET", target: "/api/v1/machines?tag=bad%20tag", key: "R", status: 400, msg: "tag[0]: *"},
		{cat: "query", name: "repeated tag, one empty", method: "GET", target: "/api/v1/machines?tag=web&tag=", key: "R", status: 400, msg: "tag[1]: *"},
		{cat: "query", name: "after=..", method: "GET", target: "/api/v1/machines?after=..", key: "R", status: 400, msg: "after: *"},
		{cat: "query", name: "empty after", method: "GET", target: "/api/v1/machines?after=", key: "R", status: 400, msg: "after: *"},
		{cat: "query", name: "since=yesterday", method: "GET", target: "/api/v1/audit?since=yesterday", key: "R", status: 400, msg: "since: not an RFC 3339 timestamp"},
		{cat: "query", name: "until on February 30", method: "GET", target: "/api/v1/audit/export?until=2026-02-30T00:00:00Z", key: "R", status: 400, msg: "until: not an RFC 3339 timestamp"},
		{cat: "query", name: "repeated since, the first is bad", method: "GET", target: "/api/v1/audit?since=bogus&since=2026-04-11T09:30:00Z", key: "R", status: 400, msg: "since: not an RFC 3339 timestamp"},
		{cat: "query", name: "before=0", method: "GET", target: "/api/v1/audit?before=0", key: "R", status: 400, msg: "before: must be a positive integer event id"},
		{cat: "query", name: "before=-1", method: "GET", target: "/api/v1/audit?before=-1", key: "R", status: 400, msg: "before: must be a positive integer event id"},
		{cat: "query", name: "before beyond int64", method: "GET", target: "/api/v1/audit?before=9223372036854775808", key: "R", status: 400, msg: "before: must be a positive integer event id"},
		// A pair that url.ParseQuery cannot decode must not be dropped (which
		// would lift the limit or widen the filter): its raw value is invalid.
		{cat: "query", name: "undecodable limit", method: "GET", target: "/api/v1/machines?limit=%zz", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "truncated escape in limit", method: "GET", target: "/api/v1/releases?limit=1%", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "semicolon in limit", method: "GET", target: "/api/v1/rollouts?limit=0;x=1", key: "R", status: 400, msg: limit400},
		{cat: "query", name: "undecodable lifecycle", method: "GET", target: "/api/v1/machines?lifecycle=decommissioned%zz", key: "R", status: 400, msg: "invalid lifecycle state: decommissioned%zz"},
		{cat: "query", name: "undecodable after", method: "GET", target: "/api/v1/machines?after=%", key: "R", status: 400, msg: "after: *"},
		{cat: "query", name: "undecodable before", method: "GET", target: "/api/v1/audit?before=%zz", key: "R", status: 400, msg: "before: must be a positive integer event id"},
		{cat: "query", name: "undecodable until", method: "GET", target: "/api/v1/audit/export?until=2026%zz", key: "R", status: 400, msg: "until: not an RFC 3339 timestamp"},

		// Methods.
		{cat: "method", name: "unknown method, admin path, anonymous", method: "BREW", target: "/api/v1/machines", status: 401, msg: "missing API key"},
		{cat: "method", name: "unknown method, admin path", method: "BREW", target: "/api/v1/machines", key: "A", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "lowercase get", method: "get", target: "/health", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "1000-byte method", method: strings.Repeat("X", 1000), target: "/metrics", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "PUT /health", method: "PUT", target: "/health", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "DELETE /metrics", method: "DELETE", target: "/metrics", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "TRACE on an admin path", method: "TRACE", target: "/api/v1/audit", key: "R", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "CONNECT with a path", method: "CONNECT", target: "/health", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "GET bootstrap, anonymous", method: "GET", target: "/api/v1/keys/bootstrap", status: 401, msg: "missing API key"},
		{cat: "method", name: "PUT bootstrap", method: "PUT", target: "/api/v1/keys/bootstrap", key: "A", status: 405, msg: "method not allowed", allow: "DELETE, POST"},
		{cat: "method", name: "DELETE report", method: "DELETE", target: rep, status: 405, msg: "method not allowed", allow: "POST"},
		{cat: "method", name: "POST desired-generation, anonymous", method: "POST", target: "/api/v1/machines/web-01/desired-generation", status: 401, msg: "missing API key"},
		{cat: "method", name: "POST desired-generation, readonly", method: "POST", target: "/api/v1/machines/web-01/desired-generation", key: "R", status: 405, msg: "method not allowed", allow: "DELETE, GET, HEAD"},
		{cat: "method", name: "GET register", method: "GET", target: reg, key: "A", status: 405, msg: "method not allowed", allow: "POST"},
		{cat: "method", name: "POST lifecycle", method: "POST", target: lc, key: "A", body: b(`{"lifecycle":"maintenance"}`), status: 405, msg: "method not allowed", allow: "PATCH"},
		{cat: "method", name: "PATCH tags", method: "PATCH", target: tg, key: "A", body: b(tags), status: 405, msg: "method not allowed", allow: "PUT"},
		{cat: "method", name: "GET notify-deploy", method: "GET", target: nd, key: "D", status: 405, msg: "method not allowed", allow: "POST"},
		{cat: "method", name: "PATCH a release", method: "PATCH", target: "/api/v1/releases/{rel}", key: "A", body: b(`{}`), status: 405, msg: "method not allowed", allow: "DELETE, GET, HEAD"},
		{cat: "method", name: "PUT releases", method: "PUT", target: "/api/v1/releases", key: "A", status: 405, msg: "method not allowed", allow: "GET, HEAD, POST"},
		{cat: "method", name: "DELETE a diff", method: "DELETE", target: "/api/v1/releases/{rel}/diff/{rel}", key: "A", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "DELETE rollouts", method: "DELETE", target: "/api/v1/rollouts", key: "A", status: 405, msg: "method not allowed", allow: "GET, HEAD, POST"},
		{cat: "method", name: "PUT cancel", method: "PUT", target: "/api/v1/rollouts/{ro}/cancel", key: "D", status: 405, msg: "method not allowed", allow: "POST"},
		{cat: "method", name: "POST audit", method: "POST", target: "/api/v1/audit", key: "R", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "DELETE audit export", method: "DELETE", target: "/api/v1/audit/export", key: "A", status: 405, msg: "method not allowed", allow: "GET, HEAD"},
		{cat: "method", name: "PUT keys", method: "PUT", target: "/api/v1/keys", key: "A", status: 405, msg: "method not allowed", allow: "GET, HEAD, POST"},
		{cat: "method", name: "GET a key", method: "GET", target: "/api/v1/keys/1", key: "A", status: 405, msg: "method not allowed", allow: "DELETE"},

		// Encodings.
		{cat: "encoding", name: "chunked invalid JSON", method: "PUT", target: tg, key: "A", body: b(`{"tags":[web]}`), frame: frameChunked, status: 400, msg: bad},
		{cat: "encoding", name: "chunked top-level string", method: "POST", target: "/api/v1/rollouts/{ro}/cancel", key: "D", body: b(`"revert"`), frame: frameChunked, status: 400, msg: notObj},
		{cat: "encoding", name: "chunked invalid UTF-8", method: "POST", target: "/api/v1/keys/bootstrap", body: b("{\"name\":\"\xfe\"}"), frame: frameChunked, status: 400, msg: badUTF8},
		{cat: "encoding", name: "chunked, malformed chunk size", method: "PUT", target: tg, key: "A", header: []string{"Transfer-Encoding: chunked"}, body: b("zz\r\n{}\r\n0\r\n\r\n"), frame: frameRaw, status: 400, msg: bad},
		{cat: "encoding", name: "chunked, chunk longer than sent, then EOF", method: "PUT", target: tg, key: "A", header: []string{"Transfer-Encoding: chunked"}, body: b("100\r\n{\"tags\":[]}"), frame: frameRaw, halfClose: true, status: 400, msg: bad},
		{cat: "encoding", name: "chunked, no terminating chunk, then EOF", method: "POST", target: "/api/v1/machines/web-09/register", key: "A", header: []string{"Transfer-Encoding: chunked"}, body: b("2\r\n{}\r\n"), frame: frameRaw, halfClose: true, status: 400, msg: bad},
		{cat: "encoding", name: "gzip Content-Encoding is not decoded", method: "PUT", target: tg, key: "A", header: []string{"Content-Encoding: gzip"}, body: gzipped, status: 400, msg: badUTF8},
		{cat: "encoding", name: "gzip body, chunked", method: "POST", target: reg, key: "A", header: []string{"Content-Encoding: gzip"}, body: gzipped, frame: frameChunked, status: 400, msg: badUTF8},
		{cat: "encoding", name: "base64 body", method: "PUT", target: tg, key: "A", header: []string{"Content-Transfer-Encoding: base64"}, body: b("eyJ0YWdzIjpbXX0="), status: 400, msg: bad},
		{cat: "encoding", name: "form-encoded body as JSON", method: "POST", target: "/api/v1/keys", key: "A", body: b("name=ci&role=deploy"), status: 400, msg: bad},
	}
}

// TestMalformedRequests sends every row of hostileCases over plain HTTP, and
// the rows that do not address an agent route again over mTLS (where agent
// routes would answer 403 for the operator certificate's CN), and checks
// that none of them changed the audit log or produced a 5xx.
func TestMalformedRequests(t *testing.T) {
	cases := hostileCases()
	if len(cases) < 60 {
		t.Fatalf("only %d malformed requests", len(cases))
	}
	for _, mode := range []string{"plain", "mtls"} {
		t.Run(mode, func(t *testing.T) {
			e := newHostileEnv(t, mode)
			before := e.newestAuditID(t)
			n := 0
			for _, c := range cases {
				agentRoute := c.method == "GET" && strings.HasSuffix(c.target, "/desired-generation") ||
					c.method == "POST" && strings.HasSuffix(c.target, "/report")
				if mode == "mtls" && agentRoute {
					continue
				}
				n++
				t.Run(c.cat+"/"+c.name, func(t *testing.T) {
					r, err := hostileExchange(e.dial, e.hostileRequest(c), c.halfClose, c.method)
					if err != nil {
						t.Fatalf("%v (status %d, body %q)", err, r.status, r.body)
					}
					checkHostile(t, c, r)
					t.Logf("%d %s", r.status, bytes.TrimSpace(r.body))
				})
			}
			t.Logf("%s: %d malformed requests", mode, n)
			if after := e.newestAuditID(t); after != before {
				t.Errorf("malformed requests wrote audit rows: newest id %d -> %d", before, after)
			}
			metrics := do(t, e.ts.client("operator"), "GET", e.ts.url+"/metrics", "", nil)
			for _, l := range strings.Split(string(metrics.body), "\n") {
				if strings.HasPrefix(l, "nixfleet_http_requests_total{") && strings.Contains(l, `status="5`) {
					t.Errorf("a 5xx was counted: %s", l)
				}
			}
		})
	}
	t.Run("controls", func(t *testing.T) {
		// The other side of some rows: what makes them malformed is exactly
		// the difference from these accepted requests.
		e := newHostileEnv(t, "plain")
		for _, c := range []struct {
			name   string
			c      hostileCase
			status int
		}{
			{"Content-Encoding is ignored, not decoded", hostileCase{method: "PUT", target: "/api/v1/machines/web-01/tags", key: "A", header: []string{"Content-Encoding: gzip"}, body: []byte(`{"tags":["web"]}`)}, 200},
			{"repeated limit, the first is good", hostileCase{method: "GET", target: "/api/v1/machines?limit=5&limit=0", key: "R"}, 200},
			{"an undecodable unknown parameter is ignored", hostileCase{method: "GET", target: "/api/v1/machines?%zz=1&x=%", key: "R"}, 200},
			{"limit above the maximum is clamped", hostileCase{method: "GET", target: "/api/v1/machines?limit=99999999999999999999", key: "R"}, 200},
			{"duplicate key, valid value last", hostileCase{method: "POST", target: "/api/v1/machines/web-03/register", key: "A", body: []byte(`{"lifecycle":"bogus","lifecycle":"pending"}`)}, 201},
			{"chunked valid body", hostileCase{method: "PATCH", target: "/api/v1/machines/web-01/lifecycle", key: "A", body: []byte(`{"lifecycle":"maintenance"}`), frame: frameChunked}, 200},
			{"128-byte machine id", hostileCase{method: "POST", target: "/api/v1/machines/" + strings.Repeat("m", 128) + "/register", key: "A"}, 201},
			{"application/vnd.x+json; charset=UTF-8", hostileCase{method: "PUT", target: "/api/v1/machines/web-01/tags", key: "A", ct: "APPLICATION/VND.X+JSON; charset=UTF-8", body: []byte(`{"tags":[]}`)}, 200},
		} {
			t.Run(c.name, func(t *testing.T) {
				r, err := hostileExchange(e.dial, e.hostileRequest(c.c), false, c.c.method)
				if err != nil {
					t.Fatal(err)
				}
				if r.status != c.status {
					t.Fatalf("status %d, want %d; body %q", r.status, c.status, r.body)
				}
			})
		}
	})
}

// TestQueryPairsNotDropped is the regression test for query pairs that
// url.ParseQuery cannot decode: they used to be dropped silently, so that a
// filter was lifted and every row came back. Now the raw value is used, which
// matches nothing for the unvalidated filters (§4.14, §4.25) and is refused
// by the validated ones (§4.19; the audit action, since the security review).
func TestQueryPairsNotDropped(t *testing.T) {
	e := newHostileEnv(t, "plain")
	c := e.ts.client("")
	for _, q := range []string{
		"/api/v1/releases?host=web-01;x", "/api/v1/releases?host=web-01%zz",
		"/api/v1/audit?actor=system:bootstrap%zz",
	} {
		r := do(t, c, "GET", e.ts.url+q, e.readonly, nil)
		expect(t, r, 200, "")
		if got := string(bytes.TrimSpace(r.body)); got != "[]" {
			t.Errorf("GET %s = %.100s…, want [] (the filter must not be dropped)", q, got)
		}
	}
	// An enum-valued parameter is validated, undecodable or not (§4.19).
	for _, q := range []string{"/api/v1/rollouts?status=running;x", "/api/v1/rollouts?status=running%"} {
		expect(t, do(t, c, "GET", e.ts.url+q, e.readonly, nil), 400, "")
	}
	expect(t, do(t, c, "GET", e.ts.url+"/api/v1/audit?action=bootstrap;x", e.readonly, nil), 400, "action: not an audit action: bootstrap;x")
	r := do(t, c, "GET", e.ts.url+"/api/v1/audit/export?target=first-admin%zz", e.readonly, nil)
	expect(t, r, 200, "")
	if string(r.body) != csvHeader {
		t.Errorf("export with an undecodable filter = %q, want only the header", r.body)
	}
}

// TestMalformedRequestsNetHTTP covers requests that net/http answers before
// the application sees them (§2.5: a malformed request line, oversized
// headers, invalid header bytes, bad framing). Their bodies are net/http's
// plain text, not JSON, which §2.5 allows; only the status and that the
// connection is closed promptly (no hang) are checked. Two rows document
// net/http answers outside 4xx: 501 for an unsupported Transfer-Encoding and
// 505 for an unsupported HTTP version.
func TestMalformedRequestsNetHTTP(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	addr := ts.ts.Listener.Addr().String()
	dial := func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
	// req joins the request line and header lines, adding Connection: close
	// so that a request net/http accepts cannot keep the connection open.
	req := func(lines ...string) []byte {
		return []byte(strings.Join(append(lines, "Connection: close"), "\r\n") + "\r\n\r\n")
	}
	for _, c := range []struct {
		name   string
		req    []byte
		status int
	}{
		{"garbage request line", req("GARBAGE"), 400},
		{"request line without a version", req("GET /health"), 400},
		{"missing Host", req("GET /health HTTP/1.1"), 400},
		{"two Host headers", req("GET /health HTTP/1.1", "Host: a", "Host: b"), 400},
		{"space in a header name", req("GET /health HTTP/1.1", "Host: x", "Bad Header: 1"), 400},
		{"NUL in a header value", req("GET /health HTTP/1.1", "Host: x", "X-A: a\x00b"), 400},
		{"header line without a colon", req("GET /health HTTP/1.1", "Host: x", "NoColon"), 400},
		{"control character in the target", req("GET /hea\x01lth HTTP/1.1", "Host: x"), 400},
		{"invalid percent escape in the path", req("GET /api/v1/machines/%zz/desired-generation HTTP/1.1", "Host: x"), 400},
		{"invalid method token", req("G(T /health HTTP/1.1", "Host: x"), 400},
		{"non-numeric Content-Length", req("POST /api/v1/keys/bootstrap HTTP/1.1", "Host: x", "Content-Length: abc"), 400},
		{"negative Content-Length", req("POST /api/v1/keys/bootstrap HTTP/1.1", "Host: x", "Content-Length: -1"), 400},
		{"conflicting Content-Length headers", req("POST /api/v1/keys/bootstrap HTTP/1.1", "Host: x", "Content-Length: 2", "Content-Length: 3"), 400},
		{"100 KiB header", req("GET /health HTTP/1.1", "Host: x", "X-Big: "+strings.Repeat("b", 100<<10)), 431},
		{"2000 headers over 64 KiB", req(append([]string{"GET /health HTTP/1.1", "Host: x"}, strings.Split(strings.Repeat("X-Many: "+strings.Repeat("m", 40)+"\n", 2000), "\n")[:2000]...)...), 431},
		{"100 KiB request target", req("GET /"+strings.Repeat("t", 100<<10)+" HTTP/1.1", "Host: x"), 431},
		{"unknown Expect", req("POST /api/v1/keys/bootstrap HTTP/1.1", "Host: x", "Expect: teapot", "Content-Length: 2"), 417},
		{"Transfer-Encoding gzip (501)", req("POST /api/v1/keys/bootstrap HTTP/1.1", "Host: x", "Transfer-Encoding: gzip"), 501},
		{"HTTP/9.9 (505)", req("GET /health HTTP/9.9", "Host: x"), 505},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := hostileExchange(dial, c.req, false, "GET")
			if err != nil {
				t.Fatalf("%v (status %d)", err, r.status)
			}
			if r.status != c.status {
				t.Fatalf("status %d, want %d; body %q", r.status, c.status, r.body)
			}
		})
	}
	// The server is still healthy afterwards.
	expect(t, do(t, ts.client(""), "GET", ts.url+"/health", "", nil), 200, "")
}
