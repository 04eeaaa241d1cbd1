package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// server holds what the HTTP handlers need.
type server struct {
	st             *store
	fleet          *fleet
	m              *metrics
	log            *slog.Logger
	now            func() time.Time
	mode           string // plain, tls or mtls
	bootstrapToken string // empty: no token required
	retention      time.Duration
	exec           *executor
	routes         []*route
}

type serverOptions struct {
	now            func() time.Time
	mode           string
	bootstrapToken string
	retention      time.Duration
}

// newServer builds the server over an opened store and initialises the
// metrics that are derived from the database.
func newServer(ctx context.Context, st *store, m *metrics, log *slog.Logger, o serverOptions) (*server, error) {
	s := &server{
		st: st, fleet: st.fleet, m: m, log: log, now: o.now, mode: o.mode,
		bootstrapToken: o.bootstrapToken, retention: o.retention,
	}
	m.fleet = st.fleet
	n, err := st.countActiveRollouts(ctx, st.ro)
	if err != nil {
		return nil, fmt.Errorf("count active rollouts: %w", err)
	}
	m.rolloutsActive.Store(n)
	s.exec = newExecutor(st, m, log, o.now)
	st.onWatchedReport = s.exec.wake
	s.routes = s.routeTable()
	return s, nil
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

// route is one entry of the route table.
type route struct {
	method  string
	pattern string   // as written in the spec's route table; also the metrics path label
	segs    []string // pattern split on "/"; "{name}" segments are wildcards
	access  access
	handle  func(w http.ResponseWriter, r *http.Request, p *principal) error
}

// routeTable lists every route (SPEC §4.1), in one place.
func (s *server) routeTable() []*route {
	rs := []*route{
		{method: "GET", pattern: "/health", access: public, handle: s.health},
		{method: "GET", pattern: "/metrics", access: public, handle: s.metricsPage},
		{method: "POST", pattern: "/api/v1/keys/bootstrap", access: public, handle: s.bootstrap},
		{method: "GET", pattern: "/api/v1/machines/{id}/desired-generation", access: agent, handle: s.desiredGeneration},
		{method: "POST", pattern: "/api/v1/machines/{id}/report", access: agent, handle: s.report},
		{method: "GET", pattern: "/api/v1/machines", access: anyRole, handle: s.listMachines},
		{method: "POST", pattern: "/api/v1/machines/{id}/register", access: adminRole, handle: s.register},
		{method: "PATCH", pattern: "/api/v1/machines/{id}/lifecycle", access: adminRole, handle: s.patchLifecycle},
		{method: "PUT", pattern: "/api/v1/machines/{id}/tags", access: adminRole, handle: s.putTags},
		{method: "DELETE", pattern: "/api/v1/machines/{id}/desired-generation", access: adminRole, handle: s.clearDesired},
		{method: "POST", pattern: "/api/v1/machines/{id}/notify-deploy", access: deployRole, handle: s.notifyDeploy},
		{method: "POST", pattern: "/api/v1/releases", access: deployRole, handle: s.createRelease},
		{method: "GET", pattern: "/api/v1/releases", access: anyRole, handle: s.listReleases},
		{method: "GET", pattern: "/api/v1/releases/{id}", access: anyRole, handle: s.getRelease},
		{method: "DELETE", pattern: "/api/v1/releases/{id}", access: adminRole, handle: s.deleteRelease},
		{method: "GET", pattern: "/api/v1/releases/{id}/diff/{other_id}", access: anyRole, handle: s.diffReleases},
		{method: "POST", pattern: "/api/v1/rollouts", access: deployRole, handle: s.createRollout},
		{method: "GET", pattern: "/api/v1/rollouts", access: anyRole, handle: s.listRollouts},
		{method: "GET", pattern: "/api/v1/rollouts/{id}", access: anyRole, handle: s.getRollout},
		{method: "DELETE", pattern: "/api/v1/rollouts/{id}", access: adminRole, handle: s.deleteRollout},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/pause", access: deployRole, handle: s.pauseRollout},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/resume", access: deployRole, handle: s.resumeRollout},
		{method: "POST", pattern: "/api/v1/rollouts/{id}/cancel", access: deployRole, handle: s.cancelRollout},
		{method: "GET", pattern: "/api/v1/audit", access: anyRole, handle: s.listAudit},
		{method: "GET", pattern: "/api/v1/audit/export", access: anyRole, handle: s.exportAudit},
		{method: "POST", pattern: "/api/v1/keys", access: adminRole, handle: s.createKey},
		{method: "GET", pattern: "/api/v1/keys", access: adminRole, handle: s.listKeys},
		{method: "DELETE", pattern: "/api/v1/keys/{id}", access: adminRole, handle: s.revokeKey},
	}
	for _, rt := range rs {
		rt.segs = strings.Split(rt.pattern, "/")
	}
	return rs
}

// pathParam is a decoded wildcard of a matched route.
type pathParam struct{ name, value string }

// matchPath reports whether the request path segments match the route's
// pattern and returns the decoded wildcard values (at most two per route).
func (rt *route) matchPath(segs []string) ([2]pathParam, bool) {
	var params [2]pathParam
	if len(segs) != len(rt.segs) {
		return params, false
	}
	n := 0
	for i, p := range rt.segs {
		if strings.HasPrefix(p, "{") {
			v, err := url.PathUnescape(segs[i])
			if err != nil || v == "" || n == len(params) {
				return params, false
			}
			params[n] = pathParam{p[1 : len(p)-1], v}
			n++
		} else if segs[i] != p {
			return params, false
		}
	}
	return params, true
}

// handler returns the root HTTP handler: routing, authentication, metrics,
// request logging and panic recovery around every route.
func (s *server) handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

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

// Unwrap lets http.ResponseController reach the connection (the CSV export
// lifts its write deadline through it).
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

func (s *server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	label := "unmatched"
	defer func() {
		v := recover()
		if v != nil && v != http.ErrAbortHandler {
			// A bug: answer 500 (if nothing was sent yet) and keep serving.
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

	segs := strings.Split(r.URL.EscapedPath(), "/")
	var matched *route
	var params [2]pathParam
	var allow []string
	needsKey := false
	for _, rt := range s.routes {
		p, ok := rt.matchPath(segs)
		if !ok {
			continue
		}
		if rt.method == r.Method || rt.method == "GET" && r.Method == "HEAD" {
			matched, params = rt, p
			break
		}
		allow = append(allow, rt.method)
		if rt.method == "GET" {
			allow = append(allow, "HEAD")
		}
		needsKey = needsKey || rt.access >= anyRole
	}
	if matched == nil {
		if len(allow) == 0 {
			writeJSONError(rec, http.StatusNotFound, "not found")
			return
		}
		// A known path with the wrong method: admin paths authenticate first,
		// so that anonymous callers learn nothing but 401 (compat).
		if needsKey {
			if _, err := s.authenticate(r); err != nil {
				s.writeError(rec, r, err)
				return
			}
		}
		slices.Sort(allow)
		rec.Header().Set("Allow", strings.Join(slices.Compact(allow), ", "))
		writeJSONError(rec, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	label = matched.pattern
	for _, p := range params {
		if p.name != "" {
			r.SetPathValue(p.name, p.value)
		}
	}
	p, err := s.authorize(r, matched)
	if err == nil {
		err = matched.handle(rec, r, p)
	}
	if err != nil {
		s.writeError(rec, r, err)
	}
}

// apiError is an error with the HTTP status and message to send.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func apiErr(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error {
	return apiErr(http.StatusBadRequest, format, args...)
}
func notFound(format string, args ...any) error { return apiErr(http.StatusNotFound, format, args...) }
func conflict(format string, args ...any) error { return apiErr(http.StatusConflict, format, args...) }
func forbidden(format string, args ...any) error {
	return apiErr(http.StatusForbidden, format, args...)
}

// errBusy is returned when another process holds the database write lock for
// longer than the busy timeout.
var errBusy = &apiError{status: http.StatusServiceUnavailable, msg: "database is busy, retry later"}

// writeError maps err to a status and a JSON body, in one place. Anything
// that is not an *apiError is an internal error: logged with its text, and
// answered with a fixed message that leaks nothing.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &mbe):
		ae = &apiError{status: http.StatusRequestEntityTooLarge, msg: "request body too large"}
	case isBusy(err):
		s.log.Warn("database busy", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = errBusy
	default:
		s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = &apiError{status: http.StatusInternalServerError, msg: "internal error"}
	}
	switch ae.status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="nixfleet"`)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	}
	writeJSONError(w, ae.status, ae.msg)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeJSON writes v as a compact JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
	return nil
}

// Request body limits (§2.3).
const (
	maxBody        = 1 << 20  // every route that reads a body
	maxReleaseBody = 32 << 20 // POST /api/v1/releases: a fleet of 100,000 hosts
)

// validator is implemented by request types; decode calls it after decoding.
type validator interface{ validate() error }

// decode reads a JSON request body into dst in the order of §2.4 and §2.6:
// content type (415), size (413), JSON (400), then dst.validate (400). With
// emptyOK, a body of zero bytes is accepted as {} without a content-type check.
func decode(w http.ResponseWriter, r *http.Request, limit int64, emptyOK bool, dst validator) error {
	body := r.Body
	if emptyOK {
		if r.ContentLength == 0 {
			return dst.validate()
		}
		if r.ContentLength < 0 {
			var first [1]byte
			n, err := io.ReadFull(body, first[:])
			if n == 0 {
				if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
					return fmt.Errorf("read body: %w", err)
				}
				return dst.validate()
			}
			body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(first[:]), r.Body), r.Body}
		}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONContentType(ct) {
		return apiErr(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	if r.ContentLength > limit {
		return &http.MaxBytesError{Limit: limit}
	}
	size := int64(512)
	if r.ContentLength > 0 {
		size = r.ContentLength + 1
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, body, limit)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		// A read error (timeout, connection reset) says nothing useful to the
		// client and would echo addresses; keep the message fixed.
		return badRequest("invalid JSON body: could not read the request body")
	}
	if err := unmarshalObject(buf.Bytes(), dst); err != nil {
		return err
	}
	return dst.validate()
}

// unmarshalObject decodes exactly one JSON object in valid UTF-8 into dst, a
// pointer to a request struct. Keys match the fields' json tags exactly:
// encoding/json alone would also match "Lifecycle" or "SUCCESS", but the wire
// keys are case-sensitive and any other key is unknown, hence ignored (compat).
// null means absent, and the last of duplicate keys wins.
func unmarshalObject(b []byte, dst any) error {
	if !utf8.Valid(b) {
		return badRequest("invalid JSON body: not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	if len(trimmed) == 0 {
		return badRequest("invalid JSON body: empty body")
	}
	if trimmed[0] != '{' {
		var v any
		if err := json.Unmarshal(trimmed, &v); err != nil {
			return badRequest("invalid JSON body: %s", jsonErrText(err))
		}
		return badRequest("invalid JSON body: expected a JSON object")
	}
	v := reflect.ValueOf(dst).Elem()
	if plainKeys(trimmed) {
		// Fast path: when every key is plain lowercase ASCII, encoding/json's
		// case-insensitive matching can only match exactly, so one standard
		// pass decodes exactly as the slow path would. Errors are re-derived
		// by the slow path, which names the field with its full JSON path.
		if json.Unmarshal(trimmed, dst) == nil {
			return nil
		}
		v.SetZero()
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &obj); err != nil { // validates the whole body once
		return badRequest("invalid JSON body: %s", jsonErrText(err))
	}
	return decodeFields(obj, v, "")
}

// plainKeys reports whether every object key in the JSON text b consists
// only of the bytes a-z, 0-9 and _ (no escapes) and no object repeats a key
// (encoding/json would merge a repeated object-valued key instead of letting
// the last value win). It scans once, with a stack of open containers to know
// which strings are keys. It is only meaningful for valid JSON; for anything
// else it may answer either way.
func plainKeys(b []byte) bool {
	type frame struct {
		object bool
		keys   int // index in keys where this object's keys start
	}
	var stackBuf [16]frame
	var keysBuf [32][]byte
	stack := stackBuf[:0] // grows past the array only for deep or wide bodies
	keys := keysBuf[:0]   // the keys of the open objects, innermost last
	expectKey := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '{', '[':
			stack = append(stack, frame{object: c == '{', keys: len(keys)})
			expectKey = c == '{'
		case '}', ']':
			if len(stack) > 0 {
				keys = keys[:stack[len(stack)-1].keys]
				stack = stack[:len(stack)-1]
			}
			expectKey = false
		case ',':
			expectKey = len(stack) > 0 && stack[len(stack)-1].object
		case ':':
			expectKey = false
		case '"':
			isKey, start := expectKey, i+1
			expectKey = false
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					if isKey {
						return false
					}
					i++ // skip the escaped byte
				} else if isKey && !(b[i] >= 'a' && b[i] <= 'z' || b[i] >= '0' && b[i] <= '9' || b[i] == '_') {
					return false
				}
			}
			if !isKey {
				continue
			}
			key := b[start:min(i, len(b))]
			if len(key) == 0 || len(stack) == 0 {
				return false
			}
			for _, k := range keys[stack[len(stack)-1].keys:] {
				if bytes.Equal(k, key) {
					return false
				}
			}
			keys = append(keys, key)
		}
	}
	return true
}

// decodeStruct decodes the JSON object raw (known to be valid) into the
// struct v, key by key. path is the JSON path of v, for error messages.
func decodeStruct(raw []byte, v reflect.Value, path string) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return badRequest("%s: wrong type: want object", pathOr(path, "body"))
	}
	return decodeFields(obj, v, path)
}

// decodeFields sets the fields of the struct v from the object's members,
// matching keys exactly to the json tags.
func decodeFields(obj map[string]json.RawMessage, v reflect.Value, path string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		if val, ok := obj[name]; ok {
			p := name
			if path != "" {
				p = path + "." + name
			}
			if err := decodeValue(val, v.Field(i), p); err != nil {
				return err
			}
		}
	}
	return nil
}

// decodeValue decodes one JSON value into v. Structs, pointers to structs
// and slices of structs are decoded by decodeStruct, so that nested keys are
// matched exactly too; everything else by encoding/json.
func decodeValue(raw json.RawMessage, v reflect.Value, path string) error {
	isNull := string(raw) == "null"
	switch {
	case isNull:
		v.SetZero() // null means absent
		return nil
	case v.Kind() == reflect.Struct:
		return decodeStruct(raw, v, path)
	case v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct:
		p := reflect.New(v.Type().Elem())
		if err := decodeStruct(raw, p.Elem(), path); err != nil {
			return err
		}
		v.Set(p)
		return nil
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct:
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return badRequest("%s: wrong type: want array", path)
		}
		out := reflect.MakeSlice(v.Type(), len(items), len(items))
		for i, item := range items {
			if err := decodeValue(item, out.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(out)
		return nil
	}
	if err := json.Unmarshal(raw, v.Addr().Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := path
			if te.Field != "" {
				field = path + "." + te.Field
			}
			return badRequest("%s: wrong type: got %s, want %s", field, te.Value, jsonKind(te.Type.String()))
		}
		return badRequest("%s: %s", path, jsonErrText(err))
	}
	return nil
}

func pathOr(path, def string) string {
	if path == "" {
		return def
	}
	return path
}

func jsonErrText(err error) string {
	if err == nil {
		return "invalid JSON"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
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

// timeLayout renders every output timestamp: UTC, exactly three fractional digits.
const timeLayout = "2006-01-02T15:04:05.000Z"

// fmtTime renders Unix milliseconds as an output timestamp.
func fmtTime(ms int64) string { return time.UnixMilli(ms).UTC().Format(timeLayout) }

// fmtTimePtr renders a nullable timestamp.
func fmtTimePtr(ms *int64) *string {
	if ms == nil {
		return nil
	}
	return str(fmtTime(*ms))
}

// parseTime parses an input RFC 3339 timestamp into Unix milliseconds.
func parseTime(s string) (int64, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, errors.New("not an RFC 3339 timestamp")
	}
	return t.UnixMilli(), nil
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
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		q[k] = append(q[k], v)
	}
	return q
}

// queryLimit parses the limit parameter (§2.4): absent gives def, a value
// above max is clamped, anything but a base-10 integer >= 1 is an error.
func queryLimit(q url.Values, def, max int) (int, error) {
	v, ok := q["limit"]
	if !ok {
		return def, nil
	}
	if !isDigits(v[0]) {
		return 0, badRequest("limit: must be an integer of at least 1")
	}
	n, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil { // all digits, so only out of range: larger than any maximum
		n = math.MaxInt64
	}
	if n < 1 {
		return 0, badRequest("limit: must be an integer of at least 1")
	}
	if max > 0 && n > int64(max) {
		return max, nil
	}
	return int(n), nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
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
