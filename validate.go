package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Identifier and field rules (§2.7). Each check returns a *validationError (400) whose
// message starts with the field's JSON path.

// isIDChars reports whether s is 1–128 bytes of [A-Za-z0-9._-].
func isIDChars(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validMachineID applies the machine-ID rule: the ID characters, and not "."
// or ".." (which would be path segments).
func validMachineID(s string) bool { return isIDChars(s) && s != "." && s != ".." }

func checkMachineID(field, s string) error {
	if !validMachineID(s) {
		return invalidf("%s: invalid machine id (1 to 128 bytes of A-Z a-z 0-9 . _ -)", field)
	}
	return nil
}

// validTag applies the tag rule: 1–64 bytes of [A-Za-z0-9._:-].
func validTag(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// normalizeTags validates a tag list and returns it deduplicated and sorted
// (never nil). At most 64 distinct tags are allowed.
func normalizeTags(field string, tags []string) ([]string, error) {
	out := make([]string, 0, len(tags))
	for i, t := range tags {
		if !validTag(t) {
			return nil, invalidf("%s[%d]: invalid tag %q (1 to 64 bytes of A-Z a-z 0-9 . _ : -)", field, i, t)
		}
		out = append(out, t)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > 64 {
		return nil, invalidf("%s: at most 64 distinct tags", field)
	}
	return out, nil
}

// nixBase32 is the alphabet of Nix store path hashes (no e, o, t, u).
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

// validStorePath applies the store-path rule:
// ^/nix/store/[nix base32]{32}-[A-Za-z0-9+._?=-]+$, at most 512 bytes.
func validStorePath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/nix/store/")
	if !ok || len(p) > 512 || len(rest) < 34 || rest[32] != '-' {
		return false
	}
	for i := 0; i < 32; i++ {
		if strings.IndexByte(nixBase32, rest[i]) < 0 {
			return false
		}
	}
	for i := 33; i < len(rest); i++ {
		c := rest[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+._?=-", c) >= 0) {
			return false
		}
	}
	return true
}

func checkStorePath(field, p string) error {
	if !validStorePath(p) {
		return invalidf("%s: not a valid Nix store path", field)
	}
	return nil
}

// checkPlatform: 1–64 bytes of printable ASCII without spaces.
func checkPlatform(field, p string) error {
	if p == "" || len(p) > 64 {
		return invalidf("%s: must be 1 to 64 bytes", field)
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= 0x20 || p[i] > 0x7e {
			return invalidf("%s: must be printable ASCII without spaces", field)
		}
	}
	return nil
}

// hasControl reports whether s holds a control character (C0, DEL or C1).
func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return true
		}
	}
	return false
}

// checkCacheURL: at most 1024 bytes, an absolute URL with a scheme and a host
// or path, no whitespace or control characters.
func checkCacheURL(field, v string) error {
	if len(v) > 1024 {
		return invalidf("%s: at most 1024 bytes", field)
	}
	if hasControl(v) || strings.ContainsAny(v, " \t\r\n\u00a0\u2028\u2029") {
		return invalidf("%s: must not contain whitespace or control characters", field)
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" || u.Host == "" && u.Path == "" && u.Opaque == "" {
		return invalidf("%s: must be an absolute URL", field)
	}
	return nil
}

// checkText applies a byte limit and, with noControl, forbids control characters.
func checkText(field, v string, max int, noControl bool) error {
	if len(v) > max {
		return invalidf("%s: at most %d bytes", field, max)
	}
	if noControl && hasControl(v) {
		return invalidf("%s: must not contain control characters", field)
	}
	return nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
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

// marshalJSON encodes v compactly with a trailing newline. HTML characters
// stay as they are: these are API responses, and the v0.1 CLI prints
// messages such as "invalid transition: active -> pending" verbatim.
func marshalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode response: %w", err)
	}
	return b.Bytes(), nil
}
