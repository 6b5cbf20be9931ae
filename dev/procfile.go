package main

import (
	"fmt"
	"strings"

	"github.com/meshscope/meshscope/api/rules"
	"github.com/meshscope/meshscope/dev/demo"
)

// targetsFile is the file_sd targets file, relative to prometheus.yml's
// directory, whose "targets/*.json" glob finds it.
const targetsFile = "targets/meshscope-proxy.json"

// rulesFile is the recording rules file (api/rules), relative to
// prometheus.yml's directory, whose "rules/*.yml" rule_files glob finds it.
const rulesFile = "rules/" + rules.FileName

// Files of the Procfile layout, relative to the repository root, where
// Procfile runners start processes.
const (
	procfileDestinations = "dev/destinations.yaml"
	procfileTargets      = "dev/" + targetsFile
	procfileRules        = "dev/" + rulesFile
)

// procfile renders the Procfile for m: the same processes as "go run ./dev"
// with the real Prometheus, for foreman, honcho or overmind. The files it
// names (procfileDestinations, procfileTargets, procfileRules) are committed, generated
// from the same layout.
//
// Every line execs its program (after a cached go build, not go run) so that
// the runner's SIGTERM reaches the program itself: foreman signals only the
// processes it started, and go run does not pass SIGTERM on to its child.
func procfile(m demo.Mesh, dashboard, prometheus string) string {
	var b strings.Builder
	b.WriteString("# Meshscope demo for foreman, honcho or overmind: see README.md, \"Demo\".\n")
	b.WriteString("# Generated with its files by: go test ./dev -run TestProcfile -update\n")
	fmt.Fprintf(&b, "prometheus: exec prometheus --config.file=dev/prometheus.yml --web.listen-address=%s"+
		" --storage.tsdb.path=${TMPDIR:-/tmp}/meshscope-procfile/prometheus --storage.tsdb.retention.time=6h --log.level=warn\n", prometheus)
	line := func(name, pkg, args string) {
		bin := "${TMPDIR:-/tmp}/meshscope-procfile/" + name
		fmt.Fprintf(&b, "%s: go build -o %s %s && exec %s %s\n", name, bin, pkg, bin, args)
	}
	line("dashboard", "./web", fmt.Sprintf("--listen=%s --prometheus-url=http://%s", dashboard, prometheus))
	line("apps", "./dev", "apps")
	for _, p := range m.Pods {
		line("proxy-"+p.Name, "./proxy", strings.Join(m.ProxyArgs(p, procfileDestinations), " "))
	}
	return b.String()
}
