package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Route metrics: linkerd2-proxy's outbound_{http,grpc}_route_* families with their parent_*, route_*,
// backend_* and hostname labels, so that Linkerd's `viz stat-outbound` queries work on them. Every label
// value comes from configuration (services and routes of the destinations file or the cluster), never from
// a request, so the series are bounded by the configuration.

// RequestBuckets and ResponseBuckets are linkerd2-proxy's buckets, in seconds, of the route request
// duration and of the backend response duration histograms.
var (
	RequestBuckets  = []float64{0.05, 0.5, 1, 10}
	ResponseBuckets = []float64{0.025, 0.05, 0.1, 0.25, 0.5, 1, 10}
)

// Ref names a Kubernetes-style object: a route's parent (a Service) or a backend.
type Ref struct {
	Group, Kind, Namespace, Name, Port, Section string
}

// RouteRef names a route: the default route is Group "", Kind "default", Name "http" or "grpc", as
// linkerd2-proxy names it.
type RouteRef struct {
	Group, Kind, Namespace, Name string
}

// RouteKey selects one route's series.
type RouteKey struct {
	GRPC     bool // the grpc family (the request was gRPC), else http
	Parent   Ref
	Route    RouteRef
	Hostname string
}

// RouteStatus is how one route request (or one backend response) ended: HTTPStatus or GRPCStatus
// (NoGRPCStatus for HTTP), or Error, one of linkerd2-proxy's error values (FAIL_FAST, REQUEST_TIMEOUT,
// RESPONSE_HEADERS_TIMEOUT, CANCEL, ...) when the proxy produced the answer or the stream broke.
type RouteStatus struct {
	HTTPStatus int
	GRPCStatus int
	Error      string
}

var (
	parentLabels  = []string{"parent_group", "parent_kind", "parent_namespace", "parent_name", "parent_port", "parent_section_name"}
	routeLabels   = append(append([]string(nil), parentLabels...), "route_group", "route_kind", "route_namespace", "route_name", "hostname")
	backendLabels = append(append(append([]string(nil), parentLabels...), "route_group", "route_kind", "route_namespace", "route_name"),
		"backend_group", "backend_kind", "backend_namespace", "backend_name", "backend_port", "backend_section_name")
)

// routeFamilies are one protocol's (http or grpc) route families.
type routeFamilies struct {
	duration        *prometheus.HistogramVec
	statuses        *prometheus.CounterVec
	backendRequests *prometheus.CounterVec
	backendDuration *prometheus.HistogramVec
	backendStatuses *prometheus.CounterVec
	retryRequests   *prometheus.CounterVec
	retrySuccesses  *prometheus.CounterVec
	retryLimit      *prometheus.CounterVec
	retryOverflow   *prometheus.CounterVec
	retryTooLarge   *prometheus.CounterVec
	statusLabel     string
}

func newRouteFamilies(reg prometheus.Registerer, proto, statusLabel string) *routeFamilies {
	p := "outbound_" + proto + "_route_"
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: p + name, Help: help}, labels)
	}
	withStatus := func(labels []string) []string {
		return append(append([]string(nil), labels...), statusLabel, "error")
	}
	f := &routeFamilies{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: p + "request_duration_seconds", Help: "The time between request initialization and response completion.",
			Buckets: RequestBuckets,
		}, routeLabels),
		statuses:        counter("request_statuses_total", "Completed request-response streams.", withStatus(routeLabels)),
		backendRequests: counter("backend_requests_total", "Requests sent to a route's backend, retries included.", backendLabels),
		backendDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: p + "backend_response_duration_seconds", Help: "The time between request completion and response completion.",
			Buckets: ResponseBuckets,
		}, backendLabels),
		backendStatuses: counter("backend_response_statuses_total", "Completed responses.", withStatus(backendLabels)),
		retryRequests:   counter("retry_requests_total", "Retry requests emitted.", routeLabels),
		retrySuccesses:  counter("retry_successes_total", "Successful responses to retry requests.", routeLabels),
		retryLimit:      counter("retry_limit_exceeded_total", "Retryable requests not sent due to retry limits.", routeLabels),
		retryOverflow:   counter("retry_overflow_total", "Retryable requests not sent due to the retry budget.", routeLabels),
		retryTooLarge: counter("retry_body_too_large_total",
			"Requests of a route with retries whose body was too large to keep for a retry, sent once (not a linkerd2-proxy family).", routeLabels),
		statusLabel: statusLabel,
	}
	reg.MustRegister(f.duration, f.statuses, f.backendRequests, f.backendDuration, f.backendStatuses,
		f.retryRequests, f.retrySuccesses, f.retryLimit, f.retryOverflow, f.retryTooLarge)
	return f
}

// RouteSeries is the bound metrics of one route.
type RouteSeries struct {
	RetryRequests      prometheus.Counter
	RetrySuccesses     prometheus.Counter
	RetryLimitExceeded prometheus.Counter
	RetryOverflow      prometheus.Counter
	RetryBodyTooLarge  prometheus.Counter

	duration prometheus.Observer
	fam      *routeFamilies
	labels   []string // routeLabels' values
	backend  []string // parent and route values, without hostname: backendLabels' prefix
	statuses bound[RouteStatus, prometheus.Counter]
	backends bound[Ref, *BackendSeries]
}

// Route returns k's series, binding it on first use.
func (m *Metrics) Route(k RouteKey) *RouteSeries {
	return m.routes.get(k, m.bindRoute, nil)
}

func (m *Metrics) bindRoute(k RouteKey) *RouteSeries {
	f := m.httpRoutes
	if k.GRPC {
		f = m.grpcRoutes
	}
	p, r := k.Parent, k.Route
	prefix := []string{p.Group, p.Kind, p.Namespace, p.Name, p.Port, p.Section, r.Group, r.Kind, r.Namespace, r.Name}
	labels := append(append([]string(nil), prefix...), k.Hostname)
	return &RouteSeries{
		RetryRequests:      f.retryRequests.WithLabelValues(labels...),
		RetrySuccesses:     f.retrySuccesses.WithLabelValues(labels...),
		RetryLimitExceeded: f.retryLimit.WithLabelValues(labels...),
		RetryOverflow:      f.retryOverflow.WithLabelValues(labels...),
		RetryBodyTooLarge:  f.retryTooLarge.WithLabelValues(labels...),
		duration:           f.duration.WithLabelValues(labels...),
		fam:                f,
		labels:             labels,
		backend:            prefix,
	}
}

// Done counts one route request that ended with st after d.
func (s *RouteSeries) Done(st RouteStatus, d time.Duration) {
	s.duration.Observe(d.Seconds())
	s.statuses.get(st, func(st RouteStatus) prometheus.Counter {
		return s.fam.statuses.WithLabelValues(append(append([]string(nil), s.labels...), s.fam.statusValue(st), st.Error)...)
	}, nil).Inc()
}

// statusValue is the http_status or grpc_status label of st: the code (gRPC: its name, as
// linkerd2-proxy writes it), empty for an HTTP error, UNKNOWN for a gRPC error.
func (f *routeFamilies) statusValue(st RouteStatus) string {
	if f == nil || f.statusLabel == "grpc_status" {
		if st.Error != "" || st.GRPCStatus < 0 || st.GRPCStatus >= len(grpcNames) {
			return "UNKNOWN"
		}
		return grpcNames[st.GRPCStatus]
	}
	if st.Error != "" || st.HTTPStatus <= 0 {
		return ""
	}
	return strconv.Itoa(st.HTTPStatus)
}

var grpcNames = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// BackendSeries is the bound metrics of one backend of a route.
type BackendSeries struct {
	Requests prometheus.Counter
	duration prometheus.Observer
	route    *RouteSeries
	labels   []string
	statuses bound[RouteStatus, prometheus.Counter]
}

// Backend returns the series of the route's backend b, binding it on first use.
func (s *RouteSeries) Backend(b Ref) *BackendSeries {
	return s.backends.get(b, func(b Ref) *BackendSeries {
		labels := append(append([]string(nil), s.backend...), b.Group, b.Kind, b.Namespace, b.Name, b.Port, b.Section)
		return &BackendSeries{
			Requests: s.fam.backendRequests.WithLabelValues(labels...),
			duration: s.fam.backendDuration.WithLabelValues(labels...),
			route:    s,
			labels:   labels,
		}
	}, nil)
}

// Done counts one backend response (one try) that ended with st, d after the request was sent.
func (b *BackendSeries) Done(st RouteStatus, d time.Duration) {
	b.duration.Observe(d.Seconds())
	b.statuses.get(st, func(st RouteStatus) prometheus.Counter {
		f := b.route.fam
		return f.backendStatuses.WithLabelValues(append(append([]string(nil), b.labels...), f.statusValue(st), st.Error)...)
	}, nil).Inc()
}
