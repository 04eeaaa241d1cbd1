package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// The subcommands other than serve: version and keys create (audit verify is
// in audit_verify.go). run in main.go dispatches to them.

// version is set at link time with -ldflags "-X main.version=…". When it is
// left at "dev", versionString falls back to the VCS revision that the Go
// toolchain stamps into binaries built from a git checkout.
var version = "dev"

// versionString is the version to print and export: the link-time version,
// or "dev-<12-digit revision>[-dirty]" from the build information when the
// binary was built without -ldflags from a git checkout (`go build`, not
// `go run`, which stamps no revision), or "dev".
func versionString() string {
	info, _ := debug.ReadBuildInfo()
	return versionFrom(version, info)
}

// versionFrom is versionString for a given link-time version and build
// information (nil when there is none).
func versionFrom(version string, info *debug.BuildInfo) string {
	if version != "dev" || info == nil {
		return version
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return version
	}
	return "dev-" + rev[:min(12, len(rev))] + dirty
}

// keysCreate is the `keys create` subcommand (§1.3): an offline emergency
// key, written straight into the database (the server may be running).
func keysCreate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var name, role, expiresAt, dbPath string
	_, err := parseEnvFlags("keys create", args, getenv, []envFlag{
		{"name", "", "", &name},
		{"role", "", "readonly", &role},
		{"expires-at", "", "", &expiresAt},
		{"db-path", "NIXFLEET_CP_DB_PATH", defaultDBPath, &dbPath},
	})
	if err != nil {
		return err
	}
	if name == "" {
		return usagef("--name is required")
	}
	if err := checkKeyName("--name", name); err != nil {
		return usagef("%v", err)
	}
	if err := checkRole("--role", role); err != nil {
		return usagef("%v", err)
	}
	var expires *int64
	if expiresAt != "" {
		ms, err := parseExpiresAt(expiresAt, time.Now())
		if err != nil {
			return usagef("%v", err)
		}
		expires = &ms
	}
	if _, err := os.Stat(dbPath); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("database %s does not exist", dbPath)
	} else if err != nil {
		return fmt.Errorf("open database %s: %w", dbPath, err)
	}
	st, err := openStore(ctx, dbPath, time.Now, newMetrics())
	if err != nil {
		return err
	}
	defer st.close()
	var created *keyCreated
	err = st.write(ctx, func(tx *txn) error {
		var err error
		created, err = createKeyTx(tx, "system:cli", name, role, expires)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, created.Key)
	fmt.Fprintf(stderr, "created key id=%d name=%s role=%s\n", created.ID, created.Name, created.Role)
	return nil
}

// parseExpiresAt reads `keys create --expires-at`: a duration from now
// ("30d", with d as 24 h, or a positive Go duration such as "12h", "90m" or
// "1h30m", at most 100 years) or an RFC 3339 time in the future, as for
// POST /api/v1/keys (which takes only RFC 3339: its expires_at is a
// timestamp on the wire, §4.27). It returns Unix milliseconds.
func parseExpiresAt(v string, now time.Time) (int64, error) {
	const maxExpiry = 100 * 365 * 24 * time.Hour
	var d time.Duration
	if days, ok := strings.CutSuffix(v, "d"); ok && isDigits(days) && len(days) <= 5 {
		n, _ := strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	} else if pd, err := time.ParseDuration(v); err == nil {
		d = pd
	} else {
		if _, err := parseTime(v); err != nil {
			return 0, invalidf("--expires-at: want an RFC 3339 time or a duration such as 30d, 12h or 90m")
		}
		return checkExpiry("--expires-at", v, now) // "must be in the future"
	}
	if d <= 0 || d > maxExpiry {
		return 0, invalidf("--expires-at: a duration must be positive and at most 100 years")
	}
	return now.Add(d).UnixMilli(), nil
}
