package main

// Storage faults (§2.5, §12.3, §12.5): a lock held by another process,
// corrupted database files at startup and a -wal file left by a crash; a
// read-only and a full filesystem under a running daemon are in
// faults_fs_test.go, and the writer connection after a cancelled BEGIN or a
// panic in store_test.go.
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
// lock), and the first write after the lock is released succeeds. A read
// authenticated with a key whose last_used_at is due for its once-a-minute
// update does not wait for the writer either: that update is best effort
// (the subtest "read with a key unused for a minute").

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

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
	return fltSend(c, method, url, key, body, nil)
}

// fltInFlight sends a request with a JSON body in the background, as fltGo
// does, and returns once the server's handler has started reading that body:
// the request is then in its handler, on its way to the write it makes.
// Expect: 100-continue makes the server say when the handler first reads the
// body, so nothing has to guess how long a request takes to get there.
func fltInFlight(t *testing.T, c *http.Client, method, url, key string, body any) <-chan fltTimed {
	t.Helper()
	reading := make(chan struct{})
	answer := fltSend(c, method, url, key, body, reading)
	select {
	case <-reading:
	case r := <-answer:
		t.Fatalf("%s %s was answered (%d %s) before its handler read the body", method, url, r.status, r.body)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s %s: the handler did not read the body within 30 s", method, url)
	}
	return answer
}

// fltSend is fltGo; with reading non-nil it sends Expect: 100-continue and
// closes reading when the server answers 100 Continue.
func fltSend(c *http.Client, method, url, key string, body any, reading chan struct{}) <-chan fltTimed {
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
			if reading != nil {
				req.Header.Set("Expect", "100-continue")
				var once sync.Once
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
					Got100Continue: func() { once.Do(func() { close(reading) }) },
				}))
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
		// Each write is in its handler, on its way to wait for the lock,
		// before the next request is sent.
		write := fltInFlight(t, c, "POST", bs.url+"/api/v1/machines/web-02/register", A, map[string]any{"lifecycle": "pending"})
		write2 := fltInFlight(t, c, "POST", bs.url+"/api/v1/keys", A, map[string]any{"name": "busy"})
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
		// Both refusals are counted (the alert rule NixfleetDatabaseBusy reads this counter).
		if v := metricValue(t, c, bs.url, "nixfleet_db_busy_total"); v != 2 {
			t.Errorf("nixfleet_db_busy_total = %v after two 503s, want 2", v)
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
		if evs := auditRows(t, c, bs.url, A, "?actor=sqlite3"); len(evs) != 0 {
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
		// An empty object is the register body that an empty body stands for.
		write := fltInFlight(t, c, "POST", bs.url+"/api/v1/machines/web-02/register", A, map[string]any{})
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
			answers = append(answers, fltInFlight(t, c, "POST", bs.url+"/api/v1/machines/"+m+"/report", "", reportBody(m, p2, true, "busy")))
		}
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
		stderr := expectRefusedStart(t, path)
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
		stderr := expectRefusedStart(t, path)
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
			before := snapFile(t, path)
			cmd := exec.Command(buildBinary(t), "--db-path", path, "--listen", "127.0.0.1:0")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			var buf syncBuffer
			cmd.Stderr = &buf
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var bs *binServer
			ended := poll(20*time.Second, func() bool {
				if m := listeningRE.FindStringSubmatch(buf.String()); m != nil {
					t.Cleanup(func() { cmd.Process.Kill(); <-done })
					bs = &binServer{cmd: cmd, url: "http://" + m[1], logs: &buf, done: done}
					return true
				}
				select {
				case err := <-done:
					var ee *exec.ExitError
					if errors.As(err, &ee) {
						code = ee.ExitCode()
					}
					stderr = buf.String()
					if after := snapFile(t, path); !bytes.Equal(after.data, before.data) || len(after.companion) != 0 {
						t.Errorf("the refused file was modified or got companions %v", after.companion)
					}
					return true
				default:
					return false
				}
			})
			if !ended {
				t.Fatal("the binary neither started nor exited")
			}
			return bs
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
