package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
)

// writeBlocks writes the samples of every pod of m from start to end every
// Step straight into one tsdb block in dir, with the block writer promtool's
// OpenMetrics backfill uses, minus the text in between: at a million series
// promtool spends most of its time parsing, over an hour per 10,000 pods on
// this shared 2-core machine. The values are those WriteOpenMetrics writes.
func writeBlocks(ctx context.Context, dir string, m Mesh, origin, start, end time.Time, log *slog.Logger) error {
	type one struct {
		lset labels.Labels
		s    series
	}
	var all []one
	p := parser.NewParser(parser.Options{})
	for _, f := range m.families(0, m.Pods()) {
		for _, s := range f.series {
			lset, err := p.ParseMetric(s.text)
			if err != nil {
				return fmt.Errorf("series %s: %w", s.text, err)
			}
			all = append(all, one{lset, s})
		}
	}
	w, err := tsdb.NewBlockWriter(log, dir, end.Sub(start).Milliseconds()+time.Hour.Milliseconds())
	if err != nil {
		return err
	}
	defer w.Close()
	refs := make([]storage.SeriesRef, len(all))
	for t := start; !t.After(end); t = t.Add(Step) {
		if err := ctx.Err(); err != nil {
			return err
		}
		app := w.Appender(ctx)
		elapsed := t.Sub(origin).Seconds()
		for i, o := range all {
			v := o.s.rate
			if !o.s.gauge {
				v *= elapsed
			}
			if refs[i], err = app.Append(refs[i], o.lset, t.UnixMilli(), v); err != nil {
				return fmt.Errorf("append %s: %w", o.lset, err)
			}
		}
		if err := app.Commit(); err != nil {
			return err
		}
		if t.Sub(start)%(10*time.Minute) == 0 {
			log.Info("samples written", "up to", t.Format(time.TimeOnly), "end", end.Format(time.TimeOnly))
		}
	}
	_, err = w.Flush(ctx)
	return err
}
