package install

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/dev/kubetest"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// TestInstalledIdentityIssuesCertificates runs the real issuer (`proxy identity`) on the files
// `web install` puts in its Secret, as the installed identity ServiceAccount (impersonated, so its
// RBAC is what is tested), and a real proxy configured as the injector configures it, with a
// ServiceAccount token the API server issued for the identity audience: the proxy becomes ready
// only once it holds a certificate from that issuer.
func TestInstalledIdentityIssuesCertificates(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "mesh-identity"
	id, err := NewIdentity(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Create(ctx, render(t, Options{Namespace: ns, Identity: id})); err != nil {
		t.Fatal(err)
	}
	secret, err := srv.Client.CoreV1().Secrets(ns).Get(ctx, IdentitySecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	issuerDir := filepath.Join(dir, "issuer")
	os.Mkdir(issuerDir, 0o700)
	for name, data := range secret.Data {
		os.WriteFile(filepath.Join(issuerDir, name), data, 0o600)
	}

	// The issuer talks to the API server as the installed ServiceAccount.
	kc, err := clientcmd.LoadFromFile(srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range kc.AuthInfos {
		u.Impersonate = "system:serviceaccount:" + ns + ":" + kube.Identity
	}
	asIdentity := filepath.Join(dir, "identity.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, asIdentity); err != nil {
		t.Fatal(err)
	}

	bin := filepath.Join(dir, "proxy")
	if out, err := exec.Command("go", "build", "-o", bin, "../../proxy").CombinedOutput(); err != nil {
		t.Fatalf("build proxy: %v\n%s", err, out)
	}
	identityAddr := freeAddr(t)
	start(t, bin, "identity", "--dir="+issuerDir, "--listen="+identityAddr, "--kubeconfig="+asIdentity)

	// A workload's ServiceAccount and the token the kubelet would project for the proxy.
	if _, err := srv.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := srv.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "web", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"identity.meshscope.io"}, ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "token"), []byte(tr.Status.Token), 0o600)
	anchors, err := srv.Client.CoreV1().ConfigMaps(ns).Get(ctx, TrustAnchorsConfig, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.crt"), []byte(anchors.Data["ca.crt"]), 0o644)

	admin := freeAddr(t)
	start(t, bin, "--inbound-listen=", "--outbound-listen=", "--admin-listen="+admin,
		"--identity-addr="+identityAddr, "--identity-trust-anchors="+filepath.Join(dir, "ca.crt"),
		"--identity-token-file="+filepath.Join(dir, "token"))
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy never got its certificate: %v %v", err, resp)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs the proxy binary with args until the test ends, its output kept for a failure.
func start(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("proxy %v:\n%s", args[0], b)
		}
	})
}
