package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/views"
)

// deploymentData is a deployment's page: a resource's data plus the routes it calls and their history.
type deploymentData struct {
	resourceData
	Routes api.RouteTable `json:"routes"`
	// InboundRoutes are the routes of the Service named like the deployment, by caller.
	InboundRoutes api.RouteTable `json:"inbound_routes"`
	RouteHistory  routeHistory   `json:"route_history"`
}

type routeHistory struct {
	Success api.Chart `json:"success_rate"`
	RPS     api.Chart `json:"rps"`
}

// problems are the failures and warnings of every part of the page, routes included.
func (d deploymentData) problems() ([]api.Failure, []string) {
	fs, ws := d.resourceData.problems()
	fs = append(append(fs, d.Routes.Failures...), d.InboundRoutes.Failures...)
	ws = append(append(ws, d.Routes.Warnings...), d.InboundRoutes.Warnings...)
	for _, c := range []api.Chart{d.RouteHistory.Success, d.RouteHistory.RPS} {
		if c.Failure != nil {
			fs = append(fs, *c.Failure)
		}
		ws = append(ws, c.Warnings...)
	}
	return fs, ws
}

// routeData fetches the routes a deployment calls over window w, their history, and the routes of the
// Service named like it, by caller.
func (s *server) routeData(ctx context.Context, ns, name string, w time.Duration) (out, in api.RouteTable, h routeHistory) {
	rs := api.RouteScope{Namespace: ns, Deployment: name, Window: w}
	span, step := chartSpan(w)
	fetch(
		func() { out = s.prom.Routes(ctx, rs) },
		func() {
			in = s.prom.Routes(ctx, api.RouteScope{Namespace: ns, Deployment: name, Window: w, Inbound: true})
		},
		func() { h.Success, h.RPS = s.prom.RouteHistory(ctx, rs, span, step) },
	)
	return out, in, h
}

func (h routeHistory) charts() []views.Chart {
	return []views.Chart{
		chart(h.Success, "Success rate by route", "chart-route-success", func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }, 1),
		chart(h.RPS, "Requests per second by route", "chart-route-rps", formatRPS, 0),
	}
}

// routeTables are the routes panels of deployment dep of namespace ns: what it calls, and who calls its
// Service, route by route.
func (s *server) routeTables(ns, dep string, out, in api.RouteTable) []views.RouteTable {
	o := s.routeTable(ns, dep, out, false)
	o.Title, o.TestID = "Routes: what "+dep+" calls, route by route", "routes"
	o.Empty = "no route metrics from " + dep + "'s proxies (only requests to services of the destinations file are counted by route)"
	i := s.routeTable(ns, dep, in, true)
	i.Title, i.TestID = "Inbound routes: who calls service "+dep+", route by route (as the callers' proxies count them)", "inbound-routes"
	i.Empty = "no caller's proxy counts routes of a service named " + dep + " in namespace " + ns
	return []views.RouteTable{o, i}
}

// routeTable is one routes panel; with callers, each row's caller has a column and its tap link taps
// the caller.
func (s *server) routeTable(ns, dep string, t api.RouteTable, callers bool) views.RouteTable {
	vt := views.RouteTable{Callers: callers}
	if len(t.Failures) > 0 {
		var names []string
		for _, f := range t.Failures {
			names = append(names, f.Metric)
		}
		vt.Error = "could not get " + strings.Join(names, ", ") + ": " + cause(t.Failures[0])
	}
	for _, r := range t.Rows {
		row := routeRowView(r)
		filter := tap.Filter{Direction: tap.DirectionOutbound, Authority: r.Authority(), Route: routeFilterName(r.Route)}
		sel := api.Selector{Namespace: ns, Deployment: dep}
		if callers {
			row.Caller = r.CallerNamespace + "/" + r.CallerDeployment
			sel = api.Selector{Namespace: r.CallerNamespace, Deployment: r.CallerDeployment}
		}
		row.TapHref = s.url("/tap", liveQuery(liveRequest{sel: sel, filter: filter}))
		vt.Rows = append(vt.Rows, row)
	}
	return vt
}

// routeFilterName is the route's name as tap events carry it: empty for a service's default route.
func routeFilterName(r api.Route) string {
	if r.Kind == "default" {
		return ""
	}
	return r.Name
}

// routeRowView formats one route for the page and the terminal alike.
func routeRowView(r api.RouteRow) views.RouteRow {
	name := r.Name
	if r.Kind == "default" {
		name = "default"
	}
	row := views.RouteRow{
		Service:  r.Authority(),
		Name:     name,
		Success:  successCell(r.SuccessRate),
		RPS:      formatRPS(r.RPS),
		P50:      formatLatency(r.LatencyP50),
		P95:      formatLatency(r.LatencyP95),
		P99:      formatLatency(r.LatencyP99),
		Retries:  formatRPS(r.RetryRPS) + "/s",
		Timeouts: formatRPS(r.TimeoutRPS) + "/s",
	}
	if r.RetryShare != nil {
		row.Retries += " (" + strconv.FormatFloat(100**r.RetryShare, 'f', 1, 64) + "%)"
	}
	for _, b := range r.Backends {
		rb := views.RouteBackend{Name: b.Name + "." + b.Namespace + ":" + b.Port, Success: successCell(b.SuccessRate), Share: "—"}
		if b.Share != nil {
			rb.Share = strconv.FormatFloat(100**b.Share, 'f', 0, 64) + "%"
		}
		row.Backends = append(row.Backends, rb)
	}
	return row
}
