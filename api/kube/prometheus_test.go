package kube_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshscope/meshscope/api/kube"
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // kubernetes_sd_configs in the engine

	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/meshscope/meshscope/dev/promengine"
)

// lockedWriter lets the engine's goroutines log into one builder.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Prometheus' own discovery, relabelling and scrape managers (dev/promengine: Debian's prometheus binary
// is built without kubernetes_sd_configs), given the embedded configuration and a kubeconfig acting as
// Prometheus' ServiceAccount (so its RBAC is tested too), discover through the real API server exactly
// the meshed pods' admin ports, with exactly the target labels the dashboard reads.
func TestPrometheusDiscoversProxiesThroughTheAPIServer(t *testing.T) {
	srv := bindAll(t)
	ns := fmt.Sprintf("promsd-%d", time.Now().UnixNano()%100000)
	ctx := context.Background()
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(name, ip string, labels map[string]string, meshed bool) {
		t.Helper()
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
		if meshed {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: kube.ProxyContainer, Image: "proxy",
				Ports: []corev1.ContainerPort{{Name: "meshscope-proxy", ContainerPort: 4143}, {Name: kube.AdminPortName, ContainerPort: 4191}}})
		}
		got, err := srv.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		if _, err := srv.Client.CoreV1().Pods(ns).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod("web-5d9c-a", "10.30.0.1", map[string]string{"meshscope.io/proxy-deployment": "web", "app": "web"}, true)
	pod("ledger-0", "10.30.0.2", map[string]string{"meshscope.io/proxy-statefulset": "ledger"}, true)
	pod("bare", "10.30.0.3", nil, true)
	pod("unmeshed", "10.30.0.4", map[string]string{"meshscope.io/proxy-deployment": "legacy"}, false)

	dir := t.TempDir()
	kubeconfig := impersonatingKubeconfig(t, srv, dir, kube.Prometheus)
	cfg := strings.Replace(kube.PrometheusConfig, "      - role: pod\n", "      - role: pod\n        kubeconfig_file: "+kubeconfig+"\n", 1)
	if cfg == kube.PrometheusConfig {
		t.Fatal("the configuration has no kubernetes_sd_configs entry with role: pod")
	}
	// The recording rules it names are api/rules' to test; none here.
	if err := os.WriteFile(filepath.Join(dir, "meshscope.rules.yml"), []byte("groups: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	engine, err := promengine.New(promengine.Options{ConfigFile: filepath.Join(dir, "prometheus.yml"),
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { engine.Run(runCtx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran; engine.Close() })
	api := httptest.NewServer(engine.Handler())
	t.Cleanup(api.Close)
	addr := strings.TrimPrefix(api.URL, "http://")

	want := map[string]map[string]string{
		"web-5d9c-a": {"instance": "10.30.0.1:4191", "job": "meshscope-proxy", "namespace": ns, "deployment": "web", "pod": "web-5d9c-a"},
		"ledger-0":   {"instance": "10.30.0.2:4191", "job": "meshscope-proxy", "namespace": ns, "deployment": "ledger", "pod": "ledger-0"},
		"bare":       {"instance": "10.30.0.3:4191", "job": "meshscope-proxy", "namespace": ns, "pod": "bare"},
	}
	var got map[string]map[string]string
	deadline := time.Now().Add(90 * time.Second) // a hang guard: discovery is a watch, it comes in seconds
	for {
		got = activeTargets(addr, ns)
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("targets in %s:\n got %v\nwant %v\nprometheus log:\n%s", ns, got, want, logs.String())
	}
}

// impersonatingKubeconfig writes a kubeconfig with srv's administrator credentials acting as component's
// ServiceAccount, so the client has only that account's permissions.
func impersonatingKubeconfig(t *testing.T, srv *kubetest.Server, dir, component string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = serviceAccount(component)
	}
	path := filepath.Join(dir, component+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// activeTargets returns the labels of Prometheus' active targets in namespace ns, by pod.
func activeTargets(addr, ns string) map[string]map[string]string {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/api/v1/targets?state=active")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			ActiveTargets []struct {
				Labels map[string]string `json:"labels"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if json.NewDecoder(resp.Body).Decode(&body) != nil {
		return nil
	}
	out := map[string]map[string]string{}
	for _, tg := range body.Data.ActiveTargets {
		if tg.Labels["namespace"] == ns {
			out[tg.Labels["pod"]] = tg.Labels
		}
	}
	return out
}
