package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/dev/kubetest"
)

// TestTokenReviewAgainstTheAPIServer has a real kube-apiserver issue ServiceAccount tokens (the
// TokenRequest API, as the kubelet does for a projected token volume) and review them for the issuer.
func TestTokenReviewAgainstTheAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	ctx := context.Background()
	ns := "identity-test"
	srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	for _, sa := range []string{"web", "checkout"} {
		_, err := srv.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
	}
	token := func(sa, audience string) string {
		t.Helper()
		tr, err := srv.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	m := newMesh(t)
	svc := &Service{Issuer: m.issuer, Reviewer: KubeReviewer{Client: srv.Client}}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := func(names ...string) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: names}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}

	chain, err := svc.Certify(ctx, token("web", meshid.Audience), csr())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("with only the RBAC rules web install grants the issuer", func(t *testing.T) {
		// The issuer's ServiceAccount, bound to api/kube's rules for it and nothing else.
		srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "meshscope"}}, metav1.CreateOptions{})
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: kube.Identity + "-test"}, Rules: kube.ClusterRules()[kube.Identity]}
		binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: kube.Identity + "-test"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "meshscope", Name: kube.Identity}}}
		for _, create := range []func() error{
			func() error {
				_, err := srv.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
				return err
			},
			func() error {
				_, err := srv.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
				return err
			},
		} {
			if err := create(); err != nil && !strings.Contains(err.Error(), "already exists") {
				t.Fatal(err)
			}
		}
		cfg := rest.CopyConfig(srv.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: ServiceAccountUser("meshscope", kube.Identity)}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		as := &Service{Issuer: m.issuer, Reviewer: KubeReviewer{Client: client}}
		// RBAC grants are cached by the API server for a moment: retry while it catches up.
		deadline := time.Now().Add(30 * time.Second)
		for {
			chain, err := as.Certify(ctx, token("web", meshid.Audience), csr())
			if err == nil {
				if chain[0].DNSNames[0] != meshid.Name(ns, "web") {
					t.Fatalf("certificate for %v", chain[0].DNSNames)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the issuer's rules do not let it review tokens: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	if got, want := chain[0].DNSNames, meshid.Name(ns, "web"); len(got) != 1 || got[0] != want {
		t.Fatalf("certificate names %v, want %s", got, want)
	}

	for _, tc := range []struct {
		name, token string
		csr         []byte
		want        string
	}{
		{"a token for another audience", token("web", "https://kubernetes.default.svc.cluster.local"), csr(), "audience"},
		{"a request for another ServiceAccount's name", token("web", meshid.Audience), csr(meshid.Name(ns, "checkout")), "the token proves web." + ns},
		{"a forged token", "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl", csr(), "not proven"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Certify(ctx, tc.token, tc.csr)
			if !errors.Is(err, ErrNotProven) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrNotProven mentioning %q", err, tc.want)
			}
		})
	}

	// The same code path reviews tokens of a file outside a cluster: the same answers.
	t.Run("the file reviewer agrees", func(t *testing.T) {
		web := token("web", meshid.Audience)
		fr := tokenFile(t, map[string]string{web: ServiceAccountUser(ns, "web")})
		fsvc := &Service{Issuer: m.issuer, Reviewer: fr}
		chain, err := fsvc.Certify(ctx, web, csr())
		if err != nil || chain[0].DNSNames[0] != meshid.Name(ns, "web") {
			t.Fatalf("got %v %v", chain, err)
		}
		if _, err := fsvc.Certify(ctx, web, csr(meshid.Name(ns, "checkout"))); !errors.Is(err, ErrNotProven) {
			t.Fatalf("another name: %v", err)
		}
	})
}
