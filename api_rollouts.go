package main

import (
	"net/http"
)

// Handlers of the rollout routes (§4.18–§4.24).

// createRollout handles POST /api/v1/rollouts; with ?dry_run=true it answers
// 200 with the plan and stores nothing.
func (s *server) createRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	dryRun, err := queryBool(queryValues(r), "dry_run")
	if err != nil {
		return err
	}
	req, err := decode[createRolloutRequest](w, r, maxBody, false)
	if err != nil {
		return err
	}
	if dryRun != nil && *dryRun {
		plan, err := s.cp.dryRunRollout(r.Context(), p.actor, *req)
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, plan)
	}
	resp, err := s.cp.createRollout(r.Context(), p.actor, *req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, resp)
}

// listRollouts handles GET /api/v1/rollouts.
func (s *server) listRollouts(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	limit, err := queryLimit(q, 100, 1000)
	if err != nil {
		return err
	}
	var status *rolloutStatus
	if v, ok := q["status"]; ok {
		st, err := parseRolloutStatus(v[0])
		if err != nil {
			return err
		}
		status = &st
	}
	out, err := s.cp.listRollouts(r.Context(), status, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// getRollout handles GET /api/v1/rollouts/{id}.
func (s *server) getRollout(w http.ResponseWriter, r *http.Request, _ *principal) error {
	d, err := s.cp.getRollout(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

// pauseRollout handles POST /api/v1/rollouts/{id}/pause.
func (s *server) pauseRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	return noContent(w, http.StatusOK, s.cp.pauseRollout(r.Context(), p.actor, r.PathValue("id")))
}

// resumeRollout handles POST /api/v1/rollouts/{id}/resume.
func (s *server) resumeRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	return noContent(w, http.StatusOK, s.cp.resumeRollout(r.Context(), p.actor, r.PathValue("id")))
}

// deleteRollout handles DELETE /api/v1/rollouts/{id}.
func (s *server) deleteRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	return noContent(w, http.StatusNoContent, s.cp.deleteRollout(r.Context(), p.actor, r.PathValue("id")))
}

// cancelRollout handles POST /api/v1/rollouts/{id}/cancel, whose optional
// body is {"revert":true}.
func (s *server) cancelRollout(w http.ResponseWriter, r *http.Request, p *principal) error {
	req, err := decode[cancelRequest](w, r, maxBody, true)
	if err != nil {
		return err
	}
	revert := req.Revert != nil && *req.Revert
	return noContent(w, http.StatusOK, s.cp.cancelRollout(r.Context(), p.actor, r.PathValue("id"), revert))
}
