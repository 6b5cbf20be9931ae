package promengine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api/rules"
)

// startEngine runs an engine scraping a real client_golang /metrics endpoint
// whose counters grow by 100 per second of wall time, so rate() has a known
// answer whatever the scrape timing, and evaluating Meshscope's recording
// rules (one of the counters is an inbound request_total).
func startEngine(t *testing.T) (v1.API, string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	growth := func() float64 { return float64(time.Now().UnixMilli()) / 10 }
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "demo_work_total", Help: "Work done, 100 per second.",
	}, growth), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "request_total", Help: "Requests, 100 per second.", ConstLabels: prometheus.Labels{"direction": "inbound"},
	}, growth))
	target := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(target.Close)

	dir := t.TempDir()
	groups := []map[string]any{{
		"targets": []string{target.Listener.Addr().String()},
		"labels":  map[string]string{"namespace": "shop", "deployment": "web", "pod": "web-0"},
	}}
	writeJSON(t, filepath.Join(dir, "targets.json"), groups)
	if err := os.WriteFile(filepath.Join(dir, rules.FileName), rules.YAML(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := "global:\n  scrape_interval: 1s\nrule_files: [" + rules.FileName + "]\nscrape_configs:\n  - job_name: meshscope-proxy\n    file_sd_configs:\n      - files: [targets.json]\n"
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{ConfigFile: filepath.Join(dir, "prometheus.yml")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		if err := e.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(func() {
		srv.Close()
		cancel()
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	client, err := api.NewClient(api.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return v1.NewAPI(client), "http://" + target.Listener.Addr().String() + "/metrics"
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// eventually retries f every 200ms until it returns nil or a generous
// deadline passes.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestEngineServesPrometheusAPIToClientGolang(t *testing.T) {
	prom, scrapeURL := startEngine(t)
	ctx := context.Background()

	t.Run("targets list the scraped endpoint with its file_sd labels", func(t *testing.T) {
		eventually(t, "active target", func() error {
			res, err := prom.Targets(ctx)
			if err != nil {
				return err
			}
			if len(res.Active) != 1 {
				return fmt.Errorf("%d active targets, want 1", len(res.Active))
			}
			got := res.Active[0]
			want := model.LabelSet{"job": "meshscope-proxy", "namespace": "shop", "deployment": "web", "pod": "web-0",
				"instance": model.LabelValue(got.Labels["instance"])}
			if !got.Labels.Equal(want) || got.ScrapeURL != scrapeURL || got.ScrapePool != "meshscope-proxy" {
				return fmt.Errorf("target %+v, want labels %v and scrape URL %s", got, want, scrapeURL)
			}
			if got.Health != v1.HealthGood {
				return fmt.Errorf("target health %q (%s)", got.Health, got.LastError)
			}
			return nil
		})
	})

	t.Run("instant rate query returns the counter's growth per second", func(t *testing.T) {
		eventually(t, "rate", func() error {
			val, _, _, err := prom.Query(ctx, `sum(rate(demo_work_total{namespace="shop"}[5s])) by (deployment)`, time.Now())
			if err != nil {
				return err
			}
			vec, ok := val.(model.Vector)
			if !ok || len(vec) != 1 {
				return fmt.Errorf("result %v, want a one-sample vector", val)
			}
			if vec[0].Metric["deployment"] != "web" {
				return fmt.Errorf("labels %v, want deployment=web", vec[0].Metric)
			}
			if v := float64(vec[0].Value); v < 90 || v > 110 {
				return fmt.Errorf("rate %v, want 100±10", v)
			}
			return nil
		})
	})

	t.Run("range query returns a matrix with a point per step", func(t *testing.T) {
		end := time.Now()
		val, _, _, err := prom.QueryRange(ctx, `demo_work_total`, v1.Range{Start: end.Add(-4 * time.Second), End: end, Step: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		m, ok := val.(model.Matrix)
		if !ok || len(m) != 1 || len(m[0].Values) < 2 {
			t.Fatalf("result %v, want one series with several points", val)
		}
	})

	t.Run("concurrent range queries each get their own points", func(t *testing.T) {
		// Query results borrow pooled memory until encoded; encoding after
		// releasing it showed as a data race here under -race.
		end := time.Now()
		errs := make(chan error, 16)
		for range cap(errs) {
			go func() {
				val, _, _, err := prom.QueryRange(ctx, `sum(rate(demo_work_total[2s]))`, v1.Range{Start: end.Add(-5 * time.Second), End: end, Step: 100 * time.Millisecond})
				if err == nil {
					if m, ok := val.(model.Matrix); !ok || len(m) != 1 {
						err = fmt.Errorf("result %v, want one series", val)
					}
				}
				errs <- err
			}()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("the recording rules record the 1m rate per deployment and per namespace", func(t *testing.T) {
		// A group first runs at an offset of up to its interval (1m) after
		// the start, then once a minute.
		deadline := time.Now().Add(3 * time.Minute)
		for _, name := range []string{"deployment:request_total:rate1m", "namespace:request_total:rate1m"} {
			for {
				err := func() error {
					val, _, _, err := prom.Query(ctx, name, time.Now())
					if err != nil {
						return err
					}
					vec, ok := val.(model.Vector)
					if !ok || len(vec) != 1 {
						return fmt.Errorf("%s: result %v, want one series", name, val)
					}
					if vec[0].Metric["namespace"] != "shop" || vec[0].Metric["direction"] != "inbound" {
						return fmt.Errorf("%s: labels %v, want namespace=shop, direction=inbound", name, vec[0].Metric)
					}
					if v := float64(vec[0].Value); v < 90 || v > 110 {
						return fmt.Errorf("%s: %v, want 100±10", name, v)
					}
					return nil
				}()
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal(err)
				}
				time.Sleep(time.Second)
			}
		}
	})

	t.Run("bad PromQL is a bad_data error", func(t *testing.T) {
		_, _, _, err := prom.Query(ctx, `sum(rate(demo_work_total[5s]`, time.Now())
		var apiErr *v1.Error
		if !errors.As(err, &apiErr) || apiErr.Type != v1.ErrBadData {
			t.Fatalf("error %v, want a bad_data API error", err)
		}
	})
}

func TestEngineHandlerServesOnlyTheDashboardSubset(t *testing.T) {
	tests := []struct {
		name, method, path string
		want               int
	}{
		{"readiness probe", http.MethodGet, "/-/ready", http.StatusOK},
		{"targets", http.MethodGet, "/api/v1/targets", http.StatusOK},
		{"admin API is absent", http.MethodPost, "/api/v1/admin/tsdb/delete_series", http.StatusNotFound},
		{"remote write is absent", http.MethodPost, "/api/v1/write", http.StatusNotFound},
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("scrape_configs: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{ConfigFile: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			e.Handler().ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d", rec.Code, tt.want)
			}
		})
	}
}

func TestCloseStopsRunAndAnEngineRunsOnce(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("scrape_configs: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{ConfigFile: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- e.Run(context.Background()) }()
	eventually(t, "Run started", func() error {
		e.mu.Lock()
		defer e.mu.Unlock()
		if !e.running {
			return errors.New("not yet")
		}
		return nil
	})
	if err := e.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Run: %v, want ErrClosed", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
	if err := e.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func TestNewRejectsAMissingConfig(t *testing.T) {
	_, err := New(Options{ConfigFile: filepath.Join(t.TempDir(), "absent.yml")})
	if err == nil {
		t.Fatal("no error for a missing config file")
	}
}

func TestNewRejectsABadRuleFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yml"), []byte("groups:\n  - name: g\n    rules:\n      - record: x\n        expr: sum(\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := "rule_files: [bad.yml]\n"
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{ConfigFile: filepath.Join(dir, "prometheus.yml")})
	if err == nil || !strings.Contains(err.Error(), "bad.yml") {
		t.Fatalf("New: %v, want an error naming bad.yml", err)
	}
}
