package main

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
)

// Handlers of the audit routes (§4.25, §4.26, and the chain's head).

// auditHead handles GET /api/v1/audit/head: the newest chained row's seq and
// hash, for the operator to record elsewhere; seq 0 and the genesis hash
// before any row is chained.
func (s *server) auditHead(w http.ResponseWriter, r *http.Request, _ *principal) error {
	h, err := s.cp.auditHead(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, h)
}

// parseAuditFilter reads the audit query parameters (§4.25). maxLimit 0
// means the limit is optional and unbounded (the export).
func parseAuditFilter(q url.Values, defLimit, maxLimit int) (auditFilter, error) {
	f := auditFilter{actor: q.Get("actor"), action: q.Get("action"), target: q.Get("target")}
	if _, ok := q["action"]; ok && !slices.Contains(auditActions, f.action) {
		return f, invalidf("action: not an audit action: %s", f.action)
	}
	for _, p := range []struct {
		name string
		dst  **int64
	}{{"since", &f.since}, {"until", &f.until}} {
		if v, ok := q[p.name]; ok {
			ms, err := parseTime(v[0])
			if err != nil {
				return f, invalidf("%s: %v", p.name, err)
			}
			*p.dst = &ms
		}
	}
	if v, ok := q["before"]; ok {
		id, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || id < 1 || !isDigits(v[0]) {
			return f, invalidf("before: must be a positive integer event id")
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
	out, err := s.cp.listAudit(r.Context(), f)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// exportAudit handles GET /api/v1/audit/export: every matching row as CSV,
// or as a JSON array with format=json, streamed in constant memory with a
// write deadline per chunk. Once the first byte is out, an error can only
// abort the connection.
func (s *server) exportAudit(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	f, err := parseAuditFilter(q, 0, 0)
	if err != nil {
		return err
	}
	asJSON := false
	if v, ok := q["format"]; ok {
		switch v[0] {
		case "csv":
		case "json":
			asJSON = true
		default:
			return invalidf("format: must be csv or json")
		}
	}
	started := false
	err = s.cp.exportAudit(r.Context(), f, asJSON, newDeadlineWriter(w), func() {
		started = true
		if asJSON {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Disposition", `attachment; filename="audit.json"`)
		} else {
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			w.Header().Set("Content-Disposition", `attachment; filename="audit.csv"`)
		}
		w.WriteHeader(http.StatusOK)
	})
	if err != nil && !started {
		return err
	}
	if err != nil {
		s.streamFailed(r, err)
	}
	return nil
}
