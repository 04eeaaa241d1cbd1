package main

import (
	"errors"
	"fmt"
)

// The errors of the domain layer. Domain and store functions return these
// (wrapped or as a *clientError carrying the message for the client); exactly
// one function, errorStatus in api.go, turns them into HTTP statuses.
// Anything else is an internal error: logged, never shown to the client.
var (
	errNotFound     = errors.New("not found")                             // 404
	errConflict     = errors.New("conflict")                              // 409
	errForbidden    = errors.New("forbidden")                             // 403
	errUnauthorized = errors.New("unauthorized")                          // 401
	errTooLarge     = errors.New("request body too large")                // 413
	errMediaType    = errors.New("Content-Type must be application/json") // 415
	errBusy         = errors.New("database is busy, retry later")         // 503: another process holds the write lock
	errShuttingDown = errors.New("server is shutting down")               // 503: the report queue is closed

	// errTooManyStreams: --max-event-streams event streams are open (503).
	errTooManyStreams = errors.New("too many open event streams, retry later")

	// errStale aborts a write whose snapshot is out of date: a rollout was
	// changed by someone else between the read and the compare-and-swap. The
	// executor re-reads the rollout on its next pass.
	errStale = errors.New("rollout changed concurrently")
)

// clientError is a sentinel kind with the exact message the client gets
// (the messages are normative, SPEC §2.5).
type clientError struct {
	kind error
	msg  string
}

func (e *clientError) Error() string { return e.msg }
func (e *clientError) Unwrap() error { return e.kind }

func notFoundf(format string, args ...any) error {
	return &clientError{errNotFound, fmt.Sprintf(format, args...)}
}

func conflictf(format string, args ...any) error {
	return &clientError{errConflict, fmt.Sprintf(format, args...)}
}

func forbiddenf(format string, args ...any) error {
	return &clientError{errForbidden, fmt.Sprintf(format, args...)}
}

// validationError is a 400: a request that can never succeed as sent. Its
// message starts with the JSON path of the offending field when there is one
// ("entries[1].store_path: not a valid Nix store path").
type validationError struct{ msg string }

func (e *validationError) Error() string { return e.msg }

// invalidf returns a *validationError.
func invalidf(format string, args ...any) error {
	return &validationError{fmt.Sprintf(format, args...)}
}
