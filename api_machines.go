package main

import (
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"slices"
)

// machineStatus is the wire type of a machine (§5.3).
type machineStatus struct {
	MachineID              string   `json:"machine_id"`
	CurrentGeneration      string   `json:"current_generation"`
	DesiredGeneration      *string  `json:"desired_generation"`
	AgentVersion           string   `json:"agent_version"`
	SystemState            string   `json:"system_state"`
	UptimeSeconds          int64    `json:"uptime_seconds"`
	LastReport             *string  `json:"last_report"`
	Lifecycle              string   `json:"lifecycle"`
	Tags                   []string `json:"tags"`
	SecondsSinceLastReport *int64   `json:"seconds_since_last_report"`
	RegisteredAt           string   `json:"registered_at"`
}

// status renders the machine as of now (Unix ms).
func (m *machineRec) status(now int64) machineStatus {
	ms := machineStatus{
		MachineID:         m.ID,
		CurrentGeneration: m.CurrentGen,
		AgentVersion:      m.AgentVersion,
		SystemState:       systemState(m.LastSuccess),
		UptimeSeconds:     m.Uptime,
		Lifecycle:         m.Lifecycle,
		Tags:              m.Tags,
		RegisteredAt:      fmtTime(m.RegisteredAt),
	}
	if m.Desired != nil {
		ms.DesiredGeneration = &m.Desired.Hash
	}
	if m.LastSeen > 0 {
		ms.LastReport = str(fmtTime(m.LastSeen))
		age := max(now-m.LastSeen, 0) / 1000
		ms.SecondsSinceLastReport = &age
	}
	return ms
}

// listMachines handles GET /api/v1/machines, from the in-memory index.
func (s *server) listMachines(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	tags, err := normalizeTags("tag", q["tag"])
	if err != nil {
		return err
	}
	var states []string
	for _, l := range q["lifecycle"] {
		if lifecycleIndex(l) < 0 {
			return badRequest("invalid lifecycle state: %s", l)
		}
		states = append(states, l)
	}
	limit, err := queryLimit(q, 0, 1000)
	if err != nil {
		return err
	}
	after := q.Get("after")
	if _, ok := q["after"]; ok {
		if err := checkMachineID("after", after); err != nil {
			return err
		}
	}
	ms := s.fleet.list(func(m *machineRec) bool {
		return m.hasTags(tags) && (len(states) == 0 || slices.Contains(states, m.Lifecycle))
	}, after, limit)
	now := s.now().UnixMilli()
	out := make([]machineStatus, len(ms))
	for i, m := range ms {
		out[i] = m.status(now)
	}
	return writeJSON(w, http.StatusOK, out)
}

// allowedTransitions is the lifecycle transition table (§7.2): from → allowed targets.
var allowedTransitions = map[string][]string{
	"pending":        {"provisioning", "active", "decommissioned"},
	"provisioning":   {"pending", "active"},
	"active":         {"maintenance", "decommissioned"},
	"maintenance":    {"active", "decommissioned"},
	"decommissioned": {},
}

func transitionAllowed(from, to string) bool { return slices.Contains(allowedTransitions[from], to) }

func checkLifecycle(v string) error {
	if lifecycleIndex(v) < 0 {
		return badRequest("invalid lifecycle state: %s", v)
	}
	return nil
}

// changeLifecycle moves the machine to a new lifecycle with the effects of
// §7.3: decommissioning clears the desired generation, audited with actor.
// The caller checks the transition and writes its own audit row for it.
func changeLifecycle(tx *txn, m *machineRec, to, actor string) (*machineRec, error) {
	m, err := tx.setLifecycle(m, to)
	if err != nil {
		return nil, err
	}
	if to == "decommissioned" && m.Desired != nil {
		path := m.Desired.Hash
		if m, err = tx.clearDesired(m); err != nil {
			return nil, err
		}
		if err := recordAudit(tx, actor, "clear_desired", m.ID, &path); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// replaceTags sets the machine's tags if they differ, with audit tags.update.
func replaceTags(tx *txn, m *machineRec, tags []string, actor string) (*machineRec, error) {
	if slices.Equal(m.Tags, tags) {
		return m, nil
	}
	old := m.Tags
	m, err := tx.setTags(m, tags)
	if err != nil {
		return nil, err
	}
	return m, recordAudit(tx, actor, "tags.update", m.ID, str(tagsChange(old, tags)))
}

// registerRequest is the optional body of POST …/register.
type registerRequest struct {
	Lifecycle *string  `json:"lifecycle"`
	Tags      []string `json:"tags"`
}

func (q *registerRequest) validate() error {
	if q.Lifecycle != nil {
		if err := checkLifecycle(*q.Lifecycle); err != nil {
			return err
		}
	}
	var err error
	q.Tags, err = normalizeTags("tags", q.Tags)
	return err
}

// register handles POST /api/v1/machines/{id}/register (§4.8).
func (s *server) register(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	var req registerRequest
	if err := decode(w, r, maxBody, true, &req); err != nil {
		return err
	}
	var lifecycle string
	err := s.st.write(r.Context(), func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			lc := "active"
			if req.Lifecycle != nil {
				lc = *req.Lifecycle
			}
			var err error
			if m, err = tx.insertMachine(id, lc, nil); err != nil {
				return err
			}
			if err := recordAudit(tx, p.actor, "register", id, &lc); err != nil {
				return err
			}
		} else {
			detail := m.Lifecycle
			if req.Lifecycle != nil && *req.Lifecycle != m.Lifecycle {
				from, to := m.Lifecycle, *req.Lifecycle
				if !transitionAllowed(from, to) {
					return conflict("invalid transition: %s -> %s", from, to)
				}
				detail = from + " -> " + to
				if err := recordAudit(tx, p.actor, "register", id, &detail); err != nil {
					return err
				}
				var err error
				if m, err = changeLifecycle(tx, m, to, p.actor); err != nil {
					return err
				}
			} else if err := recordAudit(tx, p.actor, "register", id, &detail); err != nil {
				return err
			}
		}
		if len(req.Tags) > 0 {
			var err error
			if m, err = replaceTags(tx, m, req.Tags, p.actor); err != nil {
				return err
			}
		}
		lifecycle = m.Lifecycle
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, struct {
		MachineID string `json:"machine_id"`
		Lifecycle string `json:"lifecycle"`
	}{id, lifecycle})
}

// lifecycleRequest is the body of PATCH …/lifecycle.
type lifecycleRequest struct {
	Lifecycle *string `json:"lifecycle"`
}

func (q *lifecycleRequest) validate() error {
	if q.Lifecycle == nil {
		return badRequest("lifecycle: required")
	}
	return checkLifecycle(*q.Lifecycle)
}

// patchLifecycle handles PATCH /api/v1/machines/{id}/lifecycle (§4.9).
func (s *server) patchLifecycle(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	var req lifecycleRequest
	if err := decode(w, r, maxBody, false, &req); err != nil {
		return err
	}
	err := s.st.write(r.Context(), func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			return notFound("machine %s not found", id)
		}
		from, to := m.Lifecycle, *req.Lifecycle
		if !transitionAllowed(from, to) {
			return conflict("invalid transition: %s -> %s", from, to)
		}
		if err := recordAudit(tx, p.actor, "update_lifecycle", id, str(from+" -> "+to)); err != nil {
			return err
		}
		_, err := changeLifecycle(tx, m, to, p.actor)
		return err
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// tagsRequest is the body of PUT …/tags.
type tagsRequest struct {
	Tags []string `json:"tags"`
}

func (q *tagsRequest) validate() error {
	if q.Tags == nil {
		return badRequest("tags: required")
	}
	var err error
	q.Tags, err = normalizeTags("tags", q.Tags)
	return err
}

// putTags handles PUT /api/v1/machines/{id}/tags (§4.10).
func (s *server) putTags(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	var req tagsRequest
	if err := decode(w, r, maxBody, false, &req); err != nil {
		return err
	}
	var result *machineRec
	err := s.st.write(r.Context(), func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			return notFound("machine %s not found", id)
		}
		var err error
		result, err = replaceTags(tx, m, req.Tags, p.actor)
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, result.status(s.now().UnixMilli()))
}

// activeRolloutOf returns the active rollout the machine belongs to, or "".
func activeRolloutOf(tx *txn, machineID string) (string, error) {
	var rid string
	err := tx.QueryRowContext(tx.ctx, `SELECT rm.rollout_id FROM rollout_machine rm
		JOIN rollout r ON r.id = rm.rollout_id
		WHERE rm.machine_id = ? AND r.status IN ('created', 'running', 'paused')
		ORDER BY rm.rollout_id LIMIT 1`, machineID).Scan(&rid)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("find active rollout: %w", err)
	}
	return rid, nil
}

// refuseInActiveRollout returns a 409 while the machine is in an active
// rollout: operators must not change a desired generation under it.
func refuseInActiveRollout(tx *txn, id string) error {
	rid, err := activeRolloutOf(tx, id)
	if err != nil {
		return err
	}
	if rid != "" {
		return conflict("machine %s is in active rollout %s", id, rid)
	}
	return nil
}

// clearDesired handles DELETE /api/v1/machines/{id}/desired-generation (§4.11).
func (s *server) clearDesired(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	err := s.st.write(r.Context(), func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			return notFound("machine %s not found", id)
		}
		if err := refuseInActiveRollout(tx, id); err != nil {
			return err
		}
		if m.Desired == nil {
			return nil
		}
		path := m.Desired.Hash
		if _, err := tx.clearDesired(m); err != nil {
			return err
		}
		return recordAudit(tx, p.actor, "clear_desired", id, &path)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// notifyDeployRequest is the body of POST …/notify-deploy.
type notifyDeployRequest struct {
	StorePath *string `json:"store_path"`
}

func (q *notifyDeployRequest) validate() error {
	if q.StorePath == nil {
		return badRequest("store_path: required")
	}
	return checkStorePath("store_path", *q.StorePath)
}

// notifyDeploy handles POST /api/v1/machines/{id}/notify-deploy (§4.12):
// pin a machine to a store path outside any rollout.
func (s *server) notifyDeploy(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	if !validMachineID(id) {
		return badRequest("invalid machine id")
	}
	var req notifyDeployRequest
	if err := decode(w, r, maxBody, false, &req); err != nil {
		return err
	}
	err := s.st.write(r.Context(), func(tx *txn) error {
		m := tx.machine(id)
		if m == nil {
			var err error
			if m, err = tx.insertMachine(id, "active", nil); err != nil {
				return err
			}
			if err := recordAudit(tx, p.actor, "register", id, str("active")); err != nil {
				return err
			}
		}
		if m.Lifecycle == "decommissioned" {
			return conflict("machine %s is decommissioned", id)
		}
		if err := refuseInActiveRollout(tx, id); err != nil {
			return err
		}
		if _, err := tx.setDesired(m, *req.StorePath, nil, p.actor); err != nil {
			return err
		}
		return recordAudit(tx, p.actor, "notify_deploy", id, req.StorePath)
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}
