package main

// Tests of flake.nix (SPEC §13.4), evaluated by testdata/nix/flake-eval.nix
// with a stub nixpkgs around the real nixpkgs library.

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// flakeEval is the output of testdata/nix/flake-eval.nix.
type flakeEval struct {
	Inputs   map[string]string                  `json:"inputs"`
	Packages map[string]map[string]flakePackage `json:"packages"`
	Overlay  flakePackage                       `json:"overlay"`
	Module   struct {
		Imports []string `json:"imports"`
		Package struct {
			Type     string `json:"_type"`
			Priority int    `json:"priority"`
			Content  struct {
				Name   string `json:"name"`
				System string `json:"system"`
			} `json:"content"`
		} `json:"package"`
	} `json:"nixosModule"`
}

type flakePackage struct {
	Name    string   `json:"name"`
	System  string   `json:"system"`
	GOFLAGS []string `json:"GOFLAGS"`
	Args    struct {
		Pname      string `json:"pname"`
		Version    string `json:"version"`
		VendorHash string `json:"vendorHash"`
		Env        struct {
			CGOEnabled *int `json:"CGO_ENABLED"`
		} `json:"env"`
		Ldflags       []string `json:"ldflags"`
		SubPackages   []string `json:"subPackages"`
		SrcIsRepoRoot bool     `json:"srcIsRepoRoot"`
	} `json:"args"`
}

// TestFlakeOutputs checks SPEC §13.4 by calling the flake's outputs with a stub nixpkgs around the real lib.
func TestFlakeOutputs(t *testing.T) {
	// -X main.version only works on a string variable; this fails to compile if main.version is not one.
	var _ *string = &version

	out, stderr, err := runNixInstantiate(t, "--eval", "--strict", "--json", "testdata/nix/flake-eval.nix",
		"--argstr", "nixpkgsLib", nixpkgsLib(t))
	if err != nil {
		t.Fatalf("evaluate flake outputs: %v\n%s", err, stderr)
	}
	var fl flakeEval
	if err := json.Unmarshal(out, &fl); err != nil {
		t.Fatalf("decode flake evaluation: %v", err)
	}

	if url := fl.Inputs["nixpkgs"]; !strings.HasPrefix(url, "github:NixOS/nixpkgs/") || len(fl.Inputs) != 1 {
		t.Errorf("inputs = %v, want only nixpkgs", fl.Inputs)
	}
	var systems []string
	for system := range fl.Packages {
		systems = append(systems, system)
	}
	slices.Sort(systems)
	if want := []string{"aarch64-linux", "x86_64-linux"}; !slices.Equal(systems, want) {
		t.Errorf("package systems %q, want %q", systems, want)
	}
	for system, pkgs := range fl.Packages {
		def, named := pkgs["default"], pkgs["nixfleet-control-plane"]
		if len(pkgs) != 2 || !reflect.DeepEqual(def, named) {
			t.Errorf("packages.%s = %+v: want default and nixfleet-control-plane, the same package", system, pkgs)
		}
		checkFlakePackage(t, "packages."+system+".default", def)
		if def.System != system {
			t.Errorf("packages.%s.default built for %s", system, def.System)
		}
	}
	checkFlakePackage(t, "overlays.default", fl.Overlay)

	if !slices.Equal(fl.Module.Imports, []string{"module.nix"}) {
		t.Errorf("nixosModules.default imports %q, want [module.nix]", fl.Module.Imports)
	}
	pkg := fl.Module.Package
	if pkg.Type != "override" || pkg.Priority != 1000 || pkg.Content.Name != "nixfleet-control-plane-"+fl.Overlay.Args.Version ||
		pkg.Content.System != "aarch64-linux" {
		t.Errorf("nixosModules.default package definition %+v, want mkDefault of the host system's flake package", pkg)
	}
}

var sriSHA256 = regexp.MustCompile(`^sha256-[A-Za-z0-9+/]{43}=$`)

func checkFlakePackage(t *testing.T, where string, p flakePackage) {
	t.Helper()
	a := p.Args
	if a.Pname != "nixfleet-control-plane" || a.Version == "" || p.Name != a.Pname+"-"+a.Version {
		t.Errorf("%s: name %q pname %q version %q", where, p.Name, a.Pname, a.Version)
	}
	if !sriSHA256.MatchString(a.VendorHash) || a.VendorHash == "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" {
		t.Errorf("%s: vendorHash %q, want a pinned SRI sha256", where, a.VendorHash)
	}
	if a.Env.CGOEnabled == nil || *a.Env.CGOEnabled != 0 {
		t.Errorf("%s: env.CGO_ENABLED is not 0", where)
	}
	if !slices.Contains(p.GOFLAGS, "-trimpath") {
		t.Errorf("%s: GOFLAGS %q lack -trimpath", where, p.GOFLAGS)
	}
	if want := []string{"-s", "-w", "-X main.version=" + a.Version}; !slices.Equal(a.Ldflags, want) {
		t.Errorf("%s: ldflags %q, want %q", where, a.Ldflags, want)
	}
	if !a.SrcIsRepoRoot || !slices.Equal(a.SubPackages, []string{"."}) {
		t.Errorf("%s: src is the repository root %v, subPackages %q", where, a.SrcIsRepoRoot, a.SubPackages)
	}
}

// TestFlakeVendorHash recomputes the flake's vendorHash the way buildGoModule does (the NAR hash of
// `go mod vendor`) in a copy of the module's top-level files, so a dependency change cannot leave it stale.
func TestFlakeVendorHash(t *testing.T) {
	requireNix(t)
	if _, err := exec.LookPath("nix-hash"); err != nil {
		t.Skip("nix-hash not installed; install Debian package nix-bin")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	flake, err := os.ReadFile("flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "([^"]*)";`).FindSubmatch(flake)
	if m == nil {
		t.Fatal("no vendorHash in flake.nix")
	}
	pinned := string(m[1])

	// go mod vendor may rewrite go.mod, so it runs in a copy of what it reads: go.mod, go.sum and the Go files
	// (their imports decide which packages are vendored).
	dir := t.TempDir()
	goFiles, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{"go.mod", "go.sum"}, goFiles...) {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vendor := filepath.Join(dir, "vendor")
	cmd := exec.Command(goBin, "mod", "vendor", "-o", vendor)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("go mod vendor failed (no module cache or proxy?): %v\n%s", err, out)
	}
	if _, err := os.Stat(vendor); err != nil {
		t.Skipf("go mod vendor produced no vendor directory (no dependencies yet?): %v", err)
	}

	cmd = exec.Command("nix-hash", "--type", "sha256", vendor)
	cmd.Env = nixEnv(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-hash %s: %v", vendor, err)
	}
	sum, err := hex.DecodeString(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("nix-hash output %q: %v", out, err)
	}
	if got := "sha256-" + base64.StdEncoding.EncodeToString(sum); got != pinned {
		t.Errorf("flake.nix vendorHash = %s, but go.mod and go.sum now vendor to %s; update it (see the comment beside it)",
			pinned, got)
	}
}
