package main

import (
	"context"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api"
)

// needProm skips without prometheus and promtool, and fails under CI=true,
// where dev/test.sh installs them.
func needProm(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s missing (Debian package prometheus); dev/test.sh installs it", bin)
			}
			t.Skipf("%s missing (Debian package prometheus)", bin)
		}
	}
}

// TestRecordedAndRawAgree builds one small TSDB with promtool (OpenMetrics,
// then the recording rules backfilled against the real Prometheus) and asks
// the same tables of a Prometheus serving it with and without the recorded
// series: counters' rates agree exactly, quantiles within their bucket, and
// the dashboard's querier picks recorded series only where they exist.
func TestRecordedAndRawAgree(t *testing.T) {
	needProm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	mesh := Mesh{Namespaces: 2, DeploymentsPerNamespace: 3, PodsPerDeployment: 2, Calls: 2}
	end := time.Now().Truncate(time.Minute)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tsdb, err := buildTSDB(ctx, buildOptions{Dir: t.TempDir(), Mesh: mesh, Start: end.Add(-20 * time.Minute), End: end,
		Promtool: true, ChunkPods: mesh.Pods(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	querier := func(dir string) *api.Querier {
		p, err := startPrometheus(ctx, dir, "", os.Stderr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		q, err := api.Dial(p.URL, api.Options{})
		if err != nil {
			t.Fatal(err)
		}
		q.Now = func() time.Time { return end }
		return q
	}
	raw, recorded := querier(tsdb.Raw()), querier(tsdb.Rules())
	windows := []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute}
	for _, q := range []*api.Querier{raw, recorded} {
		if err := q.DetectRecorded(ctx, append(windows, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	ns, dep := mesh.Deployment(3).Namespace, mesh.Deployment(3).Name
	scopes := []struct {
		name string
		sc   api.Scope
	}{
		{"namespaces", api.Scope{Direction: "inbound", By: []string{"namespace"}}},
		{"deployments of a namespace", api.Scope{Direction: "inbound", By: []string{"namespace", "deployment"},
			Match: []api.Match{{Label: "namespace", Value: ns}}}},
		{"callers of a deployment", api.Scope{Direction: "outbound", By: []string{"namespace", "deployment", "dst_namespace", "dst_deployment"},
			Match: []api.Match{{Label: "dst_namespace", Value: ns}, {Label: "dst_deployment", Value: dep}}}},
		{"one deployment, summed", api.Scope{Direction: "inbound", Match: []api.Match{{Label: "namespace", Value: ns}, {Label: "deployment", Value: dep}}}},
	}
	for _, s := range scopes {
		for _, w := range windows {
			sc := s.sc
			sc.Window = w
			t.Run(s.name+" "+w.String(), func(t *testing.T) {
				a, b := raw.GoldenMTLS(ctx, sc, false), recorded.GoldenMTLS(ctx, sc, false)
				if a.Source != api.SourceRaw || b.Source != api.SourceRecorded {
					t.Fatalf("sources %s and %s, want raw (no rules) and recorded", a.Source, b.Source)
				}
				if len(a.Failures)+len(b.Failures) > 0 {
					t.Fatalf("failures: %v %v", a.Failures, b.Failures)
				}
				if len(a.Rows) == 0 || len(a.Rows) != len(b.Rows) {
					t.Fatalf("%d raw rows, %d recorded rows", len(a.Rows), len(b.Rows))
				}
				for i := range a.Rows {
					compareRows(t, a.Rows[i], b.Rows[i])
				}
			})
		}
	}
	t.Run("the first screen's second round completes its rows as one round would", func(t *testing.T) {
		all := api.Scope{Direction: "inbound", By: []string{"namespace", "deployment"}, Window: 5 * time.Minute}
		deployments := mesh.Namespaces * mesh.DeploymentsPerNamespace
		for _, q := range []*api.Querier{raw, recorded} {
			whole, n := q.Worst(ctx, all, true, 15*time.Minute, 0.99, 0)
			top, total := q.Worst(ctx, all, true, 15*time.Minute, 0.99, 2)
			if len(whole.Failures)+len(top.Failures) > 0 {
				t.Fatalf("failures: %v %v", whole.Failures, top.Failures)
			}
			if n != deployments || total != deployments || len(whole.Rows) != deployments || len(top.Rows) != 2 {
				t.Fatalf("%d and %d rows of %d and %d, want %d of %d and 2", len(whole.Rows), len(top.Rows), n, total, deployments, deployments)
			}
			worst := top.Rows[0]
			if worst.Labels["deployment"] != dep || worst.UnhealthySince == nil ||
				worst.UnhealthySince.Before(end.Add(-20*time.Minute)) || worst.UnhealthySince.After(end.Add(-10*time.Minute)) {
				t.Errorf("%s: worst %v unhealthy since %v, want %s since the data began (%v)", top.Source, worst.Labels, worst.UnhealthySince, dep, end.Add(-20*time.Minute))
			}
			for i, r := range top.Rows {
				if r.LatencyP50 == nil || r.LatencyP95 == nil || !reflect.DeepEqual(r, whole.Rows[i]) {
					t.Errorf("%s: row %d of the two worst %+v, of all rows %+v", top.Source, i, r, whole.Rows[i])
				}
			}
			for _, r := range whole.Rows {
				if r.MeshedTotal != mesh.PodsPerDeployment || r.MeshedUp != r.MeshedTotal {
					t.Errorf("%s: %v meshed %d/%d, want %d/%d", whole.Source, r.Labels, r.MeshedUp, r.MeshedTotal, mesh.PodsPerDeployment, mesh.PodsPerDeployment)
				}
			}
		}
	})
	t.Run("pods and windows under a minute read raw series even with the rules", func(t *testing.T) {
		pods := api.Scope{Direction: "inbound", By: []string{"namespace", "deployment", "pod"}, Match: []api.Match{{Label: "namespace", Value: ns}}}
		short := api.Scope{Direction: "inbound", By: []string{"namespace"}, Window: 10 * time.Second}
		for _, sc := range []api.Scope{pods, short} {
			if tb := recorded.Golden(ctx, sc, false); tb.Source != api.SourceRaw || len(tb.Rows) == 0 {
				t.Errorf("scope %+v: source %s with %d rows, want raw series with rows", sc, tb.Source, len(tb.Rows))
			}
		}
	})
}

func compareRows(t *testing.T, raw, rec api.Row) {
	t.Helper()
	name := raw.Labels
	for k, v := range raw.Labels {
		if rec.Labels[k] != v {
			t.Fatalf("row %v against %v", raw.Labels, rec.Labels)
		}
	}
	exact := func(metric string, a, b float64) {
		if math.Abs(a-b) > 1e-9*math.Max(1, math.Abs(a)) {
			t.Errorf("%v %s: raw %v, recorded %v", name, metric, a, b)
		}
	}
	exact("rps", raw.RPS, rec.RPS)
	if raw.MTLS == nil || rec.MTLS == nil {
		t.Fatalf("%v: mTLS share raw %v, recorded %v", name, raw.MTLS, rec.MTLS)
	}
	exact("mTLS share", *raw.MTLS, *rec.MTLS)
	exact("tcp connections", raw.TCPConnections, rec.TCPConnections)
	exact("tcp bytes read/s", raw.TCPReadBytesPerSec, rec.TCPReadBytesPerSec)
	exact("tcp bytes written/s", raw.TCPWriteBytesPerSec, rec.TCPWriteBytesPerSec)
	exact("tcp failures/s", raw.TCPFailuresPerSec, rec.TCPFailuresPerSec)
	if raw.SuccessRate == nil || rec.SuccessRate == nil {
		t.Fatalf("%v: success rate raw %v, recorded %v", name, raw.SuccessRate, rec.SuccessRate)
	}
	exact("success rate", *raw.SuccessRate, *rec.SuccessRate)
	for _, q := range []struct {
		name string
		a, b *float64
	}{{"p50", raw.LatencyP50, rec.LatencyP50}, {"p95", raw.LatencyP95, rec.LatencyP95}, {"p99", raw.LatencyP99, rec.LatencyP99}} {
		if q.a == nil || q.b == nil {
			t.Fatalf("%v %s: raw %v, recorded %v", name, q.name, q.a, q.b)
		}
		lo, hi := bucketOf(*q.a)
		if *q.b < lo || *q.b > hi {
			t.Errorf("%v %s: raw %v in bucket (%v, %v], recorded %v outside it", name, q.name, *q.a, lo, hi, *q.b)
		}
	}
}

// bucketOf is the latency bucket holding v: (lower, upper].
func bucketOf(v float64) (float64, float64) {
	lo := 0.0
	for _, le := range Buckets {
		if v <= le {
			return lo, le
		}
		lo = le
	}
	return lo, math.Inf(1)
}
