package kubetest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshscope/meshscope/dev/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

func TestServerStoresObjectsAndKubectlReadsTheVersion(t *testing.T) {
	srv := kubetest.Start(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubetest-smoke"}}
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	got, err := srv.Client.CoreV1().Namespaces().Get(ctx, "kubetest-smoke", metav1.GetOptions{})
	if err != nil || got.Name != "kubetest-smoke" {
		t.Fatalf("get namespace: %v %v", got, err)
	}
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatalf("kubectl is not installed (the test command installs it): %v", err)
	}
	out, err := exec.Command("kubectl", "--kubeconfig", srv.Kubeconfig, "version", "-o", "yaml").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "gitVersion: v1.37.2") {
		t.Fatalf("kubectl version: %v\n%s", err, out)
	}
}
