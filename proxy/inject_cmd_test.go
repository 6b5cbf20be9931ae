package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInjectCmd(t *testing.T) {
	dir := t.TempDir()
	manifest := filepath.Join(dir, "web.yaml")
	os.WriteFile(manifest, []byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      hostNetwork: true
      containers: [{name: web, image: web}]
`), 0o644)
	for _, tc := range []struct {
		name       string
		args       []string
		usage      bool
		wantStderr string
	}{
		{name: "no manifests named is a usage error", args: nil, usage: true},
		{name: "an unknown sidecar mode is a usage error", args: []string{"--sidecar=sometimes", manifest}, usage: true},
		{name: "webhook takes no files", args: []string{"--webhook", manifest}, usage: true},
		{name: "a skipped template says why on stderr", args: []string{manifest}, wantStderr: "deployment/web skipped: hostNetwork: the proxy would intercept the node's own traffic\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := injectCmd(context.Background(), tc.args, &stdout, &stderr)
			var ue usageError
			if got := errors.As(err, &ue); got != tc.usage {
				t.Fatalf("error %v: usage error %v, want %v", err, got, tc.usage)
			}
			if tc.usage {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if stderr.String() != tc.wantStderr {
				t.Errorf("stderr %q, want %q", stderr.String(), tc.wantStderr)
			}
			if !strings.Contains(stdout.String(), "hostNetwork: true") {
				t.Errorf("stdout lost the manifest: %q", stdout.String())
			}
		})
	}
}
