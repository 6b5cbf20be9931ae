package kube

import (
	"log/slog"
	"testing"

	"github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // registers kubernetes_sd_configs
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
)

// TestPrometheusConfigRelabelsProxies loads the configuration with Prometheus' own loader and runs
// its relabelling on the labels kubernetes_sd_configs gives a pod's ports.
func TestPrometheusConfigRelabelsProxies(t *testing.T) {
	cfg, err := config.Load(PrometheusConfig, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.ScrapeConfigs) != 1 || cfg.ScrapeConfigs[0].JobName != "meshscope-proxy" {
		t.Fatalf("want one job meshscope-proxy, got %v", cfg.ScrapeConfigs)
	}
	rules := cfg.ScrapeConfigs[0].RelabelConfigs
	pod := func(port string, extra ...string) labels.Labels {
		return labels.FromStrings(append([]string{
			"__address__", "10.0.0.7:4191",
			"__meta_kubernetes_namespace", "shop",
			"__meta_kubernetes_pod_name", "web-5d9c7b-x2x9z",
			"__meta_kubernetes_pod_container_port_name", port,
		}, extra...)...)
	}
	for _, tc := range []struct {
		name          string
		in            labels.Labels
		keep          bool
		deployment    string
		wantNamespace string
		wantPodLabel  string
	}{
		{"a deployment's proxy admin port", pod("meshscope-admin", "__meta_kubernetes_pod_label_meshscope_io_proxy_deployment", "web"), true, "web", "shop", "web-5d9c7b-x2x9z"},
		{"a statefulset's proxy", pod("meshscope-admin", "__meta_kubernetes_pod_label_meshscope_io_proxy_statefulset", "ledger"), true, "ledger", "shop", "web-5d9c7b-x2x9z"},
		{"a bare pod's proxy has no deployment label", pod("meshscope-admin"), true, "", "shop", "web-5d9c7b-x2x9z"},
		{"the app's own port is dropped", pod("http", "__meta_kubernetes_pod_label_meshscope_io_proxy_deployment", "web"), false, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lb := labels.NewBuilder(tc.in)
			keep := relabel.ProcessBuilder(lb, rules...)
			if keep != tc.keep {
				t.Fatalf("keep %v, want %v", keep, tc.keep)
			}
			if !keep {
				return
			}
			got := lb.Labels()
			if got.Get("deployment") != tc.deployment || got.Get("namespace") != tc.wantNamespace || got.Get("pod") != tc.wantPodLabel {
				t.Errorf("target labels %v", got)
			}
		})
	}
}
