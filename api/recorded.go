package api

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api/rules"
)

// Where a table's or chart's figures come from.
const (
	// SourceRecorded: the series of Meshscope's recording rules (api/rules).
	SourceRecorded = "recorded"
	// SourceRaw: the proxies' own series.
	SourceRaw = "raw"
)

// recorded remembers, per rate window, the levels of the recording rules
// whose series the backend holds over the whole window. Detection runs at
// start and then periodically, never per request; until it has answered,
// every query reads raw series.
type recorded struct {
	mu     sync.RWMutex
	levels map[time.Duration][]rules.Level
	// p99 holds, per window, the recorded p99 series the backend has.
	p99 map[time.Duration][]string
}

func (r *recorded) usable(w time.Duration) (levels []rules.Level, p99 []string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.levels[w], r.p99[w]
}

// plan points sc at the narrowest recorded level that keeps every label sc
// groups and selects by, when the backend has it for sc's window; otherwise
// sc reads raw series.
func (q *Querier) plan(sc Scope) Scope {
	labels := slices.Clone(sc.By)
	for _, m := range sc.Match {
		labels = append(labels, m.Label)
	}
	levels, p99s := q.rec.usable(sc.windowDuration())
	sc.Recorded, sc.RecordedP99 = rules.Level{}, ""
	for _, l := range levels {
		if l.Covers(sc.Direction, labels) {
			sc.Recorded = l
			// A recorded p99 is one series per group of the level's labels:
			// it serves a table grouped by exactly them, never a sum.
			if p99, ok := l.P99(sc.windowDuration()); ok && slices.Contains(p99s, p99) && sameSet(sc.By, l.Labels) {
				sc.RecordedP99 = p99
			}
			return sc
		}
	}
	return sc
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(s string) bool { return !slices.Contains(b, s) })
}

// Source names where sc's figures come from: SourceRecorded or SourceRaw.
func (sc Scope) Source() string {
	if sc.Recorded.Name != "" {
		return SourceRecorded
	}
	return SourceRaw
}

// DetectRecorded asks the backend which levels of the recording rules it
// has for each window, and queries use them from then on. A level serves a
// window when its request rate series exist now and one window ago (less one
// evaluation), so that the window's average covers the whole window: a 1h
// window reads raw series until the rules have run for an hour. (The request
// rates stand for the level: its other series may rightly be absent, e.g.
// connection closes while every connection stays open.) A recorded p99 (a
// rules file older than the dashboard may lack it) is used where it exists
// over the whole window too. Windows that are not whole multiples of
// rules.Interval always read raw series. On an error the previous answer
// stays.
func (q *Querier) DetectRecorded(ctx context.Context, windows []time.Duration) error {
	found := map[time.Duration][]rules.Level{}
	p99s := map[time.Duration][]string{}
	for _, w := range windows {
		if w <= 0 || w%rules.Interval != 0 {
			continue
		}
		var probes, p99 []string
		for _, l := range rules.Levels() {
			probes = append(probes, l.Series(rules.Requests))
			if name, ok := l.P99(w); ok {
				p99 = append(p99, name)
			}
		}
		names := `{__name__=~"` + strings.Join(append(probes, p99...), "|") + `"}`
		query := "count by (__name__) (" + names + ")"
		if back := w - rules.Interval; back > 0 {
			query += " and count by (__name__) (" + names + " offset " + model.Duration(back).String() + ")"
		}
		vec, _, err := q.Vector(ctx, query)
		if err != nil {
			return fmt.Errorf("detect recording rules: %w", err)
		}
		has := func(name string) bool {
			return slices.ContainsFunc(vec, func(s *model.Sample) bool { return string(s.Metric[model.MetricNameLabel]) == name })
		}
		for _, l := range rules.Levels() {
			if has(l.Series(rules.Requests)) {
				found[w] = append(found[w], l)
			}
		}
		for _, name := range p99 {
			if has(name) {
				p99s[w] = append(p99s[w], name)
			}
		}
	}
	q.rec.mu.Lock()
	q.rec.levels, q.rec.p99 = found, p99s
	q.rec.mu.Unlock()
	return nil
}

// WatchRecorded runs DetectRecorded at once and then every period until ctx
// ends, logging failures to log (nil: discarded).
func (q *Querier) WatchRecorded(ctx context.Context, windows []time.Duration, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := q.DetectRecorded(ctx, windows); err != nil && log != nil && ctx.Err() == nil {
			log.Warn("recording rules not checked; pages keep their previous source", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
