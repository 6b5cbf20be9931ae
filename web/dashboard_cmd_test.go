package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/meshscope/meshscope/dev/kubetest"
)

func TestDashboardCmd(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"an unknown --show is a usage error", []string{"--show", "tab"}, 2, "web dashboard: --show \"tab\": want browser or url\n"},
		{"a namespace without the dashboard says what to do", []string{"--show", "url", "--kubeconfig", srv.Kubeconfig, "--namespace", "mesh-nodash"}, 1,
			"web dashboard: no service meshscope-dashboard in namespace mesh-nodash: install the control plane (web install | kubectl apply -f -) or give --namespace\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := cli(ctx, append([]string{"dashboard"}, tc.args...), &stdout, &stderr)
			if code != tc.code || stderr.String() != tc.stderr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), tc.code, tc.stderr)
			}
		})
	}
}
