package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// idleClientArg, as the first argument, re-executes this binary as a client
// process of the idle scenario. It is not one of the documented flags.
const idleClientArg = "-idle-client"

// idleConnsPerClient is how many connections one client process opens: a
// few processes spread the clients' TLS work and each uses its own loopback
// source address (127.0.0.2, .3, …), so that no (source, destination) pair
// runs out of ephemeral ports.
const idleConnsPerClient = 6000

// idleResult is one measurement of the idle scenario: a fresh daemon, its
// memory before, and with the connections open.
type idleResult struct {
	wanted      int
	held        int   // connections the daemon held at the sample (its open descriptors minus those before)
	before      int64 // VmRSS before connecting, bytes
	rss         int64 // VmRSS at the sample
	settled     int64 // VmRSS after settle more (request phase only)
	settle      time.Duration
	hwm         int64 // VmHWM at the end
	opened      time.Duration
	clientFails int
	firstErr    string
}

// perConn is the RSS growth per held connection, in KiB.
func (r idleResult) perConn(rss int64) float64 {
	if r.held <= 0 {
		return 0
	}
	return float64(rss-r.before) / 1024 / float64(r.held)
}

// runIdle measures what idle keep-alive connections cost the daemon: for
// each transport of -idle-mode and each count of -idle-conns, a fresh daemon
// and client processes that open that many connections. In the "silent"
// phase each connection only completes its TLS handshake (TCP connect in
// plain mode) and sends nothing; in the "after one request" phase each one
// polls its machine's desired generation (a 404 for a machine the daemon does
// not know, served from memory, so the fleet does not grow with the count)
// and then stays idle, as an agent's connection does between polls. The
// daemon's VmRSS is read from /proc before and with the connections open.
func (b *bench) runIdle(ctx context.Context) error {
	for _, mode := range b.cfg.idleModes {
		var last idleResult
		for _, n := range b.cfg.idleConns {
			if uint64(n)+500 > nofileLimit() {
				b.res.addProblem("idle %s %d: the open-file limit %d is too low for %d connections", mode, n, nofileLimit(), n)
				continue
			}
			for _, request := range []bool{false, true} {
				r, err := b.idleRun(ctx, mode, n, request)
				if err != nil {
					return err
				}
				b.res.addRow(row{scenario: idleScenarioName(mode, n, request), server: "real", notes: idleNotes(r, request)})
				if request {
					last = r
				}
			}
		}
		if last.held > 0 {
			slope := last.perConn(last.settled)
			const target = 50_000
			est := float64(last.before) + target*slope*1024
			b.res.addRow(row{scenario: fmt.Sprintf("idle connections, %s: %d after one request each (extrapolated)", mode, target),
				server: "real", notes: fmt.Sprintf("NOT MEASURED: %s before + %d × %.1f KiB (the slope measured at %d) = %s; "+
					"one process here cannot hold %d connections (open-file limit %d)",
					mib(last.before), target, slope, last.held, mib(int64(est)), target, nofileLimit())})
		}
	}
	return nil
}

func idleScenarioName(mode string, n int, request bool) string {
	if request {
		return fmt.Sprintf("idle connections, %s: %d after one request each", mode, n)
	}
	return fmt.Sprintf("idle connections, %s: %d silent", mode, n)
}

func idleNotes(r idleResult, request bool) string {
	var s strings.Builder
	if request {
		fmt.Fprintf(&s, "%d held; VmRSS %s before, %s with them open (%.1f KiB per connection), %s %v later (%.1f KiB per connection); VmHWM %s",
			r.held, mib(r.before), mib(r.rss), r.perConn(r.rss), mib(r.settled), r.settle, r.perConn(r.settled), mib(r.hwm))
	} else {
		fmt.Fprintf(&s, "%d of %d held at the peak (a connection that sends nothing is closed after ReadHeaderTimeout, 10 s); "+
			"VmRSS %s before, %s then (%.1f KiB per connection); VmHWM %s", r.held, r.wanted, mib(r.before), mib(r.rss), r.perConn(r.rss), mib(r.hwm))
	}
	fmt.Fprintf(&s, "; opened in %s (%.0f/s, shared CPUs)", secs(r.opened), float64(r.wanted)/r.opened.Seconds())
	if r.clientFails > 0 {
		fmt.Fprintf(&s, "; %d connections failed: %s", r.clientFails, r.firstErr)
	}
	return s.String()
}

// idleSample is the daemon's descriptor count and VmRSS at one moment.
type idleSample struct {
	fds int
	rss int64
}

func sampleDaemon(d *child) (idleSample, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		return idleSample{}, err
	}
	_, rss, err := d.memory()
	return idleSample{fds: len(ents), rss: rss}, err
}

// idleRun is one measurement on a fresh daemon (so that no earlier phase's
// heap is counted).
func (b *bench) idleRun(ctx context.Context, mode string, n int, request bool) (idleResult, error) {
	phase := "silent"
	if request {
		phase = "request"
	}
	name := fmt.Sprintf("daemon-idle-%s-%d-%s", mode, n, phase)
	args := append(b.daemonArgs(filepath.Join(b.tmp, name+".db"), "127.0.0.1:0", mode),
		"--max-connections", strconv.Itoa(n+1000))
	d, err := startChild(ctx, startOptions{name: name, path: b.bin, args: args, log: b.logFile(name), waitListening: true})
	if err != nil {
		return idleResult{}, err
	}
	defer b.stopDaemon("idle "+mode, d)
	time.Sleep(time.Second) // the loops' first passes
	base, err := sampleDaemon(d)
	if err != nil {
		return idleResult{}, err
	}
	r := idleResult{wanted: n, before: base.rss}
	b.logf("  %s %d %s: daemon VmRSS %s, %d fds before", mode, n, phase, mib(base.rss), base.fds)

	// Sample while the clients connect: silent TLS connections are closed
	// by the daemon 10 s after their handshake, so the peak is what counts.
	var peak idleSample
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if s, err := sampleDaemon(d); err == nil && s.fds > peak.fds {
				peak = s
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})

	start := time.Now()
	clients, err := b.startIdleClients(ctx, d.addr, mode, n, request)
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	if err != nil {
		close(stop)
		sampler.Wait()
		return r, err
	}
	for _, c := range clients {
		st := <-c.ready
		if st.err != nil {
			close(stop)
			sampler.Wait()
			return r, st.err
		}
		r.clientFails += st.failed
		if r.firstErr == "" {
			r.firstErr = st.firstErr
		}
	}
	r.opened = time.Since(start)
	close(stop)
	sampler.Wait()
	if err := d.alive(); err != nil {
		return r, err
	}
	if request {
		now, err := sampleDaemon(d)
		if err != nil {
			return r, err
		}
		r.held, r.rss = now.fds-base.fds, now.rss
		r.settle = b.cfg.idleSettle
		time.Sleep(r.settle)
		later, err := sampleDaemon(d)
		if err != nil {
			return r, err
		}
		r.settled = later.rss
		r.held = min(r.held, later.fds-base.fds)
	} else {
		// Plain connections may still wait in the listen backlog when the
		// clients are done: sample until the daemon holds them all (or 3 s).
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			now, err := sampleDaemon(d)
			if err == nil && now.fds > peak.fds {
				peak = now
			}
			if peak.fds-base.fds >= n-r.clientFails {
				break
			}
		}
		r.held, r.rss = peak.fds-base.fds, peak.rss
	}
	hwm, _, _ := d.memory()
	r.hwm = hwm
	b.logf("  %s %d %s: %d held, VmRSS %s (%.1f KiB per connection), opened in %s", mode, n, phase, r.held, mib(r.rss),
		r.perConn(r.rss), secs(r.opened))
	return r, nil
}

// idleClient is one client process of the idle scenario.
type idleClient struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan idleReady
	done  chan error
}

type idleReady struct {
	failed   int
	firstErr string
	err      error // the process failed
}

// startIdleClients starts the client processes that open n connections in
// all; each reports on stdout when its connections are open, and closes them
// and exits when its stdin is closed.
func (b *bench) startIdleClients(ctx context.Context, addr, mode string, n int, request bool) ([]*idleClient, error) {
	var clients []*idleClient
	k := (n + idleConnsPerClient - 1) / idleConnsPerClient
	for i := range k {
		share := n / k
		if i < n%k {
			share++
		}
		args := []string{idleClientArg, "-addr", addr, "-mode", mode, "-n", strconv.Itoa(share),
			"-prefix", fmt.Sprintf("idle-%d-", i), "-local", fmt.Sprintf("127.0.0.%d", 2+i),
			"-request=" + strconv.FormatBool(request)}
		if mode == modeMTLS {
			args = append(args, "-ca", b.pki.caFile, "-ca-key", b.pki.caKeyFile)
		}
		cmd := exec.Command(b.self, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return clients, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return clients, err
		}
		if err := cmd.Start(); err != nil {
			return clients, fmt.Errorf("start idle client: %w", err)
		}
		c := &idleClient{cmd: cmd, stdin: stdin, ready: make(chan idleReady, 1), done: make(chan error, 1)}
		clients = append(clients, c)
		go func() {
			sc := bufio.NewScanner(stdout)
			got := false
			for sc.Scan() {
				f := strings.SplitN(sc.Text(), " ", 3)
				if len(f) >= 2 && f[0] == "ready" && !got {
					got = true
					failed, _ := strconv.Atoi(f[1])
					st := idleReady{failed: failed}
					if len(f) == 3 {
						st.firstErr = f[2]
					}
					c.ready <- st
				}
			}
			err := cmd.Wait()
			if !got {
				c.ready <- idleReady{err: fmt.Errorf("idle client %d exited before its connections were open: %v", i, err)}
			}
			c.done <- err
		}()
	}
	return clients, nil
}

// close makes the client close its connections and waits for it to exit.
func (c *idleClient) close() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// runIdleClient is a client process of the idle scenario: it opens -n
// connections from -local to -addr (each with its own client certificate,
// CN = its machine id, in mTLS mode), optionally sends one desired-generation
// poll on each, prints "ready <failed> [first error]" and holds them until
// its stdin is closed. Its own memory is not measured.
func runIdleClient(args []string) error {
	fs := flag.NewFlagSet("loadbench -idle-client", flag.ContinueOnError)
	addr := fs.String("addr", "", "server host:port")
	mode := fs.String("mode", modePlain, "plain or mtls")
	n := fs.Int("n", 0, "connections")
	prefix := fs.String("prefix", "idle-", "machine id prefix")
	local := fs.String("local", "127.0.0.1", "loopback source address")
	request := fs.Bool("request", false, "send one poll on each connection")
	caFile := fs.String("ca", "", "CA certificate (mtls)")
	caKeyFile := fs.String("ca-key", "", "CA key (mtls)")
	workers := fs.Int("workers", 32, "concurrent connects")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ids := make([]string, *n)
	for i := range ids {
		ids[i] = machineID(*prefix, i)
	}
	ctx := context.Background()
	var p *pki
	if *mode == modeMTLS {
		var err error
		if p, err = loadPKI(*caFile, *caKeyFile); err != nil {
			return err
		}
		// The certificates are the agents' own: made before connecting.
		if err := parallel(ctx, *n, runtime.NumCPU(), func(ctx context.Context, i int) error {
			_, err := p.clientCert(ids[i])
			return err
		}); err != nil {
			return err
		}
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(*local)}}
	host, _, _ := net.SplitHostPort(*addr)
	conns := make([]*net.TCPConn, *n)
	var failed atomic.Int64
	var firstErr atomic.Value
	open := func(ctx context.Context, i int) error {
		err := func() error {
			c, err := dialer.DialContext(ctx, "tcp", *addr)
			if err != nil {
				return err
			}
			tcp := c.(*net.TCPConn)
			conns[i] = tcp
			c.SetDeadline(time.Now().Add(60 * time.Second))
			if p != nil {
				cfg, err := p.clientTLS(ids[i])
				if err != nil {
					return err
				}
				cfg.ServerName = host
				tc := tls.Client(c, cfg)
				if err := tc.HandshakeContext(ctx); err != nil {
					return err
				}
				c = tc
			}
			if *request {
				if _, err := io.WriteString(c, "GET /api/v1/machines/"+ids[i]+"/desired-generation HTTP/1.1\r\nHost: "+*addr+
					"\r\nUser-Agent: loadbench-idle\r\nAccept-Encoding: gzip\r\n\r\n"); err != nil {
					return err
				}
				resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if (resp.StatusCode != 404 && resp.StatusCode != 200) || resp.Close {
					return fmt.Errorf("poll: status %d, close %v", resp.StatusCode, resp.Close)
				}
			}
			c.SetDeadline(time.Time{})
			return nil
		}()
		if err != nil {
			if failed.Add(1) == 1 {
				firstErr.Store(err.Error())
			}
		}
		return nil
	}
	if err := parallel(ctx, *n, *workers, open); err != nil {
		return err
	}
	msg, _ := firstErr.Load().(string)
	fmt.Printf("ready %d %s\n", failed.Load(), strings.ReplaceAll(msg, "\n", " "))
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	for _, c := range conns {
		if c != nil {
			c.SetLinger(0) // no TIME_WAIT pile-up between runs
			c.Close()
		}
	}
	return nil
}

// parseCounts parses a comma-separated list of positive integers.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil || v < 1 || v > math.MaxInt32 {
			return nil, errors.New("-idle-conns: want positive integers separated by commas")
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("-idle-conns: no count")
	}
	return out, nil
}
