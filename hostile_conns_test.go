package main

// Hostile connections: the production server's limits, slow clients cut off
// by its timeouts while others are served (TestSlowClients), and 10,000 idle
// connections that exhaust neither descriptors nor memory
// (TestIdleConnections10k).

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestNewHTTPServerLimits checks that the production server construction
// carries the limits of §2.3 and offers only HTTP/1.1 (§2.2).
func TestNewHTTPServerLimits(t *testing.T) {
	srv := newHTTPServer(http.NotFoundHandler(), newLogger(io.Discard, "error"))
	if srv.ReadHeaderTimeout != 10*time.Second || srv.ReadTimeout != 30*time.Second || srv.WriteTimeout != 60*time.Second ||
		srv.IdleTimeout != 120*time.Second || srv.MaxHeaderBytes != 64<<10 {
		t.Fatalf("limits: header %v, read %v, write %v, idle %v, max header bytes %d; want 10s, 30s, 60s, 120s, 65536",
			srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
	if srv.TLSNextProto == nil || len(srv.TLSNextProto) != 0 {
		t.Fatalf("TLSNextProto %v: want a non-nil empty map (no HTTP/2)", srv.TLSNextProto)
	}
}

// TestSlowClients serves the real handler with newHTTPServer, as serve does,
// with ReadHeaderTimeout and ReadTimeout shortened to 300 ms and 1 s so that
// the test is quick. Clients that trickle their headers or bodies, or send
// nothing, are cut off by those timeouts while other clients are served.
func TestSlowClients(t *testing.T) {
	const headerTimeout, readTimeout = 300 * time.Millisecond, 1 * time.Second
	ts := newTestServer(t, testServerOptions{})
	logs := &syncBuffer{}
	srv := newHTTPServer(ts.srv.handler(), newLogger(logs, "debug"))
	srv.ReadHeaderTimeout, srv.ReadTimeout = headerTimeout, readTimeout
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()

	// trickle opens a connection, writes head at once and then tail one byte
	// every 50 ms until the server cuts the connection off. It returns how
	// long the connection lived and the status of any response (0 if the
	// server just closed it).
	trickle := func(head, tail string) (time.Duration, int, error) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, 0, err
		}
		defer conn.Close()
		start := time.Now()
		conn.SetReadDeadline(start.Add(readTimeout + 5*time.Second)) // beyond this, the server failed to cut us off
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			if _, err := io.WriteString(conn, head); err != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if len(tail) == 0 {
					continue
				}
				if _, err := conn.Write([]byte{tail[i%len(tail)]}); err != nil {
					return
				}
			}
		}()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		lived := time.Since(start)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			t.Logf("%s: answered %d %q", strings.SplitN(head+tail, "\r\n", 2)[0], resp.StatusCode, bytes.TrimSpace(b))
			return lived, resp.StatusCode, nil
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return lived, 0, fmt.Errorf("not cut off after %v", lived)
		}
		return lived, 0, nil // closed (EOF or reset) without a response
	}

	// Other clients are served while the slow ones trickle.
	var served, failed atomic.Int64
	done := make(chan struct{})
	var others sync.WaitGroup
	others.Add(1)
	go func() {
		defer others.Done()
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			resp, err := c.Get("http://" + addr + "/health") // a new connection each time
			if err != nil {
				failed.Add(1)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				served.Add(1)
			} else {
				failed.Add(1)
			}
		}
	}()

	body := `{"name":"` + strings.Repeat("a", 50) + `"}`
	cases := []struct {
		name       string
		head, tail string
		bound      time.Duration // the connection must end within this
		statuses   []int         // acceptable responses besides a plain close
	}{
		{"headers trickled", "GET /health HTTP/1.1\r\nHost: x\r\n", "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", headerTimeout + 2*time.Second, []int{408, 400}},
		{"request line trickled", "", "GET /health HTTP/1.1\r\nHost: x\r\n", headerTimeout + 2*time.Second, []int{408, 400}},
		{"nothing sent", "", "", headerTimeout + 2*time.Second, []int{408, 400}},
		{"body trickled", "POST /api/v1/keys/bootstrap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n", body, readTimeout + 2*time.Second, []int{408, 400}},
		{"chunked body trickled", "POST /api/v1/keys/bootstrap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
			"1\r\n{\r\n", readTimeout + 2*time.Second, []int{408, 400}},
	}
	var wg sync.WaitGroup
	results := make([]string, len(cases))
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lived, status, err := trickle(c.head, c.tail)
			switch {
			case err != nil:
				results[i] = fmt.Sprintf("%s: %v", c.name, err)
			case lived > c.bound:
				results[i] = fmt.Sprintf("%s: cut off only after %v, want within %v", c.name, lived, c.bound)
			case status != 0 && !slices.Contains(c.statuses, status):
				results[i] = fmt.Sprintf("%s: status %d", c.name, status)
			default:
				t.Logf("%s: cut off after %v (status %d; 0 = closed without a response)", c.name, lived.Round(time.Millisecond), status)
			}
		}()
	}
	wg.Wait()
	close(done)
	others.Wait()
	for _, r := range results {
		if r != "" {
			t.Error(r)
		}
	}
	t.Logf("meanwhile %d other requests were served, %d failed", served.Load(), failed.Load())
	if served.Load() < 5 || failed.Load() != 0 {
		t.Errorf("other clients: %d served, %d failed; want them all served", served.Load(), failed.Load())
	}
	// Nothing reached the database: the key table is still empty.
	var n int
	if err := ts.st.read(t.Context(), func(d dbq) (err error) { n, err = d.countKeys(); return err }); err != nil || n != 0 {
		t.Errorf("keys after the slow bootstraps: %d (%v), want 0", n, err)
	}
}

// procFDs counts the open descriptors of a process.
func procFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// procStatusKB returns fields (such as VmRSS) of /proc/<pid>/status in KiB.
func procStatusKB(t *testing.T, pid int, fields ...string) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		for _, f := range fields {
			if rest, ok := strings.CutPrefix(l, f+":"); ok {
				v, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
				out[f] = v
			}
		}
	}
	return out
}

// procMaxOpenFiles returns the soft and hard "Max open files" of a process.
func procMaxOpenFiles(t *testing.T, pid int) (soft, hard int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Max open files"); ok {
			f := strings.Fields(rest)
			soft, _ = strconv.Atoi(f[0])
			hard, _ = strconv.Atoi(f[1])
		}
	}
	return soft, hard
}

// TestIdleConnections10k opens 10,000 concurrent idle connections to the
// built binary, twice: connections that never send anything, and keep-alive
// connections idle after one request. While they are open a normal request
// is served quickly, the server stays below its descriptor limit and its
// memory stays bounded; once they are closed its descriptor count falls back.
func TestIdleConnections10k(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 connections")
	}
	const conns = 10_000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < conns+500 {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below %d", lim.Max, conns+500)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
	// At --max-connections (default 10,000) a new connection waits for one to
	// close; the cap is raised here so that the requests made while the idle
	// connections are open are served (the cap itself: TestReviewMaxConnections).
	bs := startBinary(t, "--db-path", filepath.Join(t.TempDir(), "state.db"), "--log-level", "debug",
		"--max-connections", strconv.Itoa(conns+100))
	pid := bs.cmd.Process.Pid
	addr := strings.TrimPrefix(bs.url, "http://")
	soft, hard := procMaxOpenFiles(t, pid)
	base := procFDs(t, pid)
	mem := procStatusKB(t, pid, "VmRSS")
	t.Logf("server pid %d: max open files %d (hard %d), %d fds and VmRSS %d KiB before", pid, soft, hard, base, mem["VmRSS"])
	if soft < conns+100 {
		t.Fatalf("server's max open files %d: it cannot hold %d connections", soft, conns)
	}

	for _, phase := range []struct {
		name      string
		keepAlive bool // send one request first, then stay idle
	}{{"silent", false}, {"keep-alive", true}} {
		t.Run(phase.name, func(t *testing.T) {
			start := time.Now()
			open := make([]net.Conn, conns)
			var next atomic.Int64
			errs := make(chan error, 64)
			var wg sync.WaitGroup
			for w := 0; w < 64; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1)) - 1
						if i >= conns {
							return
						}
						c, err := net.DialTimeout("tcp", addr, 10*time.Second)
						if err != nil {
							errs <- fmt.Errorf("connection %d: %w", i, err)
							return
						}
						open[i] = c
						if !phase.keepAlive {
							continue
						}
						c.SetDeadline(time.Now().Add(10 * time.Second))
						if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
							errs <- err
							return
						}
						resp, err := http.ReadResponse(bufio.NewReaderSize(c, 256), nil)
						if err != nil {
							errs <- fmt.Errorf("connection %d: %w", i, err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 || resp.Close {
							errs <- fmt.Errorf("connection %d: status %d, close %v", i, resp.StatusCode, resp.Close)
							return
						}
						c.SetDeadline(time.Time{})
					}
				}()
			}
			wg.Wait()
			close(errs)
			defer func() {
				for _, c := range open {
					if c != nil {
						c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up across runs
						c.Close()
					}
				}
			}()
			for err := range errs {
				t.Fatal(err)
			}
			opened := time.Since(start)

			// The server has accepted them all (checked below).
			var fds int
			poll(10*time.Second, func() bool { fds = procFDs(t, pid); return fds >= base+conns })
			// A normal request is still served quickly.
			c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			reqStart := time.Now()
			expect(t, do(t, c, "GET", bs.url+"/health", "", nil), 200, "")
			expect(t, do(t, c, "POST", bs.url+"/api/v1/keys/bootstrap", "", `{"name":"admin-`+phase.name+`"}`), map[bool]int{false: 200, true: 409}[phase.keepAlive], "")
			latency := time.Since(reqStart)
			m := procStatusKB(t, pid, "VmRSS", "VmHWM")
			t.Logf("%d %s connections opened in %v; server: %d fds (%d before, limit %d), VmRSS %d KiB, VmHWM %d KiB; two requests meanwhile took %v",
				conns, phase.name, opened.Round(time.Millisecond), fds, base, soft, m["VmRSS"], m["VmHWM"], latency.Round(time.Millisecond))
			if fds < base+conns {
				t.Errorf("server holds %d fds, want at least %d: not every connection was accepted", fds, base+conns)
			}
			if fds >= soft-10 {
				t.Errorf("server at its descriptor limit: %d of %d", fds, soft)
			}
			if m["VmRSS"] > 512<<10 {
				t.Errorf("VmRSS %d KiB with %d idle connections, want under 512 MiB", m["VmRSS"], conns)
			}
			if strings.Contains(bs.logs.String(), "Accept error") {
				t.Errorf("the server logged accept errors:\n%s", lastLines(bs.logs.String(), 5))
			}

			for i, c := range open {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				open[i] = nil
			}
			poll(10*time.Second, func() bool { fds = procFDs(t, pid); return fds <= base+5 })
			m = procStatusKB(t, pid, "VmRSS")
			t.Logf("after closing: %d fds, VmRSS %d KiB", fds, m["VmRSS"])
			if fds > base+5 {
				t.Errorf("server still holds %d fds after the connections closed (%d before)", fds, base)
			}
		})
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
