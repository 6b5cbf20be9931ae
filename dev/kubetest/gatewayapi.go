package kubetest

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// GatewayAPIVersion is the Gateway API release whose CRDs InstallGatewayAPI installs.
const GatewayAPIVersion = "v1.6.3"

var gatewayOnce struct {
	sync.Once
	err error
}

// InstallGatewayAPI installs the standard channel's HTTPRoute and GRPCRoute CRDs of Gateway API
// (GatewayAPIVersion, from the Go module cache: `go mod download` fetches the module through the module
// proxy) into the shared API server, once per test binary, and waits until they are served. It fails the
// test when go or kubectl is missing.
func (s *Server) InstallGatewayAPI(t testing.TB) {
	t.Helper()
	gatewayOnce.Do(func() { gatewayOnce.err = s.installGatewayAPI() })
	if gatewayOnce.err != nil {
		t.Fatalf("install Gateway API CRDs: %v", gatewayOnce.err)
	}
}

func (s *Server) installGatewayAPI() error {
	out, err := exec.Command("go", "mod", "download", "-json", "sigs.k8s.io/gateway-api@"+GatewayAPIVersion).Output()
	if err != nil {
		return fmt.Errorf("go mod download sigs.k8s.io/gateway-api@%s: %w", GatewayAPIVersion, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return fmt.Errorf("go mod download: %s %v", mod.Error, err)
	}
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		return err
	}
	args := []string{"--kubeconfig", s.Kubeconfig, "apply", "--server-side"}
	for _, kind := range []string{"httproutes", "grpcroutes"} {
		args = append(args, "-f", filepath.Join(mod.Dir, "config", "crd", "standard", "gateway.networking.k8s.io_"+kind+".yaml"))
	}
	if out, err := exec.Command(kubectl, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply: %v: %s", err, strings.TrimSpace(string(out)))
	}
	wait := []string{"--kubeconfig", s.Kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io"}
	if out, err := exec.Command(kubectl, wait...).CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl wait: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
