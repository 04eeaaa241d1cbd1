package main

// The status page in a real headless Chromium, driven over the W3C
// WebDriver protocol (JSON over HTTP to chromedriver, with net/http): the
// page loads against a running daemon, takes a key, shows the rollout's
// batch progress and a failing machine's reason, and follows changes of
// the daemon's state without a reload.
//
// It needs Debian's chromium and chromium-driver (.ci/run installs them);
// without them it is skipped. `go test -run TestStatusPageInChromium .
// -ui-screenshot $PWD/docs/status-page.png` also writes the README's
// screenshot (the path is relative to the package directory otherwise).

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

var uiScreenshot = flag.String("ui-screenshot", "", "TestStatusPageInChromium writes a screenshot of the page to this PNG file")

// webDriver is a session of chromedriver.
type webDriver struct {
	t       testing.TB
	base    string // http://127.0.0.1:port/session/<id>
	c       *http.Client
	session string
}

// findBrowser returns the paths of chromium and chromedriver, or skips.
func findBrowser(t *testing.T) (browser, driver string) {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	driver, err := exec.LookPath("chromedriver")
	if browser == "" || err != nil {
		t.Skip("chromium and chromedriver not found (Debian: apt-get install chromium chromium-driver); the browser test is skipped")
	}
	return browser, driver
}

// startWebDriver starts chromedriver on a free loopback port and opens a
// headless browser session; both end at cleanup.
func startWebDriver(t *testing.T, browser, driver string) *webDriver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	logs := &syncBuffer{}
	cmd := exec.Command(driver, fmt.Sprintf("--port=%d", port))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	root := fmt.Sprintf("http://127.0.0.1:%d", port)
	c := &http.Client{Timeout: 30 * time.Second}
	waitFor(t, 20*time.Second, "chromedriver to be ready", func() bool {
		resp, err := c.Get(root + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct{ Value struct{ Ready bool } }
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Value.Ready
	})
	wd := &webDriver{t: t, base: root, c: c}
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{
			"binary": browser,
			"args": []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
				"--no-first-run", "--user-data-dir=" + t.TempDir(), "--window-size=1200,1000", "--hide-scrollbars"},
		},
	}}}
	var sess struct{ SessionID string }
	if err := json.Unmarshal(wd.cmd("POST", "/session", caps), &sess); err != nil || sess.SessionID == "" {
		t.Fatalf("new session: %v\nchromedriver log:\n%s", err, logs.String())
	}
	wd.session = sess.SessionID
	wd.base = root + "/session/" + sess.SessionID
	t.Cleanup(func() { wd.request("DELETE", "", nil) })
	return wd
}

// request sends one WebDriver command and returns its "value" and error.
func (w *webDriver) request(method, path string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, w.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct{ Value json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, out.Value)
	}
	return out.Value, nil
}

func (w *webDriver) cmd(method, path string, body any) json.RawMessage {
	w.t.Helper()
	v, err := w.request(method, path, body)
	if err != nil {
		w.t.Fatal(err)
	}
	return v
}

// element returns the WebDriver id of the element matching a CSS selector.
func (w *webDriver) element(sel string) string {
	w.t.Helper()
	var el map[string]string
	json.Unmarshal(w.cmd("POST", "/element", map[string]string{"using": "css selector", "value": sel}), &el)
	return el["element-6066-11e4-a52e-4f735466cecf"]
}

// script runs JavaScript in the page and decodes its result into out.
func (w *webDriver) script(out any, js string, args ...any) {
	w.t.Helper()
	if args == nil {
		args = []any{}
	}
	if err := json.Unmarshal(w.cmd("POST", "/execute/sync", map[string]any{"script": js, "args": args}), out); err != nil {
		w.t.Fatal(err)
	}
}

// text returns the text of the first element matching sel, "" if none.
func (w *webDriver) text(sel string) string {
	w.t.Helper()
	var s *string
	w.script(&s, "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", sel)
	if s == nil {
		return ""
	}
	return *s
}

// waitText waits until the element matching sel contains every one of want.
func (w *webDriver) waitText(sel string, want ...string) {
	w.t.Helper()
	var got string
	ok := poll(20*time.Second, func() bool {
		got = w.text(sel)
		for _, s := range want {
			if !strings.Contains(got, s) {
				return false
			}
		}
		return true
	})
	if !ok {
		w.t.Fatalf("%s: text %q, want %q\npage:\n%s", sel, got, want, w.text("body"))
	}
}

// TestStatusPageInChromium is the browser test of issue 16.
func TestStatusPageInChromium(t *testing.T) {
	browser, driver := findBrowser(t)
	a := rtNewAPI(t)
	hosts := []string{"web-01", "web-02", "web-03", "web-04", "web-05", "web-06"}
	rtRegister(t, a.c, a.url, a.A, hosts...)
	for _, h := range hosts {
		rtReport(t, a.c, a.url, reportBody(h, rtOldPath(h), true, "up-to-date"))
	}
	rtReport(t, a.c, a.url, reportBody("db-01", storePath('e', "nixos-system-db-01"), false, "activation failed"))
	rel := rtRelease(t, a.c, a.url, a.D, nil, rtRelPath, hosts...)
	body := rtHostsRollout(rel, "staged", hosts...)
	body["batch_sizes"] = []string{"1", "100%"}
	rid := rtCreate(t, a.c, a.url, a.D, body).RolloutID
	d := a.waitBatch(t, rid, 0, "deploying", "waiting_health")

	wd := startWebDriver(t, browser, driver)
	wd.cmd("POST", "/url", map[string]string{"url": a.url + "/ui/"})
	wd.cmd("POST", "/element/"+wd.element("#key")+"/value", map[string]string{"text": a.R})
	wd.cmd("POST", "/element/"+wd.element("#connect")+"/click", map[string]any{})

	// The rollout's first batch is under way and the failing machine is listed with its reason.
	card := `[data-rollout="` + rid + `"]`
	wd.waitText(card+` [data-batch="0"]`, "0/1 healthy")
	wd.waitText(card+` [data-batch="1"]`, "pending", "0/5 healthy")
	wd.waitText(`#attention [data-machine="db-01"]`, "last report failed")
	wd.waitText(`#by-lifecycle [data-key="active"]`, "7") // db-01 registered itself with its report
	wd.waitText(`#conn`, "live")
	var marker bool
	wd.script(&marker, "window.nixfleetTestMarker = true; return true;")

	// The first batch's machine becomes healthy: batch 0 succeeds, batch 1 deploys.
	m0 := d.Batches[0].MachineIDs[0]
	rtReport(t, a.c, a.url, reportBody(m0, rtRelPath(m0), true, "deployed"))
	rtReport(t, a.c, a.url, healthBody(m0, rtRelPath(m0)))
	d = a.waitBatch(t, rid, 1, "deploying", "waiting_health")
	wd.waitText(card+` [data-batch="0"]`, "succeeded", "1/1 healthy")
	wd.waitText(card+` [data-batch="1"]`, "0/5 healthy")

	// Two machines of batch 1 become healthy and one fails its health check:
	// the batch fails (threshold 0) and the rollout pauses.
	for _, m := range d.Batches[1].MachineIDs[1:3] {
		rtReport(t, a.c, a.url, reportBody(m, rtRelPath(m), true, "deployed"))
		rtReport(t, a.c, a.url, healthBody(m, rtRelPath(m)))
	}
	bad := d.Batches[1].MachineIDs[0]
	rtReport(t, a.c, a.url, reportBody(bad, rtRelPath(bad), true, "deployed"))
	rtReport(t, a.c, a.url, healthBody(bad, rtRelPath(bad), "nginx.service"))
	a.waitStatus(t, rid, "paused")
	wd.waitText(card+` .head`, "paused")
	wd.waitText(card+` [data-batch="1"]`, "failed", "1 unhealthy")
	wd.waitText(`#attention`, bad+"health check failed: nginx.service"+"rollout "+rid+" batch 1")

	// All of it without a reload: the marker set in the page is still there.
	wd.script(&marker, "return window.nixfleetTestMarker === true;")
	if !marker {
		t.Error("the page was reloaded")
	}
	// The key is in sessionStorage, not in localStorage or a cookie.
	var stored []string
	wd.script(&stored, "return [sessionStorage.getItem('nixfleet.apiKey') || '', localStorage.length + '', document.cookie];")
	if stored[0] != a.R || stored[1] != "0" || stored[2] != "" {
		t.Errorf("key storage: session %v, localStorage items %s, cookie %q", stored[0] == a.R, stored[1], stored[2])
	}

	if *uiScreenshot != "" {
		var b64 string
		if err := json.Unmarshal(wd.cmd("GET", "/screenshot", nil), &b64); err != nil {
			t.Fatal(err)
		}
		png, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(*uiScreenshot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
