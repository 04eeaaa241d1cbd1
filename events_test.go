package main

// Tests of the event stream (events.go, api_events.go, store_events.go):
// real HTTP clients reading GET /api/v1/events while the daemon works.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// sseMsg is one message of a stream; comment lines arrive as comment.
type sseMsg struct {
	id, event, data, comment string
}

// sseStream is a client reading one event stream on its own goroutine.
type sseStream struct {
	resp   *http.Response
	cancel context.CancelFunc
	msgs   chan sseMsg
	end    chan error // the read error that ended the stream (io.EOF: clean end)
}

// openStream opens url with key and extra headers, expects 200 with the
// event-stream content type, and reads messages until the stream ends or
// the test does.
func openStream(t testing.TB, c *http.Client, url, key string, hdr map[string]string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %d %s: %s", url, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := &sseStream{resp: resp, cancel: cancel, msgs: make(chan sseMsg, 10000), end: make(chan error, 1)}
	go s.read()
	t.Cleanup(s.close)
	return s
}

func (s *sseStream) read() {
	br := bufio.NewReader(s.resp.Body)
	var m sseMsg
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			s.end <- err
			close(s.msgs)
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			s.msgs <- m
			m = sseMsg{}
		case strings.HasPrefix(line, ":"):
			m.comment = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, "id: "):
			m.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			m.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			m.data = line[6:]
		default:
			m.comment = "unexpected line " + line
		}
	}
}

func (s *sseStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next event (comments skipped) and fails the test if
// none arrives within 10 s or the stream ends.
func (s *sseStream) next(t testing.TB) sseMsg {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatalf("stream ended: %v", <-s.end)
			}
			if m.comment != "" && m.event == "" {
				continue
			}
			return m
		case <-timeout:
			t.Fatal("no event within 10 s")
		}
	}
}

// until reads events until done returns true for one, and returns them all.
func (s *sseStream) until(t testing.TB, done func(sseMsg) bool) []sseMsg {
	t.Helper()
	var out []sseMsg
	for {
		m := s.next(t)
		out = append(out, m)
		if done(m) {
			return out
		}
	}
}

// ended waits for the stream to end and returns the read error (io.EOF for
// a clean end of the response).
func (s *sseStream) ended(t testing.TB) error {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-s.msgs:
			if !ok {
				return <-s.end
			}
		case <-timeout:
			t.Fatal("stream still open after 10 s")
		}
	}
}

// streamClient has no overall timeout: a stream lasts as long as it lasts.
func streamClient() *http.Client { return &http.Client{} }

// auditID and rolloutID are the row ids of a message.
func msgRowID(t testing.TB, m sseMsg) int64 {
	t.Helper()
	var v struct{ ID int64 }
	if err := json.Unmarshal([]byte(m.data), &v); err != nil || v.ID == 0 {
		t.Fatalf("message %+v: no id (%v)", m, err)
	}
	return v.ID
}

// maxAuditID is the newest audit id.
func maxAuditID(t testing.TB, c *http.Client, base, key string) int64 {
	t.Helper()
	rows := auditRows(t, c, base, key, "?limit=1")
	if len(rows) == 0 {
		return 0
	}
	return rows[0].ID
}

// checkContiguous checks that the messages carry exactly the audit ids
// from+1, from+2, … and that each id line is the cursor after its row.
func checkContiguous(t testing.TB, msgs []sseMsg, from eventCursor) eventCursor {
	t.Helper()
	cur := from
	for _, m := range msgs {
		id := msgRowID(t, m)
		switch m.event {
		case "audit":
			if id != cur.audit+1 {
				t.Fatalf("audit id %d after %d: a gap or a duplicate", id, cur.audit)
			}
			cur.audit = id
		case "rollout":
			if id <= cur.rollout {
				t.Fatalf("rollout event id %d after %d", id, cur.rollout)
			}
			cur.rollout = id
		default:
			t.Fatalf("event %q", m.event)
		}
		if m.id != cur.String() {
			t.Fatalf("id line %q, want %q", m.id, cur)
		}
	}
	return cur
}

// TestEventStreamFollowsRollout reads the stream with a readonly key while
// a staged rollout runs on the real executor loop: every rollout event
// arrives exactly as RolloutDetail.events has it (§5.5, §9.11) and every
// audit row exactly as GET /api/v1/audit has it (§5.6), in id order.
func TestEventStreamFollowsRollout(t *testing.T) {
	a := rtNewAPI(t)
	s := openStream(t, streamClient(), a.url+"/api/v1/events", a.R, nil)
	hosts := []string{"web-01", "web-02", "web-03"}
	rtRegister(t, a.c, a.url, a.A, hosts...)
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, hosts...)
	body := rtHostsRollout(rel, "staged", hosts...)
	body["batch_sizes"] = []string{"1", "100%"}
	rid := rtCreate(t, a.c, a.url, a.D, body).RolloutID
	for i := range 2 {
		d := a.waitBatch(t, rid, i, "deploying", "waiting_health")
		for _, m := range d.Batches[i].MachineIDs {
			rtReport(t, a.c, a.url, reportBody(m, rtRelPath(m), true, "deployed"))
			rtReport(t, a.c, a.url, healthBody(m, rtRelPath(m)))
		}
	}
	d := a.waitStatus(t, rid, "completed")
	last := maxAuditID(t, a.c, a.url, a.A)
	msgs := s.until(t, func(m sseMsg) bool { return m.event == "audit" && msgRowID(t, m) == last })

	var gotRollout []eventDetail
	gotAudit := map[int64]auditEvent{}
	for _, m := range msgs {
		switch m.event {
		case "rollout":
			var ev eventDetail
			if err := json.Unmarshal([]byte(m.data), &ev); err != nil {
				t.Fatal(err)
			}
			gotRollout = append(gotRollout, ev)
		case "audit":
			var ev auditEvent
			if err := json.Unmarshal([]byte(m.data), &ev); err != nil {
				t.Fatal(err)
			}
			gotAudit[ev.ID] = ev
		}
	}
	if !reflect.DeepEqual(gotRollout, d.Events) {
		t.Errorf("rollout events on the stream:\n%+v\nRolloutDetail.events:\n%+v", gotRollout, d.Events)
	}
	want := auditRows(t, a.c, a.url, a.A, "?limit=1000")
	first := want[len(want)-1].ID // the keys were created before the stream opened
	for _, row := range want {
		if row.ID <= first+2 { // bootstrap and the two keys of rtNewAPI
			continue
		}
		if got, ok := gotAudit[row.ID]; !ok || !reflect.DeepEqual(got, row) {
			t.Errorf("audit row %d on the stream: %+v, want %+v", row.ID, got, row)
		}
	}
	if len(gotAudit) != len(want)-3 {
		t.Errorf("%d audit rows on the stream, want %d", len(gotAudit), len(want)-3)
	}
	// The data line is the API's compact JSON, byte for byte.
	byID := map[int64]eventDetail{}
	for _, ev := range d.Events {
		byID[ev.ID] = ev
	}
	for _, m := range msgs {
		if m.event == "rollout" {
			b, _ := marshalJSON(byID[msgRowID(t, m)])
			if want := strings.TrimSuffix(string(b), "\n"); m.data != want {
				t.Errorf("data %s\nwant %s", m.data, want)
			}
		}
	}
}

// TestEventStreamResumeNoGap disconnects a stream, lets changes commit, and
// resumes with Last-Event-ID (and with ?last_event_id=): the two sessions
// together carry every audit id once, in order, with nothing missed; a
// resumed stream then goes on live. Meanwhile a writer keeps committing, so
// rows commit between the subscription and the catch-up read.
func TestEventStreamResumeNoGap(t *testing.T) {
	e := rtNewExecEnv(t)
	c := streamClient()
	start := eventCursor{audit: maxAuditID(t, e.c, e.url, e.admin)}
	s1 := openStream(t, c, e.url+"/api/v1/events", e.admin, nil)
	e.register("web-01", "web-02", "web-03")
	got1 := s1.until(t, func(m sseMsg) bool { return m.event == "audit" && strings.Contains(m.data, `"web-02"`) })
	cur := checkContiguous(t, got1, start)
	s1.close()

	// Changes while disconnected, and a writer that keeps going while the
	// next streams open.
	rel := e.release(nil, "web-01", "web-02", "web-03")
	rid := e.create(rtHostsRollout(rel, "all_at_once", "web-01", "web-02", "web-03")).RolloutID
	e.pass()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if code, _, err := tryDo(e.c, "PUT", fmt.Sprintf("%s/api/v1/machines/web-01/tags", e.url), e.admin,
				map[string]any{"tags": []string{fmt.Sprintf("t%d", i)}}); err != nil || code != 200 {
				t.Errorf("tags: %d %v", code, err)
				return
			}
		}
	}()
	s2 := openStream(t, c, e.url+"/api/v1/events", e.admin, map[string]string{"Last-Event-ID": cur.String()})
	s3 := openStream(t, c, e.url+"/api/v1/events?last_event_id="+cur.String(), e.admin, nil)
	close(stop)
	wg.Wait()
	e.healthy("web-01")
	last := maxAuditID(t, e.c, e.url, e.admin)
	isLast := func(m sseMsg) bool { return m.event == "audit" && msgRowID(t, m) == last }
	got2 := s2.until(t, isLast)
	got3 := s3.until(t, isLast)
	end2 := checkContiguous(t, got2, cur)
	checkContiguous(t, got3, cur)
	if !reflect.DeepEqual(got2, got3) {
		t.Errorf("Last-Event-ID and ?last_event_id= streams differ")
	}
	var events int
	for _, m := range got2 {
		if m.event == "rollout" {
			events++
		}
	}
	if d := rtDetail(t, e.c, e.url, e.admin, rid); events != len(d.Events) {
		t.Errorf("%d rollout events after resuming, want the rollout's %d", events, len(d.Events))
	}

	// Live after the catch-up.
	e.register("web-04")
	checkContiguous(t, []sseMsg{s2.next(t)}, end2)

	// last_event_id=0-0 replays everything from the first row.
	all := openStream(t, c, e.url+"/api/v1/events?types=audit&last_event_id=0-0", e.admin, nil)
	checkContiguous(t, all.until(t, isLast), eventCursor{})
}

// TestEventStreamFilters covers ?rollout= (its events and the audit rows of
// the rollout and its batches) and ?types=.
func TestEventStreamFilters(t *testing.T) {
	e := rtNewExecEnv(t)
	c := streamClient()
	e.register("web-01", "web-02")
	rel := e.release(nil, "web-01", "web-02")
	from := map[string]string{"Last-Event-ID": "0-0"}
	r1 := e.create(rtHostsRollout(rel, "all_at_once", "web-01")).RolloutID
	r2 := e.create(rtHostsRollout(rel, "all_at_once", "web-02")).RolloutID
	// A catch-up orders the two sources by commit time (milliseconds), so
	// the deploy step commits a second later.
	e.advance(time.Second)
	e.pass()
	last := maxAuditID(t, e.c, e.url, e.admin)

	one := openStream(t, c, e.url+"/api/v1/events?rollout="+r1, e.admin, from)
	msgs := one.until(t, func(m sseMsg) bool { return m.event == "audit" && strings.Contains(m.data, "batch.deploying") })
	var kinds []string
	for _, m := range msgs {
		if !strings.Contains(m.data, `"`+r1) || strings.Contains(m.data, r2) {
			t.Errorf("?rollout=%s sent %s", r1, m.data)
		}
		kinds = append(kinds, m.event)
	}
	// Create: status_change + rollout.created; deploy: batch_started + batch.deploying.
	rtWantStrings(t, "kinds", kinds, []string{"rollout", "audit", "rollout", "audit"})

	audits := openStream(t, c, e.url+"/api/v1/events?types=audit", e.admin, from)
	for _, m := range audits.until(t, func(m sseMsg) bool { return msgRowID(t, m) == last }) {
		if m.event != "audit" {
			t.Errorf("?types=audit sent %s", m.event)
		}
	}
	rollouts := openStream(t, c, e.url+"/api/v1/events?types=rollout", e.admin, from)
	n := 0
	for _, m := range rollouts.until(t, func(m sseMsg) bool { n++; return n == 4 }) {
		if m.event != "rollout" || !strings.HasPrefix(m.id, "0-") {
			t.Errorf("?types=rollout sent %s with id %s", m.event, m.id)
		}
	}
	both := openStream(t, c, e.url+"/api/v1/events?types=rollout,audit", e.admin, from)
	seen := map[string]bool{}
	both.until(t, func(m sseMsg) bool { seen[m.event] = true; return len(seen) == 2 })
}

// TestEventStreamRefusals: every refusal comes before the stream starts, as
// a JSON error naming the problem.
func TestEventStreamRefusals(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		name, query, lastID, key string
		status                   int
		msg                      string
	}{
		{"no key", "", "", "-", 401, "missing API key"},
		{"bad key", "", "", "nope", 401, "invalid API key"},
		{"unknown type", "?types=rollout,machine", "", "", 400, "types: must be a comma-separated list of rollout and audit"},
		{"empty type", "?types=", "", "", 400, "types: must be a comma-separated list of rollout and audit"},
		{"bad rollout", "?rollout=a%20b", "", "", 400, "rollout: must be one rollout id"},
		{"two rollouts", "?rollout=r-1&rollout=r-2", "", "", 400, "rollout: must be one rollout id"},
		{"bad header", "", "17", "", 400, "Last-Event-ID: must be an event id as sent by the stream (<number>-<number>)"},
		{"bad parameter", "?last_event_id=1-x", "", "", 400, "last_event_id: must be an event id as sent by the stream (<number>-<number>)"},
		{"negative", "?last_event_id=-1-2", "", "", 400, "last_event_id: must be an event id as sent by the stream (<number>-<number>)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			switch tc.key {
			case "":
				hdr["Authorization"] = "Bearer " + e.R
			case "-":
			default:
				hdr["Authorization"] = "Bearer " + tc.key
			}
			if tc.lastID != "" {
				hdr["Last-Event-ID"] = tc.lastID
			}
			r := authSend(t, e.c, "GET", e.url+"/api/v1/events"+tc.query, hdr, "")
			if tc.status == 401 {
				authExpect401(t, r, tc.msg)
			} else {
				expect(t, r, tc.status, tc.msg)
			}
		})
	}
}

// TestEventStreamRevokedKeyEnds: the key is checked again at every
// heartbeat, so revoking it ends its open streams.
func TestEventStreamRevokedKeyEnds(t *testing.T) {
	e := newTestEnv(t)
	e.ts.srv.heartbeat = 20 * time.Millisecond
	s := openStream(t, streamClient(), e.url+"/api/v1/events", e.R, nil)
	waitFor(t, 10*time.Second, "a heartbeat", func() bool { m := <-s.msgs; return m.comment == "heartbeat" })
	var keys []keyInfo
	do(t, e.c, "GET", e.url+"/api/v1/keys", e.A, nil).json(t, &keys)
	for _, k := range keys {
		if k.Name == "reader" {
			expect(t, do(t, e.c, "DELETE", fmt.Sprintf("%s/api/v1/keys/%d", e.url, k.ID), e.A, nil), 204, "")
		}
	}
	if err := s.ended(t); err != io.EOF {
		t.Errorf("stream ended with %v, want a clean end", err)
	}
}

// TestEventStreamSlowClientDropped: a client whose buffer fills is
// disconnected and counted, while another stream gets every event.
func TestEventStreamSlowClientDropped(t *testing.T) {
	e := newTestEnv(t)
	e.ts.st.events.bufSize = 4
	release := make(chan struct{})
	e.ts.srv.testingOnlyEventWrite = func(r *http.Request) {
		if r.Header.Get("X-Test-Slow") != "" {
			<-release
		}
	}
	c := streamClient()
	slow := openStream(t, c, e.url+"/api/v1/events", e.R, map[string]string{"X-Test-Slow": "1"})
	fast := openStream(t, c, e.url+"/api/v1/events", e.R, nil)
	if got := e.metric(t, "nixfleet_event_streams"); got != 2 {
		t.Errorf("nixfleet_event_streams %v, want 2", got)
	}
	start := eventCursor{audit: maxAuditID(t, e.c, e.url, e.A)}
	for i := 1; i <= 10; i++ {
		expect(t, e.register(t, fmt.Sprintf("web-%02d", i), map[string]any{}), 201, "")
	}
	got := fast.until(t, func(m sseMsg) bool { return strings.Contains(m.data, `"web-10"`) })
	checkContiguous(t, got, start)
	waitFor(t, 10*time.Second, "the slow stream to be dropped", func() bool {
		return e.metric(t, "nixfleet_event_streams_dropped_total") == 1
	})
	close(release)
	if err := slow.ended(t); err != io.EOF {
		t.Errorf("slow stream ended with %v", err)
	}
	if got := e.metric(t, "nixfleet_event_streams"); got != 1 {
		t.Errorf("nixfleet_event_streams %v, want 1", got)
	}
}

// TestEventStreamCap: beyond --max-event-streams a stream is refused with
// 503 and a JSON error; closing one makes room.
func TestEventStreamCap(t *testing.T) {
	e := newTestEnv(t)
	e.ts.st.events.maxStreams = 2
	c := streamClient()
	first := openStream(t, c, e.url+"/api/v1/events", e.R, nil)
	openStream(t, c, e.url+"/api/v1/events", e.R, nil)
	r := do(t, e.c, "GET", e.url+"/api/v1/events", e.R, nil)
	expect(t, r, 503, "too many open event streams, retry later")
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	first.close()
	waitFor(t, 10*time.Second, "the closed stream to leave", func() bool { return e.metric(t, "nixfleet_event_streams") == 1 })
	openStream(t, c, e.url+"/api/v1/events", e.R, nil)
}

// TestEventStreamShutdown: a graceful shutdown ends open streams cleanly
// (the response ends; the connection is not cut at the end of the grace
// period), and run returns.
func TestEventStreamShutdown(t *testing.T) {
	rs := startRun(t, nil)
	c := &http.Client{Timeout: 30 * time.Second}
	key := bootstrapKey(t, c, rs.url)
	s := openStream(t, streamClient(), rs.url+"/api/v1/events", key, nil)
	rs.cancel()
	if err := s.ended(t); err != io.EOF {
		t.Errorf("stream ended with %v, want a clean end", err)
	}
	select {
	case err := <-rs.done:
		rs.done <- err // for the cleanup's stop
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("run did not return\nlogs:\n%s", rs.logs.String())
	}
}

// TestEventStreamOutlivesServerTimeouts: a stream is not cut by the
// server's ReadTimeout or WriteTimeout (here shortened), and still delivers
// once both have long passed.
func TestEventStreamOutlivesServerTimeouts(t *testing.T) {
	e := newTestEnv(t)
	e.ts.srv.heartbeat = 20 * time.Millisecond
	srv := httptest.NewUnstartedServer(e.ts.srv.handler())
	srv.Config = newHTTPServer(e.ts.srv.handler(), e.ts.log)
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond
	srv.Start()
	defer srv.Close()
	defer e.ts.st.events.close()
	s := openStream(t, streamClient(), srv.URL+"/api/v1/events", e.R, nil)
	deadline := time.Now().Add(time.Second) // ten times both timeouts
	for beats := 0; beats < 5 || time.Now().Before(deadline); {
		m, ok := <-s.msgs
		if !ok {
			t.Fatalf("stream ended after %d heartbeats: %v", beats, <-s.end)
		}
		if m.comment == "heartbeat" {
			beats++
		}
	}
	expect(t, e.register(t, "web-01", map[string]any{}), 201, "")
	if m := s.next(t); m.event != "audit" || !strings.Contains(m.data, `"register"`) {
		t.Errorf("after the timeouts: %+v", m)
	}
}

// TestEventCursor: the text form round-trips and anything else is refused.
func TestEventCursor(t *testing.T) {
	for _, c := range []eventCursor{{}, {1, 0}, {42, 17}, {1<<63 - 1, 1<<63 - 1}} {
		got, err := parseEventCursor("id", c.String())
		if err != nil || got != c {
			t.Errorf("round trip of %v: %v, %v", c, got, err)
		}
	}
	for _, s := range []string{"", "1", "1-", "-1", "1-2-3", "a-b", "+1-2", "1-9223372036854775808", " 1-2"} {
		var ve *validationError
		if _, err := parseEventCursor("id", s); !errors.As(err, &ve) {
			t.Errorf("parseEventCursor(%q) = %v, want a validation error", s, err)
		}
	}
}

// TestEventStreamMTLS: in mTLS mode the stream and the page need the
// operator's certificate (the handshake fails without one) and the stream
// also its key.
func TestEventStreamMTLS(t *testing.T) {
	ts := newTestServer(t, testServerOptions{mode: "mtls", bootstrapCNs: []string{"operator"}})
	op := ts.client("operator")
	op.Timeout = 0 // a stream has no overall deadline
	key := bootstrapKey(t, op, ts.url)
	expect(t, do(t, op, "GET", ts.url+"/ui/", "", nil), 200, "")
	authExpect401(t, do(t, op, "GET", ts.url+"/api/v1/events", "", nil), "missing API key")
	s := openStream(t, op, ts.url+"/api/v1/events", key, nil)
	expect(t, do(t, op, "POST", ts.url+"/api/v1/machines/web-01/register", key, map[string]any{}), 201, "")
	if m := s.next(t); m.event != "audit" || !strings.Contains(m.data, `"action":"register"`) {
		t.Errorf("got %+v", m)
	}
	for _, p := range []string{"/ui/", "/api/v1/events"} {
		if _, _, err := tryDo(ts.client(""), "GET", ts.url+p, key, nil); err == nil {
			t.Errorf("%s without a client certificate: no error", p)
		}
	}
}

// TestEventStreamCatchUpPages: a catch-up read in pages of two rows gives
// exactly what one large page gives: every row once, each kind in id order,
// the kinds interleaved by commit time.
func TestEventStreamCatchUpPages(t *testing.T) {
	e := rtNewExecEnv(t)
	c := streamClient()
	e.register("web-01", "web-02", "web-03")
	rel := e.release(nil, "web-01", "web-02", "web-03")
	for _, m := range []string{"web-01", "web-02", "web-03"} {
		e.advance(time.Second)
		rid := e.create(rtHostsRollout(rel, "all_at_once", m)).RolloutID
		e.advance(time.Second)
		e.pass()
		e.advance(time.Second)
		expect(t, e.action(rid, "cancel", nil), 200, "")
	}
	last := maxAuditID(t, e.c, e.url, e.admin)
	isLast := func(m sseMsg) bool { return m.event == "audit" && msgRowID(t, m) == last }
	whole := openStream(t, c, e.url+"/api/v1/events?last_event_id=0-0", e.admin, nil).until(t, isLast)
	e.ts.st.events.pageSize = 2
	paged := openStream(t, c, e.url+"/api/v1/events?last_event_id=0-0", e.admin, nil).until(t, isLast)
	if !reflect.DeepEqual(whole, paged) {
		t.Fatalf("pages of 2 differ from one page:\n%v\n%v", paged, whole)
	}
	checkContiguous(t, paged, eventCursor{})
	var prev string
	rollouts := 0
	for _, m := range paged {
		var v struct {
			Timestamp string `json:"timestamp"`
			CreatedAt string `json:"created_at"`
		}
		json.Unmarshal([]byte(m.data), &v)
		ts := v.Timestamp + v.CreatedAt
		if ts < prev {
			t.Errorf("%s at %s after %s", m.id, ts, prev)
		}
		prev = ts
		if m.event == "rollout" {
			rollouts++
		}
	}
	if rollouts != 9 { // per rollout: created, batch_started, cancelled
		t.Errorf("%d rollout events, want 9", rollouts)
	}
}
