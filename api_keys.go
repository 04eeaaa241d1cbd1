package main

import (
	"net/http"
)

// Handlers of the key routes (§4.27–§4.29); bootstrap is in auth.go.

// createKey handles POST /api/v1/keys.
func (s *server) createKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	req, err := decode[createKeyRequest](w, r, maxBody, false)
	if err != nil {
		return err
	}
	created, err := s.cp.createKey(r.Context(), p.actor, *req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, created)
}

// listKeys handles GET /api/v1/keys.
func (s *server) listKeys(w http.ResponseWriter, r *http.Request, _ *principal) error {
	keys, err := s.cp.listKeys(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, keys)
}

// revokeKey handles DELETE /api/v1/keys/{id}.
func (s *server) revokeKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	id, err := parseKeyID(r.PathValue("id"))
	if err != nil {
		return err
	}
	return noContent(w, http.StatusNoContent, s.cp.revokeKey(r.Context(), p.actor, id))
}
