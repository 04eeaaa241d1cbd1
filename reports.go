package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// The agent protocol (§6): what a report is, how one is processed, and what
// an agent's poll gets. Reports are committed by the group-commit writer
// (store_reports.go); the poll is served from the in-memory fleet index.

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
		return invalidf("machine_id: required")
	case q.CurrentGeneration == nil:
		return invalidf("current_generation: required")
	case q.Success == nil:
		return invalidf("success: required")
	case q.Message == nil:
		return invalidf("message: required")
	case q.Timestamp == nil:
		return invalidf("timestamp: required")
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
		return invalidf("timestamp: %v", err)
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
		return invalidf("uptime_seconds: must not be negative")
	}
	if q.Health != nil {
		return q.Health.validate()
	}
	return nil
}

func (h *healthPayload) validate() error {
	switch {
	case h.Results == nil:
		return invalidf("health.results: required")
	case h.AllPassed == nil:
		return invalidf("health.all_passed: required")
	case h.Timestamp == nil:
		return invalidf("health.timestamp: required")
	case len(h.Results) > 256:
		return invalidf("health.results: at most 256 results")
	}
	ts, err := parseTime(*h.Timestamp)
	if err != nil {
		return invalidf("health.timestamp: %v", err)
	}
	h.measuredAt = ts
	stored := make([]storedResult, len(h.Results))
	var failed []string
	for i, r := range h.Results {
		field := resultField(i)
		switch {
		case r.Status == nil:
			return invalidf("%s.status: required", field)
		case *r.Status != "pass" && *r.Status != "fail":
			return invalidf("%s.status: must be \"pass\" or \"fail\"", field)
		case r.CheckName == nil:
			return invalidf("%s.check_name: required", field)
		case len(*r.CheckName) == 0 || len(*r.CheckName) > 256:
			return invalidf("%s.check_name: must be 1 to 256 bytes", field)
		case r.DurationMs == nil:
			return invalidf("%s.duration_ms: required", field)
		case *r.DurationMs < 0:
			return invalidf("%s.duration_ms: must not be negative", field)
		}
		stored[i] = storedResult{Status: *r.Status, CheckName: *r.CheckName, DurationMs: *r.DurationMs}
		if *r.Status == "fail" {
			if r.Message == nil {
				return invalidf("%s.message: required when status is \"fail\"", field)
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
var errDecommissioned = forbiddenf("machine is decommissioned")

// submitReport stores an agent's report (§6.3): it checks the machine is not
// decommissioned, queues the report for the group-commit writer and waits
// until it has been committed (nil) or refused. It does not give up when
// ctx ends: the report may still be committed, and an answer is only sent
// after the commit.
func (cp *controlPlane) submitReport(ctx context.Context, id string, req *reportRequest) error {
	if *req.MachineID != id {
		return invalidf("machine_id: does not match the machine id in the path")
	}
	if m := cp.st.fleet.get(id); m != nil && m.Lifecycle == lcDecommissioned {
		return errDecommissioned
	}
	return cp.st.submitReport(ctx, id, req)
}

// desiredGeneration is the wire type of GET …/desired-generation (§5.2).
type desiredGeneration struct {
	Hash     string  `json:"hash"`
	CacheURL *string `json:"cache_url"`
	PollHint *int    `json:"poll_hint"`
}

var pollHintSeconds = 5

// desiredGeneration returns what the machine's agent should run, from
// memory; it changes nothing. It returns a 404 *clientError when there is
// nothing to do, which the agent reads as such: it must never become a 204.
func (cp *controlPlane) desiredGeneration(id string) (desiredGeneration, error) {
	m := cp.st.fleet.get(id)
	if m == nil || m.Lifecycle == lcDecommissioned || m.Desired == nil {
		return desiredGeneration{}, notFoundf("no desired generation")
	}
	resp := desiredGeneration{Hash: m.Desired.Hash, CacheURL: m.Desired.CacheURL}
	if cp.st.fleet.pollHint(id) {
		resp.PollHint = &pollHintSeconds
	}
	return resp, nil
}

// applyReport is the processing of one report (§6.3), inside the group
// commit's transaction. The report's rows and the machine's new latest
// values are queued for the group's multi-row statements (insertReport).
// A refusal (errDecommissioned) is returned before anything is written.
func applyReport(t *txn, id string, req *reportRequest) error {
	actor := "machine:" + id
	m := t.machine(id)
	var detail string
	switch {
	case m == nil:
		var err error
		if m, err = t.insertMachine(id, lcActive); err != nil {
			return err
		}
		detail = "registered"
	case m.Lifecycle == lcDecommissioned:
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

	t.insertReport(id, req)
	reportWindow, tagsWindow := m.ReportAudit, m.TagsAudit
	if detail != "" {
		if err := auditBounded(t, &reportWindow, actor, "report", id, detail); err != nil {
			return err
		}
	}
	if m.Lifecycle == lcPending || m.Lifecycle == lcProvisioning {
		from := m.Lifecycle
		var err error
		if m, err = t.setLifecycle(m, lcActive); err != nil {
			return err
		}
		if err := recordAudit(t, actor, "update_lifecycle", id, str(string(from)+" -> active")); err != nil {
			return err
		}
	}
	if len(req.tags) > 0 && !slices.Equal(req.tags, m.Tags) {
		old := m.Tags
		var err error
		if m, err = t.setTags(m, req.tags); err != nil {
			return err
		}
		if err := auditBounded(t, &tagsWindow, actor, "tags.update", id, tagsChange(old, req.tags)); err != nil {
			return err
		}
	}
	rec := m.clone()
	rec.CurrentGen = *req.CurrentGeneration
	rec.LastSuccess = boolInt(*req.Success)
	rec.LastFailure = failureMessage(*req.Success, *req.Message)
	rec.LastSeen = t.now
	rec.AgentTS = req.agentTS
	rec.AgentVersion = *req.AgentVersion
	rec.Uptime = *req.UptimeSeconds
	rec.ReportAudit, rec.TagsAudit = reportWindow, tagsWindow
	t.stage(rec)
	t.afterCommit(func() {
		if t.s.wakeExecutor != nil && t.s.fleet.watched(id) {
			t.s.wakeExecutor()
		}
	})
	return nil
}

// Flood bound of the audit rows that an agent's reports write (§6.5): per
// machine and action, at most auditBurst rows in any auditWindowMs of
// received time. Changes beyond that are applied and stored as usual; the
// next row written carries how many were not audited one by one.
const (
	auditBurst    = 10
	auditWindowMs = 60_000
)

// auditWindow is the recent audit history of one machine and action.
type auditWindow struct {
	last       [auditBurst]int64 // receive times of the latest rows (Unix ms), oldest first; 0: none
	suppressed int64             // changes not audited since the latest row
}

// admit reports whether a row may be written at now, and records it or its
// suppression in w.
func (w *auditWindow) admit(now int64) bool {
	if w.last[0] > now-auditWindowMs {
		w.suppressed++
		return false
	}
	w.note(now)
	return true
}

// note records a row written at now.
func (w *auditWindow) note(now int64) {
	copy(w.last[:], w.last[1:])
	w.last[auditBurst-1] = now
}

// auditBounded writes an agent's audit row through the machine's window w,
// or counts it as suppressed.
func auditBounded(t *txn, w *auditWindow, actor, action, target, detail string) error {
	pending := w.suppressed
	if !w.admit(t.now) {
		t.afterCommit(func() { t.s.metrics.auditSuppressed.inc(action) })
		return nil
	}
	w.suppressed = 0
	if pending > 0 {
		detail += fmt.Sprintf(" (+%d changes not audited individually)", pending)
	}
	return recordAudit(t, actor, action, target, &detail)
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
