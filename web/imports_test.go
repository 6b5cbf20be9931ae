package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/meshscope/meshscope"

// goList runs `go list` with args in the module and returns its output lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

// room names the top-level part of the house a package of this module lives in
// ("api/tap", "api/kube" and "api/meshid" are rooms of their own), or "" for packages outside the module.
func room(pkg string) string {
	if pkg != module && !strings.HasPrefix(pkg, module+"/") {
		return ""
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	for _, own := range []string{"api/tap", "api/kube", "api/meshid"} {
		if rel == own || strings.HasPrefix(rel, own+"/") {
			return own
		}
	}
	top, _, _ := strings.Cut(rel, "/")
	return top
}

// TestImportsRunOneWay keeps the house of STYLE.md: web -> api -> api/tap,
// web -> views, web -> static, proxy -> api/tap; views pure; nothing imports
// dev or another room's main. api/kube (Kubernetes API access shared by the
// dashboard and the proxy's control-plane subcommands) and api/meshid (a
// workload's mesh identity: names, the issuer's wire, its certificate, which
// both the proxy and the dashboard hold) are open to every room.
func TestImportsRunOneWay(t *testing.T) {
	allowed := map[string][]string{
		"web":        {"web", "api", "api/tap", "api/kube", "api/meshid", "views", "static"},
		"api":        {"api", "api/tap", "api/kube", "api/meshid"},
		"api/tap":    {"api/tap"},
		"api/kube":   {"api/kube"},
		"api/meshid": {"api/meshid"},
		"views":      {"views"},
		"static":     {"static"},
		"proxy":      {"proxy", "api/tap", "api/kube", "api/meshid"},
		"dev":        {"dev", "api", "api/tap", "api/kube", "api/meshid"},
	}
	for _, line := range goList(t, "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...") {
		fields := strings.Fields(line)
		from := room(fields[0])
		ok, known := allowed[from]
		if !known {
			t.Errorf("package %s lives outside the rooms of STYLE.md", fields[0])
			continue
		}
		for _, imp := range fields[1:] {
			to := room(imp)
			if to == "" {
				if from == "views" && strings.HasPrefix(imp, "github.com/prometheus/") {
					t.Errorf("views must stay free of Prometheus types, but %s imports %s", fields[0], imp)
				}
				if from == "api/tap" && strings.Contains(strings.SplitN(imp, "/", 2)[0], ".") {
					t.Errorf("api/tap is standard library only, but %s imports %s", fields[0], imp)
				}
				continue
			}
			if !slices.Contains(ok, to) {
				t.Errorf("%s imports %s: %s may not depend on %s", fields[0], imp, from, to)
			}
		}
	}
}

// TestBinariesLeaveOutPrometheusEngine keeps the embedded engine of the demo
// (Prometheus' own packages) out of the dashboard and proxy binaries.
func TestBinariesLeaveOutPrometheusEngine(t *testing.T) {
	for _, bin := range []string{"./web", "./proxy"} {
		for _, dep := range goList(t, "-deps", bin) {
			if strings.HasPrefix(dep, "github.com/prometheus/prometheus/") {
				t.Errorf("%s links %s: the embedded engine belongs to dev only", bin, dep)
			}
			if room(dep) == "dev" {
				t.Errorf("%s links %s: nothing imports dev", bin, dep)
			}
		}
	}
}
