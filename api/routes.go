package api

import (
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// Route metrics: the proxies' outbound_{http,grpc}_route_* families (linkerd2-proxy's), read for one
// client workload: the routes it calls, each with its golden metrics, retries, timeouts and backends.

// Route identifies a route: the service it belongs to (its parent) and its name ("http" or "grpc" for a
// service's default route, kind "default").
type Route struct {
	// CallerNamespace and CallerDeployment are the calling workload, in a table of inbound routes.
	CallerNamespace  string `json:"namespace,omitempty"`
	CallerDeployment string `json:"deployment,omitempty"`
	ParentNamespace  string `json:"parent_namespace"`
	ParentName       string `json:"parent_name"`
	ParentPort       string `json:"parent_port"`
	Kind             string `json:"route_kind"`
	Name             string `json:"route_name"`
}

// Authority is the route's service as the destinations file names it, name.namespace:port.
func (r Route) Authority() string {
	a := r.ParentName
	if r.ParentNamespace != "" {
		a += "." + r.ParentNamespace
	}
	if r.ParentPort != "" {
		a += ":" + r.ParentPort
	}
	return a
}

// RouteRow is one route of a workload's routes table.
type RouteRow struct {
	Route
	// SuccessRate is the share of route requests that succeeded (after retries), 0..1; nil: no traffic.
	SuccessRate *float64 `json:"success_rate"`
	RPS         float64  `json:"rps"`
	// LatencyP50... are route request durations (retries included) in ms; nil: no traffic.
	LatencyP50 *float64 `json:"latency_ms_p50"`
	LatencyP95 *float64 `json:"latency_ms_p95"`
	LatencyP99 *float64 `json:"latency_ms_p99"`
	// RetryRPS is retries per second; RetryShare the part of the route's tries that were retries,
	// retries / (requests + retries), as Linkerd's viz stat-outbound computes it (nil: no traffic).
	RetryRPS   float64  `json:"retry_rps"`
	RetryShare *float64 `json:"retry_share"`
	// TimeoutRPS is route requests per second that ended with a route timeout.
	TimeoutRPS float64      `json:"timeout_rps"`
	Backends   []BackendRow `json:"backends"`
}

// BackendRow is one backend of a route: where its traffic split sent requests (tries, retries included).
type BackendRow struct {
	Namespace string  `json:"backend_namespace"`
	Name      string  `json:"backend_name"`
	Port      string  `json:"backend_port"`
	RPS       float64 `json:"rps"`
	// Share is the backend's part of the route's tries, the traffic split's observed weight.
	Share *float64 `json:"share"`
	// SuccessRate is the share of its responses that succeeded; nil: none.
	SuccessRate *float64 `json:"success_rate"`
}

// RouteTable is a workload's routes, by service then route name.
type RouteTable struct {
	Rows     []RouteRow `json:"rows"`
	Warnings []string   `json:"warnings,omitempty"`
	Failures []Failure  `json:"failures,omitempty"`
}

// Metric names of route metrics, as failures report them.
const (
	MetricRouteSuccess  = "route success rate"
	MetricRouteRPS      = "route requests per second"
	MetricRouteP50      = "route latency p50"
	MetricRouteP95      = "route latency p95"
	MetricRouteP99      = "route latency p99"
	MetricRouteRetries  = "route retries"
	MetricRouteTimeouts = "route timeouts"
	MetricBackendRPS    = "route backend requests"
	MetricBackendOK     = "route backend success rate"
)

var (
	routeBy   = []string{"parent_namespace", "parent_name", "parent_port", "route_kind", "route_name"}
	backendBy = append(append([]string(nil), routeBy...), "backend_namespace", "backend_name", "backend_port")
	// routeOK selects the successful statuses of both families: no error, no 5xx (http), OK or none (grpc).
	routeOK = `error="",http_status!~"5..",grpc_status=~"|OK"`
)

// RouteScope is the client workload whose outbound routes to show, over a rate window (zero: 1m). With
// Inbound, it is the routes of the Service named like the workload (parent_name), by calling workload,
// as the callers' proxies count them.
type RouteScope struct {
	Namespace, Deployment string
	Window                time.Duration
	Inbound               bool
}

// callers are the labels that tell an inbound route's calling workloads apart.
var callers = []string{"namespace", "deployment"}

func (rs RouteScope) routeBy() []string {
	if rs.Inbound {
		return append(append([]string(nil), callers...), routeBy...)
	}
	return routeBy
}

func (rs RouteScope) backendBy() []string {
	if rs.Inbound {
		return append(append([]string(nil), callers...), backendBy...)
	}
	return backendBy
}

func (rs RouteScope) window() string { return Scope{Window: rs.Window}.window() }

// selector selects family (both protocols, "request_statuses_total" for
// outbound_{http,grpc}_route_request_statuses_total) of the workload's proxies, plus extra matchers.
func (rs RouteScope) selector(family, extra string) string {
	var b strings.Builder
	b.WriteString(`{__name__=~"outbound_(http|grpc)_route_`)
	b.WriteString(family)
	ns, name := `",namespace=`, `,deployment=`
	if rs.Inbound {
		ns, name = `",parent_namespace=`, `,parent_name=`
	}
	b.WriteString(ns)
	b.WriteString(strconv.Quote(rs.Namespace))
	b.WriteString(name)
	b.WriteString(strconv.Quote(rs.Deployment))
	if extra != "" {
		b.WriteByte(',')
		b.WriteString(extra)
	}
	b.WriteByte('}')
	return b.String()
}

func (rs RouteScope) rate(family, extra string) string {
	return "rate(" + rs.selector(family, extra) + "[" + rs.window() + "])"
}

// RouteRPSQuery is route requests per second, per route.
func RouteRPSQuery(rs RouteScope) string {
	return sumBy(rs.routeBy(), rs.rate("request_statuses_total", ""))
}

// RouteSuccessQuery is the share of route requests that succeeded, per route (NaN: no traffic).
func RouteSuccessQuery(rs RouteScope) string {
	all := RouteRPSQuery(rs)
	ok := sumBy(rs.routeBy(), rs.rate("request_statuses_total", routeOK))
	return "(" + ok + " or " + all + " * 0) / " + all
}

// RouteLatencyQuery is the q-quantile of route request duration in ms, per route.
func RouteLatencyQuery(rs RouteScope, q float64) string {
	return "1000 * histogram_quantile(" + strconv.FormatFloat(q, 'f', -1, 64) + ", " +
		sumBy(append([]string{"le"}, rs.routeBy()...), rs.rate("request_duration_seconds_bucket", "")) + ")"
}

// RouteRetriesQuery is retries per second, per route.
func RouteRetriesQuery(rs RouteScope) string {
	return sumBy(rs.routeBy(), rs.rate("retry_requests_total", ""))
}

// RouteTimeoutsQuery is route requests per second ended by a route timeout, per route.
func RouteTimeoutsQuery(rs RouteScope) string {
	return sumBy(rs.routeBy(), rs.rate("request_statuses_total", `error=~"REQUEST_TIMEOUT|RESPONSE_HEADERS_TIMEOUT"`))
}

// BackendRPSQuery is tries per second, per route and backend.
func BackendRPSQuery(rs RouteScope) string {
	return sumBy(rs.backendBy(), rs.rate("backend_requests_total", ""))
}

// BackendSuccessQuery is the share of a backend's responses that succeeded, per route and backend.
func BackendSuccessQuery(rs RouteScope) string {
	all := sumBy(rs.backendBy(), rs.rate("backend_response_statuses_total", ""))
	ok := sumBy(rs.backendBy(), rs.rate("backend_response_statuses_total", routeOK))
	return "(" + ok + " or " + all + " * 0) / " + all
}

// Routes fetches a workload's routes table: one query per metric, concurrently.
func (q *Querier) Routes(ctx context.Context, rs RouteScope) RouteTable {
	type part struct {
		metric, query string
		set           func(*RouteRow, float64)
	}
	ptr := func(f func(*RouteRow) **float64) func(*RouteRow, float64) {
		return func(r *RouteRow, v float64) {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				*f(r) = &v
			}
		}
	}
	parts := []part{
		{MetricRouteRPS, RouteRPSQuery(rs), func(r *RouteRow, v float64) { r.RPS = v }},
		{MetricRouteSuccess, RouteSuccessQuery(rs), ptr(func(r *RouteRow) **float64 { return &r.SuccessRate })},
		{MetricRouteP50, RouteLatencyQuery(rs, 0.5), ptr(func(r *RouteRow) **float64 { return &r.LatencyP50 })},
		{MetricRouteP95, RouteLatencyQuery(rs, 0.95), ptr(func(r *RouteRow) **float64 { return &r.LatencyP95 })},
		{MetricRouteP99, RouteLatencyQuery(rs, 0.99), ptr(func(r *RouteRow) **float64 { return &r.LatencyP99 })},
		{MetricRouteRetries, RouteRetriesQuery(rs), func(r *RouteRow, v float64) { r.RetryRPS = v }},
		{MetricRouteTimeouts, RouteTimeoutsQuery(rs), func(r *RouteRow, v float64) { r.TimeoutRPS = v }},
	}
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		t        RouteTable
		rows     = map[Route]*RouteRow{}
		backends = map[BackendKey]*BackendRow{}
	)
	row := func(m model.Metric) *RouteRow {
		k := routeOf(m)
		r := rows[k]
		if r == nil {
			r = &RouteRow{Route: k}
			rows[k] = r
		}
		return r
	}
	vector := func(metric, query string, each func(model.Metric, float64)) {
		vec, ws, err := q.Vector(ctx, query)
		mu.Lock()
		defer mu.Unlock()
		t.Warnings = append(t.Warnings, ws...)
		if err != nil {
			t.Failures = append(t.Failures, failure(metric, err))
			return
		}
		for _, s := range vec {
			each(s.Metric, float64(s.Value))
		}
	}
	for _, p := range parts {
		wg.Go(func() {
			vector(p.metric, p.query, func(m model.Metric, v float64) { p.set(row(m), v) })
		})
	}
	backend := func(m model.Metric) *BackendRow {
		k := BackendKey{routeOf(m), string(m["backend_namespace"]), string(m["backend_name"]), string(m["backend_port"])}
		b := backends[k]
		if b == nil {
			b = &BackendRow{Namespace: k.Namespace, Name: k.Name, Port: k.Port}
			backends[k] = b
		}
		return b
	}
	wg.Go(func() {
		vector(MetricBackendRPS, BackendRPSQuery(rs), func(m model.Metric, v float64) { backend(m).RPS = v })
	})
	wg.Go(func() {
		vector(MetricBackendOK, BackendSuccessQuery(rs), func(m model.Metric, v float64) {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				backend(m).SuccessRate = &v
			}
		})
	})
	wg.Wait()

	for k, b := range backends {
		r := rows[k.Route]
		if r == nil {
			r = &RouteRow{Route: k.Route}
			rows[k.Route] = r
		}
		r.Backends = append(r.Backends, *b)
	}
	for _, r := range rows {
		var tries float64
		for _, b := range r.Backends {
			tries += b.RPS
		}
		for i := range r.Backends {
			if tries > 0 {
				share := r.Backends[i].RPS / tries
				r.Backends[i].Share = &share
			}
		}
		slices.SortFunc(r.Backends, func(a, b BackendRow) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
		if r.RPS > 0 {
			share := r.RetryRPS / (r.RPS + r.RetryRPS)
			r.RetryShare = &share
		}
		t.Rows = append(t.Rows, *r)
	}
	key := func(r RouteRow) string {
		return r.CallerNamespace + "/" + r.CallerDeployment + "/" + r.ParentNamespace + "/" + r.ParentName + ":" + r.ParentPort + "/" + r.Name
	}
	slices.SortFunc(t.Rows, func(a, b RouteRow) int { return strings.Compare(key(a), key(b)) })
	slices.SortFunc(t.Failures, func(a, b Failure) int { return strings.Compare(a.Metric, b.Metric) })
	return t
}

// BackendKey is a backend of a route.
type BackendKey struct {
	Route                 Route
	Namespace, Name, Port string
}

func routeOf(m model.Metric) Route {
	return Route{
		CallerNamespace:  string(m["namespace"]),
		CallerDeployment: string(m["deployment"]),
		ParentNamespace:  string(m["parent_namespace"]),
		ParentName:       string(m["parent_name"]),
		ParentPort:       string(m["parent_port"]),
		Kind:             string(m["route_kind"]),
		Name:             string(m["route_name"]),
	}
}

// RouteHistory fetches per-route success rate and requests per second of a workload over span at step,
// one line per route, named service/route.
func (q *Querier) RouteHistory(ctx context.Context, rs RouteScope, span, step time.Duration) (success, rps Chart) {
	end := q.now()
	mk := func(metric string) Chart { return Chart{Metric: metric, Start: end.Add(-span), End: end, Step: step} }
	success, rps = mk(MetricRouteSuccess), mk(MetricRouteRPS)
	var wg sync.WaitGroup
	for _, c := range []struct {
		chart *Chart
		query string
	}{{&success, RouteSuccessQuery(rs)}, {&rps, RouteRPSQuery(rs)}} {
		wg.Go(func() {
			m, ws, err := q.Matrix(ctx, c.query, end, span, step)
			c.chart.Warnings = ws
			if err != nil {
				f := failure(c.chart.Metric, err)
				c.chart.Failure = &f
				return
			}
			for _, s := range m {
				r := routeOf(s.Metric)
				line := Series{Name: r.ParentName + "/" + r.Name}
				for _, p := range s.Values {
					if v := float64(p.Value); !math.IsNaN(v) && !math.IsInf(v, 0) {
						line.Points = append(line.Points, Point{T: p.Timestamp.Time(), V: v})
					}
				}
				c.chart.Series = append(c.chart.Series, line)
			}
			slices.SortFunc(c.chart.Series, func(a, b Series) int { return strings.Compare(a.Name, b.Name) })
		})
	}
	wg.Wait()
	return success, rps
}
