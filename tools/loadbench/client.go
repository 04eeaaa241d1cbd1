package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Transport modes of a server under test.
const (
	modePlain = "plain" // HTTP, agent routes unauthenticated
	modeMTLS  = "mtls"  // HTTPS with client certificates; CN = machine id
)

// benchStorePath is the desired generation of the machines polled in the
// throughput scenarios. The ceiling answers exactly the daemon's body for it.
const benchStorePath = "/nix/store/6cp643dzvlxxpkgbg5kzmwj47sam9zs2-nixos-system-loadbench-25.05"

// operatorCN is the CN of the certificate used for admin requests in mTLS
// mode. It must not be a machine id: machine certificates cannot bootstrap.
const operatorCN = "loadbench-operator"

// nixBase32 is the alphabet of Nix store path hashes.
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

// storePath returns a valid, deterministic store path for a machine's system
// generation; release distinguishes generations of the same machine.
func storePath(release, machine string) string {
	sum := sha256.Sum256([]byte(release + "/" + machine))
	var h [32]byte
	for i := range h {
		h[i] = nixBase32[sum[i]%32]
	}
	return "/nix/store/" + string(h[:]) + "-nixos-system-" + machine + "-" + release
}

// desiredBody is the daemon's answer to a desired-generation poll for a
// machine pinned to hash by notify-deploy and outside any rollout: no
// cache_url, no poll_hint, and the trailing newline of its JSON encoder.
func desiredBody(hash string) []byte {
	b, err := json.Marshal(struct {
		Hash     string  `json:"hash"`
		CacheURL *string `json:"cache_url"`
		PollHint *int    `json:"poll_hint"`
	}{Hash: hash})
	if err != nil {
		panic(err) // a struct of strings always encodes
	}
	return append(b, '\n')
}

// agentReport is the report of the v0.1 agent (SPEC §5.1).
type agentReport struct {
	MachineID         string       `json:"machine_id"`
	CurrentGeneration string       `json:"current_generation"`
	Success           bool         `json:"success"`
	Message           string       `json:"message"`
	Timestamp         string       `json:"timestamp"`
	Tags              []string     `json:"tags,omitempty"`
	Health            *agentHealth `json:"health,omitempty"`
	AgentVersion      string       `json:"agent_version"`
	UptimeSeconds     int64        `json:"uptime_seconds"`
}

type agentHealth struct {
	Results   []agentCheck `json:"results"`
	AllPassed bool         `json:"all_passed"`
	Timestamp string       `json:"timestamp"`
}

type agentCheck struct {
	Status     string `json:"status"`
	CheckName  string `json:"check_name"`
	DurationMs int64  `json:"duration_ms"`
}

// healthCheckReport is the periodic "health-check" report of a healthy
// machine running gen: three passing checks, the only report kind that
// carries health (SPEC §6.1). About 500 bytes.
func healthCheckReport(machine, gen string, tags []string, now time.Time) []byte {
	ts := now.UTC().Format("2006-01-02T15:04:05.000Z")
	b, err := json.Marshal(agentReport{
		MachineID:         machine,
		CurrentGeneration: gen,
		Success:           true,
		Message:           "health-check",
		Timestamp:         ts,
		Tags:              tags,
		Health: &agentHealth{
			Results: []agentCheck{
				{Status: "pass", CheckName: "sshd.service", DurationMs: 4},
				{Status: "pass", CheckName: "nginx.service", DurationMs: 12},
				{Status: "pass", CheckName: "http://localhost/healthz", DurationMs: 31},
			},
			AllPassed: true,
			Timestamp: ts,
		},
		AgentVersion:  "0.1.0",
		UptimeSeconds: 86400,
	})
	if err != nil {
		panic(err)
	}
	return b
}

// upToDateReport is what the v0.1 agent sends after a poll whose hash it
// already runs.
func upToDateReport(machine, gen string, now time.Time) []byte {
	b, err := json.Marshal(agentReport{
		MachineID:         machine,
		CurrentGeneration: gen,
		Success:           true,
		Message:           "up-to-date",
		Timestamp:         now.UTC().Format("2006-01-02T15:04:05.000Z"),
		AgentVersion:      "0.1.0",
		UptimeSeconds:     86400,
	})
	if err != nil {
		panic(err)
	}
	return b
}

// newTransport returns a keep-alive HTTP/1.1 transport. tlsCfg is nil for
// plain HTTP. maxIdle bounds the idle connections kept per server.
func newTransport(tlsCfg *tls.Config, maxIdle int) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}

// agentClients hands out HTTP clients for simulated agents of one server.
// In mTLS mode every machine gets its own client, with its own keep-alive
// connection and a certificate whose CN is the machine id. In plain mode all
// machines share one pool of keep-alive connections, unless perMachine asks
// for the mTLS topology (one connection per machine) to compare like with
// like.
type agentClients struct {
	base       string // scheme://host:port
	pki        *pki   // nil in plain mode
	perMachine bool
	maxIdle    int // idle connections of the shared pool

	mu         sync.Mutex
	shared     *http.Client
	byID       map[string]*http.Client
	transports []*http.Transport
}

// agentTimeout is the v0.1 agent's HTTP timeout (SPEC §6.1).
const agentTimeout = 30 * time.Second

func newAgentClients(base string, p *pki, perMachine bool, maxIdle int) *agentClients {
	return &agentClients{base: base, pki: p, perMachine: perMachine || p != nil, maxIdle: maxIdle,
		byID: map[string]*http.Client{}}
}

// client returns the client that speaks for machine id.
func (a *agentClients) client(id string) (*http.Client, error) {
	a.mu.Lock()
	if !a.perMachine {
		defer a.mu.Unlock()
		if a.shared == nil {
			t := newTransport(nil, a.maxIdle)
			a.transports = append(a.transports, t)
			a.shared = &http.Client{Transport: t, Timeout: agentTimeout}
		}
		return a.shared, nil
	}
	c, ok := a.byID[id]
	a.mu.Unlock()
	if ok {
		return c, nil
	}
	var cfg *tls.Config
	if a.pki != nil {
		var err error
		if cfg, err = a.pki.clientTLS(id); err != nil {
			return nil, err
		}
	}
	t := newTransport(cfg, 1)
	c = &http.Client{Transport: t, Timeout: agentTimeout}
	a.mu.Lock()
	defer a.mu.Unlock()
	if prev, ok := a.byID[id]; ok {
		return prev, nil
	}
	a.byID[id] = c
	a.transports = append(a.transports, t)
	return c, nil
}

// close closes every idle connection.
func (a *agentClients) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.transports {
		t.CloseIdleConnections()
	}
}

// call sends one request and drains the response. It returns the status and,
// when keep is set, the response body.
func call(ctx context.Context, c *http.Client, method, url string, body []byte, keep bool) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var out []byte
	if keep {
		out, err = io.ReadAll(resp.Body)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, out, nil
}

// admin is an operator's client: an API key and, in mTLS mode, the operator
// certificate.
type admin struct {
	base string
	c    *http.Client
	key  string
}

func newAdmin(base string, p *pki) (*admin, error) {
	var cfg *tls.Config
	if p != nil {
		var err error
		if cfg, err = p.clientTLS(operatorCN); err != nil {
			return nil, err
		}
	}
	// Long timeout: listing 100,000 machines or creating a release of
	// 10,000 hosts is one large request.
	return &admin{base: base, c: &http.Client{Transport: newTransport(cfg, 16), Timeout: 5 * time.Minute}}, nil
}

// bootstrap mints the first admin key (the key table must be empty).
func (a *admin) bootstrap(ctx context.Context) error {
	var out struct {
		Key string `json:"key"`
	}
	if err := a.json(ctx, "POST", "/api/v1/keys/bootstrap", map[string]string{"name": "loadbench"}, &out); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	a.key = out.Key
	return nil
}

// json sends in (unless nil) as JSON and decodes a 2xx answer into out
// (unless nil). A non-2xx answer is an error that quotes the body.
func (a *admin) json(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.key != "" {
		req.Header.Set("Authorization", "Bearer "+a.key)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: status %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// getRaw sends an authenticated GET and returns the body.
func (a *admin) getRaw(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", a.base+path, nil)
	if err != nil {
		return nil, err
	}
	if a.key != "" {
		req.Header.Set("Authorization", "Bearer "+a.key)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d: %.200s", path, resp.StatusCode, b)
	}
	return b, nil
}

func (a *admin) close() {
	if t, ok := a.c.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}
