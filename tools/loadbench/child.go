package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildDaemon compiles the daemon from the repository root into dir and
// returns the binary's path.
func buildDaemon(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "nixfleet-control-plane")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// repoRoot returns the directory of the main module's go.mod.
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module; run from the repository root or pass -root")
	}
	return filepath.Dir(mod), nil
}

// child is a server running as a child process: the daemon or the ceiling.
// Its stderr goes to a log file and through a scanner that finds the
// listening address and keeps the warnings and errors for the report.
type child struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	addr    string // host:port once listening
	logs    *logWatch

	done     chan struct{} // closed when the process has exited
	waitErr  error         // valid after done is closed
	stopOnce sync.Once
	stopErr  error
}

// startOptions describe how to start a child.
type startOptions struct {
	name string
	path string
	args []string
	log  string // file receiving the child's stdout and stderr
	// wait for the "listening" log line and parse its addr= attribute;
	// false returns as soon as the process has started.
	waitListening bool
}

// startChild starts a child process; stop must be called to end it.
func startChild(ctx context.Context, o startOptions) (*child, error) {
	f, err := os.Create(o.log)
	if err != nil {
		return nil, fmt.Errorf("create log %s: %w", o.log, err)
	}
	w := newLogWatch(f)
	cmd := exec.Command(o.path, o.args...)
	cmd.Stdout = w
	cmd.Stderr = w
	// Its own process group: a Ctrl-C in the terminal reaches only this
	// process, which then stops its children gracefully. Pdeathsig kills the
	// child if this process dies without doing so.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c := &child{name: o.name, cmd: cmd, logs: w, done: make(chan struct{})}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", o.name, err)
	}
	go func() {
		c.waitErr = cmd.Wait() // also waits until the log writer has seen everything
		f.Close()
		close(c.done)
	}()
	if !o.waitListening {
		return c, nil
	}
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	select {
	case addr := <-w.listening:
		c.addr = addr
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before listening (%v); last log lines:\n%s", o.name, c.waitErr, w.tail())
	case <-timeout.C:
		c.stop()
		return nil, fmt.Errorf("%s did not log its listening address within 60s; last log lines:\n%s", o.name, w.tail())
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

// stop sends SIGTERM and waits for a graceful exit (the daemon drains for up
// to 15 s); after 30 s it kills the process. It returns an error if the exit
// was not clean. Calling it again returns the first result.
func (c *child) stop() error {
	c.stopOnce.Do(func() {
		select {
		case <-c.done:
			c.stopErr = fmt.Errorf("%s had already exited: %v", c.name, c.waitErr)
			return
		default:
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
			if c.waitErr != nil {
				c.stopErr = fmt.Errorf("%s exited uncleanly after SIGTERM: %v", c.name, c.waitErr)
			}
		case <-time.After(30 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
			c.stopErr = fmt.Errorf("%s did not exit within 30s of SIGTERM; killed", c.name)
		}
	})
	return c.stopErr
}

// alive reports an error if the process has exited.
func (c *child) alive() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited unexpectedly (%v); last log lines:\n%s", c.name, c.waitErr, c.logs.tail())
	default:
		return nil
	}
}

// memory returns the child's peak (VmHWM) and current (VmRSS) resident set
// size in bytes, read from /proc.
func (c *child) memory() (peak, current int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read memory of %s: %w", c.name, err)
	}
	field := func(name string) int64 {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, name+":"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				return kb << 10
			}
		}
		return 0
	}
	return field("VmHWM"), field("VmRSS"), nil
}

// cpuTime returns the CPU time (user + system) the child has used, read
// from /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s, the
// value of USER_HZ on Linux).
func (c *child) cpuTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of %s: %w", c.name, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("read CPU time of %s: unexpected /proc stat line", c.name)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("read CPU time of %s: unexpected /proc stat line", c.name)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// expectedWarnings are startup warnings of the daemon that the benchmark
// causes on purpose (plain mode, an empty key table); they are not problems.
var expectedWarnings = []string{
	"running without TLS",
	"no client CA configured",
	"no API keys exist",
}

// logWatch receives a child's output: it writes it to the log file, finds
// the listening address and counts and samples WARN and ERROR lines.
type logWatch struct {
	file      io.Writer
	listening chan string // receives the addr= of the first "listening" line

	mu       sync.Mutex
	partial  []byte
	last     []string // the last lines, for error messages
	warnings int
	errors   int
	samples  []string // the first unexpected WARN/ERROR lines
	sentAddr bool
	listened time.Time // when the listening line arrived
}

const (
	tailLines  = 30
	maxSamples = 12
)

var addrAttr = regexp.MustCompile(`\baddr=(\S+)`)

func newLogWatch(file io.Writer) *logWatch {
	return &logWatch{file: file, listening: make(chan string, 1)}
}

// Write is called by os/exec with arbitrary chunks of output.
func (w *logWatch) Write(p []byte) (int, error) {
	w.file.Write(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

// line handles one complete line; the caller holds w.mu.
func (w *logWatch) line(s string) {
	w.last = append(w.last, s)
	if len(w.last) > tailLines {
		w.last = w.last[1:]
	}
	if !w.sentAddr && strings.Contains(s, "listening") {
		if m := addrAttr.FindStringSubmatch(s); m != nil {
			w.sentAddr = true
			w.listened = time.Now()
			w.listening <- m[1]
		}
	}
	isWarn, isErr := strings.Contains(s, "level=WARN"), strings.Contains(s, "level=ERROR")
	if !isWarn && !isErr {
		// A panic trace or a fatal runtime error is not a slog line.
		if strings.HasPrefix(s, "panic:") || strings.HasPrefix(s, "fatal error:") {
			w.errors++
			w.sample(s)
		}
		return
	}
	for _, e := range expectedWarnings {
		if strings.Contains(s, e) {
			return
		}
	}
	if isErr {
		w.errors++
	} else {
		w.warnings++
	}
	w.sample(s)
}

func (w *logWatch) sample(s string) {
	if len(w.samples) < maxSamples {
		w.samples = append(w.samples, s)
	}
}

// listenedAt returns when the listening line arrived (zero: not yet).
func (w *logWatch) listenedAt() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.listened
}

// tail returns the last lines of output.
func (w *logWatch) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.last, "\n")
}

// problems summarises the unexpected warnings and errors logged so far; ""
// when there were none.
func (w *logWatch) problems() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.warnings == 0 && w.errors == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d warnings and %d errors logged; first lines:", w.warnings, w.errors)
	for _, s := range w.samples {
		b.WriteString("\n    ")
		b.WriteString(s)
	}
	return b.String()
}

// freePort returns a loopback port that was free a moment ago, for the
// restart scenario, which must know the address before the server logs it.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr, nil
}

// nofileLimit returns the soft limit on open files of this process (which the
// children inherit).
func nofileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 1024
	}
	return r.Cur
}
