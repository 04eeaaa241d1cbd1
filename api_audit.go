package main

import (
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// parseAuditFilter reads the audit query parameters (§4.25). maxLimit 0
// means the limit is optional and unbounded (the export).
func parseAuditFilter(q url.Values, defLimit, maxLimit int) (auditFilter, error) {
	f := auditFilter{actor: q.Get("actor"), action: q.Get("action"), target: q.Get("target")}
	for _, p := range []struct {
		name string
		dst  *int64
		has  *bool
	}{{"since", &f.since, &f.hasSince}, {"until", &f.until, &f.hasUntil}} {
		if v, ok := q[p.name]; ok {
			ms, err := parseTime(v[0])
			if err != nil {
				return f, badRequest("%s: %v", p.name, err)
			}
			*p.dst, *p.has = ms, true
		}
	}
	if v, ok := q["before"]; ok {
		id, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || id < 1 || !isDigits(v[0]) {
			return f, badRequest("before: must be a positive integer event id")
		}
		f.before = id
	}
	var err error
	f.limit, err = queryLimit(q, defLimit, maxLimit)
	return f, err
}

// listAudit handles GET /api/v1/audit: newest first, paged with before.
func (s *server) listAudit(w http.ResponseWriter, r *http.Request, _ *principal) error {
	f, err := parseAuditFilter(queryValues(r), 100, 1000)
	if err != nil {
		return err
	}
	out := []auditEvent{}
	if err := s.st.eachAudit(r.Context(), f, nil, func(ev auditEvent) error {
		out = append(out, ev)
		return nil
	}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// exportAudit handles GET /api/v1/audit/export: every matching row as CSV,
// streamed in constant memory. The write deadline is lifted because a large
// log takes longer than the server's WriteTimeout; once the first byte is
// out, an error can only abort the connection.
func (s *server) exportAudit(w http.ResponseWriter, r *http.Request, _ *principal) error {
	f, err := parseAuditFilter(queryValues(r), 0, 0)
	if err != nil {
		return err
	}
	if err := http.NewResponseController(w).SetWriteDeadline(time.Time{}); err != nil {
		return err
	}
	started := false
	err = s.st.exportAuditCSV(r.Context(), f, w, func() {
		started = true
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="audit.csv"`)
		w.WriteHeader(http.StatusOK)
	})
	if err != nil && !started {
		return err
	}
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		panic(http.ErrAbortHandler) // the status is sent: only aborting the connection tells the client
	}
	return nil
}
