package main

import (
	"bufio"
	"bytes"
	"net/http"
)

// Handlers of the release routes (§4.13–§4.17).

// createRelease handles POST /api/v1/releases.
func (s *server) createRelease(w http.ResponseWriter, r *http.Request, p *principal) error {
	req, err := decode[createReleaseRequest](w, r, maxReleaseBody, false)
	if err != nil {
		return err
	}
	id, err := s.cp.createRelease(r.Context(), p.actor, *req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, struct {
		ID        string `json:"id"`
		HostCount int    `json:"host_count"`
	}{id, len(req.Entries)})
}

// listReleases handles GET /api/v1/releases. The body can be tens of MB
// (entries stay in the list: the v0.1 CLI decodes them), so it is streamed,
// one release at a time, with a write deadline per chunk.
func (s *server) listReleases(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := queryValues(r)
	limit, err := queryLimit(q, 20, 500)
	if err != nil {
		return err
	}
	var host *string
	if h, ok := q["host"]; ok {
		host = &h[0]
	}
	var bw *bufio.Writer
	err = s.cp.listReleases(r.Context(), limit, host, func(rel *release) error {
		b, err := marshalJSON(rel)
		if err != nil {
			return err
		}
		sep := byte(',')
		if bw == nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			bw = bufio.NewWriterSize(newDeadlineWriter(w), 64<<10)
			sep = '['
		}
		bw.WriteByte(sep)
		_, err = bw.Write(bytes.TrimSuffix(b, []byte("\n")))
		return err
	})
	switch {
	case err != nil && bw == nil:
		return err
	case err != nil:
		s.streamFailed(r, err)
	case bw == nil:
		return writeJSON(w, http.StatusOK, []*release{})
	}
	bw.WriteString("]\n")
	if err := bw.Flush(); err != nil {
		s.streamFailed(r, err)
	}
	return nil
}

// getRelease handles GET /api/v1/releases/{id}.
func (s *server) getRelease(w http.ResponseWriter, r *http.Request, _ *principal) error {
	id := r.PathValue("id")
	rel, err := s.cp.getRelease(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rel)
}

// deleteRelease handles DELETE /api/v1/releases/{id}.
func (s *server) deleteRelease(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	return noContent(w, http.StatusNoContent, s.cp.deleteRelease(r.Context(), p.actor, id))
}

// diffReleases handles GET /api/v1/releases/{id}/diff/{other_id}.
func (s *server) diffReleases(w http.ResponseWriter, r *http.Request, _ *principal) error {
	a := r.PathValue("id")
	b := r.PathValue("other_id")
	d, err := s.cp.diffReleases(r.Context(), a, b)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}
