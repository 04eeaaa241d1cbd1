package main

// Storage faults (§2.5, §12.3, §12.5): a lock held by another process, a
// read-only and a full filesystem under a running daemon, corrupted database
// files at startup, a -wal file left by a crash, and the writer connection
// after failed or cancelled transactions.
//
// SQLITE_BUSY, the product's choice: when another process (sqlite3, or the
// offline `keys create`) holds the database write lock, a write waits for it
// up to the busy timeout (busy_timeout=5000: 5 s of retries, longer in wall
// time on a loaded machine; writes wait in turn, so a second one waits behind
// the first) and is then answered 503 {"error":"database is busy, retry
// later"} with "Retry-After: 1": a temporary condition that a client may
// retry, unlike the 500 {"error":"internal error"} of every other database
// failure. Reports are group-committed: every report of a group that could
// not begin its transaction gets the same 503, and none of them is stored.
// Reads keep being answered meanwhile (WAL readers do not need the write
// lock), and the first write after the lock is released succeeds. (A read
// authenticated with a key whose last_used_at is due for its once-a-minute
// update currently waits for the writer too; see the subtest "read with a
// key unused for a minute".)
//
// A full disk (ENOSPC: SQLITE_FULL at COMMIT) or a read-only filesystem
// (EROFS: SQLITE_IOERR_WRITE at COMMIT) is an internal error: 500
// {"error":"internal error"}, nothing acknowledged or stored, reads keep
// working, and once space is freed writes succeed again without a restart.
//
// The filesystem tests need root (mount); they skip themselves when mounting
// is not permitted. They use tmpfs and an ext4 image on a loop device,
// because Linux refuses "mount -o remount,ro" while a process holds a file of
// that filesystem open for writing (EBUSY), and the daemon always does: a
// filesystem only becomes read-only under a running daemon when the kernel
// forces it after an error (errors=remount-ro), which the ext4 test triggers
// through /sys/fs/ext4/<dev>/trigger_fs_error.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fltLateCancel is a context whose Done channel closes on its n-th call to
// Done: the driver sees it open when the statement starts and closed while
// it runs, which is the moment a client disconnect can hit a BEGIN.
type fltLateCancel struct {
	context.Context
	calls, n atomic.Int32
	ch       chan struct{}
	once     sync.Once
}

func (c *fltLateCancel) Done() <-chan struct{} {
	if c.calls.Add(1) >= c.n.Load() {
		c.once.Do(func() { close(c.ch) })
	}
	return c.ch
}

func (c *fltLateCancel) Err() error {
	select {
	case <-c.ch:
		return context.Canceled
	default:
		return nil
	}
}

// TestFaultCancelledBeginLeavesWriterUsable is the regression test for a
// request context that ends while BEGIN IMMEDIATE runs: the driver then
// reports the context's error although BEGIN succeeded, and the writer
// connection used to stay inside that transaction, so that every later write
// failed with "cannot start a transaction within a transaction" (500) until a
// restart. A client that disconnects at the wrong moment, or the executor
// stopped at shutdown, could cause it. store.begin now rolls back after a
// failed BEGIN.
func TestFaultCancelledBeginLeavesWriterUsable(t *testing.T) {
	t.Parallel()
	st, err := openStore(context.Background(), filepath.Join(t.TempDir(), "state.db"), time.Now, newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	failed := 0
	check := func(what string, first error) {
		t.Helper()
		if first != nil {
			failed++
		}
		if err := st.write(context.Background(), func(tx *txn) error { return nil }); err != nil {
			t.Fatalf("%s (%v), then a write fails: %v", what, first, err)
		}
	}
	// The driver's context checks happen at a few calls to Done; ending the
	// context at each of them in turn hits the window after BEGIN succeeded.
	for n := int32(1); n <= 6; n++ {
		for range 700 {
			ctx := &fltLateCancel{Context: context.Background(), ch: make(chan struct{})}
			ctx.n.Store(n)
			check(fmt.Sprintf("context ended at Done call %d", n),
				st.write(ctx, func(tx *txn) error { return nil }))
		}
	}
	// And real cancellations at random moments.
	for i := range 2000 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(time.Duration(i%40) * time.Microsecond)
			cancel()
		}()
		check("cancelled write", st.write(ctx, func(tx *txn) error {
			_, err := tx.exec("UPDATE api_key SET last_used_at = 0 WHERE id = -1")
			return err
		}))
		cancel()
	}
	if failed == 0 {
		t.Fatal("no write failed: the test did not cancel any")
	}
}

// fltHoldWriteLock runs the sqlite3 CLI on db, runs pre (committed
// statements), then BEGIN IMMEDIATE and an INSERT, and keeps the transaction
// open until release is called (or the test ends); release rolls it back.
func fltHoldWriteLock(t *testing.T, db string, pre ...string) func() {
	t.Helper()
	bin, err := exec.LookPath("sqlite3")
	if err != nil {
		t.Skip("sqlite3 is not on PATH")
	}
	cmd := exec.Command(bin, db)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// .bail on: a failing statement (the lock not obtained within .timeout)
	// ends the CLI before it prints "locked".
	script := ".bail on\n.timeout 10000\n" + strings.Join(pre, "\n") + "\nBEGIN IMMEDIATE;\n" +
		"INSERT INTO audit_event (timestamp, actor, action, target) VALUES (0, 'sqlite3', 'external', 'lock');\n" +
		"SELECT 'locked';\n"
	if _, err := stdin.Write([]byte(script)); err != nil {
		t.Fatal(err)
	}
	locked := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "locked" {
			err = fmt.Errorf("sqlite3 printed %q", line)
		}
		locked <- err
	}()
	select {
	case err := <-locked:
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("sqlite3 did not take the lock: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("sqlite3 did not take the lock\n%s", stderr.String())
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			stdin.Write([]byte("ROLLBACK;\n.quit\n"))
			stdin.Close()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("sqlite3: %v\n%s", err, stderr.String())
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("sqlite3 did not exit")
			}
		})
	}
	t.Cleanup(release)
	return release
}

// fltTimed is an answer and how long it took.
type fltTimed struct {
	response
	took time.Duration
	at   time.Time // when the answer was complete
}

// fltGo sends a request in the background; a request that gets no answer
// has status -1 and the error as body.
func fltGo(c *http.Client, method, url, key string, body any) <-chan fltTimed {
	ch := make(chan fltTimed, 1)
	go func() {
		start := time.Now()
		var r fltTimed
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, url, rd)
		if err == nil {
			if body != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			if key != "" {
				req.Header.Set("Authorization", "Bearer "+key)
			}
			var resp *http.Response
			if resp, err = c.Do(req); err == nil {
				r.status, r.header = resp.StatusCode, resp.Header
				r.body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
		}
		if err != nil {
			r.status, r.body = -1, []byte(err.Error())
		}
		r.at = time.Now()
		r.took = r.at.Sub(start)
		ch <- r
	}()
	return ch
}

// fltExpectBusy checks the 503 of a write refused because of the lock.
func fltExpectBusy(t *testing.T, what string, r fltTimed) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "1" ||
		r.header.Get("Content-Type") != "application/json" ||
		strings.TrimSpace(string(r.body)) != `{"error":"database is busy, retry later"}` {
		t.Fatalf("%s under an external write lock: %d Retry-After=%q %s, want 503 with Retry-After: 1",
			what, r.status, r.header.Get("Retry-After"), r.body)
	}
	// It waited for the lock (busy_timeout is 5 s) before giving up.
	if r.took < 4*time.Second {
		t.Errorf("%s gave up after %v, before the 5 s busy timeout", what, r.took)
	}
}

// TestFaultBusyExternalLock holds the write lock from the sqlite3 CLI while
// the daemon serves: writes wait for the busy timeout and are refused with
// 503 (the product's choice, see the file comment), reads are served
// meanwhile, nothing refused is stored, and writes succeed once the lock is
// released.
func TestFaultBusyExternalLock(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("sqlite3"); err != nil {
		t.Skip("sqlite3 is not on PATH")
	}
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")

	t.Run("admin write", func(t *testing.T) {
		t.Parallel()
		db := filepath.Join(t.TempDir(), "state.db")
		bs := startBinary(t, "--db-path", db)
		c := &http.Client{Timeout: 90 * time.Second} // busy waits stretch on a loaded machine
		A := bootstrapKey(t, c, bs.url)
		reader := createTestKey(t, c, bs.url, A, "reader", "readonly")
		expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p1, true, "up")), 200, "")
		expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/notify-deploy", A, map[string]any{"store_path": p2}), 200, "")
		listMachinesT(t, c, bs.url, reader, "") // the reader key's last_used_at is now fresh

		release := fltHoldWriteLock(t, db)
		write := fltGo(c, "POST", bs.url+"/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "pending"})
		time.Sleep(50 * time.Millisecond)
		write2 := fltGo(c, "POST", bs.url+"/api/v1/keys", A, map[string]any{"name": "busy"})
		time.Sleep(50 * time.Millisecond) // the writes are now waiting for the lock
		// Reads are answered while the write waits and the lock is held.
		for _, rd := range []struct{ path, key string }{
			{"/health", ""}, {"/metrics", ""}, {"/api/v1/machines/web-01/desired-generation", ""},
			{"/api/v1/machines", reader}, {"/api/v1/audit?limit=5", reader}, {"/api/v1/releases", reader}, {"/api/v1/keys", A},
		} {
			r := do(t, c, "GET", bs.url+rd.path, rd.key, nil)
			if r.status != 200 {
				t.Fatalf("GET %s under an external write lock: %d %s", rd.path, r.status, r.body)
			}
		}
		select {
		case r := <-write:
			t.Fatalf("the write was answered (%d %s) while the lock was held and reads ran", r.status, r.body)
		default:
		}
		// Each write waits for the lock in turn (they are serialised), then
		// gives up with 503.
		fltExpectBusy(t, "register", <-write)
		fltExpectBusy(t, "create key", <-write2)
		if !strings.Contains(bs.logs.String(), `msg="database busy"`) {
			t.Errorf("no database busy log:\n%s", bs.logs.String())
		}
		release()

		// The writer is usable again at once, and nothing refused was stored.
		expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "pending"}), 201, "")
		ms := listMachinesT(t, c, bs.url, A, "")
		if len(ms) != 2 || ms[0].MachineID != "web-01" || ms[1].MachineID != "web-02" {
			t.Fatalf("machines after the lock: %+v", ms)
		}
		if evs := auditRows(t, c, bs.url, A, "?action=register"); len(evs) != 1 {
			t.Fatalf("%d register audit rows, want 1: %+v", len(evs), evs)
		}
		if evs := auditRows(t, c, bs.url, A, "?action=external"); len(evs) != 0 {
			t.Fatalf("the rolled-back external insert is visible: %+v", evs)
		}
		r := do(t, c, "GET", bs.url+"/api/v1/keys", A, nil)
		if strings.Contains(string(r.body), `"busy"`) {
			t.Fatalf("the refused key exists: %s", r.body)
		}
	})

	// §3.1 makes the last_used_at update best effort and §12.3 says reads
	// never block on writers: a read with a key last used over a minute ago
	// must not wait behind a write that waits for the lock.
	t.Run("read with a key unused for a minute", func(t *testing.T) {
		t.Parallel()
		db := filepath.Join(t.TempDir(), "state.db")
		bs := startBinary(t, "--db-path", db)
		c := &http.Client{Timeout: 90 * time.Second} // busy waits stretch on a loaded machine
		A := bootstrapKey(t, c, bs.url)
		reader := createTestKey(t, c, bs.url, A, "reader", "readonly")

		release := fltHoldWriteLock(t, db, "UPDATE api_key SET last_used_at = NULL WHERE name = 'reader';")
		write := fltGo(c, "POST", bs.url+"/api/v1/machines/web-02/register", A, nil)
		time.Sleep(100 * time.Millisecond)
		read := fltGo(c, "GET", bs.url+"/api/v1/machines", reader, nil)
		w, r := <-write, <-read
		release()
		fltExpectBusy(t, "register", w)
		if r.status != 200 {
			t.Fatalf("read with a stale key under an external lock: %d %s", r.status, r.body)
		}
		if r.at.After(w.at) {
			t.Errorf("a read with a key last used over a minute ago was answered after %v, after the write "+
				"that was waiting for the lock (%v): the best-effort last_used_at update made it wait for the writer",
				r.took.Round(time.Millisecond), w.took.Round(time.Millisecond))
		}
	})

	t.Run("reports", func(t *testing.T) {
		t.Parallel()
		db := filepath.Join(t.TempDir(), "state.db")
		bs := startBinary(t, "--db-path", db)
		c := &http.Client{Timeout: 90 * time.Second} // busy waits stretch on a loaded machine
		A := bootstrapKey(t, c, bs.url)
		expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p1, true, "up")), 200, "")
		listMachinesT(t, c, bs.url, A, "") // A's last_used_at is now fresh (see the subtest above)

		release := fltHoldWriteLock(t, db)
		// The first report's group waits for the lock alone; the two next
		// ones arrive meanwhile and form the next group, which waits in turn.
		// Every one of them is refused.
		var answers []<-chan fltTimed
		for _, m := range []string{"web-01", "web-02", "web-03"} {
			answers = append(answers, fltGo(c, "POST", bs.url+"/api/v1/machines/"+m+"/report", "", reportBody(m, p2, true, "busy")))
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		if r := do(t, c, "GET", bs.url+"/api/v1/machines", A, nil); r.status != 200 {
			t.Fatalf("GET machines while reports wait for the lock: %d %s", r.status, r.body)
		}
		for i, ch := range answers {
			r := <-ch
			t.Logf("report %d answered %d after %v", i, r.status, r.took.Round(time.Millisecond))
			fltExpectBusy(t, fmt.Sprintf("report %d", i), r)
		}
		release()

		// None of the refused reports was stored; the next ones are.
		ms := listMachinesT(t, c, bs.url, A, "")
		if len(ms) != 1 || ms[0].CurrentGeneration != p1 {
			t.Fatalf("machines after refused reports: %+v", ms)
		}
		if evs := auditRows(t, c, bs.url, A, "?action=report"); len(evs) != 1 {
			t.Fatalf("%d report audit rows after refused reports, want 1", len(evs))
		}
		for _, m := range []string{"web-01", "web-02", "web-03"} {
			expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/"+m+"/report", "", reportBody(m, p2, true, "after")), 200, "")
		}
		ms = listMachinesT(t, c, bs.url, A, "")
		if len(ms) != 3 || ms[0].CurrentGeneration != p2 {
			t.Fatalf("machines after the lock: %+v", ms)
		}
		bs.kill9(t)
		var n int
		if err := ckOpenDB(t, db).QueryRow("SELECT count(*) FROM report WHERE message = 'busy'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d refused reports stored (%v)", n, err)
		}
	})
}

// fltMount mounts a filesystem for a test, or skips the test when mounting
// is not permitted (not root, or an unprivileged container). It is unmounted
// at cleanup, after the processes started later have been killed.
func fltMount(t *testing.T, dir string, args ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a filesystem needs root")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", append(args, dir)...).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a test filesystem (mount %v: %v: %s)", args, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		for range 50 {
			if !fltMounted(dir) || exec.Command("umount", dir).Run() == nil {
				return // not mounted (any more), or unmounted now
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
}

// fltMounted reports whether a filesystem is mounted on dir.
func fltMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return true // cannot tell: try to unmount
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.ReplaceAll(f[1], `\040`, " ") == dir {
			return true
		}
	}
	return false
}

// fltWriteOutcome is what a write attempted during a fault was answered.
type fltWriteOutcome struct {
	what   string
	status int
	body   string
}

// fltExpectRefused checks that a write during a storage fault was answered
// 500 internal error (or 503 busy), never acknowledged.
func fltExpectRefused(t *testing.T, o fltWriteOutcome) {
	t.Helper()
	switch {
	case o.status == 500 && o.body == `{"error":"internal error"}`:
	case o.status == 503 && o.body == `{"error":"database is busy, retry later"}`:
	default:
		t.Errorf("%s during a storage fault: %d %s, want 500 internal error", o.what, o.status, o.body)
	}
}

// fltWrite sends a write and returns its outcome.
func fltWrite(t *testing.T, c *http.Client, what, method, url, key string, body any) fltWriteOutcome {
	t.Helper()
	r := do(t, c, method, url, key, body)
	return fltWriteOutcome{what: what, status: r.status, body: strings.TrimSpace(string(r.body))}
}

// fltLogErrors logs the distinct errors and warnings the daemon logged, with
// the number of times each appeared: what SQLite reported for the fault.
func fltLogErrors(t *testing.T, logs string) {
	t.Helper()
	seen := map[string]int{}
	var order []string
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, "level=ERROR") && !strings.Contains(line, "level=WARN") &&
			!strings.HasPrefix(line, "nixfleet-control-plane: ") ||
			strings.Contains(line, "without TLS") || strings.Contains(line, "no API keys exist") {
			continue
		}
		if _, rest, ok := strings.Cut(line, " level="); ok {
			line = "level=" + rest
		}
		if seen[line] == 0 {
			order = append(order, line)
		}
		seen[line]++
	}
	for _, line := range order {
		t.Logf("%d× %s", seen[line], line)
	}
}

// fltAlive fails the test if the binary has exited.
func fltAlive(t *testing.T, bs *binServer) {
	t.Helper()
	select {
	case err := <-bs.done:
		bs.done <- err
		t.Fatalf("the daemon died: %v\n%s", err, bs.logs.String())
	default:
	}
}

// fltStop sends SIGTERM and returns the exit error (nil for status 0).
func fltStop(t *testing.T, bs *binServer) error {
	t.Helper()
	if err := bs.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-bs.done:
		bs.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit within 20 s of SIGTERM\n%s", bs.logs.String())
		return nil
	}
}

// TestFaultReadOnlyFilesystem makes the database's filesystem read-only
// under the running daemon (an ext4 image whose kernel-detected error, with
// errors=remount-ro, forces it read-only while files are open): writes are
// refused with 500, reads keep being answered with the data committed
// before, the daemon survives, and after a repair and a restart every
// acknowledged write is there and no refused one.
func TestFaultReadOnlyFilesystem(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "findmnt"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not on PATH", tool)
		}
	}
	tmp := t.TempDir()
	img, mnt := filepath.Join(tmp, "fs.img"), filepath.Join(tmp, "mnt")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v %s", err, out)
	}
	fltMount(t, mnt, "-o", "loop,errors=remount-ro", img)
	src, err := exec.Command("findmnt", "-n", "-o", "SOURCE", mnt).Output()
	if err != nil {
		t.Fatal(err)
	}
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(strings.TrimSpace(string(src))), "trigger_fs_error")
	if _, err := os.Stat(trigger); err != nil {
		t.Skipf("cannot force the filesystem read-only: %v", err)
	}

	db := filepath.Join(mnt, "state.db")
	bs := startBinary(t, "--db-path", db)
	c := &http.Client{Timeout: 30 * time.Second}
	A := bootstrapKey(t, c, bs.url)
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p1, true, "up")), 200, "")
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "pending"}), 201, "")
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-01/notify-deploy", A, map[string]any{"store_path": p2}), 200, "")
	r := do(t, c, "POST", bs.url+"/api/v1/releases", A, map[string]any{
		"entries": []map[string]any{{"hostname": "web-01", "store_path": p2, "platform": "x86_64-linux"}}})
	expect(t, r, 201, "")
	var rel struct{ ID string }
	r.json(t, &rel)

	// Linux refuses to remount read-only while the daemon has files open for
	// writing; only a forced error can do it.
	if out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput(); err == nil {
		t.Log("mount -o remount,ro succeeded under the running daemon")
	} else {
		t.Logf("mount -o remount,ro under the running daemon: %v %s", err, bytes.TrimSpace(out))
	}
	if err := os.WriteFile(trigger, []byte("nixfleet fault test\n"), 0o200); err != nil {
		t.Fatalf("trigger a filesystem error: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "probe"), nil, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("the filesystem is not read-only: %v", err)
	}

	outcomes := []fltWriteOutcome{
		fltWrite(t, c, "report", "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p2, true, "refused")),
		fltWrite(t, c, "report from a new machine", "POST", bs.url+"/api/v1/machines/web-09/report", "", reportBody("web-09", p2, true, "refused")),
		fltWrite(t, c, "register", "POST", bs.url+"/api/v1/machines/web-03/register", A, nil),
		fltWrite(t, c, "lifecycle", "PATCH", bs.url+"/api/v1/machines/web-02/lifecycle", A, map[string]any{"lifecycle": "active"}),
		fltWrite(t, c, "tags", "PUT", bs.url+"/api/v1/machines/web-01/tags", A, map[string]any{"tags": []string{"refused"}}),
		fltWrite(t, c, "create release", "POST", bs.url+"/api/v1/releases", A, map[string]any{
			"entries": []map[string]any{{"hostname": "web-02", "store_path": p1, "platform": "x86_64-linux"}}}),
		fltWrite(t, c, "create key", "POST", bs.url+"/api/v1/keys", A, map[string]any{"name": "refused"}),
		fltWrite(t, c, "report again", "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", p2, true, "refused")),
	}
	for _, o := range outcomes {
		fltExpectRefused(t, o)
	}
	t.Logf("writes on the read-only filesystem: %+v", outcomes)

	// Reads serve what was committed before.
	ms := listMachinesT(t, c, bs.url, A, "")
	if len(ms) != 2 || ms[0].MachineID != "web-01" || ms[0].CurrentGeneration != p1 || ms[1].Lifecycle != "pending" {
		t.Errorf("machines on the read-only filesystem: %+v", ms)
	}
	r = do(t, c, "GET", bs.url+"/api/v1/machines/web-01/desired-generation", "", nil)
	if r.status != 200 || !strings.Contains(string(r.body), p2) {
		t.Errorf("desired generation on the read-only filesystem: %d %s", r.status, r.body)
	}
	expect(t, do(t, c, "GET", bs.url+"/api/v1/releases/"+rel.ID, A, nil), 200, "")
	if evs := auditRows(t, c, bs.url, A, "?action=create_release"); len(evs) != 1 {
		t.Errorf("audit on the read-only filesystem: %+v", evs)
	}
	for _, p := range []string{"/health", "/metrics"} {
		expect(t, do(t, c, "GET", bs.url+p, "", nil), 200, "")
	}
	fltAlive(t, bs)
	if !strings.Contains(bs.logs.String(), `msg="internal error"`) {
		t.Errorf("no internal error log:\n%s", bs.logs.String())
	}
	// The final checkpoint cannot be written: a runtime failure, exit 1.
	exitErr := fltStop(t, bs)
	t.Logf("exit after SIGTERM on the read-only filesystem: %v", exitErr)
	fltLogErrors(t, bs.logs.String())

	// Repair and restart: everything acknowledged is there, nothing refused.
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	if out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck: %v %s", err, out)
		}
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount again: %v %s", err, out)
	}
	bs = startBinary(t, "--db-path", db)
	ms = listMachinesT(t, c, bs.url, A, "")
	if len(ms) != 2 || ms[0].MachineID != "web-01" || ms[0].CurrentGeneration != p1 || ms[1].MachineID != "web-02" || ms[1].Lifecycle != "pending" ||
		len(ms[0].Tags) != 0 {
		t.Fatalf("machines after the repair: %+v", ms)
	}
	r = do(t, c, "GET", bs.url+"/api/v1/releases", A, nil)
	var rels []struct{ ID string }
	r.json(t, &rels)
	if len(rels) != 1 || rels[0].ID != rel.ID {
		t.Fatalf("releases after the repair: %s", r.body)
	}
	if evs := auditRows(t, c, bs.url, A, "?action=report"); len(evs) != 1 {
		t.Fatalf("%d report audit rows after the repair, want 1", len(evs))
	}
	if r := do(t, c, "GET", bs.url+"/api/v1/keys", A, nil); strings.Contains(string(r.body), "refused") {
		t.Fatalf("a refused key exists: %s", r.body)
	}
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/web-03/register", A, nil), 201, "")
}

// TestFaultDiskFull fills the database's filesystem (a small tmpfs) under
// the running daemon: writes are refused with 500 and not stored, reads keep
// being answered, and once space is freed writes succeed again without a
// restart (so a failed COMMIT leaves the writer usable). After a clean stop
// the database holds every acknowledged write and is consistent.
func TestFaultDiskFull(t *testing.T) {
	t.Parallel()
	mnt := filepath.Join(t.TempDir(), "mnt")
	fltMount(t, mnt, "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs")
	db := filepath.Join(mnt, "state.db")
	bs := startBinary(t, "--db-path", db)
	c := &http.Client{Timeout: 30 * time.Second}
	A := bootstrapKey(t, c, bs.url)
	l := newCkLedger()
	seq := 0
	// write sends a report from, or registers, a machine that never existed,
	// so that whether a refused write left anything behind is easy to see.
	refusedMachines := map[string]bool{}
	write := func() fltWriteOutcome {
		seq++
		id := fmt.Sprintf("full-%d", seq)
		var o fltWriteOutcome
		if seq%2 == 0 {
			msg := fmt.Sprintf("msg-%d", seq)
			o = fltWrite(t, c, "report", "POST", bs.url+"/api/v1/machines/"+id+"/report", "",
				reportBody(id, storePath('a', "sys-1"), true, msg))
			if o.status == 200 {
				l.reports[msg] = id
			}
		} else {
			o = fltWrite(t, c, "register", "POST", bs.url+"/api/v1/machines/"+id+"/register", A,
				map[string]any{"tags": []string{"full", fmt.Sprintf("n%d", seq)}})
			if o.status == 201 {
				l.machines[id] = true
				l.audits[[2]string{"register", id}]++
				l.audits[[2]string{"tags.update", id}]++
			}
		}
		if o.status >= 300 {
			refusedMachines[id] = true
		}
		return o
	}
	for range 20 {
		if o := write(); o.status >= 300 {
			t.Fatalf("%s before the disk is full: %d %s", o.what, o.status, o.body)
		}
	}

	// Fill the filesystem to the last byte.
	filler, err := os.OpenFile(filepath.Join(mnt, "filler"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int{1 << 16, 4096, 512, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := filler.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	filler.Close()

	// Writes fail once they need space. A few may still succeed where the
	// WAL reuses space it already has; those must be durable like any other.
	var refused []fltWriteOutcome
	acked := 0
	for i := 0; i < 2000 && len(refused) < 6; i++ {
		o := write()
		if o.status < 300 {
			acked++
			continue
		}
		fltExpectRefused(t, o)
		refused = append(refused, o)
	}
	if len(refused) == 0 {
		t.Fatal("no write failed on a full filesystem")
	}
	t.Logf("on the full filesystem: %d writes acknowledged, then refused: %+v", acked, refused)
	for _, o := range []fltWriteOutcome{
		fltWrite(t, c, "create release", "POST", bs.url+"/api/v1/releases", A, map[string]any{
			"entries": []map[string]any{{"hostname": "full-1", "store_path": storePath('c', "sys-3"), "platform": "x86_64-linux"}}}),
		fltWrite(t, c, "create key", "POST", bs.url+"/api/v1/keys", A, map[string]any{"name": "refused"}),
	} {
		if o.status < 300 {
			t.Logf("%s acknowledged on the full filesystem", o.what)
			continue
		}
		fltExpectRefused(t, o)
	}
	// Reads serve what was committed.
	ms := listMachinesT(t, c, bs.url, A, "?tag=full")
	if len(ms) == 0 {
		t.Error("no machines listed on the full filesystem")
	}
	expect(t, do(t, c, "GET", bs.url+"/api/v1/audit?limit=5", A, nil), 200, "")
	fltAlive(t, bs)

	// Free the space: writes succeed again, at the first attempt.
	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		if o := write(); o.status >= 300 {
			t.Fatalf("%s after space was freed: %d %s\n%s", o.what, o.status, o.body, bs.logs.String())
		}
	}
	if err := fltStop(t, bs); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, bs.logs.String())
	}
	fltLogErrors(t, bs.logs.String())
	check := ckOpenDB(t, db)
	if bad := ckVerifyDB(t, check, l); len(bad) > 0 {
		t.Fatalf("after the disk was full:\n%s", strings.Join(bad, "\n"))
	}
	for id := range refusedMachines {
		var n int
		check.QueryRow("SELECT count(*) FROM machine WHERE machine_id = ?", id).Scan(&n)
		if n != 0 {
			t.Errorf("machine %s was stored although its write was refused", id)
		}
	}
}

// fltRefusedStart runs the binary on a database it must refuse and checks
// exit code 1, that it never listened, and that the file is byte-for-byte
// unchanged with no -wal, -shm or -journal left.
func fltRefusedStart(t *testing.T, path string) string {
	t.Helper()
	before := suSnap(t, path)
	if len(before.companion) != 0 {
		t.Fatalf("fixture has companions %v", before.companion)
	}
	code, stderr := suRunBinary(t, nil, "--db-path", path, "--listen", "127.0.0.1:0")
	if code != 1 {
		t.Fatalf("exit code %d, want 1\n%s", code, stderr)
	}
	if strings.Contains(stderr, "Control plane listening") {
		t.Fatalf("the server listened:\n%s", stderr)
	}
	after := suSnap(t, path)
	if !bytes.Equal(after.data, before.data) {
		t.Fatal("the refused file was modified")
	}
	if len(after.companion) != 0 {
		t.Fatalf("the refused file got companions %v", after.companion)
	}
	return stderr
}

// TestFaultCorruptDatabaseAtStartup starts the binary on corrupted files:
// a valid SQLite header followed by garbage, and a valid database one of
// whose pages that startup reads was overwritten. Both are refused with exit
// 1 and left byte-for-byte unchanged, without companions. A corrupted page
// that startup does not read cannot be detected without a full integrity
// check; the last case records what happens then.
func TestFaultCorruptDatabaseAtStartup(t *testing.T) {
	t.Parallel()
	garbage := func(seed uint64, n int) []byte {
		rng := rand.New(rand.NewPCG(seed, seed))
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// valid makes a real database with the binary (stopped cleanly, so it
	// is one file) and returns it with a table's root page number.
	valid := func(t *testing.T, path, table string) (pageSize, root int64) {
		t.Helper()
		bs := startBinary(t, "--db-path", path)
		c := &http.Client{Timeout: 30 * time.Second}
		bootstrapKey(t, c, bs.url)
		for _, m := range []string{"web-01", "web-02", "web-03"} {
			expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/"+m+"/report", "", reportBody(m, storePath('a', "sys-1"), true, "up")), 200, "")
		}
		if err := fltStop(t, bs); err != nil {
			t.Fatal(err)
		}
		db := ckOpenDB(t, path)
		if err := db.QueryRow("PRAGMA page_size").Scan(&pageSize); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow("SELECT rootpage FROM sqlite_schema WHERE name = ?", table).Scan(&root); err != nil {
			t.Fatal(err)
		}
		db.Close()
		for _, s := range []string{"-wal", "-shm"} {
			os.Remove(path + s) // a read-only check may leave an empty -shm
		}
		return pageSize, root
	}
	overwrite := func(t *testing.T, path string, off int64, b []byte) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("header then garbage", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "state.db")
		if err := os.WriteFile(path, append(slices.Clone(sqliteHeader), garbage(1, 4*4096-len(sqliteHeader))...), 0o600); err != nil {
			t.Fatal(err)
		}
		stderr := fltRefusedStart(t, path)
		if !strings.Contains(stderr, path) {
			t.Errorf("the error does not name the file:\n%s", stderr)
		}
		t.Logf("refused: %s", strings.TrimSpace(stderr))
	})

	t.Run("machine table page overwritten", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "state.db")
		pageSize, root := valid(t, path, "machine")
		overwrite(t, path, (root-1)*pageSize, garbage(2, int(pageSize)))
		stderr := fltRefusedStart(t, path)
		t.Logf("refused: %s", strings.TrimSpace(stderr))
	})

	t.Run("report table page overwritten", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "state.db")
		pageSize, root := valid(t, path, "report")
		overwrite(t, path, (root-1)*pageSize, garbage(3, int(pageSize)))
		// Startup reads the machines, not the reports: SQLite cannot see
		// this page is corrupt until something reads it. Record what the
		// daemon does; it must not acknowledge a report it could not store.
		code := -1
		var stderr string
		bs := func() *binServer {
			before := suSnap(t, path)
			cmd := exec.Command(buildBinary(t), "--db-path", path, "--listen", "127.0.0.1:0")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var buf syncBuffer
			cmd.Stderr = &buf
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				if m := listeningRE.FindStringSubmatch(buf.String()); m != nil {
					t.Cleanup(func() { cmd.Process.Kill(); <-done })
					return &binServer{cmd: cmd, url: "http://" + m[1], logs: &buf, done: done}
				}
				select {
				case err := <-done:
					var ee *exec.ExitError
					if errors.As(err, &ee) {
						code = ee.ExitCode()
					}
					stderr = buf.String()
					if after := suSnap(t, path); !bytes.Equal(after.data, before.data) || len(after.companion) != 0 {
						t.Errorf("the refused file was modified or got companions %v", after.companion)
					}
					return nil
				case <-time.After(5 * time.Millisecond):
				}
			}
			t.Fatal("the binary neither started nor exited")
			return nil
		}()
		if bs == nil {
			if code != 1 {
				t.Fatalf("exit code %d, want 1\n%s", code, stderr)
			}
			t.Logf("refused at startup: %s", strings.TrimSpace(stderr))
			return
		}
		c := &http.Client{Timeout: 30 * time.Second}
		r := do(t, c, "POST", bs.url+"/api/v1/machines/web-01/report", "", reportBody("web-01", storePath('b', "sys-2"), true, "after"))
		t.Logf("not detected at startup: the daemon serves; a report answers %d %s", r.status, bytes.TrimSpace(r.body))
		if r.status == 200 {
			t.Errorf("a report into a corrupted table was acknowledged")
		} else {
			fltExpectRefused(t, fltWriteOutcome{what: "report into a corrupted table", status: r.status, body: strings.TrimSpace(string(r.body))})
		}
		t.Logf("logs:\n%s", bs.logs.String())
	})
}

// TestFaultWALLeftByCrash kills the daemon right after acknowledged writes,
// while they are only in the -wal file (not yet checkpointed into the
// database file), and restarts it on the files as the crash left them: in
// place, on a copy with the -shm and on a copy without it. Every restart
// recovers every acknowledged write, and the database is consistent.
func TestFaultWALLeftByCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	buildBinary(t)
	started := time.Now()
	bs := startBinary(t, "--db-path", db)
	c := &http.Client{Timeout: 30 * time.Second}
	A := bootstrapKey(t, c, bs.url)
	l := newCkLedger()
	p1, p2 := storePath('a', "sys-1"), storePath('b', "sys-2")
	for i, m := range []string{"web-01", "web-02", "web-03"} {
		msg := fmt.Sprintf("wal-%d", i)
		expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/"+m+"/report", "", reportBody(m, p1, true, msg)), 200, "")
		l.reports[msg] = m
	}
	expect(t, do(t, c, "POST", bs.url+"/api/v1/machines/db-01/register", A, map[string]any{"lifecycle": "maintenance", "tags": []string{"db"}}), 201, "")
	l.machines["db-01"] = true
	r := do(t, c, "POST", bs.url+"/api/v1/releases", A, map[string]any{"entries": []map[string]any{
		{"hostname": "web-01", "store_path": p2, "platform": "x86_64-linux"},
		{"hostname": "web-02", "store_path": p2, "platform": "x86_64-linux"}}})
	expect(t, r, 201, "")
	var rel struct {
		ID        string `json:"id"`
		HostCount int    `json:"host_count"`
	}
	r.json(t, &rel)
	l.releases[rel.ID] = rel.HostCount
	r = do(t, c, "POST", bs.url+"/api/v1/rollouts", A, map[string]any{"release_id": rel.ID, "strategy": "canary",
		"target": map[string]any{"hosts": []string{"web-01", "web-02"}}})
	expect(t, r, 201, "")
	var ro createRolloutResponse
	r.json(t, &ro)
	l.rollouts = append(l.rollouts, ro.RolloutID)
	var k keyCreated
	r = do(t, c, "POST", bs.url+"/api/v1/keys", A, map[string]any{"name": "ci", "role": "deploy"})
	expect(t, r, 201, "")
	r.json(t, &k)
	l.keys[k.ID] = "ci"
	bs.kill9(t)
	elapsed := time.Since(started)

	walSize := ckFileSize(db + "-wal")
	if walSize <= 0 {
		t.Fatalf("no -wal file after the crash (%d)", walSize)
	}
	// Without its -wal, the database file does not have the writes: they
	// were only in the WAL. (The checkpointer copies the WAL every second;
	// only check when the crash came before its first run.)
	alone := filepath.Join(t.TempDir(), "state.db")
	if b, err := os.ReadFile(db); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(alone, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var n int
	err := ckOpenDB(t, alone).QueryRow("SELECT count(*) FROM machine").Scan(&n)
	switch {
	case elapsed >= checkpointInterval:
		t.Logf("the crash came %v after the start: the checkpointer may have run", elapsed)
	case err == nil && n > 0:
		t.Fatalf("the database file alone already has %d machines: the writes were not only in the WAL", n)
	}
	t.Logf("crash %v after the start: -wal %d bytes, database file %d bytes", elapsed.Round(time.Millisecond), walSize, ckFileSize(db))

	withShm := ckCopyDB(t, db, t.TempDir())
	noShm := ckCopyDB(t, db, t.TempDir())
	if err := os.Remove(noShm + "-shm"); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{{"in place", db}, {"copy with -shm", withShm}, {"copy without -shm", noShm}} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			bs := startBinary(t, "--db-path", tc.path)
			t.Logf("recovered and listening after %v", time.Since(start).Round(time.Millisecond))
			ckCheckAPI(t, bs.url, A, l)
			ms := listMachinesT(t, c, bs.url, A, "")
			if len(ms) != 4 || ms[0].MachineID != "db-01" || ms[0].Lifecycle != "maintenance" || ms[1].CurrentGeneration != p1 {
				t.Fatalf("machines after recovery: %+v", ms)
			}
			r := do(t, c, "GET", bs.url+"/api/v1/rollouts/"+ro.RolloutID, A, nil)
			expect(t, r, 200, "")
			listMachinesT(t, c, bs.url, k.Key, "") // the key created before the crash works
			if err := fltStop(t, bs); err != nil {
				t.Fatalf("exit: %v\n%s", err, bs.logs.String())
			}
			if bad := ckVerifyDB(t, ckOpenDB(t, tc.path), l); len(bad) > 0 {
				t.Fatalf("after recovery:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}
