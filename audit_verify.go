package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The `audit verify` subcommand: checks the audit hash chain of a database
// (offline, read-only, beside a running server) or of an export file.

const auditVerifyUsage = `Usage:
  nixfleet-control-plane audit verify --db-path FILE [--head SEQ:HASH]
  nixfleet-control-plane audit verify --export FILE [--partial] [--head SEQ:HASH]

Checks the audit log's hash chain and names every row that breaks it.
  --db-path FILE    the database; opened read-only, safe while the server runs
  --export FILE     a file from GET /api/v1/audit/export (CSV, or format=json)
  --partial         the export was filtered: rows missing from it are expected
  --head SEQ:HASH   a head recorded earlier (GET /api/v1/audit/head or the
                    "audit head" log line): also proves the log was neither
                    truncated nor rewritten up to that row
Exit status: 0 intact, 1 broken (or unreadable), 2 usage error.
`

// errChainBroken is returned (exit 1) after the report has been printed.
var errChainBroken = errors.New("audit chain is broken")

// auditVerify runs `audit verify` with args (after "verify").
func auditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fset.SetOutput(io.Discard)
	var dbPath, export, head string
	var partial bool
	fset.StringVar(&dbPath, "db-path", "", "")
	fset.StringVar(&export, "export", "", "")
	fset.StringVar(&head, "head", "", "")
	fset.BoolVar(&partial, "partial", false, "")
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, auditVerifyUsage)
			return nil
		}
		fmt.Fprint(stderr, auditVerifyUsage)
		return usagef("audit verify: %v", err)
	}
	switch {
	case fset.NArg() > 0:
		fmt.Fprint(stderr, auditVerifyUsage)
		return usagef("audit verify: unexpected argument %q", fset.Arg(0))
	case (dbPath == "") == (export == ""):
		fmt.Fprint(stderr, auditVerifyUsage)
		return usagef("audit verify: give exactly one of --db-path and --export")
	case partial && export == "":
		return usagef("audit verify: --partial applies only to --export")
	}
	v := &chainVerifier{export: export != "", partial: partial}
	if head != "" {
		h, err := parseHead(head)
		if err != nil {
			return usagef("audit verify: %v", err)
		}
		v.head = &h
	}
	var source string
	if dbPath != "" {
		source = "database " + dbPath
		err := walkAuditDB(ctx, dbPath, func(r chainRow, find func(string) (int64, bool, error)) error {
			v.findHash = find
			return v.add(r)
		})
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("database %s does not exist", dbPath)
		}
		if err != nil {
			return err
		}
	} else {
		rows, format, err := readAuditExport(export)
		if err != nil {
			return err
		}
		source = format + " export " + export
		byHash := map[string]int64{}
		for _, r := range rows {
			if r.hash != nil {
				if _, dup := byHash[*r.hash]; !dup {
					byHash[*r.hash] = r.id
				}
			}
		}
		v.findHash = func(h string) (int64, bool, error) { id, ok := byHash[h]; return id, ok, nil }
		for _, r := range rows {
			if err := v.add(r); err != nil {
				return err
			}
		}
	}
	lines, ok := v.finish()
	fmt.Fprintln(stdout, source)
	for _, l := range lines {
		fmt.Fprintln(stdout, l)
	}
	if !ok {
		return errChainBroken
	}
	return nil
}

// exportRow is an AuditEvent as read from a JSON export.
type exportRow struct {
	ID        *int64  `json:"id"`
	Timestamp string  `json:"timestamp"`
	Actor     string  `json:"actor"`
	Action    string  `json:"action"`
	Target    string  `json:"target"`
	Detail    *string `json:"detail"`
	PrevHash  *string `json:"prev_hash"`
	Hash      *string `json:"hash"`
}

// readAuditExport reads a JSON (an array of AuditEvent, as from
// GET /api/v1/audit/export?format=json or GET /api/v1/audit) or CSV export
// and returns its rows in ascending id order, and the format's name.
func readAuditExport(path string) ([]chainRow, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("read export: %w", err)
	}
	var rows []chainRow
	format := "CSV"
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		format = "JSON"
		rows, err = parseJSONExport(b)
	} else {
		rows, err = parseCSVExport(b)
	}
	if err != nil {
		return nil, "", fmt.Errorf("read %s export %s: %w", format, path, err)
	}
	slices.SortStableFunc(rows, func(a, b chainRow) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	return rows, format, nil
}

func parseJSONExport(b []byte) ([]chainRow, error) {
	var in []exportRow
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("not a JSON array of audit events (an interrupted download?): %w", err)
	}
	out := make([]chainRow, 0, len(in))
	for i, e := range in {
		if e.ID == nil {
			return nil, fmt.Errorf("event %d has no id", i+1)
		}
		ts, err := parseTime(e.Timestamp)
		if err != nil {
			return nil, fmt.Errorf("event id %d: timestamp: %v", *e.ID, err)
		}
		out = append(out, chainRow{id: *e.ID, timestamp: ts, actor: e.Actor, action: e.Action, target: e.Target,
			detail: e.Detail, prevHash: e.PrevHash, hash: e.Hash})
	}
	return out, nil
}

// parseCSVExport reads a CSV export. Two things a CSV loses are recovered
// with the row's own hash: a field that begins with ' followed by a formula
// character may or may not have had the ' added by the export's formula
// guard (§10.4), and an empty detail may have been NULL or "". Every reading
// is tried and the one that matches the row's hash is kept; a row that
// matches under none is reported as edited. encoding/csv turns CR LF inside
// a quoted field into LF, so a value holding CR LF cannot be verified from
// a CSV export (use the JSON export).
func parseCSVExport(b []byte) ([]chainRow, error) {
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("no header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[h] = i
	}
	for _, need := range []string{"timestamp", "actor", "action", "target", "detail", "id", "prev_hash", "hash"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("no %q column: an export from a version without the hash chain cannot be verified", need)
		}
	}
	var out []chainRow
	for line := 2; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(rec) != len(header) {
			return nil, fmt.Errorf("line %d: %d fields, header has %d", line, len(rec), len(header))
		}
		f := func(name string) string { return rec[col[name]] }
		id, err := strconv.ParseInt(f("id"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: id: not an integer", line)
		}
		ts, err := parseTime(f("timestamp"))
		if err != nil {
			return nil, fmt.Errorf("line %d: timestamp: %v", line, err)
		}
		row := chainRow{id: id, timestamp: ts}
		if v := f("prev_hash"); v != "" {
			row.prevHash = &v
		}
		if v := f("hash"); v != "" {
			row.hash = &v
		}
		out = append(out, resolveCSVRow(row, f("actor"), f("action"), f("target"), f("detail")))
	}
}

// resolveCSVRow fills in the text fields of row from their CSV values,
// choosing among the readings the formula guard and NULL make possible the
// one that matches the row's hash (the unguarded, NULL-detail reading when
// none does or the row has no hash).
func resolveCSVRow(row chainRow, actor, action, target, detail string) chainRow {
	readings := func(v string) []string {
		if len(v) >= 2 && v[0] == '\'' && strings.ContainsRune(csvFormulaChars, rune(v[1])) {
			return []string{v[1:], v}
		}
		return []string{v}
	}
	var details []*string
	if detail == "" {
		details = []*string{nil, str("")}
	} else {
		for _, d := range readings(detail) {
			details = append(details, str(d))
		}
	}
	var first *chainRow
	for _, a := range readings(actor) {
		for _, ac := range readings(action) {
			for _, t := range readings(target) {
				for _, d := range details {
					c := row
					c.actor, c.action, c.target, c.detail = a, ac, t, d
					if first == nil {
						first = &c
					}
					if c.hash != nil && c.prevHash != nil && auditHash(*c.prevHash, c) == *c.hash {
						return c
					}
				}
			}
		}
	}
	return *first
}
