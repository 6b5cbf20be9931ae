package api

import (
	"context"
	"math"
	"time"

	"github.com/prometheus/common/model"
)

// DataSince is the time of the proxies' earliest sample within window w, and
// whether the window is full (data reaches back before its start). With no
// data at all it returns the zero time and false.
//
// It first asks the cheap question, whether the proxies had data at the
// window's start (DataFullQuery, one sample per proxy), and only when they
// had not looks for the first sample inside the window (DataSinceQuery, a
// subquery over every proxy at 60 steps: seconds at 10,000 proxies).
func (q *Querier) DataSince(ctx context.Context, w time.Duration) (since time.Time, full bool, ws []string, err error) {
	vec, ws, err := q.Vector(ctx, DataFullQuery(w))
	if err != nil {
		return time.Time{}, false, ws, err
	}
	if len(vec) > 0 {
		if at, ok := unixTime(vec[0].Value); ok {
			return at, true, ws, nil
		}
	}
	since, ok, more, err := q.firstSample(ctx, w)
	ws = append(ws, more...)
	if err != nil {
		return time.Time{}, false, ws, err
	}
	// The query's first step lies up to one step after the window's start,
	// and its sample is the last one before that step: data that reaches
	// within a step of the start fills the window. Without this slack an
	// hour-old mesh read "not full" about every other query, and its figures
	// came over a window like 59m11s, which neither matches the recording
	// rules' whole minutes nor what the page asked for.
	step := dataSinceStep(w)
	if ok && !since.After(q.now().Add(-w+step)) {
		return since, true, ws, nil
	}
	// For the same reason data that began between two steps reads as
	// beginning at the later one, and data younger than the last step not at
	// all: over a 1h window (steps a minute apart) a mesh 46 s old read as 8 s
	// old, its rates divided by 8 s, or as no data yet. A mesh younger than
	// the window is asked again over the time it has run, at a step of about
	// a second.
	span := step + time.Second
	if ok {
		span += q.now().Sub(since).Truncate(time.Second)
	}
	if step > time.Second && span < w {
		fine, fineOK, more, err := q.firstSample(ctx, span)
		ws = append(ws, more...)
		if err == nil && fineOK && (!ok || fine.Before(since)) {
			since, ok = fine, true
		}
	}
	if !ok {
		return time.Time{}, false, ws, nil
	}
	return since, false, ws, nil
}

// firstSample is the time of the proxies' earliest sample within window w,
// to dataSinceStep(w); ok is false when there is none.
func (q *Querier) firstSample(ctx context.Context, w time.Duration) (since time.Time, ok bool, ws []string, err error) {
	vec, ws, err := q.Vector(ctx, DataSinceQuery(w))
	if err != nil || len(vec) == 0 {
		return time.Time{}, false, ws, err
	}
	since, ok = unixTime(vec[0].Value)
	return since, ok, ws, nil
}

// unixTime reads a sample value holding Unix seconds.
func unixTime(v model.SampleValue) (time.Time, bool) {
	f := float64(v)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return time.Time{}, false
	}
	return time.Unix(0, int64(f*1e9)).UTC(), true
}
