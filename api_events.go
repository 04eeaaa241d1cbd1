package main

import (
	"errors"
	"net/http"
	"time"
)

// GET /api/v1/events: the event stream (Server-Sent Events). The stream
// itself is events.go; this file validates the request and writes the
// messages.

// heartbeatInterval is how often an idle or busy stream sends a comment
// line: it keeps proxies and load balancers from closing a quiet
// connection, and at each heartbeat the API key is checked again, so a
// revoked or expired key ends its streams within one interval.
const heartbeatInterval = 15 * time.Second

// events serves the stream: rollout events and audit rows as they commit,
// from the Last-Event-ID (header, or ?last_event_id= for clients that
// cannot set headers) when given, else from now. Every error before the
// stream starts is a JSON error; after that, the stream just ends.
func (s *server) events(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	f, err := parseEventFilter(q["rollout"], q["types"])
	if err != nil {
		return err
	}
	var from *eventCursor
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		c, err := parseEventCursor("Last-Event-ID", v)
		if err != nil {
			return err
		}
		from = &c
	} else if v, ok := q["last_event_id"]; ok {
		c, err := parseEventCursor("last_event_id", v[0])
		if err != nil {
			return err
		}
		from = &c
	}
	stream, err := s.cp.openEventStream(r.Context(), f, from)
	if err != nil {
		return err
	}
	defer stream.close()

	// The server's ReadTimeout would cancel the request's context once it
	// passes (net/http's background read fails), and its WriteTimeout would
	// cut the response: a stream lifts both, and instead needs the client
	// to take each write within streamDeadline (deadlineWriter).
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // ask a reverse proxy not to buffer the stream
	w.WriteHeader(http.StatusOK)
	dw := newDeadlineWriter(w)
	write := func(b []byte) bool {
		if _, err := dw.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte(": stream open\n\n")) {
		return nil
	}
	tick := time.NewTicker(s.heartbeat)
	defer tick.Stop()
	buf := make([]byte, 0, 512)
	for {
		ev, err := stream.next(r.Context(), tick.C)
		switch {
		case errors.Is(err, errStreamDropped):
			s.log.Warn("event stream dropped: client too slow", "remote", r.RemoteAddr)
			return nil
		case err != nil:
			if r.Context().Err() == nil && !errors.Is(err, errShuttingDown) {
				s.log.Error("event stream failed", "remote", r.RemoteAddr, "err", err)
			}
			return nil
		case ev == nil: // heartbeat
			if _, err := s.authenticate(r); err != nil {
				return nil
			}
			if !write([]byte(": heartbeat\n\n")) {
				return nil
			}
			continue
		}
		if s.testingOnlyEventWrite != nil {
			s.testingOnlyEventWrite(r)
		}
		buf = append(buf[:0], "id: "...)
		buf = append(buf, stream.cursor().String()...)
		buf = append(buf, "\nevent: "...)
		buf = append(buf, ev.kind...)
		buf = append(buf, "\ndata: "...)
		buf = append(buf, ev.data...)
		buf = append(buf, "\n\n"...)
		if !write(buf) {
			return nil
		}
	}
}
