package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The HTTP layer: every route in one block (routes), the request pipeline
// (instrument → authorize → handler), decode and the response writers, and
// errorStatus, the one place where errors become HTTP statuses. Handlers
// are thin: authorize, decode, call one controlPlane function, encode.

// server holds what the HTTP handlers need.
type server struct {
	cp       *controlPlane
	m        *metrics
	log      *slog.Logger
	mode     string // plain, tls or mtls
	guard    bootstrapGuard
	mux      *http.ServeMux
	patterns []string          // every route pattern, in the order of routes
	access   map[string]access // by route pattern: who may call it

	ui        bool          // serve the status page (--ui)
	heartbeat time.Duration // event stream heartbeat (heartbeatInterval)

	// testingOnlyEventWrite runs before each event a stream writes; nil in
	// production. Tests block it to make one client fall behind.
	testingOnlyEventWrite func(r *http.Request)
}

// access is who may call a route.
type access int

const (
	public     access = iota // no authentication
	agent                    // the machine itself (CN check in mTLS mode)
	anyRole                  // any valid API key
	deployRole               // deploy or admin key
	adminRole                // admin key
)

// handlerFunc is a route's handler: it writes a success itself and returns
// any error for errorStatus to answer.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p *principal) error

// routes registers every route of SPEC §4.1, in one place. The pattern after
// the method is also the route's metrics path label.
func (s *server) routes() {
	s.handle("GET /health", public, s.health)
	s.handle("GET /metrics", public, s.metricsPage)
	s.handle("POST /api/v1/keys/bootstrap", public, s.bootstrap)
	s.handle("GET /api/v1/machines/{id}/desired-generation", agent, s.desiredGeneration)
	s.handle("POST /api/v1/machines/{id}/report", agent, s.report)
	s.handle("GET /api/v1/machines", anyRole, s.listMachines)
	s.handle("GET /api/v1/machines/{id}", anyRole, s.getMachine) // beyond SPEC §4.1: one MachineStatus
	s.handle("POST /api/v1/machines/{id}/register", adminRole, s.register)
	s.handle("PATCH /api/v1/machines/{id}/lifecycle", adminRole, s.patchLifecycle)
	s.handle("PUT /api/v1/machines/{id}/tags", adminRole, s.putTags)
	s.handle("DELETE /api/v1/machines/{id}/desired-generation", adminRole, s.clearDesired)
	s.handle("POST /api/v1/machines/{id}/notify-deploy", deployRole, s.notifyDeploy)
	s.handle("POST /api/v1/releases", deployRole, s.createRelease)
	s.handle("GET /api/v1/releases", anyRole, s.listReleases)
	s.handle("GET /api/v1/releases/{id}", anyRole, s.getRelease)
	s.handle("DELETE /api/v1/releases/{id}", adminRole, s.deleteRelease)
	s.handle("GET /api/v1/releases/{id}/diff/{other_id}", anyRole, s.diffReleases)
	s.handle("POST /api/v1/rollouts", deployRole, s.createRollout)
	s.handle("GET /api/v1/rollouts", anyRole, s.listRollouts)
	s.handle("GET /api/v1/rollouts/{id}", anyRole, s.getRollout)
	s.handle("DELETE /api/v1/rollouts/{id}", adminRole, s.deleteRollout)
	s.handle("POST /api/v1/rollouts/{id}/pause", deployRole, s.pauseRollout)
	s.handle("POST /api/v1/rollouts/{id}/resume", deployRole, s.resumeRollout)
	s.handle("POST /api/v1/rollouts/{id}/cancel", deployRole, s.cancelRollout)
	s.handle("GET /api/v1/audit", anyRole, s.listAudit)
	s.handle("GET /api/v1/audit/export", anyRole, s.exportAudit)
	s.handle("GET /api/v1/audit/head", anyRole, s.auditHead)
	s.handle("POST /api/v1/keys", adminRole, s.createKey)
	s.handle("GET /api/v1/keys", adminRole, s.listKeys)
	s.handle("DELETE /api/v1/keys/{id}", adminRole, s.revokeKey)
	s.handle("GET /api/v1/events", anyRole, s.events)
	s.handle("GET /ui", public, s.uiRedirect)
	s.handle("GET /ui/", public, s.uiFile)
}

// newServer builds the HTTP layer over the control plane.
func newServer(cp *controlPlane, m *metrics, log *slog.Logger, mode string, bootstrap bootstrapGuard) *server {
	s := &server{cp: cp, m: m, log: log, mode: mode, guard: bootstrap,
		mux: http.NewServeMux(), access: map[string]access{}, ui: true, heartbeat: heartbeatInterval}
	s.routes()
	return s
}

// handle registers one route. A request is authorized for acc (§2.6 steps
// 3–4), the path IDs of an admin route are checked (step 5; the agent
// routes check their own, so that a rejected report is counted), then h
// runs; an error from any of them is answered by writeError.
func (s *server) handle(pattern string, acc access, h handlerFunc) {
	_, path, _ := strings.Cut(pattern, " ")
	s.patterns = append(s.patterns, pattern)
	s.access[pattern] = acc
	s.mux.Handle(pattern, s.instrument(path, func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authorize(r, acc)
		if err == nil && acc >= anyRole {
			err = checkPathIDs(r, path)
		}
		if err == nil {
			err = h(w, r, p)
		}
		if err != nil {
			s.writeError(w, r, err)
		}
	}))
}

// checkPathIDs applies the ID rules of §2.7 to the wildcards of path.
func checkPathIDs(r *http.Request, path string) error {
	check := checkMachinePath
	switch {
	case strings.HasPrefix(path, "/api/v1/releases/"):
		check = checkReleaseID
	case strings.HasPrefix(path, "/api/v1/rollouts/"):
		check = checkRolloutID
	case strings.HasPrefix(path, "/api/v1/keys/{"):
		check = func(v string) error { _, err := parseKeyID(v); return err }
	}
	for _, name := range []string{"id", "other_id"} {
		if v := r.PathValue(name); strings.Contains(path, "{"+name+"}") {
			if err := check(v); err != nil {
				return err
			}
		}
	}
	return nil
}

// noContent answers a success without a payload, unless err.
func noContent(w http.ResponseWriter, status int, err error) error {
	if err == nil {
		w.WriteHeader(status)
	}
	return err
}

// handler returns the root HTTP handler. A request that matches a route
// goes to it; ServeMux's own answers to the others (404, 405 with Allow,
// the 301 for unclean paths) are rewritten with JSON bodies (§2.5).
func (s *server) handler() http.Handler {
	unmatched := s.instrument("unmatched", s.unmatched)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := s.mux.Handler(r); pattern == "" || needsCleaning(r) {
			unmatched(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// unmatched answers a request no route matched, as ServeMux would but with
// a JSON body. A wrong method on the path of an admin route authenticates
// first, so anonymous callers learn nothing but 401 (§2.6, compat).
func (s *server) unmatched(w http.ResponseWriter, r *http.Request) {
	h, _ := s.mux.Handler(r)
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	switch rec.status {
	case http.StatusMethodNotAllowed:
		allow := rec.header.Get("Allow")
		for _, method := range strings.Split(allow, ", ") {
			probe := r.Clone(r.Context())
			probe.Method = method
			if _, pattern := s.mux.Handler(probe); s.access[pattern] >= anyRole {
				if _, err := s.authenticate(r); err != nil {
					s.writeError(w, r, err)
					return
				}
				break
			}
		}
		w.Header().Set("Allow", allow)
		writeJSONError(w, http.StatusMethodNotAllowed, "method not allowed")
	case http.StatusNotFound:
		writeJSONError(w, http.StatusNotFound, "not found")
	default: // ServeMux's redirect (307) for a path that needs cleaning
		h.ServeHTTP(w, r)
	}
}

// needsCleaning reports whether ServeMux redirects the request to a cleaned
// path ("." or ".." segments, "//"), as it does whether or not a route
// matches. It applies ServeMux's own rule to the escaped path.
func needsCleaning(r *http.Request) bool {
	if r.Method == "CONNECT" {
		return false
	}
	p := r.URL.EscapedPath()
	if p == "" || p[0] != '/' {
		return true
	}
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return clean != p
}

// headerRecorder captures the status and headers ServeMux writes for a
// request it cannot route; the body is discarded.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header         { return h.header }
func (h *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (h *headerRecorder) WriteHeader(code int)        { h.status = code }

// statusRecorder remembers the status code written through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (streaming
// responses manage their write deadline through it).
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// instrument wraps a route: the HTTP metrics under the route's path label,
// the debug request log, and panic recovery (a bug answers 500, if nothing
// was sent yet, and the server keeps serving).
func (s *server) instrument(label string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			v := recover()
			if v != nil && v != http.ErrAbortHandler {
				s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", fmt.Sprintf("panic: %v", v))
				if rec.status == 0 {
					writeJSONError(rec, http.StatusInternalServerError, "internal error")
				}
			}
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			if r.URL.Path != "/health" && r.URL.Path != "/metrics" {
				method := r.Method
				if !slices.Contains(knownMethods, method) {
					method = "OTHER"
				}
				s.m.httpRequests.inc(method, label, strconv.Itoa(status))
				s.m.httpDuration.observe(time.Since(start).Seconds(), method, label)
			}
			if s.log.Enabled(r.Context(), slog.LevelDebug) { // skip building the attributes on the hot path
				s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", status, "duration", time.Since(start))
			}
			if v == http.ErrAbortHandler {
				panic(v) // let net/http abort the connection
			}
		}()
		h(rec, r)
	}
}

// errorStatus maps an error to its HTTP status and client message. It is the
// only place where errors become statuses; anything it does not know is a
// 500 whose message leaks nothing.
func errorStatus(err error) (int, string) {
	var ve *validationError
	var ce *clientError
	var mbe *http.MaxBytesError
	msg := ""
	if errors.As(err, &ce) {
		msg = ce.msg
	}
	switch {
	case errors.As(err, &ve):
		return http.StatusBadRequest, ve.msg
	case errors.As(err, &mbe), errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, errTooLarge.Error()
	case errors.Is(err, errMediaType):
		return http.StatusUnsupportedMediaType, errMediaType.Error()
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized, msg
	case errors.Is(err, errForbidden):
		return http.StatusForbidden, msg
	case errors.Is(err, errNotFound):
		return http.StatusNotFound, msg
	case errors.Is(err, errConflict):
		return http.StatusConflict, msg
	case errors.Is(err, errBusy):
		return http.StatusServiceUnavailable, errBusy.Error()
	case errors.Is(err, errShuttingDown):
		return http.StatusServiceUnavailable, errShuttingDown.Error()
	case errors.Is(err, errTooManyStreams):
		return http.StatusServiceUnavailable, errTooManyStreams.Error()
	}
	return http.StatusInternalServerError, "internal error"
}

const statusClientClosed = 499

// writeError answers err as a JSON error (§2.5). Internal errors are logged
// with their text and answered with a fixed message.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := errorStatus(err)
	if status >= 500 && r.Context().Err() != nil {
		// The client went away while its request waited (for the write
		// lock, say), and the wait failed because of that. Nothing can be
		// answered; 499 (nginx's "client closed request") keeps it apart
		// from server errors in the metrics, and it is not logged as one.
		status, msg = statusClientClosed, "client closed request"
	}
	switch status {
	case http.StatusInternalServerError:
		s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	case statusClientClosed:
		s.log.Info("client closed request", "method", r.Method, "path", r.URL.Path, "err", err)
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="nixfleet"`)
	case http.StatusServiceUnavailable:
		if errors.Is(err, errBusy) {
			s.log.Warn("database busy", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		w.Header().Set("Retry-After", "1")
	}
	writeJSONError(w, status, msg)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	b, _ := marshalJSON(struct {
		Error string `json:"error"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// writeJSON writes v as a compact JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := marshalJSON(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
	return nil
}

// Request body limits (§2.3).
const (
	maxBody        = 1 << 20  // every route that reads a body
	maxReleaseBody = 32 << 20 // POST /api/v1/releases: a fleet of 100,000 hosts
)

// validator is implemented by request types; decode calls it after decoding.
type validator interface{ validate() error }

// decode reads a JSON request body of type T in the order of §2.4 and §2.6:
// content type (415), size (413), JSON (400), then T.validate (400). With
// emptyOK, a body of zero bytes is accepted as {} without a content-type
// check. The body must be exactly one JSON object in valid UTF-8; keys match
// as encoding/json matches them, and unknown keys are ignored (compat).
// Decoding is encoding/json's, linear in the size of the body.
func decode[T any, PT interface {
	*T
	validator
}](w http.ResponseWriter, r *http.Request, limit int64, emptyOK bool) (*T, error) {
	v := PT(new(T))
	body := r.Body
	if emptyOK {
		if r.ContentLength == 0 {
			return (*T)(v), v.validate()
		}
		if r.ContentLength < 0 {
			var first [1]byte
			n, err := io.ReadFull(body, first[:])
			if n == 0 {
				if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
					return nil, fmt.Errorf("read body: %w", err)
				}
				return (*T)(v), v.validate()
			}
			body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(first[:]), r.Body), r.Body}
		}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONContentType(ct) {
		return nil, errMediaType
	}
	if r.ContentLength > limit {
		return nil, errTooLarge
	}
	size := int64(512)
	if r.ContentLength > 0 {
		size = r.ContentLength + 1
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, body, limit)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errTooLarge
		}
		// A read error (timeout, connection reset) says nothing useful to the
		// client and would echo addresses; keep the message fixed.
		return nil, invalidf("invalid JSON body: could not read the request body")
	}
	if err := unmarshalObject(buf.Bytes(), v); err != nil {
		return nil, err
	}
	return (*T)(v), v.validate()
}

// unmarshalObject decodes exactly one JSON object in valid UTF-8 into dst.
// encoding/json would accept invalid UTF-8 (replacing it) and a top-level
// null (decoding nothing), so both are checked first.
func unmarshalObject(b []byte, dst any) error {
	if !utf8.Valid(b) {
		return invalidf("invalid JSON body: not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	if len(trimmed) == 0 {
		return invalidf("invalid JSON body: empty body")
	}
	err := json.Unmarshal(trimmed, dst)
	var te *json.UnmarshalTypeError
	switch {
	case err == nil && trimmed[0] != '{':
		return invalidf("invalid JSON body: expected a JSON object")
	case errors.As(err, &te) && te.Field == "":
		return invalidf("invalid JSON body: expected a JSON object")
	case errors.As(err, &te):
		return invalidf("%s: wrong type: got %s, want %s", te.Field, te.Value, jsonKind(te.Type.String()))
	case err != nil:
		return invalidf("invalid JSON body: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// jsonKind names a Go type the way a JSON client thinks of it.
func jsonKind(goType string) string {
	goType = strings.TrimLeft(goType, "*")
	switch {
	case goType == "string":
		return "string"
	case goType == "bool":
		return "boolean"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "integer"
	case strings.HasPrefix(goType, "float"):
		return "number"
	case strings.HasPrefix(goType, "[]"):
		return "array"
	default:
		return "object"
	}
}

// isJSONContentType accepts application/json and application/<x>+json,
// case-insensitively, ignoring parameters such as charset.
func isJSONContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
}

// queryValues decodes the query string as url.ParseQuery does, except that a
// pair it cannot decode (a bad %-escape, or a ';') keeps its raw key and value
// instead of being dropped: dropping ?limit=%zz or ?lifecycle=x%zz would lift
// the limit or widen the filter, while the raw value fails the parameter's
// validation (400, §2.4) or matches nothing.
func queryValues(r *http.Request) url.Values {
	q := url.Values{}
	for _, pair := range strings.Split(r.URL.RawQuery, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if dk, err := url.PathUnescape(strings.ReplaceAll(k, "+", " ")); err == nil { // as url.QueryUnescape
			k = dk
		}
		if dv, err := url.PathUnescape(strings.ReplaceAll(v, "+", " ")); err == nil {
			v = dv
		}
		q[k] = append(q[k], v)
	}
	return q
}

// queryBool parses an optional true/false query parameter: absent gives
// nil; anything but exactly "true" or "false" is a 400 naming it.
func queryBool(q url.Values, name string) (*bool, error) {
	v, ok := q[name]
	if !ok {
		return nil, nil
	}
	switch v[0] {
	case "true":
		return new(true), nil
	case "false":
		return new(false), nil
	}
	return nil, invalidf("%s: must be true or false", name)
}

// queryLimit parses the limit parameter (§2.4): absent gives def, a value
// above max is clamped, anything but a base-10 integer >= 1 is an error.
func queryLimit(q url.Values, def, max int) (int, error) {
	v, ok := q["limit"]
	if !ok {
		return def, nil
	}
	if !isDigits(v[0]) {
		return 0, invalidf("limit: must be an integer of at least 1")
	}
	n, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil { // all digits, so only out of range: larger than any maximum
		n = math.MaxInt64
	}
	if n < 1 {
		return 0, invalidf("limit: must be an integer of at least 1")
	}
	if max > 0 && n > int64(max) {
		return max, nil
	}
	return int(n), nil
}

func checkMachinePath(id string) error {
	if !validMachineID(id) {
		return invalidf("invalid machine id")
	}
	return nil
}

// health answers the liveness probe; it does no database work.
func (s *server) health(w http.ResponseWriter, r *http.Request, _ *principal) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok"))
	return nil
}

// metricsPage serves the Prometheus exposition from memory.
func (s *server) metricsPage(w http.ResponseWriter, r *http.Request, _ *principal) error {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	return s.m.writeTo(w)
}

// streamDeadline is how long a streamed response may wait for the client to
// take each chunk. A streamed response (the CSV export, the release list)
// lifts the server's WriteTimeout, which bounds a whole response, and
// instead needs the client to keep reading: a client that stops is cut off.
const streamDeadline = 30 * time.Second

// deadlineWriter extends the connection's write deadline before each write.
type deadlineWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newDeadlineWriter(w http.ResponseWriter) *deadlineWriter {
	return &deadlineWriter{w: w, rc: http.NewResponseController(w)}
}

func (d *deadlineWriter) Write(b []byte) (int, error) {
	if err := d.rc.SetWriteDeadline(time.Now().Add(streamDeadline)); err != nil {
		return 0, err
	}
	return d.w.Write(b)
}

// streamFailed handles an error after a streamed response has started: the
// status is sent, so only aborting the connection tells the client.
func (s *server) streamFailed(r *http.Request, err error) {
	if r.Context().Err() == nil {
		s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	panic(http.ErrAbortHandler)
}
