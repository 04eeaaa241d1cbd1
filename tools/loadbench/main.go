// Command loadbench is the load benchmark of nixfleet-control-plane.
//
// It builds the daemon from the repository root, runs it as a child process
// on temporary databases, and drives it with simulated agents over keep-alive
// connections. Next to it runs the "ceiling": this same binary re-executed in
// a hidden mode as a bare net/http server that answers the two agent routes
// with minimal work, under the daemon's TLS settings and server limits. The
// daemon's throughput is reported as a fraction of the ceiling's, measured in
// the same run on the same machine, which is what the targets are
// expressed in.
//
// Scenarios (-scenarios, comma-separated; default all):
//
//	ingest-plain, ingest-mtls  closed-loop POST …/report (durable ingestion), real and ceiling
//	poll-plain, poll-mtls      closed-loop GET …/desired-generation, real and ceiling
//	fleet                      open-loop realistic fleet: N machines polling and reporting every 60 s
//	rollout                    a staged rollout over N agents that answer instantly
//	restart                    restart on 100,000 machines and 1,000,000 reports; GET /api/v1/machines
//	idle                       daemon RSS with N idle keep-alive connections, silent and after one request each
//
// "ingest" and "poll" select both transports. Run from the repository root:
//
//	go run ./tools/loadbench -quick              # every scenario at small scale, about a minute
//	go run ./tools/loadbench -out results.md     # the full run (several minutes)
//	go run ./tools/loadbench -scenarios fleet -machines 20000
//
// Everything lives in a temporary directory ($TMPDIR, so the databases are
// on that file system; -keep keeps it) that is removed at exit; child
// processes are stopped at exit, also on Ctrl-C, and killed by the kernel if
// this process dies (Pdeathsig). Linux only (/proc, Pdeathsig).
//
// In mTLS mode a connection can only speak for the machine named in its
// certificate, so simulated agents hold one keep-alive connection each; the
// fleet scenario therefore defaults to plain mode (a shared pool), because
// 100,000 connections exceed the usual open-file limit. The daemon serves no
// pprof endpoint, so CPU and memory profiles of the ingestion path are taken
// with a go test benchmark on the daemon side, not here.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == idleClientArg {
		if err := runIdleClient(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "loadbench idle client: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == ceilingArg {
		if err := runCeiling(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "loadbench ceiling: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "loadbench: interrupted; child processes stopped, temporary files removed")
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "loadbench: %v\n", err)
		os.Exit(1)
	}
}

// config is the validated command line.
type config struct {
	root      string
	quick     bool
	scenarios []string
	out       string
	keep      bool

	// Throughput scenarios.
	duration     time.Duration
	warmup       time.Duration
	clients      int
	idsPerClient int

	// Fleet and restart.
	machines      int
	reports       int
	fleetDuration time.Duration
	fleetCompress float64
	fleetWorkers  int
	fleetMode     string
	jitter        float64
	upToDate      bool

	// Rollout.
	rolloutMachines int
	rolloutPoll     time.Duration
	rolloutMode     string
	healthTimeout   int

	// Idle connections.
	idleConns  []int
	idleModes  []string
	idleSettle time.Duration
}

// allScenarios is the default list, in the order they run.
var allScenarios = []string{"ingest-plain", "ingest-mtls", "poll-plain", "poll-mtls", "fleet", "rollout", "restart", "idle"}

// parseConfig parses the flags. -quick changes the defaults of the flags that
// were not given explicitly.
func parseConfig(args []string, stderr io.Writer) (config, error) {
	var c config
	var scenarios, idleConns, idleModes string
	fs := flag.NewFlagSet("loadbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.root, "root", "", "repository root `dir` (default: the directory of the go.mod that go env GOMOD names)")
	fs.BoolVar(&c.quick, "quick", false, "small sizes and 3 s measurements: every scenario in about a minute")
	fs.StringVar(&scenarios, "scenarios", "all", "comma-separated scenarios: "+strings.Join(allScenarios, ", ")+"; ingest, poll, all")
	fs.StringVar(&c.out, "out", "", "also write the results as Markdown to this file")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (databases, child logs) and print its path")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measurement time of each throughput run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each throughput run (connections, TLS handshakes)")
	fs.IntVar(&c.clients, "clients", 64, "concurrent keep-alive clients of the throughput scenarios")
	fs.IntVar(&c.idsPerClient, "ids-per-client", 1, "machine ids each throughput client speaks for (one connection each, CN = id in mTLS)")
	fs.IntVar(&c.machines, "machines", 100_000, "machines of the fleet and restart scenarios")
	fs.IntVar(&c.reports, "reports", 1_000_000, "reports in the restart scenario's database")
	fs.DurationVar(&c.fleetDuration, "fleet-duration", 60*time.Second, "measurement time of the fleet scenario (one 60 s interval reaches every machine)")
	fs.Float64Var(&c.fleetCompress, "fleet-compress", 1, "fleet time compression: the agents' 60 s intervals are divided by this (1: the real offered load)")
	fs.IntVar(&c.fleetWorkers, "fleet-workers", 256, "goroutines sending the fleet's scheduled requests")
	fs.StringVar(&c.fleetMode, "fleet-mode", modePlain, "fleet transport: plain (shared keep-alive pool) or mtls (one connection and certificate per machine; limited by open files)")
	fs.Float64Var(&c.jitter, "jitter", 0.1, "relative jitter of the fleet agents' intervals (0.1: ±10%)")
	fs.BoolVar(&c.upToDate, "up-to-date", false, "fleet agents also send the v0.1 \"up-to-date\" report after every 200 poll (3 requests per interval instead of 2)")
	fs.IntVar(&c.rolloutMachines, "rollout-machines", 10_000, "machines (instant agents) of the rollout scenario")
	fs.DurationVar(&c.rolloutPoll, "rollout-poll", 5*time.Second, "poll interval of the rollout agents (the daemon's poll_hint is 5 s)")
	fs.StringVar(&c.rolloutMode, "rollout-mode", modeMTLS, "rollout transport: mtls or plain")
	fs.IntVar(&c.healthTimeout, "health-timeout", 300, "health_timeout of the rollout, seconds")
	fs.StringVar(&idleConns, "idle-conns", "5000,10000,18000", "idle scenario: connection counts, comma-separated (each on a fresh daemon)")
	fs.StringVar(&idleModes, "idle-mode", "mtls,plain", "idle scenario: transports, comma-separated: mtls, plain")
	fs.DurationVar(&c.idleSettle, "idle-settle", 5*time.Second, "idle scenario: wait before the second memory sample")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]string{
			"duration": "3s", "warmup": "500ms", "clients": "16", "machines": "2000", "reports": "20000",
			"fleet-duration": "3s", "fleet-compress": "10", "fleet-workers": "64",
			"rollout-machines": "200", "rollout-poll": "1s", "idle-conns": "1000", "idle-settle": "1s",
		}
		for name, v := range quick {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}

	for _, s := range strings.Split(scenarios, ",") {
		switch s = strings.TrimSpace(s); s {
		case "all":
			c.scenarios = append(c.scenarios, allScenarios...)
		case "ingest", "poll":
			c.scenarios = append(c.scenarios, s+"-plain", s+"-mtls")
		case "":
		default:
			if !slices.Contains(allScenarios, s) {
				return c, fmt.Errorf("unknown scenario %q (want %s)", s, strings.Join(allScenarios, ", "))
			}
			c.scenarios = append(c.scenarios, s)
		}
	}
	slices.SortStableFunc(c.scenarios, func(a, b string) int {
		return slices.Index(allScenarios, a) - slices.Index(allScenarios, b)
	})
	c.scenarios = slices.Compact(c.scenarios)

	var err error
	if c.idleConns, err = parseCounts(idleConns); err != nil {
		return c, err
	}
	for _, m := range strings.Split(idleModes, ",") {
		if m = strings.TrimSpace(m); m != modePlain && m != modeMTLS {
			return c, errors.New("-idle-mode: want mtls, plain or both")
		}
		c.idleModes = append(c.idleModes, m)
	}

	switch {
	case c.duration <= 0 || c.warmup < 0 || c.fleetDuration <= 0:
		return c, errors.New("durations must be positive")
	case c.clients < 1 || c.idsPerClient < 1 || c.fleetWorkers < 1:
		return c, errors.New("-clients, -ids-per-client and -fleet-workers must be at least 1")
	case c.machines < 1 || c.rolloutMachines < 1 || c.reports < 0:
		return c, errors.New("-machines and -rollout-machines must be at least 1")
	case c.rolloutMachines > 100_000:
		return c, errors.New("-rollout-machines: a release holds at most 100,000 hosts")
	case c.fleetCompress <= 0 || c.jitter < 0 || c.jitter >= 1:
		return c, errors.New("-fleet-compress must be positive and -jitter in [0, 1)")
	case c.fleetMode != modePlain && c.fleetMode != modeMTLS, c.rolloutMode != modePlain && c.rolloutMode != modeMTLS:
		return c, errors.New("-fleet-mode and -rollout-mode must be plain or mtls")
	case c.rolloutPoll <= 0 || c.healthTimeout < 1 || c.healthTimeout > 86400:
		return c, errors.New("-rollout-poll must be positive and -health-timeout in 1..86400")
	}
	return c, nil
}

// bench is one run: its configuration, its temporary directory, the
// binaries, the PKI and the results.
type bench struct {
	cfg      config
	tmp      string
	bin      string // the daemon
	self     string // this binary, re-executed as the ceiling
	pki      *pki
	progress io.Writer
	start    time.Time
	res      *results
	nextLog  int // numbers the child log files
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args[1:], stderr)
	if err != nil {
		return err
	}
	b := &bench{cfg: cfg, progress: stderr, start: time.Now(), res: &results{}}

	header := b.header(args)
	fmt.Fprint(stdout, header)

	if b.cfg.root == "" {
		if b.cfg.root, err = repoRoot(ctx); err != nil {
			return err
		}
	}
	if b.tmp, err = os.MkdirTemp("", "loadbench-"); err != nil {
		return err
	}
	if cfg.keep {
		fmt.Fprintf(stderr, "keeping %s\n", b.tmp)
	} else {
		defer os.RemoveAll(b.tmp)
	}
	if b.self, err = os.Executable(); err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	b.logf("building the daemon in %s", b.cfg.root)
	if b.bin, err = buildDaemon(ctx, b.cfg.root, b.tmp); err != nil {
		return err
	}
	if b.pki, err = newPKI(b.tmp); err != nil {
		return err
	}

	failed := 0
	runOne := func(name string, fn func(context.Context) error) error {
		b.logf("scenario %s", name)
		err := fn(ctx)
		if ctx.Err() != nil {
			return ctx.Err() // Ctrl-C: stop here; the defers clean up
		}
		if err != nil {
			failed++
			b.res.addProblem("scenario %s failed: %v", name, err)
			b.logf("scenario %s failed: %v", name, err)
		}
		return nil
	}
	sc := cfg.scenarios
	for _, mode := range []string{modePlain, modeMTLS} {
		ingest, poll := slices.Contains(sc, "ingest-"+mode), slices.Contains(sc, "poll-"+mode)
		if !ingest && !poll {
			continue
		}
		if err := runOne("throughput-"+mode, func(ctx context.Context) error {
			return b.runThroughput(ctx, mode, ingest, poll)
		}); err != nil {
			return err
		}
	}
	for _, s := range []struct {
		name string
		fn   func(context.Context) error
	}{{"fleet", b.runFleet}, {"rollout", b.runRollout}, {"restart", b.runRestart}, {"idle", b.runIdle}} {
		if slices.Contains(sc, s.name) {
			if err := runOne(s.name, s.fn); err != nil {
				return err
			}
		}
	}

	fmt.Fprintln(stdout)
	b.res.writeMarkdown(stdout)
	if cfg.out != "" {
		f, err := os.Create(cfg.out)
		if err != nil {
			return err
		}
		fmt.Fprint(f, header)
		fmt.Fprintln(f)
		b.res.writeMarkdown(f)
		if err := f.Close(); err != nil {
			return err
		}
	}
	b.logf("done")
	if failed > 0 {
		return fmt.Errorf("%d scenario(s) failed", failed)
	}
	return nil
}

// header describes the run: the exact command line and the machine.
func (b *bench) header(args []string) string {
	cmd := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t\"'$\\") {
			a = strconv.Quote(a)
		}
		cmd[i] = a
	}
	// Under `go run` the binary lives in a temporary build directory.
	if strings.Contains(args[0], "go-build") {
		cmd[0] = "go run ./tools/loadbench"
	}
	load, _ := os.ReadFile("/proc/loadavg")
	var h strings.Builder
	fmt.Fprintf(&h, "# nixfleet-control-plane load benchmark\n\n")
	fmt.Fprintf(&h, "    %s\n\n", strings.Join(cmd, " "))
	fmt.Fprintf(&h, "- date: %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&h, "- %s, %d CPUs (GOMAXPROCS %d), load average %s\n", runtime.Version(), runtime.NumCPU(),
		runtime.GOMAXPROCS(0), strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	fmt.Fprintf(&h, "- the load generator, the daemon and the ceiling share these CPUs; compare ratios, not absolute figures\n")
	return h.String()
}

// logf prints a progress line on stderr.
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// logFile returns a new path for a child's log.
func (b *bench) logFile(name string) string {
	b.nextLog++
	return filepath.Join(b.tmp, fmt.Sprintf("%02d-%s.log", b.nextLog, name))
}

// daemonArgs are the daemon's flags for a database, an address and a mode.
// The log level is info, not warn: the "Control plane listening" line that
// carries the bound address is an INFO line, and at info the daemon logs
// nothing per request (request lines are debug).
func (b *bench) daemonArgs(dbPath, listen, mode string) []string {
	args := []string{"--db-path", dbPath, "--listen", listen, "--log-level", "info"}
	if mode == modeMTLS {
		// The operator certificate bootstraps the first key (mTLS without a
		// token file: only an allowed CN may).
		args = append(args, "--tls-cert", b.pki.serverCertFile, "--tls-key", b.pki.serverKeyFile,
			"--client-ca", b.pki.caFile, "--bootstrap-cn", operatorCN)
	}
	return args
}

// startDaemon starts the daemon on dbPath and waits until it listens.
func (b *bench) startDaemon(ctx context.Context, name, dbPath, mode string) (*child, error) {
	return startChild(ctx, startOptions{
		name: name, path: b.bin, args: b.daemonArgs(dbPath, "127.0.0.1:0", mode),
		log: b.logFile(name), waitListening: true,
	})
}

// startCeiling starts the ceiling server and waits until it listens.
func (b *bench) startCeiling(ctx context.Context, mode string) (*child, error) {
	args := []string{ceilingArg, "-listen", "127.0.0.1:0"}
	if mode == modeMTLS {
		args = append(args, "-tls-cert", b.pki.serverCertFile, "-tls-key", b.pki.serverKeyFile,
			"-client-ca", b.pki.caFile)
	}
	return startChild(ctx, startOptions{
		name: "ceiling-" + mode, path: b.self, args: args, log: b.logFile("ceiling-" + mode), waitListening: true,
	})
}

// baseURL is the URL prefix of a server in a mode.
func baseURL(addr, mode string) string {
	if mode == modeMTLS {
		return "https://" + addr
	}
	return "http://" + addr
}

// pkiFor returns the PKI for clients of a server in mode: nil in plain mode.
func (b *bench) pkiFor(mode string) *pki {
	if mode == modeMTLS {
		return b.pki
	}
	return nil
}

// stopDaemon stops a daemon and records an unclean exit and the warnings
// and errors it logged during the scenario as problems.
func (b *bench) stopDaemon(scenario string, c *child) {
	if err := c.stop(); err != nil {
		b.res.addProblem("%s: %v; last log lines:\n%s", scenario, err, c.logs.tail())
	}
	if p := c.logs.problems(); p != "" {
		b.res.addProblem("%s: %s: %s", scenario, c.name, p)
	}
}

// createSchema starts the daemon once on a new database so that it creates
// the schema, bootstraps an admin key, and stops it. The key is returned.
func (b *bench) createSchema(ctx context.Context, dbPath string) (string, error) {
	d, err := b.startDaemon(ctx, "daemon-init", dbPath, modePlain)
	if err != nil {
		return "", err
	}
	a, err := newAdmin(baseURL(d.addr, modePlain), nil)
	if err != nil {
		d.stop()
		return "", err
	}
	defer a.close()
	if err := a.bootstrap(ctx); err != nil {
		d.stop()
		return "", err
	}
	if err := d.stop(); err != nil {
		return "", err
	}
	return a.key, nil
}
