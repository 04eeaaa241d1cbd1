package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// The audit hash chain (migration 3). Every audit row written since carries
// prev_hash, the hash of the chained row before it (auditGenesis for the
// first), and hash = SHA-256(prev_hash || canonical encoding of the row).
// Editing, deleting, inserting or reordering a row breaks the chain at that
// row; verifyChain walks it and says where and how. Rows written before the
// migration have no hashes: they are "unchained" and only allowed before the
// first chained row.
//
// The canonical encoding, exactly (also in README.md, "Audit hash chain"):
//
//	hash  = lowercase hex of SHA-256(bytes)
//	bytes = prev_hash                      64 ASCII lowercase hex characters
//	        ns(id)                         the row id ("seq"), decimal ASCII
//	        ns(timestamp)                  Unix milliseconds, decimal ASCII
//	        ns(actor) ns(action) ns(target) UTF-8 as stored
//	        ns(detail), or "-1:," when detail is NULL
//	ns(s) = <decimal byte length of s> ":" <s> ","   (a netstring)
//
// Decimal integers have no sign (a negative timestamp has "-"), no leading
// zeros and no separators.

// auditGenesis is the prev_hash of the first chained row.
const auditGenesis = "0000000000000000000000000000000000000000000000000000000000000000"

// chainRow is one audit row as the chain sees it.
type chainRow struct {
	id        int64
	timestamp int64 // Unix ms
	actor     string
	action    string
	target    string
	detail    *string
	prevHash  *string // nil: an unchained row
	hash      *string
}

// auditHash returns the hash of row r chained after prev (see the encoding
// above). r.prevHash and r.hash are not read.
func auditHash(prev string, r chainRow) string {
	h := sha256.New()
	h.Write([]byte(prev))
	ns := func(s string) {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{':'})
		h.Write([]byte(s))
		h.Write([]byte{','})
	}
	ns(strconv.FormatInt(r.id, 10))
	ns(strconv.FormatInt(r.timestamp, 10))
	ns(r.actor)
	ns(r.action)
	ns(r.target)
	if r.detail == nil {
		h.Write([]byte("-1:,"))
	} else {
		ns(*r.detail)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// auditHeadInfo is the newest chained row: the wire type of
// GET /api/v1/audit/head. Before any chained row exists it is seq 0 with the
// genesis hash.
type auditHeadInfo struct {
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"`
}

// parseHead parses a --head value "SEQ:HASH".
func parseHead(v string) (auditHeadInfo, error) {
	seq, hash, ok := strings.Cut(v, ":")
	n, err := strconv.ParseInt(seq, 10, 64)
	if !ok || err != nil || n < 0 || !isDigits(seq) {
		return auditHeadInfo{}, fmt.Errorf("--head: want SEQ:HASH with SEQ a non-negative integer, got %q", v)
	}
	if !isHexHash(hash) {
		return auditHeadInfo{}, fmt.Errorf("--head: HASH must be 64 lowercase hex characters")
	}
	if n == 0 && hash != auditGenesis {
		return auditHeadInfo{}, fmt.Errorf("--head: seq 0 (no chained row yet) goes only with the genesis hash (64 zeros)")
	}
	return auditHeadInfo{Seq: n, Hash: hash}, nil
}

// isHexHash reports whether s is 64 lowercase hex characters.
func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// maxChainProblems is how many problems a chainVerifier describes; the rest
// are only counted, so a renumbered tail does not print a line per row.
const maxChainProblems = 20

// movedSearch is how far (in seq) a row whose hash does not match is looked
// for at other ids, to tell a moved (reordered, renumbered) row from an
// edited one.
const movedSearch = 16

// chainVerifier walks audit rows in ascending id order (add) and collects
// what breaks the chain. It keeps the previous row's state only (and the
// list of an export's gaps), so a database of any size is walked in
// constant memory.
type chainVerifier struct {
	// findHash returns the id of a row whose stored hash is h, to explain a
	// prev_hash that links to the wrong row. It is called only on a break.
	findHash func(h string) (int64, bool, error)
	// export: the rows come from an export, which may lack rows; partial:
	// gaps in an export are expected (a filtered export), not problems.
	export, partial bool

	rows, unchained          int64
	firstUnchained, lastSeen int64
	chainFirst, chainLast    int64
	chainLastHash            string
	chainFirstPrev           string
	seen                     bool
	started                  bool
	gaps                     []string
	gapRows                  int64
	problems                 []string
	nproblems                int
	head                     *auditHeadInfo
	headHash                 *string // the stored hash of row head.Seq, once seen
	headSeen                 bool
}

// problem records a problem at seq; problemAt one at the rows from..to.
func (v *chainVerifier) problem(seq int64, format string, args ...any) {
	v.problemAt(seq, seq, format, args...)
}

func (v *chainVerifier) problemAt(from, to int64, format string, args ...any) {
	v.nproblems++
	if len(v.problems) < maxChainProblems {
		v.problems = append(v.problems, seqRange(from, to)+": "+fmt.Sprintf(format, args...))
	}
}

// add checks one row; rows must come in ascending id order.
func (v *chainVerifier) add(r chainRow) error {
	v.rows++
	prevSeen, hadPrev := v.lastSeen, v.seen
	v.seen, v.lastSeen = true, r.id
	if hadPrev && r.id <= prevSeen {
		v.problem(r.id, "appears twice or out of id order")
		return nil
	}
	gapFrom, gapTo := prevSeen+1, r.id-1
	gap := hadPrev && gapTo >= gapFrom
	if gap && v.export {
		v.gapRows += gapTo - gapFrom + 1
		v.gaps = append(v.gaps, seqRange(gapFrom, gapTo))
		if !v.partial {
			v.problemAt(gapFrom, gapTo, "not in the export: deleted from it, or the export was filtered (use --partial to verify a filtered export)")
		}
	}
	if v.head != nil && r.id == v.head.Seq {
		v.headSeen, v.headHash = true, r.hash
	}
	if r.hash == nil {
		if !v.started {
			if v.unchained == 0 {
				v.firstUnchained = r.id
			}
			v.unchained++
			return nil
		}
		v.problem(r.id, "no hash, but the chain started at seq %d: the row was inserted, or its hash removed", v.chainFirst)
		return nil
	}
	prev := ""
	if r.prevHash != nil {
		prev = *r.prevHash
	}
	switch {
	case !v.started:
		v.started, v.chainFirst, v.chainFirstPrev = true, r.id, prev
		if prev != auditGenesis && !v.export {
			v.problem(r.id, "the first chained row's prev_hash is not the genesis value: the rows before it were deleted, or the chain was rewritten")
		}
	case gap && v.export:
		// The link across rows missing from an export cannot be checked.
	case prev != v.chainLastHash:
		if err := v.explainLink(r, prev, gap, gapFrom, gapTo); err != nil {
			return err
		}
	}
	if auditHash(prev, r) != *r.hash {
		if from, ok := movedFrom(prev, r); ok {
			v.problem(r.id, "hash mismatch: the row's content hashes as seq %d: it was moved (reordered or renumbered) from seq %d", from, from)
		} else {
			v.problem(r.id, "hash mismatch: the row was edited after it was written (its content no longer matches its hash)")
		}
	}
	v.chainLast, v.chainLastHash = r.id, *r.hash
	return nil
}

// explainLink describes a row whose prev_hash is not the hash of the chained
// row before it.
func (v *chainVerifier) explainLink(r chainRow, prev string, gap bool, gapFrom, gapTo int64) error {
	if gap {
		v.problemAt(gapFrom, gapTo, "missing: deleted (seq %d's prev_hash is not the hash of seq %d)", r.id, v.chainLast)
		return nil
	}
	if prev == auditGenesis {
		v.problem(r.id, "prev_hash is the genesis value: the chain was restarted here (the rows before it were rewritten)")
		return nil
	}
	var at int64
	found := false
	if v.findHash != nil {
		var err error
		if at, found, err = v.findHash(prev); err != nil {
			return err
		}
	}
	switch {
	case found && at > r.id:
		v.problem(r.id, "prev_hash is the hash of seq %d, which comes after it: rows reordered", at)
	case found && at < v.chainLast:
		v.problem(r.id, "prev_hash is the hash of seq %d, not of seq %d: %s inserted or moved here", at, v.chainLast, seqRange(at+1, r.id-1))
	default:
		v.problem(r.id, "prev_hash is not the hash of seq %d: seq %d was replaced, or a row before seq %d was deleted and the rest renumbered", v.chainLast, v.chainLast, r.id)
	}
	return nil
}

// movedFrom looks for the id near r.id under which r's content matches its
// stored hash: a row moved by reordering or renumbering keeps its content
// and hashes, so its hash still matches its old id.
func movedFrom(prev string, r chainRow) (int64, bool) {
	for d := int64(1); d <= movedSearch; d++ {
		for _, id := range []int64{r.id - d, r.id + d} {
			c := r
			c.id = id
			if id > 0 && auditHash(prev, c) == *r.hash {
				return id, true
			}
		}
	}
	return 0, false
}

// seqRange formats "seq a" or "seq a..b".
func seqRange(a, b int64) string {
	if a == b {
		return fmt.Sprintf("seq %d", a)
	}
	return fmt.Sprintf("seq %d..%d", a, b)
}

// finish adds the --head check and returns the report lines and whether the
// chain is intact.
func (v *chainVerifier) finish() (lines []string, ok bool) {
	if v.head != nil && v.head.Seq > 0 {
		switch {
		case !v.headSeen && v.head.Seq > v.lastSeen && !v.partial:
			v.problem(v.head.Seq, "the recorded head is missing: the log was truncated (the last row is seq %d)", v.lastSeen)
		case !v.headSeen && v.export:
			v.problem(v.head.Seq, "the recorded head is not in the export: it was filtered out, or removed from it")
		case !v.headSeen:
			v.problem(v.head.Seq, "the recorded head is missing: the row was deleted")
		case v.headHash == nil || *v.headHash != v.head.Hash:
			got := "no hash"
			if v.headHash != nil {
				got = *v.headHash
			}
			v.problem(v.head.Seq, "the recorded head hash is %s, the row's is %s: the log was rewritten at or before seq %d", v.head.Hash, got, v.head.Seq)
		}
	}
	lines = append(lines, fmt.Sprintf("%d audit rows", v.rows))
	if v.unchained > 0 {
		lines = append(lines, fmt.Sprintf("%d rows before the chain started (unchained): seq %d..%d are not protected by the chain",
			v.unchained, v.firstUnchained, v.firstUnchained+v.unchained-1))
	}
	if v.started {
		lines = append(lines, fmt.Sprintf("chain: seq %d..%d, head %d:%s", v.chainFirst, v.chainLast, v.chainLast, v.chainLastHash))
	} else {
		lines = append(lines, "chain: no chained rows")
	}
	if v.export {
		if len(v.gaps) == 0 {
			lines = append(lines, "export: contiguous, no rows missing between its first and last row")
		} else {
			lines = append(lines, fmt.Sprintf("export: NOT contiguous: %d %s not in it (%s); only the rows it contains and the links between adjacent rows were checked",
				v.gapRows, plural(int(v.gapRows), "row is", "rows are"), strings.Join(firstN(v.gaps, 10), ", ")))
		}
		if v.started && v.chainFirstPrev != auditGenesis {
			lines = append(lines, fmt.Sprintf("export: begins inside the chain at seq %d: the rows before it cannot be checked from the export", v.chainFirst))
		}
		if v.head == nil {
			lines = append(lines, "export: rows after its last row cannot be checked without --head")
		}
	}
	if v.head != nil {
		if v.nproblems == 0 {
			lines = append(lines, fmt.Sprintf("head %d:%s: present and matching", v.head.Seq, v.head.Hash))
		}
	}
	lines = append(lines, v.problems...)
	if more := v.nproblems - len(v.problems); more > 0 {
		lines = append(lines, fmt.Sprintf("... and %d more problems", more))
	}
	if v.nproblems > 0 {
		lines = append(lines, fmt.Sprintf("result: BROKEN (%d %s)", v.nproblems, plural(v.nproblems, "problem", "problems")))
		return lines, false
	}
	lines = append(lines, "result: intact")
	return lines, true
}

func firstN(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("and %d more ranges", len(s)-n))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
