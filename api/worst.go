package api

import (
	"context"
	"math"
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

// Worst is Golden with every row's Trend: two more instant queries for the
// last hour (over baseline, the part of the hour that has data) and one range
// query for since when, whatever the number of rows.
func (q *Querier) Worst(ctx context.Context, sc Scope, meshed bool, baseline time.Duration, slo float64) Table {
	sc = q.plan(sc)
	hour := sc
	hour.Window = baseline
	hour = q.plan(hour)
	extra := []part{
		{MetricSuccess + " last hour", SuccessRateQuery(hour), setPtr(func(s *Stats) **float64 { return &trendOf(s).SuccessRateLastHour })},
		{MetricP99 + " last hour", LatencyQuery(hour, 0.99), setPtr(func(s *Stats) **float64 { return &trendOf(s).LatencyP99LastHour })},
	}
	type sample struct {
		key   string
		first time.Time
	}
	var (
		firsts   []sample
		sinceErr error
		sinceWs  []string
	)
	fetched := make(chan struct{})
	go func() {
		defer close(fetched)
		m, ws, err := q.Matrix(ctx, SuccessUnderQuery(sc, slo), q.now(), UnhealthyLookback, UnhealthyStep)
		sinceWs, sinceErr = ws, err
		var buf []byte
		for _, s := range m {
			if len(s.Values) > 0 {
				buf = appendKey(buf[:0], sc.By, s.Metric)
				firsts = append(firsts, sample{string(buf), s.Values[0].Timestamp.Time().UTC()})
			}
		}
	}()
	t := q.golden(ctx, sc, meshed, extra)
	<-fetched
	t.Metrics++
	t.Warnings = append(t.Warnings, sinceWs...)
	if sinceErr != nil {
		t.Failures = append(t.Failures, failure("unhealthy since", sinceErr))
		return t
	}
	index := make(map[string]int, len(t.Rows))
	var buf []byte
	for i, r := range t.Rows {
		buf = appendKey(buf[:0], sc.By, labelMetric(r.Labels))
		index[string(buf)] = i
	}
	for _, f := range firsts {
		i, ok := index[f.key]
		if !ok {
			continue
		}
		r := &t.Rows[i]
		if r.SuccessRate != nil && *r.SuccessRate < slo {
			at := f.first
			trendOf(&r.Stats).UnhealthySince = &at
		}
	}
	return t
}

// DataSince is the time of the proxies' earliest sample within window w, and
// whether the window is full (data reaches back before its start). With no
// data at all it returns the zero time and false.
func (q *Querier) DataSince(ctx context.Context, w time.Duration) (since time.Time, full bool, ws []string, err error) {
	vec, ws, err := q.Vector(ctx, DataSinceQuery(w))
	if err != nil || len(vec) == 0 {
		return time.Time{}, false, ws, err
	}
	v := float64(vec[0].Value)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return time.Time{}, false, ws, nil
	}
	since = time.Unix(0, int64(v*1e9)).UTC()
	// The query's first step lies up to one step after the window's start,
	// and its sample is the last one before that step: data that reaches
	// within a step of the start fills the window. Without this slack an
	// hour-old mesh read "not full" about every other query, and its figures
	// came over a window like 59m11s, which neither matches the recording
	// rules' whole minutes nor what the page asked for.
	return since, !since.After(q.now().Add(-w + dataSinceStep(w))), ws, nil
}

func labelMetric(l map[string]string) model.Metric {
	m := make(model.Metric, len(l))
	for k, v := range l {
		m[model.LabelName(k)] = model.LabelValue(v)
	}
	return m
}
