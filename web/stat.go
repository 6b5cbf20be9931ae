package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/meshscope/meshscope/api"
)

// statResources maps the names `stat` accepts to the resource they mean.
var statResources = map[string]string{
	"ns": "namespace", "namespace": "namespace", "namespaces": "namespace",
	"deploy": "deployment", "deployment": "deployment", "deployments": "deployment",
	"po": "pod", "pod": "pod", "pods": "pod",
}

// statRow is one line of `stat`: a resource and its golden metrics.
type statRow struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	api.Stats
}

func statCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config
	var namespace, output string
	var all bool
	fs := flag.NewFlagSet("stat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: web stat RESOURCE [NAME] [flags]

Prints the golden metrics of namespaces (ns), deployments (deploy) or pods
(po), read from Prometheus like the dashboard: success rate, requests per
second, latency percentiles, open TCP connections and meshed proxies.
"no traffic" shows as "-". Exits 1 when a metric could not be got.

Examples:
  web stat ns
  web stat deploy -n shop
  web stat po -n shop -o json

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&namespace, "n", "default", "`namespace` of the deployments or pods")
	fs.BoolVar(&all, "A", false, "deployments or pods of all namespaces")
	fs.StringVar(&output, "o", "table", "output `format`: table or json")
	backendFlags(fs, &cfg)
	demoFile := demoFileFlag(fs)
	pos, err := parseInterspersed(fs, args, os.Getenv)
	if err != nil {
		return err
	}
	if err := demoDefaults(fs, &cfg, *demoFile, os.Getenv, stderr); err != nil {
		return err
	}
	switch {
	case len(pos) == 0:
		fs.Usage()
		return usageError{errors.New("missing RESOURCE (ns, deploy or po)")}
	case len(pos) > 2:
		return usageError{fmt.Errorf("unexpected argument %q", pos[2])}
	}
	kind, ok := statResources[pos[0]]
	if !ok {
		return usageError{fmt.Errorf("unknown resource %q: want ns, deploy or po", pos[0])}
	}
	var name string
	if len(pos) == 2 {
		name = pos[1]
	}
	if output != "table" && output != "json" {
		return usageError{fmt.Errorf("-o %q: want table or json", output)}
	}
	if err := cfg.validate(); err != nil {
		return usageError{err}
	}
	if kind != "namespace" && !all {
		if err := api.ValidNamespace(namespace); err != nil {
			return usageError{err}
		}
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "n" })
		if !given {
			fmt.Fprintf(stderr, "namespace %s (choose one with -n NAMESPACE, or -A for all)\n", namespace)
		}
	}
	q, err := api.Dial(cfg.prometheusURL(), api.Options{Timeout: cfg.queryTimeout()})
	if err != nil {
		return err
	}
	// Without an answer the figures come from raw series, and a backend that
	// does not answer fails the stat queries themselves, which report it.
	_ = q.DetectRecorded(ctx, []time.Duration{cfg.window()})
	rows, t := stat(ctx, q, kind, namespace, all, cfg.window())
	if name != "" {
		rows = slices.DeleteFunc(rows, func(r statRow) bool { return r.Name != name })
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	failed := len(t.Failures) > 0
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	} else if len(rows) > 0 || !failed {
		printStat(stdout, rows, kind != "namespace" && all)
	}
	for _, w := range t.Warnings {
		fmt.Fprintf(stderr, "warning: prometheus: %s\n", w)
	}
	if failed {
		return fmt.Errorf("prometheus at %s: %s", q.Backend, panelError(t))
	}
	return nil
}

// stat fetches one table of kind, sorted like the dashboard (worst first).
func stat(ctx context.Context, q *api.Querier, kind, namespace string, all bool, w time.Duration) ([]statRow, api.Table) {
	label := kind
	sc := byNamespace(w)
	switch kind {
	case "deployment":
		sc = deploymentsOf(namespace, w)
	case "pod":
		sc = podsOf(w, api.Match{Label: api.LabelNamespace, Value: namespace})
	}
	if all && kind != "namespace" {
		sc.Match = nil
	}
	t := q.Golden(ctx, sc, true)
	sortRows(t.Rows, "", okRate, func(r api.Row) string { return r.Labels[api.LabelNamespace] + "/" + r.Labels[label] })
	rows := make([]statRow, 0, len(t.Rows))
	for _, r := range t.Rows {
		rows = append(rows, statRow{Namespace: r.Labels[api.LabelNamespace], Name: r.Labels[label], Stats: r.Stats})
	}
	return rows, t
}

func printStat(w io.Writer, rows []statRow, withNamespace bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	if withNamespace {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tMESHED\tSUCCESS\tRPS\tLATENCY_P50\tLATENCY_P95\tLATENCY_P99\tTCP_CONN")
	ms := func(v *float64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.0fms", *v)
	}
	for _, r := range rows {
		if withNamespace {
			fmt.Fprintf(tw, "%s\t", r.Namespace)
		}
		success := "-"
		if r.SuccessRate != nil {
			success = fmt.Sprintf("%.2f%%", 100**r.SuccessRate)
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%.1frps\t%s\t%s\t%s\t%.0f\n", r.Name, r.MeshedUp, r.MeshedTotal, success, r.RPS,
			ms(r.LatencyP50), ms(r.LatencyP95), ms(r.LatencyP99), r.TCPConnections)
	}
	tw.Flush()
}
