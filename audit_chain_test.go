package main

// The audit hash chain (audit_chain.go, store_audit.go): the canonical
// encoding's published test vectors, how rows are chained in their
// transaction (rollbacks, another process writing), and the
// head route (issue 17, part 1).

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditHashVectors pins the canonical encoding to the two worked
// examples of README.md ("Audit hash chain"), so a third party's verifier
// and this one agree byte for byte.
func TestAuditHashVectors(t *testing.T) {
	first := chainRow{id: 1, timestamp: 1765000000000, actor: "system:bootstrap", action: "bootstrap",
		target: "first-admin", detail: str("first admin key created")}
	h1 := auditHash(auditGenesis, first)
	if h1 != "77cff3d322c01e75b3982d9b9664e97be5f7764cf1d64d0c8fb04c0440ff20fc" {
		t.Errorf("row 1: %s", h1)
	}
	second := chainRow{id: 2, timestamp: 1765000000500, actor: "apikey:ops", action: "delete_release", target: "rel-000001"}
	if h2 := auditHash(h1, second); h2 != "351f215cd8734f1cdf0978b4a95dd06bd99f4c51379a4bcc4629840f74fdcd02" {
		t.Errorf("row 2 (NULL detail): %s", h2)
	}
	// NULL and the empty string, and shifted field boundaries, hash apart.
	empty := second
	empty.detail = str("")
	shifted := chainRow{id: 2, timestamp: 1765000000500, actor: "apikey:op", action: "sdelete_release", target: "rel-000001"}
	if auditHash(h1, second) == auditHash(h1, empty) || auditHash(h1, second) == auditHash(h1, shifted) {
		t.Error("distinct rows share a hash")
	}
}

// TestAuditChainInTransaction checks that each row is chained to the
// newest committed row: a rolled-back transaction leaves no
// trace in the chain, and a row written by another process (`keys create`
// while the server runs) is chained like the server's own.
func TestAuditChainInTransaction(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "state.db")
	ts := newTestServer(t, testServerOptions{dbPath: dbPath})
	c := ts.client("")
	admin := bootstrapKey(t, c, ts.url) // seq 1
	ctx := context.Background()
	head := func() auditHeadInfo {
		var h auditHeadInfo
		do(t, c, "GET", ts.url+"/api/v1/audit/head", admin, nil).json(t, &h)
		return h
	}
	h1 := head()
	if h1.Seq != 1 || h1.Hash != auditHash(auditGenesis, chainRowsOf(t, dbPath)[0]) {
		t.Fatalf("head after bootstrap %+v", h1)
	}

	errRollback := errors.New("roll back")
	err := ts.st.write(ctx, func(tx *txn) error {
		if err := recordAudit(tx, "test", "register", "gone", nil); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) || head() != h1 {
		t.Fatalf("rolled back: %v, head %+v", err, head())
	}
	err = ts.st.write(ctx, func(tx *txn) error {
		if err := recordAudit(tx, "test", "register", "kept-1", nil); err != nil { // seq 2
			return err
		}
		return recordAudit(tx, "test", "register", "kept-2", nil) // seq 3, chained to seq 2
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := keysRunCLI(nil, "--name", "offline", "--db-path", dbPath); err != nil { // seq 4, another store
		t.Fatalf("keys create: %v\n%s", err, stderr)
	}
	expect(t, do(t, c, "POST", ts.url+"/api/v1/machines/m1/register", admin, nil), 201, "") // seq 5

	rows := chainRowsOf(t, dbPath)
	var targets []string
	prev := auditGenesis
	for _, r := range rows {
		targets = append(targets, r.target)
		if r.prevHash == nil || *r.prevHash != prev || *r.hash != auditHash(prev, r) {
			t.Errorf("seq %d is not chained to the row before it", r.id)
		}
		prev = *r.hash
	}
	if len(rows) != 5 || targets[1] != "kept-1" || targets[2] != "kept-2" || rows[3].action != "key.created" || rows[4].id != 5 {
		t.Fatalf("rows %v", targets)
	}
	if h := head(); h.Seq != 5 || h.Hash != prev {
		t.Errorf("head %+v, want 5:%s", h, prev)
	}
	if code, out := verify(t, "--db-path", dbPath); code != 0 {
		t.Errorf("verify: %d\n%s", code, out)
	}
}

// TestAuditHeadRoute covers GET /api/v1/audit/head: any role reads it, with
// the auth of GET /api/v1/audit; the answer is the newest chained row and
// follows every write.
func TestAuditHeadRoute(t *testing.T) {
	e := newTestEnv(t)
	for _, key := range []string{e.R, e.D, e.A} {
		r := do(t, e.c, "GET", e.url+"/api/v1/audit/head", key, nil)
		expect(t, r, 200, "")
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
	}
	authExpect401(t, do(t, e.c, "GET", e.url+"/api/v1/audit/head", "", nil), "missing API key")
	authExpect401(t, do(t, e.c, "GET", e.url+"/api/v1/audit/head", "nfk-"+auditGenesis, nil), "invalid API key")

	var before, after auditHeadInfo
	do(t, e.c, "GET", e.url+"/api/v1/audit/head", e.R, nil).json(t, &before)
	expect(t, do(t, e.c, "POST", e.url+"/api/v1/machines/web-01/register", e.A, nil), 201, "")
	do(t, e.c, "GET", e.url+"/api/v1/audit/head", e.R, nil).json(t, &after)
	newest := auditRows(t, e.c, e.url, e.R, "?limit=1")[0]
	if after.Seq != before.Seq+1 || after.Seq != newest.ID || after.Hash != *newest.Hash || *newest.PrevHash != before.Hash {
		t.Errorf("head %+v -> %+v; newest row %d prev %s hash %s", before, after, newest.ID, *newest.PrevHash, *newest.Hash)
	}
}

// TestAuditHeadLog checks the head log line: once at start, then every
// interval with the current head (the serving process uses
// auditHeadLogInterval).
func TestAuditHeadLog(t *testing.T) {
	ts := newTestServer(t, testServerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ts.cp.runAuditHeadLog(ctx, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "the first head line", func() bool {
		return strings.Contains(ts.logs.String(), `msg="audit head" seq=0 hash=`+auditGenesis)
	})
	bootstrapKey(t, ts.client(""), ts.url)
	h, err := ts.cp.auditHead(context.Background())
	if err != nil || h.Seq != 1 {
		t.Fatalf("head %+v, %v", h, err)
	}
	waitFor(t, 10*time.Second, "a later head line", func() bool {
		return strings.Contains(ts.logs.String(), `msg="audit head" seq=1 hash=`+h.Hash)
	})
}
