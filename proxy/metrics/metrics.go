// Package metrics holds the proxy's Prometheus metrics, named and labelled as linkerd2-proxy's so existing
// queries and dashboards keep working (DESIGN.md, "Proxy metrics").
//
// The hot path never formats labels: a Series binds every label once per (direction, authority, target,
// destination) and caches the bound counters, so counting a request is a map read and an atomic add.
package metrics

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// LatencyBuckets are response_latency_ms's buckets, in milliseconds.
var LatencyBuckets = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
	1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

// DurationBuckets are tcp_connection_duration_ms's buckets, in milliseconds: a connection lives from a
// millisecond to days.
var DurationBuckets = []float64{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000}

// MaxSeries bounds how many distinct label sets each family of metrics holds. Authorities come from clients'
// Host headers; past the bound, new ones are counted under the authority OverflowAuthority so a client
// spraying random hosts cannot exhaust the proxy's memory or Prometheus.
const MaxSeries = 2000

// DefaultExpositionBytes is the default of SetExpositionBytes: about 600 HTTP series of ordinary
// authorities, or as many TCP series of twice that.
const DefaultExpositionBytes = 4 << 20

// OverflowAuthority replaces authorities (and target addresses) past MaxSeries or MaxExpositionBytes.
const OverflowAuthority = "overflow"

// TLS is how the connection a series counts was secured: the labels tls, client_id (inbound), server_id
// (outbound) and no_tls_reason, as linkerd2-proxy labels them. Mutual TLS reads tls="true" with the
// peer's identity; anything else tls="no_identity" with the reason.
type TLS struct {
	// PeerID is the peer's verified identity over mutual TLS; empty when the connection is not.
	PeerID string
	// NoTLSReason says why the connection is not mutual TLS (the NoTLS constants); empty means
	// NoTLSDisabled.
	NoTLSReason string
}

// Reasons a connection is not mutual TLS, the values of no_tls_reason.
const (
	// NoTLSDisabled: identity is off on this proxy.
	NoTLSDisabled = "disabled"
	// NoTLSFromRemote: an inbound client did not start TLS (an unmeshed client).
	NoTLSFromRemote = "no_tls_from_remote"
	// NoTLSNotProvided: discovery gave the destination no identity (an unmeshed endpoint).
	NoTLSNotProvided = "not_provided_by_service_discovery"
	// NoTLSLoopback: the app's own connections to and from its proxy, which never leave the pod.
	NoTLSLoopback = "loopback"
	// NoTLSNoLocalIdentity: this proxy has no valid certificate (yet, or any more) to offer.
	NoTLSNoLocalIdentity = "no_local_identity"
)

// labels returns the values of tls, client_id, server_id and no_tls_reason.
func (t TLS) labels(direction string) (tls, clientID, serverID, reason string) {
	switch {
	case t.PeerID == "":
		reason = t.NoTLSReason
		if reason == "" {
			reason = NoTLSDisabled
		}
		return "no_identity", "", "", reason
	case direction == "inbound":
		return "true", t.PeerID, "", ""
	}
	return "true", "", t.PeerID, ""
}

// Dst is a destination's labels, the dst_* labels of outbound metrics. Zero for inbound metrics and for
// authorities that are not in the destinations file.
type Dst struct {
	Namespace, Deployment, Pod string
}

var (
	baseLabels  = []string{"direction", "authority", "target_addr", "tls", "client_id", "server_id", "no_tls_reason", "dst_namespace", "dst_deployment", "dst_pod"}
	respLabels  = append(append([]string(nil), baseLabels...), "status_code", "classification", "grpc_status", "error")
	tcpLabels   = []string{"direction", "peer", "target_addr", "tls", "client_id", "server_id", "no_tls_reason", "dst_namespace", "dst_deployment", "dst_pod"}
	closeLabels = append(append([]string(nil), tcpLabels...), "classification", "errno")
)

// Metrics is every metric the proxy exports about the traffic it carries.
type Metrics struct {
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	latency   *prometheus.HistogramVec

	tcpOpen     *prometheus.CounterVec
	tcpClose    *prometheus.CounterVec
	tcpOpenNow  *prometheus.GaugeVec
	tcpRead     *prometheus.CounterVec
	tcpWrite    *prometheus.CounterVec
	tcpDuration *prometheus.HistogramVec
	tcpRefused  *prometheus.CounterVec

	detect *prometheus.CounterVec
	limits *prometheus.CounterVec

	http bound[HTTPKey, *HTTPSeries]
	tcp  bound[TCPKey, *TCPSeries]

	httpRoutes, grpcRoutes *routeFamilies // see routes.go
	routes                 bound[RouteKey, *RouteSeries]
}

// bound holds what was bound for each key (a series, a labelled counter), binding it on first use: a key
// seen before costs a read lock and a map lookup.
type bound[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
	// cost, when set, estimates the /metrics bytes of a key's series; spent is the sum for the keys in m,
	// bounded by maxCost when it is positive.
	cost           func(K) int
	spent, maxCost int
}

// get returns k's value, binding it with bind on first use. With overflow set, a new key past MaxSeries, or
// (with cost and maxCost set) whose cost would take the costs of the keys bound past maxCost, is replaced by
// overflow(k) first, so that the number of values and their size stay bounded.
func (b *bound[K, V]) get(k K, bind func(K) V, overflow func(K) K) V {
	b.mu.RLock()
	v, ok := b.m[k]
	b.mu.RUnlock()
	if ok {
		return v
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if overflow != nil && (len(b.m) >= MaxSeries || b.maxCost > 0 && b.spent+b.cost(k) > b.maxCost) {
		k = overflow(k)
	}
	if v, ok := b.m[k]; ok {
		return v
	}
	if b.m == nil {
		b.m = make(map[K]V)
	}
	if overflow != nil && b.maxCost > 0 {
		b.spent += b.cost(k)
	}
	v = bind(k)
	b.m[k] = v
	return v
}

// New creates the metrics and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "request_total", Help: "HTTP requests whose headers the proxy read.",
		}, baseLabels),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "response_total", Help: "HTTP response streams that ended, classified as success or failure.",
		}, respLabels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "response_latency_ms", Help: "Time from request headers read to response headers written, in milliseconds.",
			Buckets: LatencyBuckets,
		}, baseLabels),
		tcpOpen: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tcp_open_total", Help: "TCP connections opened.",
		}, tcpLabels),
		tcpClose: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tcp_close_total", Help: "TCP connections closed.",
		}, closeLabels),
		tcpOpenNow: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tcp_open_connections", Help: "TCP connections open now.",
		}, tcpLabels),
		tcpRead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tcp_read_bytes_total", Help: "Bytes read from TCP connections.",
		}, tcpLabels),
		tcpWrite: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tcp_write_bytes_total", Help: "Bytes written to TCP connections.",
		}, tcpLabels),
		tcpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tcp_connection_duration_ms", Help: "How long TCP connections were open, in milliseconds.",
			Buckets: DurationBuckets,
		}, tcpLabels),
	}
	m.tcpRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tcp_refused_total", Help: "TCP connections accepted and closed at once, not proxied, by reason (proxy-loop: its destination is the proxy itself).",
	}, []string{"direction", "reason"})
	m.detect = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "protocol_detect_total",
		Help: "Connections accepted, by the protocol found: http/1, h2, opaque (proxied as TCP) or malformed " +
			"(starts as HTTP but is not: refused), and why a connection is not HTTP.",
	}, []string{"direction", "target_addr", "protocol", "reason"})
	m.limits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "limit_reached_total",
		Help: "Times a bound on resources stopped something: opaque-idle-timeout (an idle opaque connection closed), " +
			"tap-event-truncated (a tap event's headers cut to size), tap-subscriber-bytes (an event dropped: its " +
			"subscriber holds too many bytes), tap-subscribers (a tap stream refused: too many open), h2-rapid-reset (an HTTP/2 connection closed for cancelling too many streams).",
	}, []string{"limit"})
	reg.MustRegister(m.requests, m.responses, m.latency,
		m.tcpOpen, m.tcpClose, m.tcpOpenNow, m.tcpRead, m.tcpWrite, m.tcpDuration, m.tcpRefused, m.detect, m.limits)

	m.http.cost, m.tcp.cost = costHTTP, costTCP
	m.SetExpositionBytes(DefaultExpositionBytes)
	m.httpRoutes = newRouteFamilies(reg, "http", "http_status")
	m.grpcRoutes = newRouteFamilies(reg, "grpc", "grpc_status")
	return m
}

// Detected counts one accepted connection of a listener whose connections go to targetAddr (empty for the
// outbound listener, which routes by authority) as protocol, with the reason it is not HTTP. Every value
// comes from the proxy's configuration or a small fixed set: the family stays small.
func (m *Metrics) Detected(direction, targetAddr, protocol, reason string) {
	m.detect.WithLabelValues(direction, targetAddr, protocol, reason).Inc()
}

// LimitReached counts one time the bound limit, from a small fixed set, stopped something.
func (m *Metrics) LimitReached(limit string) {
	m.limits.WithLabelValues(limit).Inc()
}

// HTTPKey selects one HTTP series.
type HTTPKey struct {
	Direction  string // inbound or outbound
	Authority  string // the request's authority, as routed
	TargetAddr string // the address the request was sent to
	TLS        TLS    // the connection the request came in on (inbound) or went out on (outbound)
	Dst        Dst
}

// HTTPSeries is the bound metrics of one HTTPKey.
type HTTPSeries struct {
	Requests prometheus.Counter
	Latency  prometheus.Observer

	labels    []string
	responses *prometheus.CounterVec
	byOutcome bound[Outcome, prometheus.Counter]
}

// HTTP returns k's series, creating it on first use.
func (m *Metrics) HTTP(k HTTPKey) *HTTPSeries {
	return m.http.get(k, m.bindHTTP, overflowHTTP)
}

func (m *Metrics) bindHTTP(k HTTPKey) *HTTPSeries {
	tls, client, server, reason := k.TLS.labels(k.Direction)
	labels := []string{k.Direction, k.Authority, k.TargetAddr, tls, client, server, reason, k.Dst.Namespace, k.Dst.Deployment, k.Dst.Pod}
	return &HTTPSeries{
		Requests:  m.requests.WithLabelValues(labels...),
		Latency:   m.latency.WithLabelValues(labels...),
		labels:    labels,
		responses: m.responses,
	}
}

// overflowHTTP is the key counting the new series past MaxSeries. An authority not in the destinations file
// is also the target_addr it is dialled at: both go.
func overflowHTTP(k HTTPKey) HTTPKey {
	k.Authority, k.TargetAddr = OverflowAuthority, OverflowAuthority
	return k
}

// NoGRPCStatus is Outcome.GRPCStatus for a response that is not gRPC.
const NoGRPCStatus = -1

// Outcome is how an HTTP response stream ended.
type Outcome struct {
	Status     int    // HTTP status code; 0 when no response headers were written
	GRPCStatus int    // gRPC status code, or NoGRPCStatus
	Error      string // why the stream failed, from a small fixed set; empty when it did not
}

// Failure reports whether o counts as a failure: a 5xx, a gRPC status other than OK, or a stream error.
func (o Outcome) Failure() bool {
	return o.Error != "" || o.Status >= 500 || (o.GRPCStatus != NoGRPCStatus && o.GRPCStatus != 0)
}

// Response counts one ended response stream.
func (s *HTTPSeries) Response(o Outcome) {
	if o.GRPCStatus < NoGRPCStatus || o.GRPCStatus > 99 {
		o.GRPCStatus = 2 // UNKNOWN: keeps the label bounded against a misbehaving server
	}
	if o.Status < 0 || o.Status > 999 {
		o.Status = 0
	}
	s.byOutcome.get(o, s.bindOutcome, nil).Inc()
}

func (s *HTTPSeries) bindOutcome(o Outcome) prometheus.Counter {
	status, grpc, class := "", "", "success"
	if o.Status != 0 {
		status = strconv.Itoa(o.Status)
	}
	if o.GRPCStatus != NoGRPCStatus {
		grpc = strconv.Itoa(o.GRPCStatus)
	}
	if o.Failure() {
		class = "failure"
	}
	return s.responses.WithLabelValues(append(append([]string(nil), s.labels...), status, class, grpc, o.Error)...)
}

// TCPKey selects one TCP series.
type TCPKey struct {
	Direction  string // inbound or outbound
	Peer       string // src: the accepted connection; dst: the connection the proxy opened
	TargetAddr string
	TLS        TLS
	Dst        Dst
}

// TCPSeries is the bound metrics of one TCPKey.
type TCPSeries struct {
	Open     prometheus.Counter
	OpenNow  prometheus.Gauge
	Read     prometheus.Counter
	Write    prometheus.Counter
	Duration prometheus.Observer

	labels []string
	closes *prometheus.CounterVec
	byErr  bound[string, prometheus.Counter]
}

// TCP returns k's series, creating it on first use.
func (m *Metrics) TCP(k TCPKey) *TCPSeries {
	return m.tcp.get(k, m.bindTCP, overflowTCP)
}

func (m *Metrics) bindTCP(k TCPKey) *TCPSeries {
	tls, client, server, reason := k.TLS.labels(k.Direction)
	labels := []string{k.Direction, k.Peer, k.TargetAddr, tls, client, server, reason, k.Dst.Namespace, k.Dst.Deployment, k.Dst.Pod}
	return &TCPSeries{
		Open:     m.tcpOpen.WithLabelValues(labels...),
		OpenNow:  m.tcpOpenNow.WithLabelValues(labels...),
		Read:     m.tcpRead.WithLabelValues(labels...),
		Write:    m.tcpWrite.WithLabelValues(labels...),
		Duration: m.tcpDuration.WithLabelValues(labels...),
		labels:   labels,
		closes:   m.tcpClose,
	}
}

// SetExpositionBytes bounds, roughly, the bytes the HTTP series take on /metrics, and again the TCP series,
// to n (0: no bound but MaxSeries). Every line of a series repeats its labels, so a few thousand
// client-chosen Host values, or a few very long ones, would make /metrics megabytes long well before
// MaxSeries; past n, new authorities and targets are counted as overflow, as past MaxSeries. Call it
// before counting anything.
func (m *Metrics) SetExpositionBytes(n int) {
	m.http.maxCost, m.tcp.maxCost = n, n
}

// Roughly what one series takes on /metrics: lines (a counter, a histogram of 25 buckets and its sum and
// count, a response or close counter or two), each some fixed bytes of names and label names, plus the
// label values.
const (
	httpLines, tcpLines = 31, 16
	lineBytes           = 200
)

// costHTTP estimates the /metrics bytes of k's series.
func costHTTP(k HTTPKey) int {
	return httpLines * (lineBytes + len(k.Authority) + len(k.TargetAddr) + k.TLS.size() + k.Dst.size())
}

// costTCP estimates the /metrics bytes of k's series.
func costTCP(k TCPKey) int {
	return tcpLines * (lineBytes + len(k.TargetAddr) + k.TLS.size() + k.Dst.size())
}

func (t TLS) size() int { return len(t.PeerID) + len(t.NoTLSReason) }
func (d Dst) size() int { return len(d.Namespace) + len(d.Deployment) + len(d.Pod) }

// overflowTCP is the key counting the new series past MaxSeries.
func overflowTCP(k TCPKey) TCPKey {
	k.TargetAddr = OverflowAuthority
	return k
}

// Refused counts a connection of direction closed at once for reason, from a small fixed set.
func (m *Metrics) Refused(direction, reason string) {
	m.tcpRefused.WithLabelValues(direction, reason).Inc()
}

// Opened counts a connection opening.
func (s *TCPSeries) Opened() {
	s.Open.Inc()
	s.OpenNow.Inc()
}

// Closed counts a connection closing after living for d; err is why it failed, nil for a clean close.
func (s *TCPSeries) Closed(d time.Duration, err error) {
	s.OpenNow.Dec()
	s.Duration.Observe(Millis(d))
	s.byErr.get(Errno(err), s.bindClose, nil).Inc()
}

// bindClose binds the close counter of errno: a failed close always has one (Errno), a clean close none.
func (s *TCPSeries) bindClose(errno string) prometheus.Counter {
	class := "success"
	if errno != "" {
		class = "failure"
	}
	return s.closes.WithLabelValues(append(append([]string(nil), s.labels...), class, errno)...)
}

// Errno names the system error behind err (ECONNRESET, ETIMEDOUT, ...); "" for nil, "unknown" when there
// is none. A failed close always has a non-empty errno, so the close counter keys on it alone.
func Errno(err error) string {
	if err == nil {
		return ""
	}
	var e unix.Errno
	if errors.As(err, &e) {
		if name := unix.ErrnoName(e); name != "" {
			return name
		}
	}
	return "unknown"
}

// Millis converts d to fractional milliseconds, the unit of every histogram here.
func Millis(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}
