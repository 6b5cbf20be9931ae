package main

import (
	"fmt"
	"strings"

	"github.com/meshscope/meshscope/dev/demo"
)

// Files of the Procfile layout, relative to the repository root, where
// Procfile runners start processes.
const (
	procfileDestinations = "dev/destinations.yaml"
	procfileTargets      = "dev/targets/meshscope-proxy.json"
)

// procfile renders the Procfile for m: the same processes as "go run ./dev"
// with the real Prometheus, for foreman, honcho or overmind. The files it
// names (procfileDestinations, procfileTargets) are committed, generated
// from the same layout.
func procfile(m demo.Mesh, dashboard, prometheus string) string {
	var b strings.Builder
	b.WriteString("# Meshscope demo for foreman, honcho or overmind: see README.md, \"Demo\".\n")
	b.WriteString("# Generated with its files by: go test ./dev -run TestProcfile -update\n")
	fmt.Fprintf(&b, "prometheus: prometheus --config.file=dev/prometheus.yml --web.listen-address=%s"+
		" --storage.tsdb.path=${TMPDIR:-/tmp}/meshscope-prometheus --storage.tsdb.retention.time=6h --log.level=warn\n", prometheus)
	fmt.Fprintf(&b, "dashboard: go run ./web --listen=%s --prometheus-url=http://%s\n", dashboard, prometheus)
	b.WriteString("apps: go run ./dev apps\n")
	for _, p := range m.Pods {
		fmt.Fprintf(&b, "proxy-%s: go run ./proxy %s\n", p.Name, strings.Join(m.ProxyArgs(p, procfileDestinations), " "))
	}
	return b.String()
}
