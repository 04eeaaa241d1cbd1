package main

import (
	"net/http"
)

// Handlers of the machine routes (§4.5–§4.12). Each one: path id → query or
// body → one controlPlane call → response.

// report handles POST /api/v1/machines/{id}/report. It answers 200 only
// after the report has been committed by the group-commit writer.
func (s *server) report(w http.ResponseWriter, r *http.Request, _ *principal) error {
	err := s.acceptReport(w, r)
	if err != nil {
		if status, _ := errorStatus(err); status < 500 {
			s.m.reports.inc("rejected") // 400, 403, 413, 415 (§11)
		}
	}
	return err
}

func (s *server) acceptReport(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkMachinePath(id); err != nil {
		return err
	}
	req, err := decode[reportRequest](w, r, maxBody, false)
	if err != nil {
		return err
	}
	if err := s.cp.submitReport(r.Context(), id, req); err != nil {
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

// desiredGeneration handles GET /api/v1/machines/{id}/desired-generation.
func (s *server) desiredGeneration(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	if err := checkMachinePath(id); err != nil {
		return err
	}
	dg, err := s.cp.desiredGeneration(id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, dg)
}

// listMachines handles GET /api/v1/machines.
func (s *server) listMachines(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	var f machineFilter
	var err error
	if f.tags, err = normalizeTags("tag", q["tag"]); err != nil {
		return err
	}
	for _, v := range q["lifecycle"] {
		lc, err := parseLifecycle(v)
		if err != nil {
			return err
		}
		f.lifecycles = append(f.lifecycles, lc)
	}
	if f.stale, err = queryBool(q, "stale"); err != nil {
		return err
	}
	if f.drifted, err = queryBool(q, "drifted"); err != nil {
		return err
	}
	if f.limit, err = queryLimit(q, 0, 1000); err != nil {
		return err
	}
	if after, ok := q["after"]; ok {
		if err := checkMachineID("after", after[0]); err != nil {
			return err
		}
		f.after = after[0]
	}
	return writeJSON(w, http.StatusOK, s.cp.listMachines(f))
}

// getMachine handles GET /api/v1/machines/{id}: one MachineStatus (§5.3).
// The id was checked by checkPathIDs.
func (s *server) getMachine(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ms, err := s.cp.getMachine(r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ms)
}

// register handles POST /api/v1/machines/{id}/register.
func (s *server) register(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	req, err := decode[registerRequest](w, r, maxBody, true)
	if err != nil {
		return err
	}
	lc, err := s.cp.register(r.Context(), p.actor, id, *req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, struct {
		MachineID string `json:"machine_id"`
		Lifecycle string `json:"lifecycle"`
	}{id, string(lc)})
}

// patchLifecycle handles PATCH /api/v1/machines/{id}/lifecycle.
func (s *server) patchLifecycle(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	req, err := decode[lifecycleRequest](w, r, maxBody, false)
	if err != nil {
		return err
	}
	return noContent(w, http.StatusOK, s.cp.setLifecycle(r.Context(), p.actor, id, req.lifecycle))
}

// putTags handles PUT /api/v1/machines/{id}/tags.
func (s *server) putTags(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	req, err := decode[tagsRequest](w, r, maxBody, false)
	if err != nil {
		return err
	}
	ms, err := s.cp.putTags(r.Context(), p.actor, id, req.Tags)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ms)
}

// clearDesired handles DELETE /api/v1/machines/{id}/desired-generation.
func (s *server) clearDesired(w http.ResponseWriter, r *http.Request, p *principal) error {
	return noContent(w, http.StatusNoContent, s.cp.clearDesired(r.Context(), p.actor, r.PathValue("id")))
}

// notifyDeploy handles POST /api/v1/machines/{id}/notify-deploy.
func (s *server) notifyDeploy(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	req, err := decode[notifyDeployRequest](w, r, maxBody, false)
	if err != nil {
		return err
	}
	return noContent(w, http.StatusOK, s.cp.notifyDeploy(r.Context(), p.actor, id, *req.StorePath))
}
