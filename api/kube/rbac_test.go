package kube_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/dev/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

// rbacNamespace holds the test's ServiceAccounts (they need not exist: RBAC matches names).
const rbacNamespace = "meshscope-rbactest"

var bindOnce sync.Once

// bindAll grants every component its ClusterRules, as web install does, to its ServiceAccount in
// rbacNamespace, once per test binary.
func bindAll(t *testing.T) *kubetest.Server {
	t.Helper()
	srv := kubetest.Start(t)
	bindOnce.Do(func() {
		ctx := context.Background()
		for name, rules := range kube.ClusterRules() {
			role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name + "-rbactest"}, Rules: rules}
			if _, err := srv.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name + "-rbactest"},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
				Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: rbacNamespace}}}
			if _, err := srv.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	})
	return srv
}

// serviceAccount is the user name RBAC knows a component by.
func serviceAccount(component string) string {
	return "system:serviceaccount:" + rbacNamespace + ":" + component
}

// impersonating returns srv's configuration acting as component's ServiceAccount.
func impersonating(srv *kubetest.Server, component string) *rest.Config {
	cfg := rest.CopyConfig(srv.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: serviceAccount(component)}
	return cfg
}

// access is one request a component makes: verb on group/resource, cluster-wide.
type access struct{ group, resource, verb string }

func (a access) String() string {
	return a.verb + " " + strings.TrimPrefix(a.group+"/", "/") + a.resource
}

// needs lists what each component's code does with the API; the rules must allow exactly that.
var needs = map[string][]access{
	// proxy/destination: one informer (list, then watch) per kind.
	kube.Destination: {
		{"", "services", "list"}, {"", "services", "watch"}, {"", "pods", "list"}, {"", "pods", "watch"},
		{"discovery.k8s.io", "endpointslices", "list"}, {"discovery.k8s.io", "endpointslices", "watch"},
		{"apps", "replicasets", "list"}, {"apps", "replicasets", "watch"},
		{"gateway.networking.k8s.io", "httproutes", "list"}, {"gateway.networking.k8s.io", "httproutes", "watch"},
		{"gateway.networking.k8s.io", "grpcroutes", "list"}, {"gateway.networking.k8s.io", "grpcroutes", "watch"},
	},
	// api.KubeProxies lists pods to tap.
	kube.Dashboard: {{"", "pods", "list"}},
	// Prometheus' kubernetes_sd_configs, role pod.
	kube.Prometheus: {{"", "pods", "list"}, {"", "pods", "watch"}},
	// proxy inject --webhook reads the pod's namespace.
	kube.Injector: {{"", "namespaces", "get"}},
	// proxy identity reviews ServiceAccount tokens.
	kube.Identity: {{"authentication.k8s.io", "tokenreviews", "create"}},
}

// never are requests no component may make: reading Secrets, and writing what the mesh only reads.
var never = []access{
	{"", "secrets", "get"}, {"", "secrets", "list"}, {"", "secrets", "watch"},
	{"", "configmaps", "get"}, {"", "pods", "create"}, {"", "pods", "delete"}, {"", "pods", "patch"},
	{"", "pods/exec", "create"}, {"", "pods/portforward", "create"}, {"", "services", "update"},
	{"", "namespaces", "delete"}, {"discovery.k8s.io", "endpointslices", "create"},
	{"apps", "deployments", "update"}, {"rbac.authorization.k8s.io", "clusterroles", "create"},
	{"rbac.authorization.k8s.io", "clusterrolebindings", "create"}, {"", "serviceaccounts/token", "create"},
}

func allowed(t *testing.T, srv *kubetest.Server, component string, a access) bool {
	t.Helper()
	review, err := srv.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: serviceAccount(component),
			ResourceAttributes: &authorizationv1.ResourceAttributes{Group: a.group, Resource: strings.Split(a.resource, "/")[0],
				Subresource: subresource(a.resource), Verb: a.verb}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return review.Status.Allowed
}

func subresource(r string) string {
	_, sub, _ := strings.Cut(r, "/")
	return sub
}

// The API server, asked for each component, allows what its code needs and nothing more: no Secrets,
// no writes by the dashboard and the discovery service, and no rule that grants what no code uses.
func TestEachComponentMayDoWhatItNeedsAndNothingMore(t *testing.T) {
	srv := bindAll(t)
	for component, rules := range kube.ClusterRules() {
		t.Run(component, func(t *testing.T) {
			want, known := needs[component]
			if !known {
				t.Fatalf("component %s has rules but this test does not know what its code needs: add it to needs", component)
			}
			for _, a := range want {
				if !allowed(t, srv, component, a) {
					t.Errorf("may not %s, which it needs", a)
				}
			}
			for _, a := range never {
				if allowed(t, srv, component, a) {
					t.Errorf("may %s", a)
				}
			}
			// Nothing more: every verb on every resource a rule names is one the code uses.
			for _, r := range rules {
				for _, g := range r.APIGroups {
					for _, res := range r.Resources {
						for _, v := range r.Verbs {
							if a := (access{g, res, v}); !slices.Contains(want, a) {
								t.Errorf("its rules grant %s, which no code of it uses", a)
							}
						}
					}
				}
			}
		})
	}
	for _, component := range []string{kube.Dashboard, kube.Destination} {
		for _, res := range []access{{"", "pods", ""}, {"", "services", ""}, {"discovery.k8s.io", "endpointslices", ""}} {
			for _, verb := range []string{"create", "update", "patch", "delete", "deletecollection"} {
				if a := (access{res.group, res.resource, verb}); allowed(t, srv, component, a) {
					t.Errorf("%s may %s: it must not write", component, a)
				}
			}
		}
	}
}
