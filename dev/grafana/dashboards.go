// Package grafana defines the Grafana dashboards Meshscope ships under
// dev/grafana/dashboards: one per resource level the dashboard links to
// (top line, namespace, deployment, pod), with the uids and slugs of its
// links. The JSON files are generated from these definitions:
//
//	go test ./dev/grafana -update
//
// and the package's tests fail when they are stale.
package grafana

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Dashboard is one shipped dashboard.
type Dashboard struct {
	// UID and Slug are what the Meshscope dashboard's links use:
	// {grafana-url}/d/{uid}/{slug}.
	UID, Slug, Title string
	// Vars are the template variables after datasource, in order.
	Vars   []Var
	Panels []Panel
}

// Var is a query template variable over one target label.
type Var struct {
	Name string
	// Selector is the series selector whose label values fill the variable.
	Selector string
	// All allows "All" (and several values); the variable then matches as a
	// regex, as every expression here does.
	All bool
}

// Panel is one time series panel.
type Panel struct {
	Title, Description string
	// Unit is a Grafana unit: percentunit, reqps, ms, short.
	Unit    string
	Targets []Target
}

// Target is one PromQL expression with its legend.
type Target struct {
	Expr, Legend string
}

// window is Grafana's rate window for the dashboard's scrape interval.
const window = "$__rate_interval"

func successRate(by, sel string) string {
	return fmt.Sprintf(`sum by (%s) (rate(response_total{classification="success",%s}[%s])) / sum by (%s) (rate(response_total{%s}[%s]))`,
		by, sel, window, by, sel, window)
}

func rps(by, sel string) string {
	return fmt.Sprintf(`sum by (%s) (rate(request_total{%s}[%s]))`, by, sel, window)
}

func quantile(q, by, sel string) string {
	le := "le"
	if by != "" {
		le += ", " + by
	}
	return fmt.Sprintf(`histogram_quantile(%s, sum by (%s) (rate(response_latency_ms_bucket{%s}[%s])))`, q, le, sel, window)
}

func tcp(by, sel string) string {
	return fmt.Sprintf(`sum by (%s) (tcp_open_connections{%s})`, by, sel)
}

// golden are the four golden-metric panels for one selector, grouped by
// (and legended with) the labels in by.
func golden(scope, by, legend, sel string) []Panel {
	in := `direction="inbound",` + sel
	return []Panel{
		{Title: "Success rate by " + scope, Unit: "percentunit",
			Description: "Share of inbound responses classified success: not 5xx, gRPC status OK, no stream error.",
			Targets:     []Target{{successRate(by, in), legend}}},
		{Title: "Requests per second by " + scope, Unit: "reqps",
			Description: "Inbound requests per second.",
			Targets:     []Target{{rps(by, in), legend}}},
		{Title: "Latency p50 / p95 / p99", Unit: "ms",
			Description: "Inbound response latency (request headers read to response headers written), all selected " + scope + "s together.",
			Targets: []Target{
				{quantile("0.5", "", in), "p50"},
				{quantile("0.95", "", in), "p95"},
				{quantile("0.99", "", in), "p99"},
			}},
		{Title: "p99 latency by " + scope, Unit: "ms",
			Description: "Inbound 99th percentile latency.",
			Targets:     []Target{{quantile("0.99", by, in), legend}}},
		{Title: "TCP connections by " + scope, Unit: "short",
			Description: "Open inbound TCP connections, every protocol.",
			Targets:     []Target{{tcp(by, in), legend}}},
	}
}

// outboundEdges are the panels of the calls the selected workloads make.
func outboundEdges(sel string) []Panel {
	out := `direction="outbound",` + sel
	by := "namespace, deployment, dst_namespace, dst_deployment"
	legend := "{{namespace}}/{{deployment}} → {{dst_namespace}}/{{dst_deployment}}"
	return []Panel{
		{Title: "Outbound edges: success rate", Unit: "percentunit",
			Description: "Success rate of the calls the selected workloads make, per destination.",
			Targets:     []Target{{successRate(by, out), legend}}},
		{Title: "Outbound edges: requests per second", Unit: "reqps",
			Targets: []Target{{rps(by, out), legend}}},
		{Title: "Outbound edges: p95 latency", Unit: "ms",
			Targets: []Target{{quantile("0.95", by, out), legend}}},
		{Title: "Outbound edges: TCP connections", Unit: "short",
			Description: "Open connections to each destination, opaque TCP included.",
			Targets:     []Target{{tcp(by, out+`,peer="dst"`), legend}}},
	}
}

// inboundEdges are the panels of the calls other meshed workloads make to
// the selected ones, seen from the callers' outbound side.
func inboundEdges(dstSel string) []Panel {
	out := `direction="outbound",` + dstSel
	by := "namespace, deployment, dst_namespace, dst_deployment"
	legend := "{{namespace}}/{{deployment}} → {{dst_namespace}}/{{dst_deployment}}"
	return []Panel{
		{Title: "Inbound edges: success rate", Unit: "percentunit",
			Description: "Success rate of meshed callers' requests to the selection, as the callers saw them.",
			Targets:     []Target{{successRate(by, out), legend}}},
		{Title: "Inbound edges: requests per second", Unit: "reqps",
			Targets: []Target{{rps(by, out), legend}}},
	}
}

// Dashboards returns the four shipped dashboards.
func Dashboards() []Dashboard {
	ns := Var{Name: "namespace", Selector: `request_total{direction="inbound"}`}
	dep := Var{Name: "deployment", Selector: `request_total{direction="inbound",namespace=~"$namespace"}`}
	pod := Var{Name: "pod", Selector: `request_total{direction="inbound",namespace=~"$namespace",deployment=~"$deployment"}`}
	nsAll := ns
	nsAll.All = true
	depAll := dep
	depAll.All = true

	nsSel := `namespace=~"$namespace"`
	depSel := nsSel + `,deployment=~"$deployment"`
	podSel := depSel + `,pod=~"$pod"`
	return []Dashboard{
		{UID: "meshscope-top-line", Slug: "top-line", Title: "Top line", Vars: []Var{nsAll},
			Panels: slices.Concat(golden("namespace", "namespace", "{{namespace}}", nsSel), outboundEdges(nsSel))},
		{UID: "meshscope-namespace", Slug: "namespace", Title: "Namespace", Vars: []Var{ns},
			Panels: slices.Concat(golden("deployment", "namespace, deployment", "{{namespace}}/{{deployment}}", nsSel), outboundEdges(nsSel))},
		{UID: "meshscope-deployment", Slug: "deployment", Title: "Deployment", Vars: []Var{ns, dep},
			Panels: slices.Concat(golden("pod", "namespace, deployment, pod", "{{pod}}", depSel),
				inboundEdges(`dst_namespace=~"$namespace",dst_deployment=~"$deployment"`), outboundEdges(depSel))},
		{UID: "meshscope-pod", Slug: "pod", Title: "Pod", Vars: []Var{ns, depAll, pod},
			Panels: slices.Concat(golden("pod", "namespace, deployment, pod", "{{pod}}", podSel),
				inboundEdges(`dst_namespace=~"$namespace",dst_pod=~"$pod"`), outboundEdges(podSel))},
	}
}

// JSON renders d as a Grafana dashboard model: a datasource variable named
// "datasource" (so the file imports and provisions as is, without the
// ${DS_PROMETHEUS} inputs of an export), then d's variables, then its panels
// two to a row.
func (d Dashboard) JSON() ([]byte, error) {
	ds := map[string]any{"type": "prometheus", "uid": "${datasource}"}
	vars := []any{map[string]any{
		"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
		"current": map[string]any{}, "hide": 0, "refresh": 1, "regex": "", "options": []any{},
	}}
	for _, v := range d.Vars {
		q := fmt.Sprintf("label_values(%s, %s)", v.Selector, v.Name)
		tv := map[string]any{
			"name": v.Name, "label": v.Name, "type": "query", "datasource": ds,
			"query":      map[string]any{"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
			"definition": q, "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []any{},
			"current": map[string]any{}, "includeAll": v.All, "multi": v.All,
		}
		if v.All {
			tv["allValue"] = ".*"
		}
		vars = append(vars, tv)
	}
	panels := make([]any, 0, len(d.Panels))
	for i, p := range d.Panels {
		targets := make([]any, 0, len(p.Targets))
		for j, t := range p.Targets {
			targets = append(targets, map[string]any{
				"datasource": ds, "expr": t.Expr, "legendFormat": t.Legend, "range": true,
				"refId": string(rune('A' + j)),
			})
		}
		defaults := map[string]any{"unit": p.Unit, "custom": map[string]any{"lineWidth": 1, "fillOpacity": 10, "spanNulls": false}}
		if p.Unit == "percentunit" {
			defaults["min"], defaults["max"] = 0, 1
		}
		panels = append(panels, map[string]any{
			"id": i + 1, "type": "timeseries", "title": p.Title, "description": p.Description,
			"datasource": ds, "targets": targets,
			"gridPos":     map[string]any{"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i / 2)},
			"fieldConfig": map[string]any{"defaults": defaults, "overrides": []any{}},
			"options": map[string]any{
				"legend":  map[string]any{"displayMode": "list", "placement": "bottom", "showLegend": true},
				"tooltip": map[string]any{"mode": "multi", "sort": "desc"},
			},
		})
	}
	model := map[string]any{
		"uid": d.UID, "title": d.Title, "tags": []string{"meshscope"},
		"description":   "Meshscope golden metrics from the proxies' linkerd2-proxy compatible metrics (DESIGN.md).",
		"schemaVersion": 39, "version": 1, "editable": true, "graphTooltip": 1,
		"time": map[string]any{"from": "now-1h", "to": "now"}, "refresh": "10s",
		"timepicker": map[string]any{}, "timezone": "browser",
		"templating":  map[string]any{"list": vars},
		"annotations": map[string]any{"list": []any{}},
		"links": []any{map[string]any{
			"title": "Meshscope dashboards", "type": "dashboards", "tags": []string{"meshscope"}, "asDropdown": true,
			"includeVars": true, "keepTime": true,
		}},
		"panels": panels,
	}
	b, err := json.MarshalIndent(model, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// FileName is where d lives under dev/grafana/dashboards.
func (d Dashboard) FileName() string { return d.Slug + ".json" }

// Queries returns every PromQL expression of d, panel targets and variable
// selectors, with each $variable replaced by values[variable] as Grafana
// would send it (including "__rate_interval").
func (d Dashboard) Queries(values map[string]string) []string {
	var pairs []string
	for k, v := range values {
		pairs = append(pairs, "$"+k, v)
	}
	r := strings.NewReplacer(pairs...)
	var out []string
	for _, v := range d.Vars {
		out = append(out, r.Replace(v.Selector))
	}
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, r.Replace(t.Expr))
		}
	}
	return out
}
