package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshscope/meshscope/api/rules"
)

var update = flag.Bool("update", false, "rewrite the Procfile and its files from the default layout")

// TestProcfileMatchesTheDefaultLayout keeps the committed Procfile,
// destinations file and file_sd targets equal to what the launcher
// generates for its default flags, so both ways run the same mesh.
func TestProcfileMatchesTheDefaultLayout(t *testing.T) {
	var cfg config
	fs := flags("dev", &cfg, false)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	m, err := cfg.layout()
	if err != nil {
		t.Fatal(err)
	}
	dest, err := m.Destinations()
	if err != nil {
		t.Fatal(err)
	}
	targets, err := m.Targets()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"Procfile":           procfile(m, cfg.DashboardListen, cfg.PrometheusListen),
		procfileDestinations: string(dest),
		procfileTargets:      string(targets),
		procfileRules:        string(rules.YAML()),
	}
	for name, want := range files {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("..", name)
			if *update {
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test ./dev -run TestProcfile -update)", err)
			}
			if string(got) != want {
				t.Fatalf("%s is stale: go test ./dev -run TestProcfile -update", name)
			}
		})
	}
	t.Run("every pod has a proxy line and the prometheus config finds the targets", func(t *testing.T) {
		pf := files["Procfile"]
		for _, p := range m.Pods {
			if !strings.Contains(pf, "\nproxy-"+p.Name+": go build -o ") {
				t.Errorf("no proxy line for %s", p.Name)
			}
		}
		yml, err := os.ReadFile("prometheus.yml")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(yml), `"targets/*.json"`) || !strings.HasPrefix(procfileTargets, "dev/targets/") {
			t.Fatal("dev/prometheus.yml's file_sd glob does not cover the Procfile's targets file")
		}
	})
}
