package metrics_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshscope/meshscope/proxy/metrics"
)

// designLatencyBuckets is response_latency_ms's buckets as DESIGN.md ("Proxy metrics") lists them, written
// out here rather than read from metrics.LatencyBuckets so a change to either is caught.
var designLatencyBuckets = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
	1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

var (
	httpLabelNames = []string{"authority", "client_id", "direction", "dst_deployment", "dst_namespace", "dst_pod",
		"no_tls_reason", "server_id", "target_addr", "tls"}
	respLabelNames = []string{"authority", "classification", "client_id", "direction", "dst_deployment", "dst_namespace", "dst_pod",
		"error", "grpc_status", "no_tls_reason", "server_id", "status_code", "target_addr", "tls"}
	tcpLabelNames = []string{"client_id", "direction", "dst_deployment", "dst_namespace", "dst_pod", "no_tls_reason",
		"peer", "server_id", "target_addr", "tls"}
	closeLabelNames = []string{"classification", "client_id", "direction", "dst_deployment", "dst_namespace", "dst_pod", "errno",
		"no_tls_reason", "peer", "server_id", "target_addr", "tls"}
)

// family gathers reg and returns the family called name, failing the test when it is missing or not of
// type typ.
func family(t *testing.T, reg prometheus.Gatherer, name string, typ dto.MetricType) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			if mf.GetType() != typ {
				t.Fatalf("%s has type %v, want %v", name, mf.GetType(), typ)
			}
			return mf
		}
	}
	t.Fatalf("no family %s among %d gathered", name, len(mfs))
	return nil
}

// labelsOf returns m's labels as a map.
func labelsOf(m *dto.Metric) map[string]string {
	l := make(map[string]string, len(m.GetLabel()))
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// sig is a label set written as Prometheus would select it, sorted by name, for readable comparisons.
func sig(l map[string]string) string {
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + "=" + strconv.Quote(l[n])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// values returns every series of a counter or gauge family by its label set, checking that each carries
// exactly the label names want.
func values(t *testing.T, reg prometheus.Gatherer, name string, typ dto.MetricType, want []string) map[string]float64 {
	t.Helper()
	out := make(map[string]float64)
	for _, m := range family(t, reg, name, typ).GetMetric() {
		l := labelsOf(m)
		names := make([]string, 0, len(l))
		for n := range l {
			names = append(names, n)
		}
		sort.Strings(names)
		if !slices.Equal(names, want) {
			t.Errorf("%s%s has label names %v, want %v", name, sig(l), names, want)
		}
		v := m.GetCounter().GetValue()
		if typ == dto.MetricType_GAUGE {
			v = m.GetGauge().GetValue()
		}
		out[sig(l)] = v
	}
	return out
}

func equalSeries(t *testing.T, name string, got, want map[string]float64) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s%s missing", name, k)
		} else if g != w {
			t.Errorf("%s%s = %v, want %v", name, k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s%s = %v, not expected", name, k, g)
		}
	}
}

// with returns base with extra labels added.
func with(base map[string]string, kv ...string) map[string]string {
	l := make(map[string]string, len(base)+len(kv)/2)
	for k, v := range base {
		l[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return l
}

// snapshot gathers reg once, for tests that look at thousands of series several times.
func snapshot(t *testing.T, reg prometheus.Gatherer) prometheus.Gatherer {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, nil })
}

func sum(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

func TestHTTPSeriesNamesAndLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)

	out := m.HTTP(metrics.HTTPKey{
		Direction: "outbound", Authority: "voting.shop:8080", TargetAddr: "127.0.0.1:14143",
		Dst: metrics.Dst{Namespace: "shop", Deployment: "voting", Pod: "voting-7d9f-0"},
	})
	out.Requests.Inc()
	out.Requests.Inc()
	out.Response(metrics.Outcome{Status: 200, GRPCStatus: metrics.NoGRPCStatus})
	out.Response(metrics.Outcome{Status: 502, GRPCStatus: metrics.NoGRPCStatus, Error: "connection-refused"})
	out.Latency.Observe(metrics.Millis(7 * time.Millisecond))

	in := m.HTTP(metrics.HTTPKey{Direction: "inbound", Authority: "web.shop:8080", TargetAddr: "127.0.0.1:8080"})
	in.Requests.Inc()
	in.Response(metrics.Outcome{Status: 200, GRPCStatus: 0})

	outL := map[string]string{
		"direction": "outbound", "authority": "voting.shop:8080", "target_addr": "127.0.0.1:14143", "tls": "no_identity", "client_id": "", "server_id": "", "no_tls_reason": "disabled",
		"dst_namespace": "shop", "dst_deployment": "voting", "dst_pod": "voting-7d9f-0",
	}
	inL := map[string]string{
		"direction": "inbound", "authority": "web.shop:8080", "target_addr": "127.0.0.1:8080", "tls": "no_identity", "client_id": "", "server_id": "", "no_tls_reason": "disabled",
		"dst_namespace": "", "dst_deployment": "", "dst_pod": "",
	}

	equalSeries(t, "request_total", values(t, reg, "request_total", dto.MetricType_COUNTER, httpLabelNames),
		map[string]float64{sig(outL): 2, sig(inL): 1})
	equalSeries(t, "response_total", values(t, reg, "response_total", dto.MetricType_COUNTER, respLabelNames),
		map[string]float64{
			sig(with(outL, "status_code", "200", "classification", "success", "grpc_status", "", "error", "")):                   1,
			sig(with(outL, "status_code", "502", "classification", "failure", "grpc_status", "", "error", "connection-refused")): 1,
			sig(with(inL, "status_code", "200", "classification", "success", "grpc_status", "0", "error", "")):                   1,
		})

	// A series gets its histogram when it is created, observed or not: both are exported.
	lat := family(t, reg, "response_latency_ms", dto.MetricType_HISTOGRAM)
	counts := make(map[string]uint64)
	for _, mt := range lat.GetMetric() {
		counts[sig(labelsOf(mt))] = mt.GetHistogram().GetSampleCount()
	}
	if len(counts) != 2 || counts[sig(outL)] != 1 || counts[sig(inL)] != 0 {
		t.Errorf("response_latency_ms sample counts = %v, want 1 on %s and 0 on %s", counts, sig(outL), sig(inL))
	}

	// Asking again for a key returns the same series, not a second one.
	if again := m.HTTP(metrics.HTTPKey{Direction: "inbound", Authority: "web.shop:8080", TargetAddr: "127.0.0.1:8080"}); again != in {
		t.Error("HTTP returned a new series for a key it already had")
	}
	if n, err := testutil.GatherAndCount(reg, "request_total", "response_latency_ms"); err != nil || n != 4 {
		t.Errorf("request_total + response_latency_ms series = %d (err %v), want 4", n, err)
	}
}

func TestResponseClassification(t *testing.T) {
	const no = metrics.NoGRPCStatus
	cases := []struct {
		name                       string
		o                          metrics.Outcome
		status, class, grpc, error string
	}{
		{"2xx is a success", metrics.Outcome{Status: 200, GRPCStatus: no}, "200", "success", "", ""},
		{"204 is a success", metrics.Outcome{Status: 204, GRPCStatus: no}, "204", "success", "", ""},
		{"3xx is a success", metrics.Outcome{Status: 302, GRPCStatus: no}, "302", "success", "", ""},
		{"4xx is a success", metrics.Outcome{Status: 404, GRPCStatus: no}, "404", "success", "", ""},
		{"499 is a success", metrics.Outcome{Status: 499, GRPCStatus: no}, "499", "success", "", ""},
		{"500 is a failure", metrics.Outcome{Status: 500, GRPCStatus: no}, "500", "failure", "", ""},
		{"503 is a failure", metrics.Outcome{Status: 503, GRPCStatus: no}, "503", "failure", "", ""},
		{"599 is a failure", metrics.Outcome{Status: 599, GRPCStatus: no}, "599", "failure", "", ""},
		{"gRPC OK on 200 is a success", metrics.Outcome{Status: 200, GRPCStatus: 0}, "200", "success", "0", ""},
		{"gRPC UNAVAILABLE on 200 is a failure", metrics.Outcome{Status: 200, GRPCStatus: 14}, "200", "failure", "14", ""},
		{"gRPC NOT_FOUND on 200 is a failure", metrics.Outcome{Status: 200, GRPCStatus: 5}, "200", "failure", "5", ""},
		{"gRPC UNAUTHENTICATED on 200 is a failure", metrics.Outcome{Status: 200, GRPCStatus: 16}, "200", "failure", "16", ""},
		{"gRPC status out of range is UNKNOWN", metrics.Outcome{Status: 200, GRPCStatus: 1000}, "200", "failure", "2", ""},
		{"negative gRPC status is UNKNOWN", metrics.Outcome{Status: 200, GRPCStatus: -7}, "200", "failure", "2", ""},
		{"proxy error without response headers", metrics.Outcome{GRPCStatus: no, Error: "connection-refused"}, "", "failure", "", "connection-refused"},
		{"proxy error with a 502", metrics.Outcome{Status: 502, GRPCStatus: no, Error: "connection-refused"}, "502", "failure", "", "connection-refused"},
		{"stream error after a 200", metrics.Outcome{Status: 200, GRPCStatus: no, Error: "stream-error"}, "200", "failure", "", "stream-error"},
		{"stream error after gRPC OK", metrics.Outcome{Status: 200, GRPCStatus: 0, Error: "stream-error"}, "200", "failure", "0", "stream-error"},
		{"status out of range has no status_code", metrics.Outcome{Status: 1200, GRPCStatus: no}, "", "success", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Failure is the classification of a valid outcome; Response first bounds the labels.
			if got, want := tc.o.Failure(), tc.class == "failure"; tc.o.Status <= 999 && got != want {
				t.Errorf("%+v.Failure() = %v, want %v", tc.o, got, want)
			}
			reg := prometheus.NewRegistry()
			s := metrics.New(reg).HTTP(metrics.HTTPKey{Direction: "inbound", Authority: "a:80", TargetAddr: "127.0.0.1:8080"})
			s.Response(tc.o)
			s.Response(tc.o)
			base := map[string]string{
				"direction": "inbound", "authority": "a:80", "target_addr": "127.0.0.1:8080", "tls": "no_identity", "client_id": "", "server_id": "", "no_tls_reason": "disabled",
				"dst_namespace": "", "dst_deployment": "", "dst_pod": "",
			}
			equalSeries(t, "response_total", values(t, reg, "response_total", dto.MetricType_COUNTER, respLabelNames),
				map[string]float64{sig(with(base, "status_code", tc.status, "classification", tc.class,
					"grpc_status", tc.grpc, "error", tc.error)): 2})
		})
	}
}

func TestLatencyBucketsAreDesigns(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := metrics.New(reg).HTTP(metrics.HTTPKey{Direction: "inbound", Authority: "a:80", TargetAddr: "127.0.0.1:8080"})
	// Upper bounds are inclusive: 1ms lands in le="1", 1.5ms in le="2", 3ms in le="3", a minute in +Inf.
	for _, d := range []time.Duration{time.Millisecond, 1500 * time.Microsecond, 3 * time.Millisecond, time.Minute} {
		s.Latency.Observe(metrics.Millis(d))
	}
	mf := family(t, reg, "response_latency_ms", dto.MetricType_HISTOGRAM)
	if len(mf.GetMetric()) != 1 {
		t.Fatalf("response_latency_ms has %d series, want 1", len(mf.GetMetric()))
	}
	h := mf.GetMetric()[0].GetHistogram()
	var bounds []float64
	for _, b := range h.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	if !slices.Equal(bounds, designLatencyBuckets) {
		t.Errorf("response_latency_ms buckets = %v, want DESIGN's %v", bounds, designLatencyBuckets)
	}
	if !slices.Equal(metrics.LatencyBuckets, designLatencyBuckets) {
		t.Errorf("LatencyBuckets = %v, want DESIGN's %v", metrics.LatencyBuckets, designLatencyBuckets)
	}
	wantCum := map[float64]uint64{1: 1, 2: 2, 3: 3, 4: 3, 50000: 3}
	for _, b := range h.GetBucket() {
		if w, ok := wantCum[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
			t.Errorf("bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
	}
	if h.GetSampleCount() != 4 || h.GetSampleSum() != 1+1.5+3+60000 {
		t.Errorf("count %d sum %v, want 4 and %v", h.GetSampleCount(), h.GetSampleSum(), 1+1.5+3+60000.0)
	}
}

func TestMillis(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want float64
	}{
		{0, 0},
		{time.Nanosecond, 0.000001},
		{250 * time.Microsecond, 0.25},
		{time.Millisecond, 1},
		{1500 * time.Microsecond, 1.5},
		{2 * time.Second, 2000},
		{time.Hour, 3600000},
	}
	for _, tc := range cases {
		if got := metrics.Millis(tc.d); got != tc.want {
			t.Errorf("Millis(%v) = %v, want %v", tc.d, got, tc.want)
		}
	}
}

// fill creates MaxSeries inbound HTTP series, each counting one request.
func fill(m *metrics.Metrics) {
	for i := range metrics.MaxSeries {
		m.HTTP(metrics.HTTPKey{Direction: "inbound", Authority: fmt.Sprintf("svc-%d:80", i), TargetAddr: "127.0.0.1:8080"}).Requests.Inc()
	}
}

func TestHTTPAuthoritiesPastMaxSeriesCountAsOverflow(t *testing.T) {
	const extra = 150
	cases := []struct {
		name string
		key  func(i int) metrics.HTTPKey
	}{
		{"inbound: one target, new authorities", func(i int) metrics.HTTPKey {
			return metrics.HTTPKey{Direction: "inbound", Authority: fmt.Sprintf("spray-%d:80", i), TargetAddr: "127.0.0.1:8080"}
		}},
		// An outbound authority that is not in the destinations file is dialled as written, so its
		// target_addr is as new as its authority: a client spraying random Host headers must still not
		// add a series per host (MaxSeries).
		{"outbound: authorities not in the destinations file, dialled as written", func(i int) metrics.HTTPKey {
			return metrics.HTTPKey{Direction: "outbound", Authority: fmt.Sprintf("spray-%d:80", i), TargetAddr: fmt.Sprintf("spray-%d:80", i)}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := metrics.New(reg)
			m.SetExpositionBytes(0) // MaxSeries alone; the byte bound has its own test
			fill(m)
			for i := range extra {
				s := m.HTTP(tc.key(i))
				s.Requests.Inc()
				s.Response(metrics.Outcome{Status: 200, GRPCStatus: metrics.NoGRPCStatus})
				s.Latency.Observe(1)
			}
			// A series made before the bound keeps counting under its own authority.
			m.HTTP(metrics.HTTPKey{Direction: "inbound", Authority: "svc-0:80", TargetAddr: "127.0.0.1:8080"}).Requests.Inc()
			snap := snapshot(t, reg)

			for _, name := range []string{"request_total", "response_latency_ms"} {
				if n, err := testutil.GatherAndCount(snap, name); err != nil || n != metrics.MaxSeries+1 {
					t.Errorf("%s has %d series (err %v), want MaxSeries+1 = %d", name, n, err, metrics.MaxSeries+1)
				}
			}
			if n, err := testutil.GatherAndCount(snap, "response_total"); err != nil || n != 1 {
				t.Errorf("response_total has %d series (err %v), want 1", n, err)
			}

			reqs := values(t, snap, "request_total", dto.MetricType_COUNTER, httpLabelNames)
			if got, want := sum(reqs), float64(metrics.MaxSeries+extra+1); got != want {
				t.Errorf("request_total sums to %v, want %v: counts were lost", got, want)
			}
			var overflow float64
			for _, mt := range family(t, snap, "request_total", dto.MetricType_COUNTER).GetMetric() {
				l := labelsOf(mt)
				switch l["authority"] {
				case metrics.OverflowAuthority:
					overflow += mt.GetCounter().GetValue()
				case "svc-0:80":
					if v := mt.GetCounter().GetValue(); v != 2 {
						t.Errorf("request_total%s = %v, want 2", sig(l), v)
					}
				default:
					if strings.HasPrefix(l["authority"], "spray-") {
						t.Errorf("request_total%s: an authority past MaxSeries kept its name", sig(l))
					}
				}
			}
			if overflow != extra {
				t.Errorf("authority=%q counts %v requests, want %d", metrics.OverflowAuthority, overflow, extra)
			}
			resp := values(t, snap, "response_total", dto.MetricType_COUNTER, respLabelNames)
			if got := sum(resp); got != extra {
				t.Errorf("response_total sums to %v, want %d", got, extra)
			}
			lat := family(t, snap, "response_latency_ms", dto.MetricType_HISTOGRAM)
			var observed uint64
			for _, mt := range lat.GetMetric() {
				observed += mt.GetHistogram().GetSampleCount()
			}
			if observed != extra {
				t.Errorf("response_latency_ms counts %d observations, want %d", observed, extra)
			}
		})
	}
}

func TestTCPTargetsPastMaxSeriesCountAsOverflow(t *testing.T) {
	const extra = 150
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.SetExpositionBytes(0) // MaxSeries alone; the byte bound has its own test
	for i := range metrics.MaxSeries + extra {
		m.TCP(metrics.TCPKey{Direction: "outbound", Peer: "dst", TargetAddr: fmt.Sprintf("10.0.%d.%d:80", i/256, i%256)}).Opened()
	}
	snap := snapshot(t, reg)
	if n, err := testutil.GatherAndCount(snap, "tcp_open_total", "tcp_open_connections", "tcp_read_bytes_total",
		"tcp_write_bytes_total", "tcp_connection_duration_ms"); err != nil || n != 5*(metrics.MaxSeries+1) {
		t.Errorf("tcp families hold %d series (err %v), want 5*(MaxSeries+1) = %d", n, err, 5*(metrics.MaxSeries+1))
	}
	opens := values(t, snap, "tcp_open_total", dto.MetricType_COUNTER, tcpLabelNames)
	if got := sum(opens); got != metrics.MaxSeries+extra {
		t.Errorf("tcp_open_total sums to %v, want %d", got, metrics.MaxSeries+extra)
	}
	over := sig(map[string]string{"direction": "outbound", "peer": "dst", "target_addr": metrics.OverflowAuthority,
		"tls": "no_identity", "client_id": "", "server_id": "", "no_tls_reason": "disabled", "dst_namespace": "", "dst_deployment": "", "dst_pod": ""})
	if opens[over] != extra {
		t.Errorf("tcp_open_total%s = %v, want %d", over, opens[over], extra)
	}
}

func TestTCPSeriesNamesLabelsAndCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	key := metrics.TCPKey{Direction: "outbound", Peer: "dst", TargetAddr: "127.0.0.1:14143",
		Dst: metrics.Dst{Namespace: "shop", Deployment: "voting", Pod: "voting-7d9f-0"}}
	s := m.TCP(key)
	for range 3 {
		s.Opened()
	}
	s.Read.Add(100)
	s.Write.Add(40)
	s.Write.Add(2)
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	s.Closed(2*time.Second, nil)
	s.Closed(5*time.Millisecond, reset)
	m.TCP(key).Closed(time.Millisecond, reset)

	src := m.TCP(metrics.TCPKey{Direction: "inbound", Peer: "src", TargetAddr: "0.0.0.0:4143"})
	src.Opened()

	dstL := map[string]string{"direction": "outbound", "peer": "dst", "target_addr": "127.0.0.1:14143", "tls": "no_identity", "client_id": "", "server_id": "", "no_tls_reason": "disabled",
		"dst_namespace": "shop", "dst_deployment": "voting", "dst_pod": "voting-7d9f-0"}
	srcL := map[string]string{"direction": "inbound", "peer": "src", "target_addr": "0.0.0.0:4143", "tls": "no_identity", "client_id": "", "server_id": "", "no_tls_reason": "disabled",
		"dst_namespace": "", "dst_deployment": "", "dst_pod": ""}

	equalSeries(t, "tcp_open_total", values(t, reg, "tcp_open_total", dto.MetricType_COUNTER, tcpLabelNames),
		map[string]float64{sig(dstL): 3, sig(srcL): 1})
	equalSeries(t, "tcp_open_connections", values(t, reg, "tcp_open_connections", dto.MetricType_GAUGE, tcpLabelNames),
		map[string]float64{sig(dstL): 0, sig(srcL): 1})
	equalSeries(t, "tcp_read_bytes_total", values(t, reg, "tcp_read_bytes_total", dto.MetricType_COUNTER, tcpLabelNames),
		map[string]float64{sig(dstL): 100, sig(srcL): 0})
	equalSeries(t, "tcp_write_bytes_total", values(t, reg, "tcp_write_bytes_total", dto.MetricType_COUNTER, tcpLabelNames),
		map[string]float64{sig(dstL): 42, sig(srcL): 0})
	equalSeries(t, "tcp_close_total", values(t, reg, "tcp_close_total", dto.MetricType_COUNTER, closeLabelNames),
		map[string]float64{
			sig(with(dstL, "classification", "success", "errno", "")):           1,
			sig(with(dstL, "classification", "failure", "errno", "ECONNRESET")): 2,
		})

	for _, mt := range family(t, reg, "tcp_connection_duration_ms", dto.MetricType_HISTOGRAM).GetMetric() {
		h := mt.GetHistogram()
		want := struct {
			n   uint64
			sum float64
		}{}
		if sig(labelsOf(mt)) == sig(dstL) {
			want.n, want.sum = 3, 2000+5+1
		}
		if h.GetSampleCount() != want.n || h.GetSampleSum() != want.sum {
			t.Errorf("tcp_connection_duration_ms%s: count %d sum %v, want %d and %v",
				sig(labelsOf(mt)), h.GetSampleCount(), h.GetSampleSum(), want.n, want.sum)
		}
	}
}

// realErrors makes a refused dial and a reset read on loopback, as the net package reports them.
func realErrors(t *testing.T) (refused, reset error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	// Reset: the server closes with SO_LINGER 0, which sends a RST; the client's read reports it.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	if _, reset = c.Read(make([]byte, 1)); reset == nil {
		t.Fatal("read after the peer's reset succeeded")
	}

	// Refused: nothing listens on a port that was just closed.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	if c, refused = net.Dial("tcp", addr); refused == nil {
		c.Close()
		t.Skip("a closed port accepted a connection")
	}
	return refused, reset
}

func TestErrno(t *testing.T) {
	refused, reset := realErrors(t)
	opErr := func(op string, errno syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
	}
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"nil is a clean close", nil, ""},
		{"EOF has no errno", io.EOF, "unknown"},
		{"an error without errno", errors.New("tls: bad certificate"), "unknown"},
		{"deadline has no errno", os.ErrDeadlineExceeded, "unknown"},
		{"closed connection has no errno", net.ErrClosed, "unknown"},
		{"real refused dial", refused, "ECONNREFUSED"},
		{"real reset read", reset, "ECONNRESET"},
		{"reset read", opErr("read", syscall.ECONNRESET), "ECONNRESET"},
		{"timed out write", opErr("write", syscall.ETIMEDOUT), "ETIMEDOUT"},
		{"broken pipe", opErr("write", syscall.EPIPE), "EPIPE"},
		{"unreachable host", opErr("dial", syscall.EHOSTUNREACH), "EHOSTUNREACH"},
		{"wrapped again with %w", fmt.Errorf("copy to upstream: %w", opErr("write", syscall.ECONNRESET)), "ECONNRESET"},
		{"bare errno", syscall.ECONNABORTED, "ECONNABORTED"},
		{"errno without a name", syscall.Errno(4095), "unknown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := metrics.Errno(tc.err); got != tc.want {
				t.Errorf("Errno(%#v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

func TestConcurrentUseCountsExactly(t *testing.T) {
	const goroutines, each = 16, 500
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	hk := metrics.HTTPKey{Direction: "outbound", Authority: "voting.shop:8080", TargetAddr: "127.0.0.1:14143",
		Dst: metrics.Dst{Namespace: "shop", Deployment: "voting", Pod: "voting-7d9f-0"}}
	tk := metrics.TCPKey{Direction: "outbound", Peer: "dst", TargetAddr: "127.0.0.1:14143", Dst: hk.Dst}
	outcomes := []metrics.Outcome{
		{Status: 200, GRPCStatus: metrics.NoGRPCStatus},
		{Status: 503, GRPCStatus: metrics.NoGRPCStatus},
		{Status: 200, GRPCStatus: 14},
		{Status: 502, GRPCStatus: metrics.NoGRPCStatus, Error: "connection-refused"},
	}
	closeErrs := []error{nil, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}}

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				s := m.HTTP(hk)
				s.Requests.Inc()
				s.Latency.Observe(1)
				s.Response(outcomes[(g+i)%len(outcomes)])
				// Each goroutine also makes series of its own, so creation races with lookups.
				m.HTTP(metrics.HTTPKey{Direction: "inbound", Authority: fmt.Sprintf("g%d:80", g), TargetAddr: "127.0.0.1:8080"}).Requests.Inc()
				c := m.TCP(tk)
				c.Opened()
				c.Read.Add(3)
				c.Closed(time.Millisecond, closeErrs[(g+i)%len(closeErrs)])
			}
		}()
	}
	wg.Wait()

	const total = goroutines * each
	reqs := values(t, reg, "request_total", dto.MetricType_COUNTER, httpLabelNames)
	if len(reqs) != goroutines+1 || sum(reqs) != 2*total {
		t.Errorf("request_total: %d series summing to %v, want %d summing to %d", len(reqs), sum(reqs), goroutines+1, 2*total)
	}
	resp := values(t, reg, "response_total", dto.MetricType_COUNTER, respLabelNames)
	if len(resp) != len(outcomes) {
		t.Errorf("response_total has %d series, want %d", len(resp), len(outcomes))
	}
	for k, v := range resp {
		if v != total/float64(len(outcomes)) {
			t.Errorf("response_total%s = %v, want %d", k, v, total/len(outcomes))
		}
	}
	if v := testutil.ToFloat64(m.TCP(tk).Open); v != total {
		t.Errorf("tcp_open_total = %v, want %d", v, total)
	}
	if v := testutil.ToFloat64(m.TCP(tk).OpenNow); v != 0 {
		t.Errorf("tcp_open_connections = %v, want 0", v)
	}
	if v := testutil.ToFloat64(m.TCP(tk).Read); v != 3*total {
		t.Errorf("tcp_read_bytes_total = %v, want %d", v, 3*total)
	}
	closes := values(t, reg, "tcp_close_total", dto.MetricType_COUNTER, closeLabelNames)
	if len(closes) != 2 || sum(closes) != total {
		t.Errorf("tcp_close_total: %d series summing to %v, want 2 summing to %d", len(closes), sum(closes), total)
	}
}

func TestConcurrentCreationPastMaxSeriesLosesNothing(t *testing.T) {
	const goroutines, each = 8, (metrics.MaxSeries + 400) / 8
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.SetExpositionBytes(0) // MaxSeries alone; the byte bound has its own test
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m.HTTP(metrics.HTTPKey{Direction: "inbound", Authority: fmt.Sprintf("g%d-%d:80", g, i), TargetAddr: "127.0.0.1:8080"}).Requests.Inc()
			}
		}()
	}
	wg.Wait()
	reqs := values(t, reg, "request_total", dto.MetricType_COUNTER, httpLabelNames)
	if len(reqs) != metrics.MaxSeries+1 {
		t.Errorf("request_total has %d series, want MaxSeries+1 = %d", len(reqs), metrics.MaxSeries+1)
	}
	if got := sum(reqs); got != goroutines*each {
		t.Errorf("request_total sums to %v, want %d", got, goroutines*each)
	}
}
