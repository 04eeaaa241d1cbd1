// Command nixfleet-control-plane is the central server of a nixfleet
// deployment.
//
// It serves one HTTP(S) listener: the agent routes (desired generation and
// reports), the operator API (machines, releases, rollouts, audit, API keys,
// the event stream), the read-only status page at /ui/, /health and
// /metrics. All state lives in one SQLite database (--db-path,
// default /var/lib/nixfleet-cp/state.db); in-memory indexes are derived from it
// at startup. Logs are slog text lines on stderr. Two background loops run
// beside the server: the rollout executor and the retention job.
//
// See README.md for the commands and SPEC.md-derived behaviour.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		cancel() // first signal: graceful shutdown
		<-sigs
		os.Exit(1) // second signal during shutdown: give up at once
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			if ue.msg != "" {
				fmt.Fprintf(os.Stderr, "nixfleet-control-plane: %s\n", ue.msg)
			}
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "nixfleet-control-plane: %v\n", err)
		os.Exit(1)
	}
}

// usageError is a usage or configuration error: the process exits with code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

const usageText = `Usage:
  nixfleet-control-plane [serve] [flags]     run the control plane server
  nixfleet-control-plane keys create --name N [--role R] [--expires-at T] [--db-path P]
                                             create an API key offline and print it
  nixfleet-control-plane audit verify (--db-path FILE | --export FILE [--partial]) [--head SEQ:HASH]
                                             check the audit log's hash chain offline (read-only);
                                             exit 0 intact, 1 broken, 2 usage (audit verify --help)
  nixfleet-control-plane version             print the version (also --version)
  nixfleet-control-plane help [COMMAND]      print this help, or a command's help with an example
                                             (also COMMAND --help)

` + serveFlagsText + `
Example:
  nixfleet-control-plane serve --listen 127.0.0.1:8080 --db-path ./state.db
`

const serveFlagsText = `Server flags (each also read from its environment variable; a flag wins):
  --listen HOST:PORT            NIXFLEET_CP_LISTEN (default 0.0.0.0:8080)
  --db-path PATH                NIXFLEET_CP_DB_PATH (default /var/lib/nixfleet-cp/state.db)
  --tls-cert FILE               NIXFLEET_CP_TLS_CERT: PEM server certificate chain
  --tls-key FILE                NIXFLEET_CP_TLS_KEY: PEM private key
  --client-ca FILE              NIXFLEET_CP_CLIENT_CA: PEM CA bundle; requires client certificates (mTLS)
  --executor-interval DURATION  NIXFLEET_CP_EXECUTOR_INTERVAL (default 2s, 100ms to 1m)
  --report-retention DURATION   NIXFLEET_CP_REPORT_RETENTION (default 168h, at least 1h)
  --log-level LEVEL             NIXFLEET_CP_LOG_LEVEL: debug, info, warn or error (default info)
  --bootstrap-token-file FILE   NIXFLEET_CP_BOOTSTRAP_TOKEN_FILE: secret required by bootstrap
  --bootstrap-cn CN[,CN...]     NIXFLEET_CP_BOOTSTRAP_CN: mTLS without a token file: client certificate CNs
                                that may bootstrap (default none: bootstrap is closed in mTLS mode)
  --max-connections N           NIXFLEET_CP_MAX_CONNECTIONS: open connections served at once (default 10000)
  --stale-after DURATION        NIXFLEET_CP_STALE_AFTER (default 4m, 1m to 24h): a machine with no report for
                                longer is stale; 4m is three default 60 s agent polls plus a minute of slack
  --drift-grace DURATION        NIXFLEET_CP_DRIFT_GRACE (default 10m, 1m to 168h): a machine running another
                                generation than its desired one for longer, outside a rollout, is drifted
  --max-event-streams N         NIXFLEET_CP_MAX_EVENT_STREAMS: open GET /api/v1/events streams (default 100)
  --ui BOOL                     NIXFLEET_CP_UI: serve the read-only status page at /ui/ (default true)
`

// commandHelp is the help of each subcommand (`help CMD`, `CMD --help`),
// each with an example.
var commandHelp = map[string]string{
	"serve": `Usage: nixfleet-control-plane [serve] [flags]

Run the control plane server: the agent and operator API, /health and
/metrics on one listener, state in one SQLite file, progress in the log.

` + serveFlagsText + `
Examples:
  nixfleet-control-plane serve --listen 127.0.0.1:8080 --db-path ./state.db
  nixfleet-control-plane --listen 0.0.0.0:8443 --db-path /var/lib/nixfleet-cp/state.db \
    --tls-cert cp-cert.pem --tls-key cp-key.pem --client-ca ca.pem --bootstrap-token-file bootstrap-token
`,
	"keys": `Usage: nixfleet-control-plane keys create --name N [--role R] [--expires-at T] [--db-path P]

Create an API key offline, straight in the database (the server may be
running), audited as system:cli. The key is printed alone on stdout, shown
only this once.

Flags:
  --name N          key name (required; unique among keys that are not revoked)
  --role R          admin, deploy or readonly (default readonly)
  --expires-at T    expiry: an RFC 3339 time (2027-01-01T00:00:00Z) or a duration
                    from now: 30d, 12h, 90m, 1h30m (d is 24h); default: never
  --db-path P       NIXFLEET_CP_DB_PATH (default /var/lib/nixfleet-cp/state.db)

Example:
  nixfleet-control-plane keys create --name emergency --role admin --expires-at 1d \
    --db-path /var/lib/nixfleet-cp/state.db
`,
	"version": `Usage: nixfleet-control-plane version   (or --version)

Print "nixfleet-control-plane <version> <go version>". The version is set at
link time with -ldflags "-X main.version=1.2.3"; without it a binary built
from a git checkout prints dev-<commit>, and otherwise dev.

Example:
  nixfleet-control-plane version
`,
	"help": `Usage: nixfleet-control-plane help [serve|keys|version|help]

Print the overview, or the help of one command with an example.
COMMAND --help prints the same.

Example:
  nixfleet-control-plane help keys
`,
}

// wantsHelp reports whether args ask for help (-h, -help or --help).
func wantsHelp(args []string) bool {
	return slices.ContainsFunc(args, func(a string) bool { return a == "-h" || a == "-help" || a == "--help" })
}

// run is the whole program: main only adds signals and exit codes. It returns
// a *usageError for exit code 2 and any other error for exit code 1.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && wantsHelp(args[:1]) { // a bare -h or --help: the overview (§1.1)
		fmt.Fprint(stdout, usageText)
		return nil
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	} else if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		cmd, args = "version", args[1:]
	}
	if _, known := commandHelp[cmd]; known && cmd != "help" && wantsHelp(args) {
		fmt.Fprint(stdout, commandHelp[cmd])
		return nil
	}
	switch cmd {
	case "serve":
		cfg, err := parseServeFlags(args, getenv)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, stderr, nil)
	case "keys":
		if len(args) == 0 || args[0] != "create" {
			fmt.Fprint(stderr, commandHelp["keys"])
			return &usageError{msg: "unknown keys subcommand; want \"keys create\""}
		}
		return keysCreate(ctx, args[1:], getenv, stdout, stderr)
	case "audit":
		if len(args) == 0 || args[0] != "verify" {
			fmt.Fprint(stderr, usageText)
			return &usageError{msg: "unknown audit subcommand; want \"audit verify\""}
		}
		return auditVerify(ctx, args[1:], stdout, stderr)
	case "version":
		if len(args) > 0 {
			return usagef("version takes no arguments")
		}
		fmt.Fprintf(stdout, "nixfleet-control-plane %s %s\n", versionString(), runtime.Version())
		return nil
	case "help":
		switch {
		case len(args) == 0 || wantsHelp(args[:1]):
			fmt.Fprint(stdout, usageText)
		case len(args) <= 2 && commandHelp[args[0]] != "":
			fmt.Fprint(stdout, commandHelp[args[0]]) // "help keys create" too
		default:
			fmt.Fprint(stderr, usageText)
			return usagef("no help for %q: want serve, keys, version or help", strings.Join(args, " "))
		}
		return nil
	default:
		fmt.Fprint(stderr, usageText)
		return &usageError{msg: fmt.Sprintf("unknown command %q", cmd)}
	}
}

// serveConfig is the validated server configuration.
type serveConfig struct {
	listen             string
	dbPath             string
	tlsCert            string
	tlsKey             string
	clientCA           string
	executorInterval   time.Duration
	reportRetention    time.Duration
	logLevel           string
	bootstrapTokenFile string
	bootstrapCNs       []string // mTLS without a token file: the CNs that may bootstrap
	maxConnections     int
	staleAfter         time.Duration
	driftGrace         time.Duration
	maxEventStreams    int
	ui                 bool
}

const defaultDBPath = "/var/lib/nixfleet-cp/state.db"

// envFlag binds a string flag to its environment variable: the flag beats the
// variable, the variable beats the default, and an empty variable counts as unset.
type envFlag struct {
	name, env, def string
	dst            *string
}

// parseServeFlags parses and validates the server flags and their environment
// variables. It reads no file, so it can check a command line whose paths only
// exist on another machine (the NixOS module test relies on that). Every error
// is a *usageError naming the flag or variable.
func parseServeFlags(args []string, getenv func(string) string) (serveConfig, error) {
	var cfg serveConfig
	var interval, retention, bootstrapCNs, maxConns, staleAfter, driftGrace, maxStreams, ui string
	flags := []envFlag{
		{"listen", "NIXFLEET_CP_LISTEN", "0.0.0.0:8080", &cfg.listen},
		{"db-path", "NIXFLEET_CP_DB_PATH", defaultDBPath, &cfg.dbPath},
		{"tls-cert", "NIXFLEET_CP_TLS_CERT", "", &cfg.tlsCert},
		{"tls-key", "NIXFLEET_CP_TLS_KEY", "", &cfg.tlsKey},
		{"client-ca", "NIXFLEET_CP_CLIENT_CA", "", &cfg.clientCA},
		{"executor-interval", "NIXFLEET_CP_EXECUTOR_INTERVAL", "2s", &interval},
		{"report-retention", "NIXFLEET_CP_REPORT_RETENTION", "168h", &retention},
		{"log-level", "NIXFLEET_CP_LOG_LEVEL", "info", &cfg.logLevel},
		{"bootstrap-token-file", "NIXFLEET_CP_BOOTSTRAP_TOKEN_FILE", "", &cfg.bootstrapTokenFile},
		{"bootstrap-cn", "NIXFLEET_CP_BOOTSTRAP_CN", "", &bootstrapCNs},
		{"max-connections", "NIXFLEET_CP_MAX_CONNECTIONS", strconv.Itoa(defaultMaxConnections), &maxConns},
		{"stale-after", "NIXFLEET_CP_STALE_AFTER", defaultStaleAfter.String(), &staleAfter},
		{"drift-grace", "NIXFLEET_CP_DRIFT_GRACE", defaultDriftGrace.String(), &driftGrace},
		{"max-event-streams", "NIXFLEET_CP_MAX_EVENT_STREAMS", strconv.Itoa(defaultMaxEventStreams), &maxStreams},
		{"ui", "NIXFLEET_CP_UI", "true", &ui},
	}
	source, err := parseEnvFlags("serve", args, getenv, flags)
	if err != nil {
		return cfg, err
	}

	if _, port, err := net.SplitHostPort(cfg.listen); err != nil || port == "" {
		return cfg, usagef("invalid %s %q: want host:port", source["listen"], cfg.listen)
	}
	if cfg.dbPath == "" {
		return cfg, usagef("%s must not be empty", source["db-path"])
	}
	if cfg.executorInterval, err = durationFlag(source["executor-interval"], interval, 100*time.Millisecond, time.Minute, "from 100ms to 1m"); err != nil {
		return cfg, err
	}
	if cfg.reportRetention, err = durationFlag(source["report-retention"], retention, time.Hour, 0, "of at least 1h"); err != nil {
		return cfg, err
	}
	if _, ok := logLevels[cfg.logLevel]; !ok {
		return cfg, usagef("invalid %s %q: want debug, info, warn or error", source["log-level"], cfg.logLevel)
	}
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") {
		return cfg, usagef("--tls-cert and --tls-key must be set together")
	}
	if cfg.clientCA != "" && cfg.tlsCert == "" {
		return cfg, usagef("--client-ca requires --tls-cert and --tls-key")
	}
	for _, cn := range strings.Split(bootstrapCNs, ",") {
		if cn = strings.TrimSpace(cn); cn != "" {
			cfg.bootstrapCNs = append(cfg.bootstrapCNs, cn)
		}
	}
	if len(cfg.bootstrapCNs) > 0 && cfg.clientCA == "" {
		return cfg, usagef("%s requires --client-ca: only a verified client certificate has a CN", source["bootstrap-cn"])
	}
	if cfg.maxConnections, err = positiveIntFlag(source["max-connections"], maxConns); err != nil {
		return cfg, err
	}
	// Below a minute, a machine whose agent keeps the default 60 s poll
	// would flap between stale and not; a day is the most that still means
	// "went quiet" rather than "gone".
	if cfg.staleAfter, err = durationFlag(source["stale-after"], staleAfter, time.Minute, 24*time.Hour, "from 1m to 24h"); err != nil {
		return cfg, err
	}
	if cfg.driftGrace, err = durationFlag(source["drift-grace"], driftGrace, time.Minute, 7*24*time.Hour, "from 1m to 168h"); err != nil {
		return cfg, err
	}
	if cfg.maxEventStreams, err = positiveIntFlag(source["max-event-streams"], maxStreams); err != nil {
		return cfg, err
	}
	cfg.ui, err = strconv.ParseBool(ui)
	if err != nil {
		return cfg, usagef("invalid %s %q: want true or false", source["ui"], ui)
	}
	return cfg, nil
}

// parseEnvFlags parses args into flags, falling back to the environment. It
// returns, per flag name, how to name its value in an error message: the flag
// when it was given on the command line, else the environment variable.
func parseEnvFlags(cmd string, args []string, getenv func(string) string, flags []envFlag) (map[string]string, error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, f := range flags {
		fs.StringVar(f.dst, f.name, f.def, "")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, usagef("%s", strings.TrimSpace(usageText))
		}
		return nil, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	source := map[string]string{}
	for _, f := range flags {
		source[f.name] = "--" + f.name
		if given[f.name] {
			continue
		}
		if v := getenv(f.env); v != "" {
			*f.dst = v
			source[f.name] = f.env
		}
	}
	return source, nil
}

// durationFlag parses the value v of flag name as a Go duration from lo to
// hi (hi 0: no upper bound); want words the range for the usage error.
func durationFlag(name, v string, lo, hi time.Duration, want string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < lo || hi > 0 && d > hi {
		return 0, usagef("invalid %s %q: want a Go duration %s", name, v, want)
	}
	return d, nil
}

// positiveIntFlag parses the value v of flag name as an integer of at least 1.
func positiveIntFlag(name, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, usagef("invalid %s %q: want a positive integer", name, v)
	}
	return n, nil
}

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// newLogger returns the process logger: slog text lines on w with UTC
// timestamps at millisecond precision.
func newLogger(w io.Writer, level string) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: logLevels[level],
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().UTC().Format(timeLayout))
			}
			return a
		},
	}))
}

// readBootstrapToken reads the bootstrap secret: surrounding whitespace is
// trimmed and at least 16 bytes must remain (a usage error, exit 2, like any
// invalid setting); a file that cannot be read exits 1 like other unreadable files.
func readBootstrapToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read bootstrap token file: %w", err) // an unreadable file exits 1
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", usagef("--bootstrap-token-file %s: the token must be at least 16 bytes", path)
	}
	return tok, nil
}

// serveHooks lets tests observe a running server; nil in production.
type serveHooks struct {
	now       func() time.Time
	listening func(addr string) // called once the listener is bound
}

// Server timeouts. ReadHeaderTimeout and ReadTimeout cut off slow clients;
// WriteTimeout bounds a response (streamed responses manage their own
// deadline per chunk); IdleTimeout is longer than the agents' 60 s poll so
// their keep-alive connections are reused instead of re-handshaking TLS
// every minute. Measured (BENCHMARKS.md, "Idle connections"): holding an
// idle mTLS connection costs about 42–46 KiB of RSS, a handshake costs the
// server 0.51 ms of CPU resumed and 0.80 ms full (on a busy 2-core machine).
// A timeout below the poll interval would make 100,000 agents handshake about
// 3,300 times a second (their poll and health report come at independent
// times), nearly two cores even if every agent resumed its session, to save
// at most about 4 GiB of memory: memory is the cheaper resource.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10
	shutdownGrace     = 15 * time.Second
)

// defaultMaxConnections caps the connections served at once. An idle
// keep-alive connection costs about 45 KiB of RSS with mTLS and 20 KiB in
// plain mode (Go's bufio and TLS buffers, the parsed client certificate, a
// goroutine stack, and garbage-collector headroom), so the default bounds that
// cost near 450 MiB. Every mTLS agent holds its own connection for as long as
// it polls; beyond the cap, the connections idle the longest are closed to
// admit new ones (limitListener), so a larger fleet is still served at the
// cost of more handshakes. Raising the flag to the fleet's size plus room for
// operators avoids those, at 45 KiB of memory per agent (README,
// "Connections and memory"; BENCHMARKS.md).
const defaultMaxConnections = 10000

// limitListener serves at most cap(sem) connections at once. At the cap it
// first closes the keep-alive connection that has been idle the longest (its
// client reconnects when it next needs to, as after IdleTimeout), so a fleet
// larger than the cap still gets served; only when every connection is busy
// does Accept wait for one to close, new clients waiting in the kernel's
// listen backlog rather than growing the process without bound.
type limitListener struct {
	net.Listener
	sem    chan struct{}
	closed chan struct{}
	once   sync.Once
	idle   idleConns
}

// idleConns are the connections waiting for their next request, with the
// time each became idle; http.Server.ConnState keeps the set.
type idleConns struct {
	mu    sync.Mutex
	conns map[net.Conn]time.Time
}

func (ic *idleConns) track(c net.Conn, st http.ConnState) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if st == http.StateIdle {
		ic.conns[c] = time.Now()
	} else {
		delete(ic.conns, c)
	}
}

// closeOldest closes the connection idle the longest, if any. The scan is
// linear, which is cheap next to the handshake of the connection it admits.
func (ic *idleConns) closeOldest() {
	ic.mu.Lock()
	var oldest net.Conn
	var since time.Time
	for c, t := range ic.conns {
		if oldest == nil || t.Before(since) {
			oldest, since = c, t
		}
	}
	delete(ic.conns, oldest)
	ic.mu.Unlock()
	if oldest != nil {
		oldest.Close()
	}
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), closed: make(chan struct{}),
		idle: idleConns{conns: map[net.Conn]time.Time{}}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// A client is waiting: admit it at once, or close the connection idle
	// the longest and wait for its slot (or any other) to free up.
	select {
	case l.sem <- struct{}{}:
	default:
		l.idle.closeOldest()
		select {
		case l.sem <- struct{}{}:
		case <-l.closed:
			c.Close()
			return nil, net.ErrClosed
		}
	}
	return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.sem })}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitConn gives its slot back when it is closed (once).
type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// newHTTPServer returns the HTTP server with the production limits.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// A non-nil empty map disables HTTP/2: only http/1.1 is offered.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// controlPlane is the domain layer: the operations the API offers. Each one
// takes a context and plain values, runs its own transaction through the
// store, and returns values or the errors of errors.go. It knows nothing of
// HTTP and holds no SQL.
type controlPlane struct {
	st  *store
	log *slog.Logger
}

// appConfig is what newApp needs besides the process's clock and logger.
type appConfig struct {
	dbPath          string
	mode            string   // plain, tls or mtls
	bootstrapToken  string   // empty: bootstrap needs no token
	bootstrapCNs    []string // mTLS without a token: the CNs that may bootstrap
	reportRetention time.Duration
	staleAfter      time.Duration // 0: defaultStaleAfter
	driftGrace      time.Duration // 0: defaultDriftGrace
	maxEventStreams int           // 0: defaultMaxEventStreams
	disableUI       bool          // --ui=false
	now             func() time.Time
	log             *slog.Logger
}

// app is the control plane wired together, once, for the server and for
// every test: the store with its derived state, the metrics, the domain
// layer, the HTTP layer, the executor and the retention job.
type app struct {
	st   *store
	m    *metrics
	cp   *controlPlane
	srv  *server
	exec *executor
	ret  *retention
	log  *slog.Logger

	stopLoops context.CancelFunc
	loops     sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// newApp opens the database (§12.5), rebuilds the derived state, initialises
// every metric and starts the group-commit writer, without which no report
// is ever answered. The other loops start with startLoops.
func newApp(ctx context.Context, c appConfig) (*app, error) {
	m := newMetrics()
	st, err := openStore(ctx, c.dbPath, c.now, m)
	if err != nil {
		return nil, err
	}
	m.fleet = st.fleet
	active, err := readValue(ctx, st, dbq.countActiveRollouts)
	if err != nil {
		st.close()
		return nil, err
	}
	m.rolloutsActive.Store(active)
	byStatus, err := readValue(ctx, st, dbq.countRolloutsByStatus)
	if err != nil {
		st.close()
		return nil, err
	}
	m.storeRolloutsByStatus(byStatus)
	m.now = c.now
	st.fleet.policy = newAttentionPolicy(c.staleAfter, c.driftGrace)
	cp := &controlPlane{st: st, log: c.log}
	a := &app{st: st, m: m, cp: cp, log: c.log, stopLoops: func() {}}
	a.exec = newExecutor(st, m, c.log, c.now)
	st.wakeExecutor = a.exec.wake
	st.log = c.log
	a.srv = newServer(cp, m, c.log, c.mode, bootstrapGuard{token: c.bootstrapToken, cns: c.bootstrapCNs})
	a.srv.ui = !c.disableUI
	if c.maxEventStreams > 0 {
		st.events.maxStreams = c.maxEventStreams
	}
	a.ret = &retention{st: st, log: c.log, period: c.reportRetention}
	a.goLoop(func() { st.runReportWriter(c.log) })
	return a, nil
}

func (a *app) goLoop(f func()) {
	a.loops.Add(1)
	go func() { defer a.loops.Done(); f() }()
}

// startLoops starts the background loops of a serving process: the WAL
// checkpointer, the executor, the retention job (the first pass and the
// first run are immediate) and the audit head log line (at once, then every
// auditHeadLogInterval).
func (a *app) startLoops(executorInterval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	a.stopLoops = cancel
	a.goLoop(func() { a.st.runCheckpointer(ctx, checkpointInterval, a.log) })
	a.goLoop(func() { a.exec.run(ctx, executorInterval) })
	a.goLoop(func() { a.ret.run(ctx, time.Hour) })
	a.goLoop(func() { a.cp.runAuditHeadLog(ctx, auditHeadLogInterval) })
}

// close stops the loops (the executor finishes its current step), flushes
// the group-commit queue (queued reports are committed and answered) and
// closes the database with a final checkpoint. Calls after the first return
// the first's result.
func (a *app) close() error {
	a.closeOnce.Do(func() {
		a.st.events.close()
		a.stopLoops()
		a.st.stopReports()
		a.loops.Wait()
		a.closeErr = a.st.close()
	})
	return a.closeErr
}

// serve runs the server until ctx is cancelled, in the startup order of
// §1.4: configuration, logging, TLS material, bind, database, derived state,
// loops, serve.
func serve(ctx context.Context, cfg serveConfig, stderr io.Writer, hooks *serveHooks) error {
	var bootstrapToken string
	if cfg.bootstrapTokenFile != "" {
		tok, err := readBootstrapToken(cfg.bootstrapTokenFile)
		if err != nil {
			return err
		}
		bootstrapToken = tok
	}
	log := newLogger(stderr, cfg.logLevel)
	now := time.Now
	if hooks != nil && hooks.now != nil {
		now = hooks.now
	}

	var tlsConfig *tls.Config
	mode := "plain"
	if cfg.tlsCert != "" {
		var err error
		tlsConfig, err = loadTLSConfig(cfg.tlsCert, cfg.tlsKey, cfg.clientCA)
		if err != nil {
			return err
		}
		mode = "tls"
		if cfg.clientCA != "" {
			mode = "mtls"
		}
	}

	// Bind before touching the database: a bad address or a port in use
	// fails without creating or migrating anything. Nothing is accepted
	// until Serve, after the derived state is built.
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.listen, err)
	}
	defer ln.Close()
	// One process per database: every derived in-memory structure assumes
	// that this process is the only writer.
	unlock, err := lockDatabase(cfg.dbPath)
	if err != nil {
		return err
	}
	defer unlock()
	a, err := newApp(ctx, appConfig{dbPath: cfg.dbPath, mode: mode, bootstrapToken: bootstrapToken,
		bootstrapCNs: cfg.bootstrapCNs, reportRetention: cfg.reportRetention, staleAfter: cfg.staleAfter,
		driftGrace: cfg.driftGrace, now: now, log: log, maxEventStreams: cfg.maxEventStreams, disableUI: !cfg.ui})
	if err != nil {
		return err
	}
	log.Info("database ready", "path", cfg.dbPath, "schema_version", len(migrations))
	addr := ln.Addr().String()
	limited := newLimitListener(ln, cfg.maxConnections)
	ln = limited
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	httpServer := newHTTPServer(a.srv.handler(), log)
	httpServer.ConnState = limited.idle.track
	// Shutdown waits for handlers to return, and an event stream only
	// returns when told to.
	httpServer.RegisterOnShutdown(a.st.events.close)
	a.startLoops(cfg.executorInterval)

	switch mode {
	case "plain":
		log.Warn("running without TLS: traffic is unencrypted and agent endpoints are unauthenticated")
	case "tls":
		log.Warn("no client CA configured: agent endpoints are not authenticated")
	}
	a.srv.logBootstrapGuard(ctx)
	log.Info("Control plane listening", "addr", addr, "mode", mode)
	if hooks != nil && hooks.listening != nil {
		hooks.listening(addr)
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- httpServer.Serve(ln) }()

	var result error
	select {
	case err := <-serveErr:
		result = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		log.Info("shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		if err := httpServer.Shutdown(shutdownCtx); err != nil {
			httpServer.Close()
		}
		cancel()
	}
	if err := a.close(); err != nil && result == nil {
		result = err
	}
	return result
}
