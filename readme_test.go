package main

// The README walkthrough, run as written (README.md, "Walkthrough: watch a
// rollout, from a fresh clone").

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeStep is one ```sh block of the walkthrough and the lines of the
// ```text block that follows it.
type readmeStep struct {
	tag    string // the word after "sh" in the fence: "", "setup" or "events"
	line   int    // README line of the fence, for messages
	code   string
	expect []string
}

// readmeBuildLine is the setup step's build command (see TestREADMEWalkthrough).
const readmeBuildLine = "go build -o bin/ . ./tools/fakeagent"

// readmeWalkthrough extracts the steps between the walkthrough markers.
func readmeWalkthrough(t *testing.T, readme string) []readmeStep {
	t.Helper()
	_, rest, ok := strings.Cut(readme, "<!-- walkthrough:start")
	body, _, ok2 := strings.Cut(rest, "<!-- walkthrough:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no <!-- walkthrough:start … walkthrough:end --> section")
	}
	first := strings.Count(readme[:len(readme)-len(rest)], "\n") + 1
	var steps []readmeStep
	lines := strings.Split(body, "\n")
	for i := 0; i < len(lines); i++ {
		info, isFence := strings.CutPrefix(lines[i], "```")
		if !isFence {
			continue
		}
		start := i
		var block []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			block = append(block, lines[i])
		}
		kind, tag, _ := strings.Cut(info, " ")
		switch kind {
		case "sh":
			steps = append(steps, readmeStep{tag: tag, line: first + start, code: strings.Join(block, "\n")})
		case "text":
			if len(steps) == 0 || steps[len(steps)-1].expect != nil {
				t.Fatalf("README.md:%d: a ```text block must follow a ```sh step", first+start)
			}
			steps[len(steps)-1].expect = slices.DeleteFunc(block, func(s string) bool { return strings.TrimSpace(s) == "" })
		}
	}
	return steps
}

// readmeMatch reports whether an output line matches an expected line: the
// pieces between "…" appear in the line in order.
func readmeMatch(line, want string) bool {
	for piece := range strings.SplitSeq(want, "…") {
		i := strings.Index(line, piece)
		if i < 0 {
			return false
		}
		line = line[i+len(piece):]
	}
	return true
}

// TestREADMEWalkthrough runs the README's walkthrough and checks its output,
// so that the commands a new user pastes keep working. The conventions, which
// the README's walkthrough:start comment points to:
//
//   - Every ```sh block between <!-- walkthrough:start --> and
//     <!-- walkthrough:end --> is a step. All steps run in order in ONE bash
//     process (stderr merged into stdout) in a fresh temp dir, so variables,
//     background jobs and files carry over from step to step as in a user's
//     terminal. No `set -e`: a failing command shows up as missing output.
//   - A ```text block right after a step is its expected output: each
//     non-blank line must match a line of the step's output, in order; "…"
//     stands for anything within one line.
//   - Long-running commands (the server, fakeagent) are started with & and
//     their output redirected to a file, as a user would in a second
//     terminal; the walkthrough stops them itself. Whatever is left is
//     killed with the process group when the test ends.
//   - The ```sh setup step builds the binaries with exactly readmeBuildLine
//     from the repository root. The test runs that command itself, from this
//     repository, into the temp dir's bin/ (so the build cost is paid once,
//     and nothing is written into the checkout) and runs the step's other
//     lines as written: they put bin/ on PATH and cd into demo/.
//   - 127.0.0.1:8080 and 127.0.0.1:8443 are rewritten to free loopback ports
//     in the steps and the expected output, so the test never collides with
//     anything listening on the machine.
//
// It skips only when bash or curl is missing; openssl is required (.ci/run
// installs it).
func TestREADMEWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: the README walkthrough needs it", tool)
		}
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not found: the README walkthrough's mTLS steps need it (Debian package openssl)")
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	steps := readmeWalkthrough(t, string(readme))
	if len(steps) < 10 || steps[0].tag != "setup" {
		t.Fatalf("the walkthrough has %d steps; want a ```sh setup step first and the rest after it", len(steps))
	}

	dir := t.TempDir()
	ports := strings.NewReplacer("127.0.0.1:8080", freePort(t), "127.0.0.1:8443", freePort(t))
	setup, ok := strings.CutPrefix(steps[0].code, "rm -rf demo && mkdir demo\n"+readmeBuildLine+"\n")
	if !ok {
		t.Fatalf("README.md:%d: the setup step must begin with \"rm -rf demo && mkdir demo\" and %q", steps[0].line, readmeBuildLine)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "bin")+"/", ".", "./tools/fakeagent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, out)
	}
	if err := os.Mkdir(filepath.Join(dir, "demo"), 0o700); err != nil {
		t.Fatal(err)
	}

	var script strings.Builder
	script.WriteString("exec 2>&1\n")
	for i, s := range steps {
		code := s.code
		if i == 0 {
			code = setup
		}
		fmt.Fprintf(&script, "printf '\\n@@step %d@@\\n'\n%s\n", i, ports.Replace(code))
	}
	script.WriteString("printf '\\n@@end@@\\n'\n")
	scriptPath := filepath.Join(dir, "walkthrough.sh")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out := readmeRun(t, dir, scriptPath)

	for i, s := range steps {
		_, after, found := strings.Cut(out, fmt.Sprintf("\n@@step %d@@\n", i))
		if !found {
			t.Fatalf("README.md:%d: step %d never ran; output:\n%s", s.line, i, out)
		}
		got, _, _ := strings.Cut(after, "\n@@step ")
		got, _, _ = strings.Cut(got, "\n@@end@@\n")
		lines := strings.Split(got, "\n")
		for _, want := range s.expect {
			want = ports.Replace(want)
			j := slices.IndexFunc(lines, func(l string) bool { return readmeMatch(l, want) })
			if j < 0 {
				t.Errorf("README.md:%d: step %d output lacks (in order)\n  %s\nstep:\n%s\noutput:\n%s", s.line, i, want, s.code, got)
				break
			}
			lines = lines[j+1:]
		}
	}
	if !strings.Contains(out, "\n@@end@@\n") {
		t.Errorf("the walkthrough did not run to its end")
	}
	if t.Failed() {
		for _, log := range []string{"demo/server.log", "demo/agents.log", "demo/mtls/server.log"} {
			b, _ := os.ReadFile(filepath.Join(dir, log))
			t.Logf("%s:\n%s", log, b)
		}
	}
}

// readmeRun runs the script with bash in dir, in its own process group, and
// returns its output. Everything left running in the group is killed when
// bash exits or after the deadline.
func readmeRun(t *testing.T, dir, script string) string {
	t.Helper()
	outPath := filepath.Join(dir, "walkthrough.out")
	f, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", script)
	cmd.Dir = dir
	// A file, not a pipe: background jobs that inherit it cannot hold up Wait.
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "NIXFLEET_CP_") })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	err = cmd.Wait()
	syscall.Kill(-pgid, syscall.SIGKILL) // background jobs a failed step left behind
	b, rerr := os.ReadFile(outPath)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if ctx.Err() != nil {
		t.Fatalf("the walkthrough did not finish within 90 s; output:\n%s", b)
	}
	if err != nil {
		t.Logf("bash: %v", err) // the last command's status; the output checks decide
	}
	return "\n" + string(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")))
}
