package api

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// UnhealthyLookback is how far back Worst looks for the moment a row fell
// under the SLO, and UnhealthyStep the resolution of that moment.
const (
	UnhealthyLookback = 6 * time.Hour
	UnhealthyStep     = time.Minute
)

// Trend compares a row with its own last hour and says since when it has
// been under the SLO.
type Trend struct {
	// SuccessRateLastHour and LatencyP99LastHour are the row's own metrics
	// over the last hour (or what exists of it); nil: no traffic then.
	SuccessRateLastHour *float64 `json:"success_rate_last_hour"`
	LatencyP99LastHour  *float64 `json:"latency_ms_p99_last_hour"`
	// UnhealthySince, for a row under the SLO now, is the first moment in
	// the last UnhealthyLookback its success rate was under it.
	UnhealthySince *time.Time `json:"unhealthy_since,omitempty"`
}

func trendOf(s *Stats) *Trend {
	if s.Trend == nil {
		s.Trend = &Trend{}
	}
	return s.Trend
}

// Worst is Golden with every row's Trend, the rows worst first (WorstFirst),
// and with limit > 0 only the limit worst of them; total is how many rows
// there were.
//
// It asks in two rounds. The first asks, for every row, what decides the
// order: success rate, p99 now and over the last hour (over baseline, the
// part of the hour that has data), the TCP figures; and the request rate and
// meshed proxies. The second asks the rest for the rows kept alone: p50 and
// p95, and one range query for since when the unhealthy ones have been under
// the SLO. Over 2,000 workloads the first screen keeps 10: its second round
// reads their series instead of every workload's, which was most of the
// page's time (see dev/scale).
func (q *Querier) Worst(ctx context.Context, sc Scope, meshed bool, baseline time.Duration, slo float64, limit int) (t Table, total int) {
	sc = q.plan(sc)
	hour := sc
	hour.Window = baseline
	hour = q.plan(hour)
	// p50 and p95 do not decide the order: the second round asks them.
	rest := map[string]bool{MetricP50: true, MetricP95: true}
	var first []part
	for _, p := range goldenParts(sc, meshed) {
		if !rest[p.metric] {
			first = append(first, p)
		}
	}
	// Over a window of baseline the last hour is the window itself.
	sameHour := hour.Window == sc.Window && hour.Recorded.Name == sc.Recorded.Name
	if !sameHour {
		first = append(first,
			part{MetricSuccess + " last hour", SuccessRateQuery(hour), setPtr(func(s *Stats) **float64 { return &trendOf(s).SuccessRateLastHour })},
			part{MetricP99 + " last hour", LatencyQuery(hour, 0.99), setPtr(func(s *Stats) **float64 { return &trendOf(s).LatencyP99LastHour })})
	}
	rs := newRowSet(sc.By)
	q.fill(ctx, rs, first)
	t = rs.table()
	t.Source = sc.Source()
	for i := range t.Rows {
		r := &t.Rows[i]
		tr := trendOf(&r.Stats)
		if sameHour {
			tr.SuccessRateLastHour, tr.LatencyP99LastHour = r.SuccessRate, r.LatencyP99
		}
	}
	slices.SortStableFunc(t.Rows, func(a, b Row) int { return WorstFirst(a, b, slo) })
	total = len(t.Rows)
	if limit > 0 && total > limit {
		t.Rows = t.Rows[:limit]
	}

	if len(t.Rows) == 0 {
		return t, total // nothing to complete: a backend that failed the first round is not asked again
	}
	// The second round completes the kept rows in place.
	second := newRowSet(sc.By)
	second.fixed = true
	var unhealthy []Row
	for i := range t.Rows {
		r := &t.Rows[i]
		second.rows[string(appendKey(nil, sc.By, labelMetric(r.Labels)))] = r
		if r.SuccessRate != nil && *r.SuccessRate < slo {
			unhealthy = append(unhealthy, *r)
		}
	}
	kept := sc
	if len(t.Rows) < total {
		kept = sc.only(t.Rows)
	}
	var quantiles []part
	for _, p := range goldenParts(kept, false) {
		if rest[p.metric] {
			quantiles = append(quantiles, p)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.fill(ctx, second, quantiles)
	}()
	if len(unhealthy) > 0 {
		q.unhealthySince(ctx, second, sc.only(unhealthy), slo)
	}
	<-done
	t.Warnings = append(t.Warnings, second.t.Warnings...)
	t.Failures = append(t.Failures, second.t.Failures...)
	t.Metrics += second.t.Metrics
	slices.SortFunc(t.Failures, func(a, b Failure) int { return strings.Compare(a.Metric, b.Metric) })
	return t, total
}

// unhealthySince sets, on the rows of rs under the SLO now, the first moment
// in the last UnhealthyLookback their success rate was under it: one range
// query for all of them, which returns only their unhealthy moments.
func (q *Querier) unhealthySince(ctx context.Context, rs *rowSet, sc Scope, slo float64) {
	m, ws, err := q.Matrix(ctx, SuccessUnderQuery(sc, slo), q.now(), UnhealthyLookback, UnhealthyStep)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.t.Metrics++
	rs.t.Warnings = append(rs.t.Warnings, ws...)
	if err != nil {
		rs.t.Failures = append(rs.t.Failures, failure("unhealthy since", err))
		return
	}
	var buf []byte
	for _, s := range m {
		r := rs.row(s.Metric, &buf)
		if r == nil || len(s.Values) == 0 || r.SuccessRate == nil || *r.SuccessRate >= slo {
			continue
		}
		at := s.Values[0].Timestamp.Time().UTC()
		trendOf(&r.Stats).UnhealthySince = &at
	}
}

// only narrows sc to the given rows: for each grouping label, a set matcher
// of the values the rows hold. That selects every combination of those
// values, a superset of the rows when more than one label varies, so the
// answers are matched to the rows by their labels.
func (sc Scope) only(rows []Row) Scope {
	out := sc
	out.Match = slices.Clone(sc.Match)
	for _, label := range sc.By {
		var values []string
		for _, r := range rows {
			values = append(values, r.Labels[label])
		}
		slices.Sort(values)
		out.Match = append(out.Match, MatchAny(label, slices.Compact(values)))
	}
	return out
}

// WorstFirst is the order an engineer paged at night wants: rows with
// traffic under the SLO, lowest success first; then the other rows with
// traffic, slowest against their own last hour (p99 now over p99 then)
// first; then rows with TCP traffic only; then idle rows.
func WorstFirst(a, b Row, slo float64) int {
	rank := func(r Row) int {
		switch {
		case r.SuccessRate != nil && *r.SuccessRate < slo:
			return 0
		case r.SuccessRate != nil:
			return 1
		case r.TCPOnly():
			return 2
		}
		return 3
	}
	ra, rb := rank(a), rank(b)
	if ra != rb {
		return cmp.Compare(ra, rb)
	}
	switch ra {
	case 0:
		return cmp.Compare(*a.SuccessRate, *b.SuccessRate)
	case 1:
		return -cmp.Compare(a.LatencyRatio(), b.LatencyRatio())
	}
	return 0
}

// LatencyRatio is p99 now over p99 over the last hour; 0 when either is
// missing, so that rows without a comparison come after the slowed ones.
func (r Row) LatencyRatio() float64 {
	if r.Trend == nil || r.LatencyP99 == nil || r.LatencyP99LastHour == nil || *r.LatencyP99LastHour <= 0 {
		return 0
	}
	return *r.LatencyP99 / *r.LatencyP99LastHour
}

// TCPOnly is a row without HTTP responses but with TCP traffic: opaque TCP,
// which must not read as "no traffic".
func (r Row) TCPOnly() bool {
	return r.SuccessRate == nil && (r.TCPConnections > 0 || r.TCPReadBytesPerSec > 0 || r.TCPWriteBytesPerSec > 0 || r.TCPFailuresPerSec > 0)
}

func labelMetric(l map[string]string) model.Metric {
	m := make(model.Metric, len(l))
	for k, v := range l {
		m[model.LabelName(k)] = model.LabelValue(v)
	}
	return m
}
