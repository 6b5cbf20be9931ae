package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/meshscope/meshscope/api"
)

// routesCmd is `web routes deploy/NAME`: the deployment page's routes table in the terminal.
func routesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config
	var namespace, output string
	var inbound bool
	fs := flag.NewFlagSet("routes", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: web routes deploy/NAME [flags]

Prints the routes a deployment calls, as its proxies count them (linkerd2-proxy's
outbound_http_route_* and outbound_grpc_route_* metrics, read from Prometheus):
per service and route, success rate after retries, requests per second, latency
percentiles, retries per second and their share of the requests, timeouts per
second, and each backend of the route's traffic split with its observed share
and success rate. A service's requests that no route matches are its "default"
route. With --inbound, the routes of the Service named like the deployment
instead, one line per calling workload and route. Exits 1 when a metric could
not be got.

Examples:
  web routes deploy/web -n shop
  web routes deploy/checkout -n shop -o json
  web routes deploy/checkout -n shop --inbound

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&namespace, "n", "default", "`namespace` of the deployment")
	fs.StringVar(&output, "o", "table", "output `format`: table or json")
	fs.BoolVar(&inbound, "inbound", false, "the routes of the Service named like the deployment, by caller")
	backendFlags(fs, &cfg)
	demoFile := demoFileFlag(fs)
	pos, err := parseInterspersed(fs, args, os.Getenv)
	if err != nil {
		return err
	}
	if err := demoDefaults(fs, &cfg, *demoFile, os.Getenv, stderr); err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageError{errors.New("want one RESOURCE: deploy/NAME")}
	}
	kind, name, ok := strings.Cut(pos[0], "/")
	if !ok || statResources[kind] != "deployment" {
		return usageError{fmt.Errorf("resource %q: want deploy/NAME", pos[0])}
	}
	if err := api.ValidName("deployment", name); err != nil {
		return usageError{err}
	}
	if err := api.ValidNamespace(namespace); err != nil {
		return usageError{err}
	}
	if output != "table" && output != "json" {
		return usageError{fmt.Errorf("-o %q: want table or json", output)}
	}
	if err := cfg.validate(); err != nil {
		return usageError{err}
	}
	q, err := api.Dial(cfg.prometheusURL(), api.Options{Timeout: cfg.queryTimeout()})
	if err != nil {
		return err
	}
	t := q.Routes(ctx, api.RouteScope{Namespace: namespace, Deployment: name, Window: cfg.window(), Inbound: inbound})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(t.Rows); err != nil {
			return err
		}
	} else if len(t.Rows) > 0 {
		printRoutes(stdout, t.Rows, inbound)
	} else if len(t.Failures) == 0 {
		fmt.Fprintf(stderr, "no route metrics from deployment %s in namespace %s\n", name, namespace)
	}
	for _, w := range t.Warnings {
		fmt.Fprintf(stderr, "warning: prometheus: %s\n", w)
	}
	if len(t.Failures) > 0 {
		return fmt.Errorf("prometheus at %s: could not get %s: %s", q.Backend, t.Failures[0].Metric, cause(t.Failures[0]))
	}
	return nil
}

// printRoutes prints one line per route, then one indented line per backend of its split; with callers,
// each line starts with the calling workload.
func printRoutes(w io.Writer, rows []api.RouteRow, callers bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	if callers {
		fmt.Fprint(tw, "CALLER\t")
	}
	fmt.Fprintln(tw, "SERVICE\tROUTE\tSUCCESS\tRPS\tLATENCY_P50\tLATENCY_P95\tLATENCY_P99\tRETRIES\tTIMEOUTS")
	for _, r := range rows {
		v := routeRowView(r)
		if callers {
			fmt.Fprintf(tw, "%s/%s\t", r.CallerNamespace, r.CallerDeployment)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Service, v.Name, v.Success.Text, v.RPS+"rps", v.P50, v.P95, v.P99, v.Retries, v.Timeouts)
		for _, b := range v.Backends {
			if callers {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprintf(tw, "\t  -> %s\t%s\t%s share\t\t\t\t\t\n", b.Name, b.Success.Text, b.Share)
		}
	}
	tw.Flush()
}
