// Command fakeagent simulates a fleet of nixfleet v0.1 agents against a
// control plane, for demos, documentation and tests.
//
//	go run ./tools/fakeagent --url http://127.0.0.1:8080 --machines 20 --fail web-07
//
// Each simulated machine is one goroutine speaking the v0.1 agent protocol
// (SPEC §5.1, §5.2, §6.1, §6.7), with nothing but fake store paths behind it:
//
//   - it starts on a deterministic generation,
//     /nix/store/<32 nix-base32 chars>-nixos-system-<id>-initial;
//   - at start and every --health-interval it reports "health-check" with two
//     checks, sshd.service and nginx.service; on the machines named by --fail,
//     nginx.service fails ("unit is failed", success=false) once they run a
//     generation they were given (the new release is what breaks them). The
//     first report is what registers the machine with the control plane;
//   - it polls GET …/desired-generation every --poll-interval, or after
//     poll_hint seconds when a 200 carries one; 404 means nothing to do, and
//     anything else is logged and retried after --retry-interval;
//   - when the desired generation is the one it runs, it reports
//     "up-to-date"; otherwise it reports "applying" (old generation), waits
//     --apply-delay, switches, reports "deployed" (new generation) and sends a
//     health-check at once so that rollouts move quickly. Unlike the real
//     agent it never rolls back: a --fail machine keeps running the new
//     generation and keeps reporting failed health on it.
//
// Reports carry --tags, agent_version "0.1.0" and the seconds since fakeagent
// started; no request carries an Authorization header. Interesting events go
// to stdout, one line each ("web-03 deployed /nix/store/…"); periodic reports
// whose outcome did not change are not logged.
//
// Transport: an http:// URL is the control plane's plain mode. For https://,
// --ca names the PEM file of the CA that signed the server certificate (the
// system roots are used otherwise). For mutual TLS, --cert-dir holds one
// client certificate per machine, DIR/<id>.pem and DIR/<id>-key.pem, whose
// subject CN must be the machine id: the control plane answers 403 to an agent
// whose CN differs from the id in the path, so fakeagent refuses to start.
//
// With --once every machine sends its first health-check and does one poll
// cycle (applying the desired generation if needed), then fakeagent exits:
// 0 if every request succeeded, 1 otherwise. Without it, fakeagent runs until
// SIGINT or SIGTERM and then exits 0. Bad flags exit 2; unreadable
// certificate files exit 1.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	agentVersion = "0.1.0"
	// requestTimeout is the v0.1 agent's HTTP timeout (SPEC §6.1).
	requestTimeout = 30 * time.Second
	// nixBase32 is the alphabet of Nix store path hashes.
	nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"
)

// SPEC §2.7: machine ids and tags the control plane accepts.
var (
	machineIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	tagRE       = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	var usage usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &usage):
		fmt.Fprintf(os.Stderr, "fakeagent: %v\nrun 'go run ./tools/fakeagent -h' for the flags\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "fakeagent: %v\n", err)
		os.Exit(1)
	}
}

// usageError is a bad command line (exit 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// config is the validated command line.
type config struct {
	base            string   // control plane URL without a trailing slash
	ids             []string // simulated machines
	fail            map[string]bool
	tags            []string
	caFile, certDir string
	poll, health    time.Duration
	retry, apply    time.Duration
	once            bool
}

// run parses args, starts one agent per machine and waits for them: until ctx
// is cancelled, or after one cycle with --once. It returns flag.ErrHelp for
// -h, a usageError for a bad command line, and an error when certificate files
// cannot be loaded or, with --once, when some machine saw a failed request.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := parseConfig(args, stdout)
	if err != nil {
		return err
	}
	clients, err := newClients(cfg)
	if err != nil {
		return err
	}
	logger := log.New(stdout, "", log.Ltime)
	logger.Printf("fakeagent: %d machines (%s .. %s) against %s, %d with failing health", len(cfg.ids),
		cfg.ids[0], cfg.ids[len(cfg.ids)-1], cfg.base, len(cfg.fail))

	start := time.Now()
	var wg sync.WaitGroup
	var failedMachines atomic.Int64
	for _, id := range cfg.ids {
		a := &agent{cfg: cfg, id: id, client: clients[id], log: logger, start: start, gen: initialGeneration(id)}
		wg.Go(func() {
			if a.run(ctx) {
				failedMachines.Add(1)
			}
		})
	}
	wg.Wait()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	if ctx.Err() != nil {
		logger.Print("fakeagent: stopped")
		return nil
	}
	if n := failedMachines.Load(); n > 0 {
		return fmt.Errorf("%d of %d machines saw failed requests (see the log above)", n, len(cfg.ids))
	}
	return nil
}

// parseConfig parses and validates the flags. Help goes to stdout.
func parseConfig(args []string, stdout io.Writer) (*config, error) {
	c := &config{}
	var rawURL, prefix, ids, fail, tags string
	var machines int
	fs := flag.NewFlagSet("fakeagent", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by main
	fs.StringVar(&rawURL, "url", "", "control plane `URL`, http://host:port or https://host:port (required)")
	fs.IntVar(&machines, "machines", 10, "number of simulated machines, named <prefix>-01, <prefix>-02, …")
	fs.StringVar(&prefix, "prefix", "web", "machine id prefix for --machines")
	fs.StringVar(&ids, "ids", "", "comma-separated explicit machine `ids` (overrides --machines and --prefix)")
	fs.StringVar(&fail, "fail", "", "comma-separated machine `ids` whose nginx.service health check fails on any deployed generation")
	fs.StringVar(&tags, "tags", "demo", "comma-separated tags every machine reports (empty: none)")
	fs.DurationVar(&c.poll, "poll-interval", 5*time.Second, "desired-generation poll interval without poll_hint (real agent: 60s)")
	fs.DurationVar(&c.health, "health-interval", 10*time.Second, "health-check report interval (real agent: 60s)")
	fs.DurationVar(&c.retry, "retry-interval", 5*time.Second, "delay after a failed poll or health-check report (real agent: 30s)")
	fs.DurationVar(&c.apply, "apply-delay", time.Second, "simulated switch time between \"applying\" and \"deployed\"")
	fs.StringVar(&c.caFile, "ca", "", "PEM `file` of the CA that signed the server certificate (https only; default: system roots)")
	fs.StringVar(&c.certDir, "cert-dir", "", "mTLS: `dir` holding <id>.pem and <id>-key.pem per machine; each certificate's CN must be its machine id")
	fs.BoolVar(&c.once, "once", false, "register, poll once (applying if needed), then exit: 0 if every request succeeded, else 1")
	usage := func() { // not fs.Usage: flag would also call that on every parse error
		fs.SetOutput(stdout)
		fmt.Fprint(stdout, `fakeagent simulates nixfleet v0.1 agents against a control plane.

Usage: go run ./tools/fakeagent --url URL [flags]

Examples:
  go run ./tools/fakeagent --url http://127.0.0.1:8080 --machines 20 --fail web-07
  go run ./tools/fakeagent --url http://127.0.0.1:8080 --ids db-01,db-02 --tags db,eu-west --once
  go run ./tools/fakeagent --url https://cp.example.org:8443 --ca ca.pem --cert-dir certs/ --prefix web --machines 3

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return nil, err
		}
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}

	if rawURL == "" {
		return nil, usagef("--url is required, e.g. --url http://127.0.0.1:8080")
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usagef("--url %q: want http://host:port or https://host:port", rawURL)
	}
	c.base = strings.TrimRight(u.String(), "/")
	if u.Scheme != "https" && (c.caFile != "" || c.certDir != "") {
		return nil, usagef("--ca and --cert-dir need an https:// --url")
	}

	if ids != "" {
		c.ids = splitList(ids)
	} else {
		if machines < 1 || machines > 10000 {
			return nil, usagef("--machines %d: want 1 to 10000", machines)
		}
		width := max(2, len(strconv.Itoa(machines)))
		for i := 1; i <= machines; i++ {
			c.ids = append(c.ids, fmt.Sprintf("%s-%0*d", prefix, width, i))
		}
	}
	if len(c.ids) == 0 {
		return nil, usagef("--ids: no machine ids")
	}
	known := map[string]bool{}
	for _, id := range c.ids {
		if !machineIDRE.MatchString(id) || id == "." || id == ".." {
			return nil, usagef("invalid machine id %q: want 1-128 characters of A-Z a-z 0-9 . _ -", id)
		}
		if known[id] {
			return nil, usagef("machine id %q given twice", id)
		}
		known[id] = true
	}
	c.fail = map[string]bool{}
	for _, id := range splitList(fail) {
		if !known[id] {
			return nil, usagef("--fail %s: not one of the simulated machines (%s .. %s)", id, c.ids[0], c.ids[len(c.ids)-1])
		}
		c.fail[id] = true
	}
	c.tags = splitList(tags) // [] rather than null: the v0.1 agent always sends a list
	for _, t := range c.tags {
		if !tagRE.MatchString(t) {
			return nil, usagef("--tags: invalid tag %q: want 1-64 characters of A-Z a-z 0-9 . _ : -", t)
		}
	}
	if c.poll <= 0 || c.health <= 0 || c.retry <= 0 || c.apply < 0 {
		return nil, usagef("--poll-interval, --health-interval and --retry-interval must be positive, --apply-delay not negative")
	}
	return c, nil
}

// splitList splits a comma-separated flag value, dropping blanks. It never
// returns nil.
func splitList(s string) []string {
	out := []string{}
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// newClients returns the HTTP client of every machine: one shared client,
// or with --cert-dir one per machine presenting that machine's certificate.
// It fails if the CA file or a certificate or key cannot be loaded, or if a
// certificate's CN is not its machine id.
func newClients(c *config) (map[string]*http.Client, error) {
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca: %w", err)
		}
		base.RootCAs = x509.NewCertPool()
		if !base.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in the file", c.caFile)
		}
	}
	newClient := func(tc *tls.Config) *http.Client {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		tr.MaxIdleConns = 0 // no overall cap: one keep-alive connection per machine
		tr.MaxIdleConnsPerHost = len(c.ids)
		return &http.Client{Transport: tr, Timeout: requestTimeout}
	}
	clients := make(map[string]*http.Client, len(c.ids))
	if c.certDir == "" {
		shared := newClient(base)
		for _, id := range c.ids {
			clients[id] = shared
		}
		return clients, nil
	}
	for _, id := range c.ids {
		certFile, keyFile := filepath.Join(c.certDir, id+".pem"), filepath.Join(c.certDir, id+"-key.pem")
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s with key %s: %w", certFile, keyFile, err)
		}
		if cn := cert.Leaf.Subject.CommonName; cn != id {
			return nil, fmt.Errorf("%s: certificate CN is %q, want the machine id %q", certFile, cn, id)
		}
		tc := base.Clone()
		tc.Certificates = []tls.Certificate{cert}
		clients[id] = newClient(tc)
	}
	return clients, nil
}

// initialGeneration is the deterministic store path a machine starts on.
func initialGeneration(id string) string {
	sum := sha256.Sum256([]byte("fakeagent/" + id))
	var h [32]byte
	for i := range h {
		h[i] = nixBase32[sum[i]%32]
	}
	return "/nix/store/" + string(h[:]) + "-nixos-system-" + id + "-initial"
}

// Report and its parts are the v0.1 agent's report (SPEC §5.1).
type report struct {
	MachineID         string   `json:"machine_id"`
	CurrentGeneration string   `json:"current_generation"`
	Success           bool     `json:"success"`
	Message           string   `json:"message"`
	Timestamp         string   `json:"timestamp"`
	Tags              []string `json:"tags"`
	Health            *health  `json:"health,omitempty"`
	AgentVersion      string   `json:"agent_version"`
	UptimeSeconds     int64    `json:"uptime_seconds"`
}

type health struct {
	Results   []checkResult `json:"results"`
	AllPassed bool          `json:"all_passed"`
	Timestamp string        `json:"timestamp"`
}

type checkResult struct {
	Status     string `json:"status"` // "pass" or "fail"
	CheckName  string `json:"check_name"`
	DurationMs int64  `json:"duration_ms"`
	Message    string `json:"message,omitempty"` // only on "fail"
}

// agent is one simulated machine. Its fields are used by its goroutine only.
type agent struct {
	cfg       *config
	id        string
	client    *http.Client
	log       *log.Logger
	start     time.Time // when fakeagent started, for uptime_seconds
	gen       string    // the running generation
	lastState string    // the last logged health outcome and generation
	failed    bool      // a request failed (the --once exit status)
}

// run is the machine's life: a health-check, then polls and health-checks on
// their own timers until ctx ends; with --once one of each. It reports
// whether any request failed.
func (a *agent) run(ctx context.Context) bool {
	nextHealth := a.healthCheck(ctx)
	if a.cfg.once {
		a.poll(ctx)
		return a.failed
	}
	healthT, pollT := time.NewTimer(nextHealth), time.NewTimer(0)
	defer healthT.Stop()
	defer pollT.Stop()
	for {
		select {
		case <-ctx.Done():
			return a.failed
		case <-healthT.C:
			healthT.Reset(a.healthCheck(ctx))
		case <-pollT.C:
			pollT.Reset(a.poll(ctx))
		}
	}
}

// healthCheck sends a "health-check" report and returns when to send the
// next: --health-interval, or --retry-interval if this one failed (so that
// machines register soon after a control plane comes up).
func (a *agent) healthCheck(ctx context.Context) time.Duration {
	nginx := checkResult{Status: "pass", CheckName: "nginx.service", DurationMs: 9}
	outcome := "health ok"
	if a.cfg.fail[a.id] && a.gen != initialGeneration(a.id) {
		nginx.Status, nginx.Message = "fail", "unit is failed"
		outcome = "health check failed: nginx.service"
	}
	h := &health{
		Results:   []checkResult{{Status: "pass", CheckName: "sshd.service", DurationMs: 3}, nginx},
		AllPassed: nginx.Status == "pass",
		Timestamp: timestamp(),
	}
	if !a.send(ctx, h.AllPassed, "health-check", h) {
		return a.cfg.retry
	}
	switch state := outcome + " " + a.gen; {
	case a.lastState == "":
		a.log.Printf("%s registered (%s)", a.id, outcome)
		a.lastState = state
	case state != a.lastState:
		a.log.Printf("%s %s", a.id, outcome)
		a.lastState = state
	}
	return a.cfg.health
}

// poll asks for the desired generation, acts on it, and returns when to poll
// next (SPEC §6.1, §6.7).
func (a *agent) poll(ctx context.Context) time.Duration {
	status, body, err := a.do(ctx, http.MethodGet, "/desired-generation", nil)
	retry := func(why string) time.Duration {
		a.problem(ctx, "poll: %s (retrying in %s)", why, a.cfg.retry)
		return a.cfg.retry
	}
	switch {
	case err != nil:
		return retry(err.Error())
	case status == http.StatusNotFound: // nothing to do
		return a.cfg.poll
	case status != http.StatusOK:
		return retry(describe(status, body))
	}
	var d struct {
		Hash     string `json:"hash"`
		PollHint *int   `json:"poll_hint"`
	}
	if err := json.Unmarshal(body, &d); err != nil || d.Hash == "" {
		return retry("unparsable desired generation")
	}
	next := a.cfg.poll
	if d.PollHint != nil && *d.PollHint > 0 {
		next = time.Duration(*d.PollHint) * time.Second
	}
	if d.Hash == a.gen {
		a.send(ctx, true, "up-to-date", nil)
		return next
	}
	a.log.Printf("%s applying %s", a.id, d.Hash)
	a.send(ctx, true, "applying", nil)
	select {
	case <-ctx.Done():
		return next
	case <-time.After(a.cfg.apply):
	}
	a.gen = d.Hash
	a.log.Printf("%s deployed %s", a.id, d.Hash)
	a.send(ctx, true, "deployed", nil)
	a.healthCheck(ctx) // at once, so that the rollout sees the machine's health
	return next
}

// send posts one report on the running generation and reports whether the
// control plane accepted it. Failures are logged.
func (a *agent) send(ctx context.Context, success bool, message string, h *health) bool {
	body, err := json.Marshal(report{
		MachineID:         a.id,
		CurrentGeneration: a.gen,
		Success:           success,
		Message:           message,
		Timestamp:         timestamp(),
		Tags:              a.cfg.tags,
		Health:            h,
		AgentVersion:      agentVersion,
		UptimeSeconds:     int64(time.Since(a.start) / time.Second),
	})
	if err != nil {
		panic(err) // strings, bools and integers always encode
	}
	status, resp, err := a.do(ctx, http.MethodPost, "/report", body)
	switch {
	case err != nil:
		a.problem(ctx, "report %s: %v", message, err)
	case status/100 != 2:
		a.problem(ctx, "report %s: %s", message, describe(status, resp))
	default:
		return true
	}
	return false
}

// problem logs a failed request, unless fakeagent is shutting down.
func (a *agent) problem(ctx context.Context, format string, args ...any) {
	if ctx.Err() != nil {
		return
	}
	a.failed = true
	a.log.Printf("%s %s", a.id, fmt.Sprintf(format, args...))
}

// do sends one request to the machine's agent route (the id goes into the
// path raw, as the v0.1 agent does; ids are validated at startup) and returns
// the status and at most 64 KiB of the response body.
func (a *agent) do(ctx context.Context, method, route string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, a.cfg.base+"/api/v1/machines/"+a.id+route, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // drop the repeated method and URL
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b, err
}

// describe renders an error response as "500 internal error", using the
// control plane's {"error": …} message when there is one.
func describe(status int, body []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		e.Error = strings.ToLower(http.StatusText(status))
	}
	return fmt.Sprintf("%d %s", status, e.Error)
}

// timestamp is now in RFC 3339 with milliseconds, as the agent sends it.
func timestamp() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00") }
