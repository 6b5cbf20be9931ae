package rules

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// TestFileRecordsEveryLevelsSeries: the file Prometheus loads and the names
// the dashboard queries are the same set, every group runs at Interval, and
// every expression keeps the labels its level promises.
func TestFileRecordsEveryLevelsSeries(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.Parse(YAML(), false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("rules file does not parse as Prometheus rules: %v", errs)
	}
	var recorded []string
	exprs := map[string]string{}
	for _, g := range groups.Groups {
		if time.Duration(g.Interval) != Interval {
			t.Errorf("group %s: interval %s, want %s (the recorded rates are 1m rates averaged per window)", g.Name, g.Interval, Interval)
		}
		for _, r := range g.Rules {
			if r.Record == "" {
				t.Errorf("group %s: rule %q is not a recording rule", g.Name, r.Expr)
				continue
			}
			recorded = append(recorded, r.Record)
			exprs[r.Record] = r.Expr
		}
	}
	var want []string
	for _, l := range Levels() {
		want = append(want, l.Names()...)
		for _, w := range l.P99Windows {
			name, _ := l.P99(w)
			buckets := l.Series(Latency)
			e, err := p.ParseExpr(exprs[name])
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			call, ok := e.(*parser.Call)
			if !ok || call.Func.Name != "histogram_quantile" || call.Args[0].String() != "0.99" || !strings.Contains(exprs[name], buckets) {
				t.Errorf("%s: %s is not histogram_quantile(0.99, ...) of %s", name, exprs[name], buckets)
			}
			if r, ok := call.Args[1].(*parser.Call); w > Interval && (!ok || r.Func.Name != "avg_over_time" || !strings.Contains(r.String(), "["+windowName(w)+"]")) {
				t.Errorf("%s: %s does not average the buckets over %s", name, exprs[name], windowName(w))
			}
		}
		for _, name := range l.Names() {
			expr, ok := exprs[name]
			if !ok || strings.Contains(name, ":p99_") {
				continue
			}
			e, err := p.ParseExpr(expr)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			agg, ok := e.(*parser.AggregateExpr)
			if !ok || agg.Op != parser.SUM || agg.Without {
				t.Errorf("%s: %s is not a sum by (...)", name, expr)
				continue
			}
			for _, label := range append([]string{"direction"}, l.Labels...) {
				if !slices.Contains(agg.Grouping, label) {
					t.Errorf("%s: %s drops label %s of level %s", name, expr, label, l.Name)
				}
			}
			var sel *parser.VectorSelector
			parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
				if vs, ok := n.(*parser.VectorSelector); ok {
					sel = vs
				}
				return nil
			})
			if sel == nil {
				t.Errorf("%s: no series selector in %s", name, expr)
			}
		}
	}
	slices.Sort(recorded)
	slices.Sort(want)
	if !slices.Equal(recorded, want) {
		t.Errorf("recorded series\n%v\nwant (Levels' names)\n%v", recorded, want)
	}
}

func TestLevelCovers(t *testing.T) {
	levels := Levels()
	for _, tc := range []struct {
		name      string
		direction string
		labels    []string
		want      []string // level names that cover
	}{
		{"all namespaces", "inbound", []string{"namespace"}, []string{"namespace", "deployment"}},
		{"deployments of a namespace", "inbound", []string{"namespace", "deployment"}, []string{"deployment"}},
		{"pods need raw series", "inbound", []string{"namespace", "pod"}, nil},
		{"edges", "outbound", []string{"namespace", "deployment", "dst_namespace", "dst_deployment"}, []string{"edge"}},
		{"outbound by pod needs raw series", "outbound", []string{"pod"}, nil},
		{"whole mesh", "inbound", nil, []string{"namespace", "deployment"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, l := range levels {
				if l.Covers(tc.direction, tc.labels) {
					got = append(got, l.Name)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("covering levels %v, want %v", got, tc.want)
			}
		})
	}
}
