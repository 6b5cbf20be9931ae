package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/meshscope/meshscope/api/democonfig"
)

// demoFileFlag registers --demo-file, the running demo's file the terminal
// twins read their backend from by default.
func demoFileFlag(fs *flag.FlagSet) *string {
	return fs.String("demo-file", democonfig.DefaultPath(),
		"`file` the running demo (go run ./dev) writes: its Prometheus and tap token serve as defaults of --prometheus-url and --tap-token")
}

// demoDefaults fills --prometheus-url and --tap-token from the running demo's
// file at path, each only when neither its flag nor its environment twin was
// given, and says so on stderr. No file: the flags' own defaults stand.
func demoDefaults(fs *flag.FlagSet, cfg *config, path string, getenv func(string) string, stderr io.Writer) error {
	if path == "" {
		return nil
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	free := func(name, env string) bool { return !given[name] && getenv(env) == "" }
	url, token := free("prometheus-url", "MESHSCOPE_WEB_PROMETHEUS_URL"), free("tap-token", "MESHSCOPE_WEB_TAP_TOKEN")
	if !url && !token {
		return nil
	}
	d, ok, err := democonfig.Read(path)
	if err != nil || !ok {
		return err
	}
	if url {
		cfg.PrometheusURL = d.PrometheusURL
	}
	if token {
		cfg.TapToken = d.TapToken
	}
	fmt.Fprintf(stderr, "using the running demo's Prometheus (%s) and tap token, from %s\n", d.PrometheusURL, path)
	return nil
}
