package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/dev/kubetest"
)

// TestInstallCmdAgainstTheAPIServer: applied and installed again, `web install` prints the same
// bytes (it reuses the certificate it left in the cluster); --ignore-cluster never asks.
func TestInstallCmdAgainstTheAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	install := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := cli(ctx, append([]string{"install"}, args...), &stdout, &stderr); code != 0 {
			t.Fatalf("web install %v: exit %d: %s", args, code, stderr.String())
		}
		return stdout.String()
	}
	first := install("--kubeconfig", srv.Kubeconfig, "--namespace", "mesh-cli")
	if err := srv.Create(ctx, []byte(first)); err != nil {
		t.Fatal(err)
	}
	if again := install("--kubeconfig", srv.Kubeconfig, "--namespace", "mesh-cli"); again != first {
		t.Error("installing again printed different bytes")
	}
	offline := install("--ignore-cluster", "--kubeconfig", "/nonexistent", "--namespace", "mesh-cli")
	if offline == first || !strings.Contains(offline, "kind: MutatingWebhookConfiguration") {
		t.Error("--ignore-cluster should print a new certificate without reading the cluster's")
	}
	var stderr bytes.Buffer
	if code := cli(ctx, []string{"install", "--kubeconfig", "/nonexistent"}, &bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "--ignore-cluster") {
		t.Errorf("unreadable kubeconfig: exit %d, %q; want 1 and a hint at --ignore-cluster", code, stderr.String())
	}
}

// TestInstalledDashboardAnswersItsProbesAndPortForward runs the dashboard with the arguments
// `web install` gives it behind an ingress, and sends the requests the kubelet's probes, web
// dashboard's port-forward, the ingress and a rebinding attacker would.
func TestInstalledDashboardAnswersItsProbesAndPortForward(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := cli(context.Background(), []string{"install", "--ignore-cluster", "--dashboard-base-path=/meshscope", `--dashboard-enforced-host=mesh\.example\.com`}, &stdout, &stderr); code != 0 {
		t.Fatalf("install: %s", stderr.String())
	}
	cfg := config{PrometheusURL: "http://127.0.0.1:1"}
	for _, line := range strings.Split(stdout.String(), "\n") {
		arg := strings.TrimPrefix(strings.TrimSpace(line), "- ")
		if v, ok := strings.CutPrefix(arg, "--enforced-host="); ok {
			if err := (regexpFlag{&cfg.EnforcedHost}).Set(v); err != nil {
				t.Fatal(err)
			}
		}
		if v, ok := strings.CutPrefix(arg, "--base-path="); ok {
			cfg.BasePath = v
		}
	}
	if cfg.EnforcedHost == nil || cfg.BasePath != "/meshscope" {
		t.Fatalf("no --enforced-host or --base-path in the dashboard's args:\n%s", stdout.String())
	}
	base := startDashboard(t, cfg)
	for _, tc := range []struct {
		host, path string
		want       int
	}{
		{"localhost", "/meshscope/healthz", http.StatusOK}, // the kubelet's probe (Host: localhost)
		{"localhost:50750", "/meshscope/healthz", http.StatusOK},
		{"mesh.example.com", "/meshscope/healthz", http.StatusOK},
		{"evil.example.net", "/meshscope/healthz", http.StatusForbidden},
	} {
		req, _ := http.NewRequest(http.MethodGet, strings.TrimSuffix(base, cfg.BasePath)+tc.path, nil)
		req.Host = tc.host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Host %s %s: %d, want %d", tc.host, tc.path, resp.StatusCode, tc.want)
		}
	}
}
