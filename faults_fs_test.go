package main

// Storage faults on the filesystem under a running daemon (§12.3): a
// read-only filesystem and a full disk. The lock held by another process and
// the other faults are in faults_test.go.
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
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
		// Not mounted (any more), or unmounted now; umount fails while a
		// killed process still has files open there.
		if poll(5*time.Second, func() bool { return !fltMounted(dir) || exec.Command("umount", dir).Run() == nil }) {
			return
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
		mustScan(t, check.QueryRow("SELECT count(*) FROM machine WHERE machine_id = ?", id), &n)
		if n != 0 {
			t.Errorf("machine %s was stored although its write was refused", id)
		}
	}
}
