package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strconv"
	"strings"
	"time"
)

// The audit log (§10): every mutation writes its rows in its own transaction
// through recordAudit; listing and the CSV export read them back.

// auditActions is every audit action the control plane writes (§10.2).
var auditActions = []string{
	"report", "register", "update_lifecycle", "tags.update", "clear_desired", "notify_deploy",
	"bootstrap", "key.created", "key.revoked", "create_release", "delete_release",
	"rollout.created", "rollout.paused", "rollout.resumed", "rollout.cancelled", "rollout.deleted",
	"rollout.completed", "rollout.failed", "batch.deploying", "batch.succeeded", "batch.failed",
	"machine.reverted",
}

// recordAudit appends one audit row inside the mutation's transaction, so the
// change and its record commit together or not at all. detail may be nil.
func recordAudit(tx *txn, actor, action, target string, detail *string) error {
	if err := tx.insertAudit(actor, action, target, detail); err != nil {
		return err
	}
	tx.audits = append(tx.audits, action)
	return nil
}

// str returns a pointer to s, for nullable values.
func str(s string) *string { return &s }

// auditEvent is the wire type of an audit row (§5.6).
type auditEvent struct {
	ID        int64   `json:"id"`
	Timestamp string  `json:"timestamp"`
	Actor     string  `json:"actor"`
	Action    string  `json:"action"`
	Target    string  `json:"target"`
	Detail    *string `json:"detail"`
	// The hash chain (migration 3); both null for a row written before it.
	PrevHash *string `json:"prev_hash"`
	Hash     *string `json:"hash"`
}

// auditFilter selects audit rows (§4.25); zero values mean "any".
type auditFilter struct {
	actor, action, target string
	since, until          *int64 // Unix ms; since inclusive, until exclusive
	before                int64  // only ids below it; 0 = unbounded
	limit                 int    // 0 = no limit (the export)
}

// listAudit returns the matching rows, newest first (at most f.limit).
func (cp *controlPlane) listAudit(ctx context.Context, f auditFilter) ([]auditEvent, error) {
	out, err := readValue(ctx, cp.st, func(d dbq) ([]auditEvent, error) { return d.auditPage(f, f.before, f.limit) })
	if out == nil {
		out = []auditEvent{}
	}
	return out, err
}

// exportPage is how many rows the export reads per query. Between pages it
// holds no database connection, so a client that reads slowly (or not at
// all) never ties up the read pool.
const exportPage = 1000

// exportAudit writes every matching row to w, newest first, in constant
// memory: as CSV (§10.4, with the hash columns appended) or, when asJSON, as
// one JSON array of AuditEvent. started is called once the first query has
// succeeded, before anything is written: until then an error can still be
// answered with a status; after it, the caller can only abort. A JSON export
// cut short is not valid JSON, so a truncated download cannot pass for a
// whole one.
func (cp *controlPlane) exportAudit(ctx context.Context, f auditFilter, asJSON bool, w io.Writer, started func()) error {
	bw := bufio.NewWriterSize(w, 32<<10)
	before, left := f.before, f.limit
	rows := 0
	for first := true; ; first = false {
		n := exportPage
		if f.limit > 0 {
			n = min(n, left)
		}
		var page []auditEvent
		if n > 0 {
			var err error
			if page, err = readValue(ctx, cp.st, func(d dbq) ([]auditEvent, error) { return d.auditPage(f, before, n) }); err != nil {
				return err
			}
		}
		if first {
			started()
			if asJSON {
				bw.WriteString("[")
			} else {
				bw.WriteString(csvHeader)
			}
		}
		for _, ev := range page {
			if asJSON {
				b, err := marshalJSON(ev)
				if err != nil {
					return err
				}
				b = bytes.TrimSuffix(b, []byte("\n"))
				if rows > 0 {
					bw.WriteByte(',')
				}
				bw.WriteString("\n")
				bw.Write(b)
			} else {
				writeCSVRow(bw, ev)
			}
			rows++
		}
		last := len(page) < n || n == 0
		if last && asJSON {
			bw.WriteString("\n]\n")
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		if last {
			return nil
		}
		before, left = page[len(page)-1].ID, left-len(page)
	}
}

// csvFormulaChars are the first characters that csvField guards with a
// quote (and that audit verify may have to strip again).
const csvFormulaChars = "=+-@\t\r"

// csvField escapes one CSV field (§10.4): a leading =, +, -, @, TAB or CR gets
// a single quote so spreadsheets do not evaluate it as a formula; then a field
// holding a comma, quote, LF or CR is quoted with inner quotes doubled.
func csvField(v string) string {
	if v != "" && strings.ContainsRune(csvFormulaChars, rune(v[0])) {
		v = "'" + v
	}
	if strings.ContainsAny(v, ",\"\n\r") {
		v = `"` + strings.ReplaceAll(v, `"`, `""`) + `"`
	}
	return v
}

// writeCSVRow writes one audit row as a CSV line ending in LF: the five
// columns of §10.4, then id, prev_hash and hash (empty for an unchained
// row), appended so that readers of the first five columns are unaffected.
func writeCSVRow(w *bufio.Writer, ev auditEvent) {
	opt := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	for i, f := range []string{ev.Timestamp, ev.Actor, ev.Action, ev.Target, opt(ev.Detail),
		strconv.FormatInt(ev.ID, 10), opt(ev.PrevHash), opt(ev.Hash)} {
		if i > 0 {
			w.WriteByte(',')
		}
		w.WriteString(csvField(f))
	}
	w.WriteByte('\n')
}

// csvHeader is the header of §10.4 with the hash chain's columns appended.
const csvHeader = "timestamp,actor,action,target,detail,id,prev_hash,hash\n"

// auditHead returns the newest chained audit row (seq 0 and the genesis
// hash when there is none yet).
func (cp *controlPlane) auditHead(ctx context.Context) (auditHeadInfo, error) {
	return readValue(ctx, cp.st, dbq.auditHead)
}

// auditHeadLogInterval is how often the serving process logs the chain's
// head. An operator who ships the log elsewhere then holds, at most this
// long after any row was written, a head that `audit verify --head` checks
// the database against.
const auditHeadLogInterval = 15 * time.Minute

// runAuditHeadLog logs "audit head" with seq and hash at once and then every
// interval until ctx ends.
func (cp *controlPlane) runAuditHeadLog(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if h, err := cp.auditHead(ctx); err != nil {
			if ctx.Err() == nil {
				cp.log.Warn("read audit head failed", "err", err)
			}
		} else {
			cp.log.Info("audit head", "seq", h.Seq, "hash", h.Hash)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
