package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke starts the server through run, makes real requests over
// loopback, cancels it and expects a clean exit (ACC-4).
func TestSmoke(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing", "dir")
	db := filepath.Join(dir, "state.db")
	rs := startRun(t, nil, "--db-path", db)
	c := &http.Client{Timeout: 10 * time.Second}

	r := do(t, c, "GET", rs.url+"/health", "", nil)
	if r.status != 200 || string(r.body) != "ok" {
		t.Fatalf("health: %d %q", r.status, r.body)
	}
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("db mode %v, want 0600", fi.Mode().Perm())
	}
	logs := rs.logs.String()
	for _, want := range []string{"Control plane listening", "running without TLS: traffic is unencrypted and agent endpoints are unauthenticated", "database ready"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	key := bootstrapKey(t, c, rs.url)
	expect(t, do(t, c, "POST", rs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", storePath('a', "sys"), true, "up-to-date")), 200, "")
	ms := listMachinesT(t, c, rs.url, key, "")
	if len(ms) != 1 || ms[0].MachineID != "web-01" || ms[0].Lifecycle != "active" {
		t.Fatalf("machines: %+v", ms)
	}
	if err := rs.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestVersion covers ACC-1.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, func(string) string { return "" }, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "nixfleet-control-plane ") {
		t.Fatalf("version output %q", out.String())
	}
}

// TestUsageErrors covers the exit-2 part of ACC-2 and flag validation.
func TestUsageErrors(t *testing.T) {
	env := func(string) string { return "" }
	for _, args := range [][]string{
		{"--tls-cert", "c.pem"},
		{"--client-ca", "ca.pem"},
		{"--executor-interval", "5"},
		{"--executor-interval", "50ms"},
		{"--report-retention", "30m"},
		{"--log-level", "loud"},
		{"--listen", "nonsense"},
		{"serve", "extra"},
		{"bogus"},
	} {
		err := run(context.Background(), args, env, &bytes.Buffer{}, &bytes.Buffer{})
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: got %v, want a usage error", args, err)
		}
	}
}
