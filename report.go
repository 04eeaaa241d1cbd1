package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// The agent protocol (§6): the two routes the v0.1 agent calls, and the
// group-commit writer that makes report ingestion both durable and fast.

// reportRequest is the body of POST /api/v1/machines/{id}/report (§5.1).
// Pointer fields tell an absent or null value from a zero value.
type reportRequest struct {
	MachineID         *string        `json:"machine_id"`
	CurrentGeneration *string        `json:"current_generation"`
	Success           *bool          `json:"success"`
	Message           *string        `json:"message"`
	Timestamp         *string        `json:"timestamp"`
	Tags              []string       `json:"tags"`
	Health            *healthPayload `json:"health"`
	AgentVersion      *string        `json:"agent_version"`
	UptimeSeconds     *int64         `json:"uptime_seconds"`

	// Filled in by validate.
	agentTS int64
	tags    []string // normalised; empty means "leave the tags alone"
}

type healthPayload struct {
	Results   []healthResult `json:"results"`
	AllPassed *bool          `json:"all_passed"`
	Timestamp *string        `json:"timestamp"`

	measuredAt   int64
	resultsJSON  string // the validated results, re-encoded for storage
	failedChecks string // names of failed checks joined by ", "
}

type healthResult struct {
	Status     *string `json:"status"`
	CheckName  *string `json:"check_name"`
	DurationMs *int64  `json:"duration_ms"`
	Message    *string `json:"message"`
}

// storedResult is how one check result is kept in health_report.results.
type storedResult struct {
	Status     string `json:"status"`
	CheckName  string `json:"check_name"`
	DurationMs int64  `json:"duration_ms"`
	Message    string `json:"message,omitempty"`
}

func (q *reportRequest) validate() error {
	switch {
	case q.MachineID == nil:
		return badRequest("machine_id: required")
	case q.CurrentGeneration == nil:
		return badRequest("current_generation: required")
	case q.Success == nil:
		return badRequest("success: required")
	case q.Message == nil:
		return badRequest("message: required")
	case q.Timestamp == nil:
		return badRequest("timestamp: required")
	}
	if err := checkMachineID("machine_id", *q.MachineID); err != nil {
		return err
	}
	if err := checkText("current_generation", *q.CurrentGeneration, 512, false); err != nil {
		return err
	}
	if err := checkText("message", *q.Message, 4096, false); err != nil {
		return err
	}
	ts, err := parseTime(*q.Timestamp)
	if err != nil {
		return badRequest("timestamp: %v", err)
	}
	q.agentTS = ts
	if q.tags, err = normalizeTags("tags", q.Tags); err != nil {
		return err
	}
	if q.AgentVersion == nil {
		q.AgentVersion = str("")
	}
	if err := checkText("agent_version", *q.AgentVersion, 128, false); err != nil {
		return err
	}
	if q.UptimeSeconds == nil {
		q.UptimeSeconds = new(int64)
	}
	if *q.UptimeSeconds < 0 {
		return badRequest("uptime_seconds: must not be negative")
	}
	if q.Health != nil {
		return q.Health.validate()
	}
	return nil
}

func (h *healthPayload) validate() error {
	switch {
	case h.Results == nil:
		return badRequest("health.results: required")
	case h.AllPassed == nil:
		return badRequest("health.all_passed: required")
	case h.Timestamp == nil:
		return badRequest("health.timestamp: required")
	case len(h.Results) > 256:
		return badRequest("health.results: at most 256 results")
	}
	ts, err := parseTime(*h.Timestamp)
	if err != nil {
		return badRequest("health.timestamp: %v", err)
	}
	h.measuredAt = ts
	stored := make([]storedResult, len(h.Results))
	var failed []string
	for i, r := range h.Results {
		field := resultField(i)
		switch {
		case r.Status == nil:
			return badRequest("%s.status: required", field)
		case *r.Status != "pass" && *r.Status != "fail":
			return badRequest("%s.status: must be \"pass\" or \"fail\"", field)
		case r.CheckName == nil:
			return badRequest("%s.check_name: required", field)
		case len(*r.CheckName) == 0 || len(*r.CheckName) > 256:
			return badRequest("%s.check_name: must be 1 to 256 bytes", field)
		case r.DurationMs == nil:
			return badRequest("%s.duration_ms: required", field)
		case *r.DurationMs < 0:
			return badRequest("%s.duration_ms: must not be negative", field)
		}
		stored[i] = storedResult{Status: *r.Status, CheckName: *r.CheckName, DurationMs: *r.DurationMs}
		if *r.Status == "fail" {
			if r.Message == nil {
				return badRequest("%s.message: required when status is \"fail\"", field)
			}
			if err := checkText(field.String()+".message", *r.Message, 4096, false); err != nil {
				return err
			}
			stored[i].Message = *r.Message
			failed = append(failed, *r.CheckName)
		}
	}
	b, err := json.Marshal(stored)
	if err != nil {
		return fmt.Errorf("encode health results: %w", err)
	}
	h.resultsJSON = string(b)
	h.failedChecks = strings.Join(failed, ", ")
	return nil
}

// resultField names a health result in error messages. It is a Stringer, so
// the name is only built when a message needs it.
type resultField int

func (i resultField) String() string { return fmt.Sprintf("health.results[%d]", int(i)) }

// errDecommissioned refuses a decommissioned machine's report (§6.6).
var errDecommissioned = forbidden("machine is decommissioned")

// report handles POST /api/v1/machines/{id}/report. It answers 200 only
// after the report has been committed by the group-commit writer.
func (s *server) report(w http.ResponseWriter, r *http.Request, _ *principal) error {
	err := s.acceptReport(w, r)
	var ae *apiError
	var mbe *http.MaxBytesError // a 413: the body is over the limit (§11 counts it as rejected)
	if errors.As(err, &ae) && ae.status < 500 || errors.As(err, &mbe) {
		s.m.reports.inc("rejected")
	}
	return err
}

func (s *server) acceptReport(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	var req reportRequest
	if err := decode(w, r, maxBody, false, &req); err != nil {
		return err
	}
	if *req.MachineID != id {
		return badRequest("machine_id: does not match the machine id in the path")
	}
	if m := s.fleet.get(id); m != nil && m.Lifecycle == "decommissioned" {
		return errDecommissioned
	}
	if err := s.st.submitReport(r.Context(), id, &req); err != nil {
		return err
	}
	if *req.Success {
		s.m.reports.inc("success")
	} else {
		s.m.reports.inc("failure")
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// desiredGeneration is the wire type of GET …/desired-generation (§5.2).
type desiredGeneration struct {
	Hash     string  `json:"hash"`
	CacheURL *string `json:"cache_url"`
	PollHint *int    `json:"poll_hint"`
}

var pollHintSeconds = 5

// desiredGeneration handles GET /api/v1/machines/{id}/desired-generation,
// from memory. It changes nothing. The 404 is what the agent reads as
// "nothing to do"; it must never become a 204.
func (s *server) desiredGeneration(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	m := s.fleet.get(id)
	if m == nil || m.Lifecycle == "decommissioned" || m.Desired == nil {
		return notFound("no desired generation")
	}
	resp := desiredGeneration{Hash: m.Desired.Hash, CacheURL: m.Desired.CacheURL}
	if s.fleet.pollHint(id) {
		resp.PollHint = &pollHintSeconds
	}
	return writeJSON(w, http.StatusOK, resp)
}

// reportJob is one validated report waiting for the group-commit writer.
type reportJob struct {
	id   string
	req  *reportRequest
	done chan error // buffered: the writer never blocks on a waiter
}

// maxGroupCommit is the most reports committed in one transaction.
const maxGroupCommit = 256

// reportQueue hands reports from the handlers to the single writer goroutine.
type reportQueue struct {
	mu     sync.RWMutex
	closed bool
	ch     chan *reportJob
}

func newReportQueue() *reportQueue {
	return &reportQueue{ch: make(chan *reportJob, 4*maxGroupCommit)}
}

// errShuttingDown refuses reports that arrive after the queue was flushed.
var errShuttingDown = apiErr(http.StatusServiceUnavailable, "server is shutting down")

// submitReport queues the report and waits until it has been committed (nil)
// or refused. It does not give up when ctx ends: the report may still be
// committed, and an answer is only sent after the commit.
func (s *store) submitReport(ctx context.Context, id string, req *reportRequest) error {
	job := &reportJob{id: id, req: req, done: make(chan error, 1)}
	q := s.reports
	q.mu.RLock()
	if q.closed {
		q.mu.RUnlock()
		return errShuttingDown
	}
	q.ch <- job
	q.mu.RUnlock()
	return <-job.done
}

// stopReports closes the queue; the writer commits what is queued and exits.
func (s *store) stopReports() {
	q := s.reports
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
	q.mu.Unlock()
}

// runReportWriter is the group-commit writer: it takes every queued report
// (up to maxGroupCommit), applies each under its own SAVEPOINT in one
// transaction, commits once (one fsync for the whole group) and only then
// answers the waiters. There is no artificial delay: a group closes as soon
// as the writer is free, so under low load every report commits alone.
// It returns once the queue is closed and drained.
func (s *store) runReportWriter() {
	batch := make([]*reportJob, 0, maxGroupCommit)
	for job := range s.reports.ch {
		batch = append(batch[:0], job)
	fill:
		for len(batch) < maxGroupCommit {
			select {
			case j, ok := <-s.reports.ch:
				if !ok {
					break fill
				}
				batch = append(batch, j)
			default:
				break fill
			}
		}
		s.commitReports(batch)
	}
}

// commitReports commits one group and answers its waiters.
func (s *store) commitReports(batch []*reportJob) {
	results := make([]error, len(batch))
	err := func() error {
		s.mu.Lock()
		defer s.mu.Unlock()
		t, err := s.begin(context.Background())
		if err != nil {
			return err
		}
		for i, j := range batch {
			results[i] = t.savepoint(func() error { return t.applyReport(j) })
		}
		if err := t.commit(); err != nil {
			return err
		}
		return nil
	}()
	n := 0
	for i, j := range batch {
		if err != nil {
			results[i] = err
		}
		if results[i] == nil {
			n++
		}
		j.done <- results[i]
	}
	if n > 0 {
		s.metrics.groupCommitSize.observe(float64(n))
	}
}

// applyReport is the processing of one report (§6.3), inside the group's
// transaction.
func (t *txn) applyReport(j *reportJob) error {
	req, id := j.req, j.id
	actor := "machine:" + id
	m := t.machine(id)
	var detail string
	switch {
	case m == nil:
		var err error
		if m, err = t.insertMachine(id, "active", nil); err != nil {
			return err
		}
		detail = "registered"
	case m.Lifecycle == "decommissioned":
		return errDecommissioned
	case m.LastSeen == 0:
		detail = "first report"
	default:
		var changes []string
		if m.CurrentGen != *req.CurrentGeneration {
			changes = append(changes, fmt.Sprintf("generation %s -> %s", orNone(m.CurrentGen), orNone(*req.CurrentGeneration)))
		}
		if m.LastSuccess != boolInt(*req.Success) {
			changes = append(changes, fmt.Sprintf("state %s -> %s", systemState(m.LastSuccess), systemState(boolInt(*req.Success))))
		}
		detail = strings.Join(changes, "; ")
	}

	res, err := t.s.stmts.insertReport.ExecContext(t.ctx, id, *req.CurrentGeneration,
		*req.Success, *req.Message, req.agentTS, t.now, *req.AgentVersion, *req.UptimeSeconds)
	if err != nil {
		return fmt.Errorf("insert report: %w", err)
	}
	if h := req.Health; h != nil {
		reportID, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("insert report: %w", err)
		}
		if _, err := t.s.stmts.insertHealth.ExecContext(t.ctx, reportID, id,
			*req.CurrentGeneration, *h.AllPassed, h.resultsJSON, h.failedChecks, h.measuredAt, t.now); err != nil {
			return fmt.Errorf("insert health report: %w", err)
		}
	}
	if detail != "" {
		if err := recordAudit(t, actor, "report", id, &detail); err != nil {
			return err
		}
	}
	if m.Lifecycle == "pending" || m.Lifecycle == "provisioning" {
		from := m.Lifecycle
		if m, err = t.setLifecycle(m, "active"); err != nil {
			return err
		}
		if err := recordAudit(t, actor, "update_lifecycle", id, str(from+" -> active")); err != nil {
			return err
		}
	}
	if len(req.tags) > 0 && !slices.Equal(req.tags, m.Tags) {
		old := m.Tags
		if m, err = t.setTags(m, req.tags); err != nil {
			return err
		}
		if err := recordAudit(t, actor, "tags.update", id, str(tagsChange(old, req.tags))); err != nil {
			return err
		}
	}
	if _, err := t.s.stmts.updateMachine.ExecContext(t.ctx, *req.CurrentGeneration,
		*req.Success, t.now, req.agentTS, *req.AgentVersion, *req.UptimeSeconds, id); err != nil {
		return fmt.Errorf("update machine: %w", err)
	}
	rec := m.clone()
	rec.CurrentGen = *req.CurrentGeneration
	rec.LastSuccess = boolInt(*req.Success)
	rec.LastSeen = t.now
	rec.AgentTS = req.agentTS
	rec.AgentVersion = *req.AgentVersion
	rec.Uptime = *req.UptimeSeconds
	t.stage(rec)
	t.afterCommit(func() {
		if t.s.onWatchedReport != nil && t.s.fleet.watched(id) {
			t.s.onWatchedReport()
		}
	})
	return nil
}

func boolInt(b bool) int8 {
	if b {
		return 1
	}
	return 0
}

// systemState maps the latest success flag to the MachineStatus value.
func systemState(s int8) string {
	switch s {
	case 1:
		return "ok"
	case 0:
		return "error"
	}
	return "unknown"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// tagsChange renders a tag change for the audit log: "[a,b] -> [b,c]".
func tagsChange(old, new []string) string {
	return "[" + strings.Join(old, ",") + "] -> [" + strings.Join(new, ",") + "]"
}
