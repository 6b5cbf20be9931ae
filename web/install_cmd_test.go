package main

import (
	"bytes"
	"context"
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
