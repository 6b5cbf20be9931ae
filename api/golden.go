package api

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// Stats are the golden metrics of one row. Pointers are nil when there is
// nothing to compute them from: no traffic is not 0% success.
type Stats struct {
	// SuccessRate is the share of successful responses, 0..1; nil: no traffic.
	SuccessRate *float64 `json:"success_rate"`
	// RPS is requests per second over the window.
	RPS float64 `json:"rps"`
	// LatencyP50, P95, P99 are response latency quantiles in ms; nil: no traffic.
	LatencyP50 *float64 `json:"latency_ms_p50"`
	LatencyP95 *float64 `json:"latency_ms_p95"`
	LatencyP99 *float64 `json:"latency_ms_p99"`
	// TCPConnections is the number of open TCP connections.
	TCPConnections float64 `json:"tcp_connections"`
	// TCPReadBytesPerSec and TCPWriteBytesPerSec are the bytes per second
	// from and to the TCP peers (clients, for inbound); TCPFailuresPerSec the
	// connections per second closed with a failure. A workload that speaks
	// only opaque TCP shows these instead of "no traffic".
	TCPReadBytesPerSec  float64 `json:"tcp_read_bytes_per_sec"`
	TCPWriteBytesPerSec float64 `json:"tcp_write_bytes_per_sec"`
	TCPFailuresPerSec   float64 `json:"tcp_failures_per_sec"`
	// MeshedUp of MeshedTotal proxies answer their scrapes; both zero where
	// meshed does not apply (edges).
	MeshedUp    int `json:"meshed_up"`
	MeshedTotal int `json:"meshed_total"`
	// MTLS is the share of the traffic over mutual TLS, 0..1 (GoldenMTLS
	// only); nil: no traffic.
	MTLS *float64 `json:"mtls_share,omitempty"`

	// Trend, set by Worst only, compares the row with its own last hour.
	*Trend
}

// Row is one group of a table: its grouping labels and its golden metrics.
type Row struct {
	Labels map[string]string `json:"labels"`
	Stats
}

// Failure says which metric of a panel could not be got, and why.
type Failure struct {
	Metric string `json:"metric"`
	Error  string `json:"error"`
	Err    error  `json:"-"`
}

func failure(metric string, err error) Failure {
	return Failure{Metric: metric, Error: err.Error(), Err: err}
}

// Table is one panel's worth of rows. Failed metrics leave their fields at
// zero in every row and are listed in Failures.
type Table struct {
	Rows     []Row     `json:"rows"`
	Warnings []string  `json:"warnings,omitempty"`
	Failures []Failure `json:"failures,omitempty"`
	// Source is where the figures come from: SourceRecorded or SourceRaw.
	Source string `json:"source"`
	// Metrics is how many metrics the table asked for.
	Metrics int `json:"-"`
}

// Metric names, as failures report them.
const (
	MetricSuccess = "success rate"
	MetricRPS     = "requests per second"
	MetricP50     = "latency p50"
	MetricP95     = "latency p95"
	MetricP99     = "latency p99"
	MetricTCP     = "TCP connections"
	MetricTCPRead = "TCP bytes read/s"
	MetricTCPOut  = "TCP bytes written/s"
	MetricTCPFail = "TCP connection failures/s"
	MetricMeshed  = "meshed proxies"
	MetricMTLS    = "mTLS share"
)

// Golden fetches the golden metrics of a whole table at once: one query per
// metric however many rows, run concurrently. With meshed, the proxies'
// scrape health ("up") counts how many answer per row.
func (q *Querier) Golden(ctx context.Context, sc Scope, meshed bool) Table {
	return q.golden(ctx, q.plan(sc), meshed, nil)
}

// GoldenMTLS is Golden with the share of the traffic over mutual TLS (MTLS).
func (q *Querier) GoldenMTLS(ctx context.Context, sc Scope, meshed bool) Table {
	sc = q.plan(sc)
	return q.golden(ctx, sc, meshed, []part{{MetricMTLS, MTLSQuery(sc), setPtr(func(s *Stats) **float64 { return &s.MTLS })}})
}

// CertExpiry is a proxy whose identity certificate ends soon.
type CertExpiry struct {
	Namespace   string  `json:"namespace"`
	Pod         string  `json:"pod"`
	SecondsLeft float64 `json:"seconds_left"`
}

// CertExpiring lists the proxies of the scope's matchers whose identity
// certificate ends within the given time, soonest first.
func (q *Querier) CertExpiring(ctx context.Context, sc Scope, within time.Duration) ([]CertExpiry, error) {
	vec, _, err := q.Vector(ctx, CertExpiryQuery(sc, within))
	if err != nil {
		return nil, err
	}
	out := make([]CertExpiry, 0, len(vec))
	for _, s := range vec {
		out = append(out, CertExpiry{Namespace: string(s.Metric[LabelNamespace]), Pod: string(s.Metric[LabelPod]), SecondsLeft: float64(s.Value)})
	}
	slices.SortFunc(out, func(a, b CertExpiry) int { return cmp.Compare(a.SecondsLeft, b.SecondsLeft) })
	return out, nil
}

// part is one metric of a table: its query and where its value goes.
type part struct {
	metric string
	query  string
	set    func(*Stats, *model.Sample)
}

// value sets a row's field from a sample's value.
func value(f func(*Stats, float64)) func(*Stats, *model.Sample) {
	return func(s *Stats, m *model.Sample) { f(s, float64(m.Value)) }
}

// setPtr sets the pointer field f returns to a sample's value, unless NaN or
// infinite (no traffic).
func setPtr(f func(*Stats) **float64) func(*Stats, *model.Sample) {
	return func(s *Stats, m *model.Sample) {
		if v := float64(m.Value); !math.IsNaN(v) && !math.IsInf(v, 0) {
			*f(s) = &v
		}
	}
}

// goldenParts are the golden metrics of sc's rows, as queries; with meshed,
// also how many of each row's proxies answer their scrapes.
func goldenParts(sc Scope, meshed bool) []part {
	ptr := setPtr
	parts := []part{
		{MetricSuccess, SuccessRateQuery(sc), ptr(func(s *Stats) **float64 { return &s.SuccessRate })},
		{MetricRPS, RPSQuery(sc), value(func(s *Stats, v float64) { s.RPS = v })},
		{MetricP50, LatencyQuery(sc, 0.5), ptr(func(s *Stats) **float64 { return &s.LatencyP50 })},
		{MetricP95, LatencyQuery(sc, 0.95), ptr(func(s *Stats) **float64 { return &s.LatencyP95 })},
		{MetricP99, LatencyQuery(sc, 0.99), ptr(func(s *Stats) **float64 { return &s.LatencyP99 })},
		{MetricTCP, TCPQuery(sc), value(func(s *Stats, v float64) { s.TCPConnections = v })},
		{MetricTCPRead, TCPReadBytesQuery(sc), value(func(s *Stats, v float64) { s.TCPReadBytesPerSec = v })},
		{MetricTCPOut, TCPWriteBytesQuery(sc), value(func(s *Stats, v float64) { s.TCPWriteBytesPerSec = v })},
		{MetricTCPFail, TCPFailuresQuery(sc), value(func(s *Stats, v float64) { s.TCPFailuresPerSec = v })},
	}
	if meshed {
		parts = append(parts, part{MetricMeshed, MeshedQuery(sc), func(s *Stats, m *model.Sample) {
			n := int(m.Value)
			s.MeshedTotal += n
			if m.Metric["up"] == "1" {
				s.MeshedUp += n
			}
		}})
	}
	return parts
}

// golden is Golden with extra parts; sc must come planned (q.plan).
func (q *Querier) golden(ctx context.Context, sc Scope, meshed bool, extra []part) Table {
	rs := newRowSet(sc.By)
	q.fill(ctx, rs, append(goldenParts(sc, meshed), extra...))
	t := rs.table()
	t.Source = sc.Source()
	return t
}

// rowSet gathers a table's rows from the answers of its queries, one row per
// distinct value of the grouping labels, with the warnings and failures.
type rowSet struct {
	by   []string
	mu   sync.Mutex
	rows map[string]*Row
	keys []string
	// fixed: answers about rows not in the set are ignored, as a second
	// round of queries completes the rows the first one kept.
	fixed bool
	t     Table
}

func newRowSet(by []string) *rowSet {
	return &rowSet{by: by, rows: map[string]*Row{}}
}

// row finds or adds the row of m (nil: not in a fixed set); buf is the
// caller's scratch space for the key, so that finding an existing row
// allocates nothing.
func (rs *rowSet) row(m model.Metric, buf *[]byte) *Row {
	*buf = appendKey((*buf)[:0], rs.by, m)
	if r := rs.rows[string(*buf)]; r != nil || rs.fixed {
		return r
	}
	r := &Row{Labels: labelsOf(rs.by, m)}
	key := string(*buf)
	rs.rows[key] = r
	rs.keys = append(rs.keys, key)
	return r
}

// fill runs parts concurrently, one instant query each, and sets their
// values into the rows; a failed part is listed in the table's failures.
func (q *Querier) fill(ctx context.Context, rs *rowSet, parts []part) {
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Go(func() {
			vec, ws, err := q.Vector(ctx, p.query)
			rs.mu.Lock()
			defer rs.mu.Unlock()
			rs.t.Warnings = append(rs.t.Warnings, ws...)
			if err != nil {
				rs.t.Failures = append(rs.t.Failures, failure(p.metric, err))
				return
			}
			var buf []byte
			for _, s := range vec {
				if r := rs.row(s.Metric, &buf); r != nil {
					p.set(&r.Stats, s)
				}
			}
		})
	}
	wg.Wait()
	rs.mu.Lock() // a second round may fill the same set from two goroutines
	rs.t.Metrics += len(parts)
	rs.mu.Unlock()
}

// table is the rows in the order of their labels, with the parts' warnings
// and failures.
func (rs *rowSet) table() Table {
	t := rs.t
	slices.Sort(rs.keys)
	t.Rows = make([]Row, 0, len(rs.keys))
	for _, k := range rs.keys {
		t.Rows = append(t.Rows, *rs.rows[k])
	}
	slices.SortFunc(t.Failures, func(a, b Failure) int { return strings.Compare(a.Metric, b.Metric) })
	return t
}

func labelsOf(by []string, m model.Metric) map[string]string {
	l := make(map[string]string, len(by))
	for _, name := range by {
		l[name] = string(m[model.LabelName(name)])
	}
	return l
}

// appendKey appends the values of the by labels of m, each ended by a NUL
// (which no label value holds), so keys sort like the label tuples.
func appendKey(b []byte, by []string, m model.Metric) []byte {
	for _, name := range by {
		b = append(b, m[model.LabelName(name)]...)
		b = append(b, 0)
	}
	return b
}

// Point is one sample of a series.
type Point struct {
	T time.Time `json:"t"`
	V float64   `json:"v"`
}

// Series is one line of a chart; NaN samples (no traffic) are left out.
type Series struct {
	Name   string  `json:"name"`
	Points []Point `json:"points"`
}

// Chart is one metric over time, from Start to End at Step.
type Chart struct {
	Metric string        `json:"metric"`
	Start  time.Time     `json:"start"`
	End    time.Time     `json:"end"`
	Step   time.Duration `json:"step_ns"`
	Series []Series      `json:"series"`
	// Failure is set when a line of the chart could not be got.
	Failure *Failure `json:"failure,omitempty"`
	// Warnings are the backend's warnings about the chart's queries.
	Warnings []string `json:"warnings,omitempty"`
	// Source is where the figures come from: SourceRecorded or SourceRaw.
	Source string `json:"source"`
}

// History fetches success rate, RPS and latency percentiles of the whole
// scope (summed, By ignored) over span at step, one range query per line.
func (q *Querier) History(ctx context.Context, sc Scope, span, step time.Duration) (success, rps, latency Chart) {
	sc.By = nil
	sc = q.plan(sc)
	type line struct {
		chart *Chart
		name  string
		query string
	}
	end := q.now()
	mk := func(metric string) Chart {
		return Chart{Metric: metric, Start: end.Add(-span), End: end, Step: step, Source: sc.Source()}
	}
	success, rps, latency = mk(MetricSuccess), mk(MetricRPS), mk("latency")
	lines := []line{
		{&success, "success rate", SuccessRateQuery(sc)},
		{&rps, "rps", RPSQuery(sc)},
		{&latency, "p50", LatencyQuery(sc, 0.5)},
		{&latency, "p95", LatencyQuery(sc, 0.95)},
		{&latency, "p99", LatencyQuery(sc, 0.99)},
	}
	results := make([]Series, len(lines))
	errs := make([]error, len(lines))
	warnings := make([][]string, len(lines))
	var wg sync.WaitGroup
	for i, l := range lines {
		wg.Go(func() {
			m, ws, err := q.Matrix(ctx, l.query, end, span, step)
			errs[i], warnings[i] = err, ws
			results[i].Name = l.name
			for _, s := range m {
				for _, p := range s.Values {
					if v := float64(p.Value); !math.IsNaN(v) && !math.IsInf(v, 0) {
						results[i].Points = append(results[i].Points, Point{T: p.Timestamp.Time(), V: v})
					}
				}
			}
		})
	}
	wg.Wait()
	for i, l := range lines {
		l.chart.Warnings = append(l.chart.Warnings, warnings[i]...)
		if errs[i] != nil {
			if l.chart.Failure == nil {
				f := failure(l.chart.Metric, errs[i])
				l.chart.Failure = &f
			}
			continue
		}
		l.chart.Series = append(l.chart.Series, results[i])
	}
	return success, rps, latency
}
