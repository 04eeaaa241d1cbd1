package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The event stream (GET /api/v1/events): rollout events and audit rows as
// they commit. After every commit that wrote either, the store reads the new
// rows once (store_events.go) and the hub hands them to every open stream
// through a bounded buffer; a stream whose buffer is full is dropped, so a
// slow client never slows the writer or the other streams. A stream that
// resumes (Last-Event-ID) first reads what it missed from the database in
// pages, then continues with what the hub sends.

// Event stream defaults.
const (
	defaultMaxEventStreams = 100  // --max-event-streams
	defaultEventBuffer     = 1024 // events queued per stream before it is dropped
	eventPage              = 500  // rows per source read per page when catching up
	maxEventID             = math.MaxInt64
	maxEventRead           = -1 // SQLite's "no limit": a commit's rows are read at once
)

var (
	// errEventPosition: the hub does not know the newest ids; the store
	// finds them under the writer lock (subscribeEvents).
	errEventPosition = errors.New("event position unknown")
	// errStreamDropped ends a stream whose client fell behind.
	errStreamDropped = errors.New("event stream dropped: the client is not keeping up")
)

// eventCursor is a position in both event sources, whose ids are separate
// sequences: the last audit id and the last rollout event id delivered. Its
// text form "<audit id>-<rollout event id>" is the SSE id; clients treat it
// as opaque.
type eventCursor struct{ audit, rollout int64 }

func (c eventCursor) String() string {
	return strconv.FormatInt(c.audit, 10) + "-" + strconv.FormatInt(c.rollout, 10)
}

// parseEventCursor reads the text form of an eventCursor; name is the
// parameter or header it came from, for the 400.
func parseEventCursor(name, s string) (eventCursor, error) {
	var c eventCursor
	a, r, ok := strings.Cut(s, "-")
	if ok && isDigits(a) && isDigits(r) {
		var errA, errR error
		c.audit, errA = strconv.ParseInt(a, 10, 64)
		c.rollout, errR = strconv.ParseInt(r, 10, 64)
		if errA == nil && errR == nil {
			return c, nil
		}
	}
	return eventCursor{}, invalidf("%s: must be an event id as sent by the stream (<number>-<number>)", name)
}

// Event kinds, the SSE event names.
const (
	eventKindRollout = "rollout"
	eventKindAudit   = "audit"
)

// streamEvent is one message of the stream: a rollout event or an audit row,
// already encoded as one line of JSON.
type streamEvent struct {
	kind    string // eventKindRollout or eventKindAudit
	id      int64  // the row id in its own sequence
	rollout string // rollout events: the rollout id; audit rows: the target
	data    []byte
}

// eventFilter selects the events of a stream (?rollout=, ?types=).
type eventFilter struct {
	rollout         string // "" for every rollout
	rollouts, audit bool   // which kinds
}

// parseEventFilter validates the query parameters of the stream.
func parseEventFilter(rollout []string, types []string) (eventFilter, error) {
	f := eventFilter{rollouts: true, audit: true}
	if len(rollout) > 0 {
		if len(rollout) > 1 || checkRolloutID(rollout[0]) != nil {
			return f, invalidf("rollout: must be one rollout id")
		}
		f.rollout = rollout[0]
	}
	if len(types) > 0 {
		f.rollouts, f.audit = false, false
		for _, list := range types {
			for _, t := range strings.Split(list, ",") {
				switch t {
				case eventKindRollout:
					f.rollouts = true
				case eventKindAudit:
					f.audit = true
				default:
					return f, invalidf("types: must be a comma-separated list of rollout and audit")
				}
			}
		}
	}
	return f, nil
}

// match reports whether the stream wants ev.
func (f eventFilter) match(ev streamEvent) bool {
	switch ev.kind {
	case eventKindRollout:
		return f.rollouts && (f.rollout == "" || ev.rollout == f.rollout)
	default:
		return f.audit && (f.rollout == "" || isRolloutTarget(ev.rollout, f.rollout))
	}
}

// isRolloutTarget reports whether an audit target is rollout rid or one of
// its batches ("<rid>-b<index>").
func isRolloutTarget(target, rid string) bool {
	rest, ok := strings.CutPrefix(target, rid)
	if !ok {
		return false
	}
	if rest == "" {
		return true
	}
	i, ok := strings.CutPrefix(rest, "-b")
	return ok && isDigits(i)
}

// encodeRolloutEvent and encodeAuditEvent turn rows into stream events.
func encodeRolloutEvent(ev eventDetail) streamEvent {
	b, _ := marshalJSON(ev) // plain strings and integers: cannot fail
	return streamEvent{kind: eventKindRollout, id: ev.ID, rollout: ev.RolloutID, data: b[:len(b)-1]}
}

func encodeAuditEvent(ev auditEvent) streamEvent {
	b, _ := marshalJSON(ev)
	return streamEvent{kind: eventKindAudit, id: ev.ID, rollout: ev.Target, data: b[:len(b)-1]}
}

// mergeEvents interleaves rollout events and audit rows, each already in id
// order, by timestamp: the rows of one transaction share a timestamp, and
// its rollout events come before its audit rows. Each source keeps its own
// order, which is all a cursor needs.
func mergeEvents(rolls []eventDetail, audits []auditEvent) []streamEvent {
	out := make([]streamEvent, 0, len(rolls)+len(audits))
	i, j := 0, 0
	for i < len(rolls) || j < len(audits) {
		if j == len(audits) || i < len(rolls) && rolls[i].CreatedAt <= audits[j].Timestamp {
			out = append(out, encodeRolloutEvent(rolls[i]))
			i++
		} else {
			out = append(out, encodeAuditEvent(audits[j]))
			j++
		}
	}
	return out
}

// subscription is one open stream's place in the hub.
type subscription struct {
	filter eventFilter
	ch     chan streamEvent
	done   chan struct{} // closed when the hub ends the stream; err says why
	err    error
}

// eventHub fans committed events out to the open streams.
type eventHub struct {
	m          *metrics
	maxStreams int
	bufSize    int
	pageSize   int // rows per source and page when a stream catches up

	mu     sync.Mutex
	subs   map[*subscription]struct{}
	pos    eventCursor // the newest ids published, when known
	known  bool
	closed bool
}

func newEventHub(m *metrics) *eventHub {
	return &eventHub{m: m, maxStreams: defaultMaxEventStreams, bufSize: defaultEventBuffer, pageSize: eventPage,
		subs: map[*subscription]struct{}{}}
}

// position returns the newest ids published, with ok false when nobody
// listens (the hub then forgets them, and publishing can skip the read).
func (h *eventHub) position() (eventCursor, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		h.known = false
	}
	return h.pos, h.known
}

// publish delivers one commit's events to every stream that wants them and
// advances the position. A stream whose buffer is full is dropped and
// counted. If the rows could not be read (err), every stream ends: each
// client resumes from the database with its last id.
func (h *eventHub) publish(evs []streamEvent, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.known = false
		for sub := range h.subs {
			h.end(sub, fmt.Errorf("read committed events: %w", err))
		}
		return
	}
	for _, ev := range evs {
		if ev.kind == eventKindRollout {
			h.pos.rollout = max(h.pos.rollout, ev.id)
		} else {
			h.pos.audit = max(h.pos.audit, ev.id)
		}
		for sub := range h.subs {
			if !sub.filter.match(ev) {
				continue
			}
			select {
			case sub.ch <- ev:
			default:
				h.end(sub, errStreamDropped)
				h.m.eventStreamsDropped.Add(1)
			}
		}
	}
}

// subscribe registers a stream and returns the hub's position: every event
// after it will be sent to the stream. heads is the newest ids when the
// caller has read them under the writer lock; without it, subscribe returns
// errEventPosition when the hub does not know its position.
func (h *eventHub) subscribe(f eventFilter, heads *eventCursor) (*subscription, eventCursor, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return nil, eventCursor{}, errShuttingDown
	case len(h.subs) >= h.maxStreams:
		return nil, eventCursor{}, errTooManyStreams
	case heads != nil && !h.known:
		h.pos, h.known = *heads, true
	case !h.known:
		return nil, eventCursor{}, errEventPosition
	}
	sub := &subscription{filter: f, ch: make(chan streamEvent, h.bufSize), done: make(chan struct{})}
	h.subs[sub] = struct{}{}
	h.m.eventStreams.Store(int64(len(h.subs)))
	return sub, h.pos, nil
}

// end removes sub and tells its stream why; the caller holds h.mu.
func (h *eventHub) end(sub *subscription, err error) {
	if _, ok := h.subs[sub]; !ok {
		return
	}
	delete(h.subs, sub)
	sub.err = err
	close(sub.done)
	h.m.eventStreams.Store(int64(len(h.subs)))
}

// unsubscribe removes a stream that ended on its own (client gone).
func (h *eventHub) unsubscribe(sub *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.end(sub, nil)
}

// close ends every stream and refuses new ones: the server is shutting
// down, and http.Server.Shutdown waits for handlers that never return.
func (h *eventHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for sub := range h.subs {
		h.end(sub, errShuttingDown)
	}
}

// eventStream is one client's stream: first the rows it missed, read from
// the database in pages up to the position it subscribed at, then the
// events the hub sends, without duplicates.
type eventStream struct {
	cp     *controlPlane
	hub    *eventHub
	sub    *subscription
	filter eventFilter
	cur    eventCursor // the last ids delivered (or skipped by the filter)
	upTo   eventCursor // the end of the catch-up: the hub's position at subscribe
	size   int         // rows per source and page of the catch-up
	page   []streamEvent
	live   bool
}

// openEventStream subscribes to the hub and returns the stream. With from,
// the stream starts with every event after it; without, at the newest
// committed event. It returns errTooManyStreams at the cap and
// errShuttingDown once the server is stopping.
func (cp *controlPlane) openEventStream(ctx context.Context, f eventFilter, from *eventCursor) (*eventStream, error) {
	sub, pos, err := cp.st.subscribeEvents(ctx, f)
	if err != nil {
		return nil, err
	}
	s := &eventStream{cp: cp, hub: cp.st.events, sub: sub, filter: f, cur: pos, upTo: pos, live: true,
		size: cp.st.events.pageSize}
	if from != nil {
		s.cur, s.live = *from, false
	}
	return s, nil
}

// cursor is the id of the last event returned by next.
func (s *eventStream) cursor() eventCursor { return s.cur }

// close leaves the hub.
func (s *eventStream) close() { s.hub.unsubscribe(s.sub) }

// next returns the next event, or (nil, nil) when tick fires first (time
// for a heartbeat). An error ends the stream: ctx's, errStreamDropped,
// errShuttingDown, or a failed read.
func (s *eventStream) next(ctx context.Context, tick <-chan time.Time) (*streamEvent, error) {
	for !s.live {
		if len(s.page) == 0 {
			if err := s.readPage(ctx); err != nil {
				return nil, err
			}
			if len(s.page) == 0 {
				s.live = true
				break
			}
		}
		ev := s.page[0]
		s.page = s.page[1:]
		if s.filter.match(ev) && s.advance(ev) {
			return &ev, nil
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.sub.done:
			return nil, s.sub.err
		case <-tick:
			return nil, nil
		case ev := <-s.sub.ch:
			if s.advance(ev) {
				return &ev, nil
			}
		}
	}
}

// advance moves the cursor past ev and reports whether ev is new to the
// client (catch-up and live delivery never overlap, but a cursor from the
// client may be ahead of either).
func (s *eventStream) advance(ev streamEvent) bool {
	p := &s.cur.audit
	if ev.kind == eventKindRollout {
		p = &s.cur.rollout
	}
	if ev.id <= *p {
		return false
	}
	*p = ev.id
	return true
}

// readPage reads the next page of missed events, between the cursor and
// the position the stream subscribed at, in one read transaction that ends
// before anything is written to the client. A page holds the rows of both
// sources up to the lower of their last timestamps, so the merge stays in
// order across pages.
func (s *eventStream) readPage(ctx context.Context) error {
	var rolls []eventDetail
	var audits []auditEvent
	page := s.size
	err := s.cp.st.read(ctx, func(d dbq) error {
		var err error
		if s.filter.rollouts && s.cur.rollout < s.upTo.rollout {
			if rolls, err = d.rolloutEventsAfter(s.cur.rollout, s.upTo.rollout, s.filter.rollout, page); err != nil {
				return err
			}
		}
		if s.filter.audit && s.cur.audit < s.upTo.audit {
			if audits, err = d.auditAfter(s.cur.audit, s.upTo.audit, s.filter.rollout, page); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A full page may stop before rows of the other source with a later
	// timestamp: keep only what is certainly in order.
	if len(rolls) == page && len(audits) > 0 {
		last := rolls[len(rolls)-1].CreatedAt
		audits = audits[:countWhile(audits, func(a auditEvent) bool { return a.Timestamp < last })]
	}
	if len(audits) == page && len(rolls) > 0 {
		last := audits[len(audits)-1].Timestamp
		rolls = rolls[:countWhile(rolls, func(r eventDetail) bool { return r.CreatedAt <= last })]
	}
	s.page = mergeEvents(rolls, audits)
	return nil
}

// countWhile returns how many leading elements of xs satisfy ok.
func countWhile[T any](xs []T, ok func(T) bool) int {
	if i := slices.IndexFunc(xs, func(x T) bool { return !ok(x) }); i >= 0 {
		return i
	}
	return len(xs)
}
