package main

// Helpers for tests that run the built binary as a child process (startup,
// shutdown, crashes, storage faults) and read its database files beside it
// or after it has stopped.

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// buildBinary builds the daemon once per test process and returns its path.
func buildBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nixfleet-cp-bin")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "nixfleet-control-plane")
		out, err := exec.Command("go", "build", "-o", binaryPath, ".").CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// binServer is the built binary running as a child process.
type binServer struct {
	cmd  *exec.Cmd
	url  string
	logs *syncBuffer
	done chan error // receives cmd.Wait's result
}

// startBinary runs the built binary with args (add --db-path yourself; a
// loopback --listen is added unless given) and waits until it listens. The
// process is killed at cleanup if still running.
func startBinary(t testing.TB, args ...string) *binServer {
	t.Helper()
	if !strings.Contains(strings.Join(args, " "), "--listen") {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	bs := &binServer{logs: &syncBuffer{}, done: make(chan error, 1)}
	bs.cmd = exec.Command(buildBinary(t), args...)
	bs.cmd.Stderr = bs.logs
	bs.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if err := bs.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { bs.done <- bs.cmd.Wait() }()
	t.Cleanup(func() {
		bs.cmd.Process.Kill()
		<-bs.done
	})
	listening := poll(30*time.Second, func() bool {
		if m := listeningRE.FindStringSubmatch(bs.logs.String()); m != nil {
			bs.url = "http://" + m[1]
			if strings.Contains(strings.Join(args, " "), "--tls-cert") {
				bs.url = "https://" + m[1]
			}
			return true
		}
		select {
		case err := <-bs.done:
			bs.done <- err
			t.Fatalf("binary exited during startup: %v\n%s", err, bs.logs.String())
		default:
		}
		return false
	})
	if !listening {
		t.Fatalf("binary did not start:\n%s", bs.logs.String())
	}
	return bs
}

// kill9 kills the process with SIGKILL and waits for it.
func (bs *binServer) kill9(t testing.TB) {
	t.Helper()
	bs.cmd.Process.Signal(syscall.SIGKILL)
	err := <-bs.done
	bs.done <- err
}

// runBinary runs the built binary to completion (at most 30 s) and returns
// its exit code and stderr.
func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, buildBinary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), stderr.String()
	default:
		t.Fatalf("%v: %v\n%s", args, err, stderr.String())
		return -1, ""
	}
}

// fileSnapshot is a file's bytes and the names of its SQLite companions.
type fileSnapshot struct {
	data      []byte
	companion []string
}

// snapFile reads the file at path and notes which of its companions exist.
func snapFile(t *testing.T, path string) fileSnapshot {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s fileSnapshot
	s.data = b
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Stat(path + suffix); err == nil {
			s.companion = append(s.companion, path+suffix)
		}
	}
	return s
}

// openDB opens the database file with database/sql (modernc driver), for
// checks and writes beside a server or after it has stopped.
func openDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// expectRefusedStart runs the binary on a database it must refuse and checks
// exit code 1, that it never listened, and that the file is byte-for-byte
// unchanged with no -wal, -shm or -journal left.
func expectRefusedStart(t *testing.T, path string) string {
	t.Helper()
	before := snapFile(t, path)
	if len(before.companion) != 0 {
		t.Fatalf("fixture has companions %v", before.companion)
	}
	code, stderr := runBinary(t, nil, "--db-path", path, "--listen", "127.0.0.1:0")
	if code != 1 {
		t.Fatalf("exit code %d, want 1\n%s", code, stderr)
	}
	if strings.Contains(stderr, "Control plane listening") {
		t.Fatalf("the server listened:\n%s", stderr)
	}
	after := snapFile(t, path)
	if !bytes.Equal(after.data, before.data) {
		t.Fatal("the refused file was modified")
	}
	if len(after.companion) != 0 {
		t.Fatalf("the refused file got companions %v", after.companion)
	}
	return stderr
}
