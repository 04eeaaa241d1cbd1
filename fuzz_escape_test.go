package main

// Fuzz targets for the two output escapers: CSV fields of the audit export
// (§10.4) and metric label values (§11). See fuzz_test.go.

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// fzFormula reports whether a CSV field value would need the formula guard.
func fzFormula(v string) bool {
	return v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0]))
}

// FuzzCSVField writes one audit row with writeCSVRow and parses it back with
// encoding/csv: the fields are the original values, with a leading ' exactly
// when the value starts with = + - @ TAB or CR, and no parsed field starts
// with a formula character. (encoding/csv turns a CRLF inside a quoted field
// into LF; the expected value does the same.)
func FuzzCSVField(f *testing.F) {
	for _, s := range [][5]string{
		{"2026-04-11T09:31:10.517Z", "executor", "batch.succeeded", "r-1-b0", "Batch 0 succeeded: 1 healthy, 0 unhealthy (threshold: 1)"},
		{"hello", "a,b", `he said "hi"`, "=SUM(A1:A9)", "=A,B"},
		{`=HYPERLINK("http://evil")`, "-1", "", "+1", "@x"},
		{"\tx", "\rx", "a\r\nb", "a\nb", "\"\""},
		{"'", "''=", ",", "\r", "\r\r\n"},
		{"é", "\xff", "a\"b,c\nd", " =x", "-"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], false)
	}
	f.Add("t", "a", "b", "c", "", true)
	f.Fuzz(func(t *testing.T, ts, actor, action, target, detail string, nullDetail bool) {
		ev := auditEvent{Timestamp: ts, Actor: actor, Action: action, Target: target, Detail: &detail}
		if nullDetail {
			ev.Detail = nil
			detail = ""
		}
		var buf bytes.Buffer
		w := bufio.NewWriter(&buf)
		writeCSVRow(w, ev)
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		line := buf.String()
		if !strings.HasSuffix(line, "\n") {
			t.Fatalf("row %q does not end with LF", line)
		}
		values := []string{ts, actor, action, target, detail}
		if !utf8.ValidString(line) {
			// encoding/csv works on runes; audit values come from validated JSON
			// and are always UTF-8. Check the byte-level rules only.
			for _, v := range values {
				if fzFormula(v) && !strings.HasPrefix(csvField(v), "'") && !strings.HasPrefix(csvField(v), `"'`) {
					t.Fatalf("csvField(%q) = %q lacks the formula guard", v, csvField(v))
				}
			}
			return
		}
		r := csv.NewReader(strings.NewReader(line))
		recs, err := r.ReadAll()
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		// The five columns of §10.4, then id, prev_hash and hash (an
		// unchained row with id 0 here).
		if len(recs) != 1 || len(recs[0]) != 8 || !slices.Equal(recs[0][5:], []string{"0", "", ""}) {
			t.Fatalf("parse %q: %d records %q, want one of 8 fields", line, len(recs), recs)
		}
		for i, v := range values {
			want := v
			if fzFormula(v) {
				want = "'" + v
			}
			want = strings.ReplaceAll(want, "\r\n", "\n")
			if got := recs[0][i]; got != want {
				t.Fatalf("field %d: wrote %q as %q, parsed back %q, want %q", i, v, csvField(v), got, want)
			}
			if fzFormula(recs[0][i]) {
				t.Fatalf("field %d parses as %q, which starts with a formula character", i, recs[0][i])
			}
		}
	})
}

// fzUnescapeLabel reverses the exposition format's label escaping; ok is
// false if esc holds a raw newline, an unescaped double quote or an escape
// other than \\ \" \n.
func fzUnescapeLabel(esc string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(esc); i++ {
		switch c := esc[i]; c {
		case '\n', '"':
			return "", false
		case '\\':
			if i+1 == len(esc) {
				return "", false
			}
			i++
			switch esc[i] {
			case '\\':
				b.WriteByte('\\')
			case '"':
				b.WriteByte('"')
			case 'n':
				b.WriteByte('\n')
			default:
				return "", false
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// FuzzEscapeLabel checks that escapeLabel's output is a valid label value
// (no raw newline, no unescaped double quote, only the three escapes) that
// unescapes to the input.
func FuzzEscapeLabel(f *testing.F) {
	for _, s := range []string{"", "web-01", `a"b`, `a\b`, "a\nb", `\n`, `\"`, "\\\n\"", "é\x00\xff", "end\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		esc := escapeLabel(s)
		back, ok := fzUnescapeLabel(esc)
		if !ok {
			t.Fatalf("escapeLabel(%q) = %q is not a valid label value", s, esc)
		}
		if back != s {
			t.Fatalf("escapeLabel(%q) = %q unescapes to %q", s, esc, back)
		}
		if !strings.ContainsAny(s, "\\\"\n") && esc != s {
			t.Fatalf("escapeLabel(%q) = %q changed a value that needs no escaping", s, esc)
		}
	})
}
