package install

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // registers kubernetes_sd_configs
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

func render(t *testing.T, o Options) []byte {
	t.Helper()
	var err error
	if o.TLS == nil {
		if o.TLS, err = NewTLS(o.namespace(), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if o.Identity == nil && !o.NoIdentity {
		if o.Identity, err = NewIdentity(time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	out, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kinds lists each document's kind/name, in order.
func kinds(t *testing.T, manifests []byte) []string {
	t.Helper()
	var out []string
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(manifests), -1) {
		var obj struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.UnmarshalStrict([]byte(doc), &obj); err != nil && !strings.Contains(err.Error(), "unknown field") {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		out = append(out, obj.Kind+"/"+obj.Metadata.Name)
	}
	return out
}

var optionCases = []struct {
	name string
	o    Options
}{
	{"defaults", Options{}},
	{"every option", Options{
		Namespace: "mesh-ops", Registry: "registry.example/team", Tag: "v9.9.9", PrometheusImage: "registry.example/prometheus:v3",
		DashboardReplicas: 2, DestinationReplicas: 3, InjectorReplicas: 2, Retention: "24h", RetentionSize: "5GB",
		GrafanaURL: "https://grafana.example", BasePath: "/meshscope", EnforcedHost: `mesh\.example\.com`,
	}},
	{"the user's own Prometheus", Options{Namespace: "mesh-byo", PrometheusURL: "https://thanos.example:10902"}},
	{"without identity", Options{Namespace: "mesh-noid", NoIdentity: true}},
}

// TestInstallAcceptedByAPIServer: every object, with and without options, is created by a real API
// server with dryRun=All and strict field validation.
func TestInstallAcceptedByAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range optionCases {
		t.Run(tc.name, func(t *testing.T) {
			if err := srv.DryRun(ctx, render(t, tc.o)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestInstallPrintsTheControlPlane(t *testing.T) {
	common := []string{
		"Namespace/meshscope",
		"ServiceAccount/meshscope-dashboard", "ServiceAccount/meshscope-destination", "ServiceAccount/meshscope-injector",
	}
	t.Run("defaults install Prometheus with bounded retention", func(t *testing.T) {
		out := render(t, Options{})
		got := strings.Join(kinds(t, out), " ")
		for _, want := range append(common, "ServiceAccount/meshscope-prometheus", "ClusterRole/meshscope-prometheus-meshscope",
			"ConfigMap/meshscope-prometheus", "Deployment/meshscope-prometheus", "Service/meshscope-prometheus",
			"Secret/meshscope-injector-tls", "MutatingWebhookConfiguration/meshscope-proxy-injector-meshscope",
			"Deployment/meshscope-dashboard", "Deployment/meshscope-destination", "Deployment/meshscope-injector",
			"Deployment/meshscope-identity", "Service/meshscope-identity", "Secret/meshscope-identity-issuer", "ConfigMap/meshscope-identity-trust-anchors") {
			if !strings.Contains(got, want) {
				t.Errorf("no %s in %s", want, got)
			}
		}
		for _, want := range []string{
			"--storage.tsdb.retention.time=6h", "--storage.tsdb.retention.size=1GB",
			"--prometheus-url=http://meshscope-prometheus.meshscope.svc.cluster.local:9090",
			"image: meshscope/web:v0.1.0", "image: meshscope/proxy:v0.1.0", "kubernetes_sd_configs",
			"failurePolicy: Ignore", "readOnlyRootFilesystem: true", "runAsNonRoot: true",
			"path: /healthz", "path: /readyz",
			"--identity-addr=meshscope-identity.meshscope.svc.cluster.local:8080",
		} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("no %q in the output", want)
			}
		}
	})
	t.Run("--prometheus-url installs no Prometheus and points the dashboard at it", func(t *testing.T) {
		out := render(t, Options{PrometheusURL: "https://thanos.example:10902"})
		if bytes.Contains(out, []byte("meshscope-prometheus")) {
			t.Error("a Prometheus object is printed with --prometheus-url")
		}
		if !bytes.Contains(out, []byte("--prometheus-url=https://thanos.example:10902")) {
			t.Error("the dashboard does not query the given Prometheus")
		}
	})
	t.Run("options reach every object", func(t *testing.T) {
		out := render(t, optionCases[1].o)
		for _, want := range []string{
			"namespace: mesh-ops", "image: registry.example/team/web:v9.9.9", "image: registry.example/team/proxy:v9.9.9",
			"--image=registry.example/team/proxy:v9.9.9", "replicas: 3", "--grafana-url=https://grafana.example",
			"--storage.tsdb.retention.time=24h", "image: registry.example/prometheus:v3",
			"--destination-addr=meshscope-destination.mesh-ops.svc.cluster.local:8086",
			"--base-path=/meshscope", "path: /meshscope/readyz", "path: /meshscope/healthz", `--enforced-host=mesh\.example\.com|localhost(:\d+)?`,
		} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("no %q in the output", want)
			}
		}
		if bytes.Contains(out, []byte("namespace: meshscope\n")) {
			t.Error("an object is still in namespace meshscope")
		}
	})
}

func TestInstallRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Namespace: "Mesh_Scope"}, `namespace "Mesh_Scope": want lower-case letters, digits and inner dashes (an RFC 1123 label)`},
		{Options{PrometheusURL: "thanos:10902"}, `prometheus-url "thanos:10902": want an http(s) URL`},
		{Options{GrafanaURL: "ftp://grafana"}, `grafana-url "ftp://grafana": want an http(s) URL`},
		{Options{DashboardReplicas: -1}, `dashboard-replicas -1: want 1 or more`},
		{Options{RetentionSize: "lots"}, `retention-size "lots": want a size like 512MB or 2GB`},
		{Options{BasePath: "meshscope/"}, `dashboard-base-path "meshscope/": want a path like /meshscope (leading slash, no trailing slash)`},
		{Options{EnforcedHost: "(("}, "dashboard-enforced-host \"((\": error parsing regexp: missing closing ): `((`"},
	} {
		if err := tc.o.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("%+v: error %v, want %s", tc.o, err, tc.want)
		}
	}
}

// TestInstallIsStable: the same options and certificate give the same bytes, and an install that
// asks the cluster reuses the certificate the last one left there, so running it again changes
// nothing.
func TestInstallIsStable(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := Options{Namespace: "mesh-stable"}
	first := render(t, o)
	if err := srv.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	reused, err := ClusterTLS(ctx, srv.Client, o.Namespace, time.Now())
	if err != nil || reused == nil {
		t.Fatalf("the installed certificate was not reused: %v", err)
	}
	o.TLS = reused
	if o.Identity, err = ClusterIdentity(ctx, srv.Client, o.Namespace, time.Now()); err != nil || o.Identity == nil {
		t.Fatalf("the installed identity was not reused: %v", err)
	}
	if again := render(t, o); !bytes.Equal(first, again) {
		t.Error("installing again with the cluster's certificate printed different bytes")
	}
	if expiring, _ := ClusterTLS(ctx, srv.Client, o.Namespace, time.Now().Add(certLifetime-renewBefore/2)); expiring != nil {
		t.Error("a certificate about to expire was reused")
	}
	if other, _ := ClusterTLS(ctx, srv.Client, "mesh-none", time.Now()); other != nil {
		t.Error("a namespace without an install has a certificate")
	}
}

// TestInstalledPermissionsAreLeast applies the RBAC for real and asks the API server what each
// component's ServiceAccount may do: what it watches, and not Secrets.
func TestInstalledPermissionsAreLeast(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := "mesh-rbac"
	if err := srv.Create(ctx, render(t, Options{Namespace: ns})); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sa                  string
		group, resource, vb string
		allowed             bool
	}{
		{kube.Injector, "", "namespaces", "get", true},
		{kube.Injector, "", "pods", "list", false},
		{kube.Destination, "discovery.k8s.io", "endpointslices", "watch", true},
		{kube.Destination, "", "secrets", "list", false},
		{kube.Prometheus, "", "pods", "list", true},
		{kube.Prometheus, "", "secrets", "get", false},
		{kube.Dashboard, "", "pods", "list", true},
		{kube.Dashboard, "", "pods", "delete", false},
		{kube.Identity, "authentication.k8s.io", "tokenreviews", "create", true},
		{kube.Identity, "", "secrets", "list", false},
	} {
		cfg := rest.CopyConfig(srv.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + tc.sa}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: tc.group, Resource: tc.resource, Verb: tc.vb,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if review.Status.Allowed != tc.allowed {
			t.Errorf("%s %s %s: allowed %v, want %v", tc.sa, tc.vb, tc.resource, review.Status.Allowed, tc.allowed)
		}
	}
}

// TestInstalledPrometheusConfigLoads writes the installed Prometheus' ConfigMap to a directory, as
// the pod mounts it, and loads it with Prometheus' own loaders: the scrape job and the recording
// rules it names.
func TestInstalledPrometheusConfigLoads(t *testing.T) {
	var cm *corev1.ConfigMap
	for _, obj := range (Options{TLS: &TLS{}, Identity: &Identity{}}).objects() {
		if c, ok := obj.(*corev1.ConfigMap); ok && c.Name == kube.Prometheus {
			cm = c
		}
	}
	if cm == nil {
		t.Fatal("no Prometheus ConfigMap")
	}
	dir := t.TempDir()
	for name, data := range cm.Data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.LoadFile(filepath.Join(dir, "prometheus.yml"), false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RuleFiles) != 1 {
		t.Fatalf("rule files %v, want the recording rules", cfg.RuleFiles)
	}
	groups, errs := rulefmt.ParseFile(cfg.RuleFiles[0], false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(groups.Groups) == 0 {
		t.Error("no recording rule groups")
	}
}

// deployments decodes the Deployments of manifests, by name.
func deployments(t *testing.T, manifests []byte) map[string]*appsv1.Deployment {
	t.Helper()
	out := map[string]*appsv1.Deployment{}
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(manifests), -1) {
		var d appsv1.Deployment
		if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
			t.Fatal(err)
		}
		if d.Kind == "Deployment" {
			out[d.Name] = &d
		}
	}
	return out
}

// flagValues returns the --name=value arguments of c.
func flagValues(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, a := range c.Args {
		if name, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "="); ok {
			out[name] = v
		}
	}
	return out
}

// With identity, install wires the dashboard to tap over mutual TLS: it gets its ServiceAccount's
// identity from the issuer (the issuer's address, the trust anchors and a token for the issuer's
// audience, each flag pointing into a volume that holds it), and the injector tells every proxy to let
// exactly that identity tap, in whatever namespace the control plane is. No tap token is set anywhere.
// Without identity, none of it.
func TestInstallWiresTheDashboardForTapOverMutualTLS(t *testing.T) {
	for _, tc := range optionCases {
		t.Run(tc.name, func(t *testing.T) {
			out := render(t, tc.o)
			if bytes.Contains(out, []byte("tap-token")) {
				t.Error("a tap token is configured")
			}
			deploys := deployments(t, out)
			dash, inj := deploys[kube.Dashboard], deploys[kube.Injector]
			if dash == nil || inj == nil {
				t.Fatalf("no dashboard or injector Deployment: %v", kinds(t, out))
			}
			pod := dash.Spec.Template.Spec
			args := flagValues(pod.Containers[0])
			if tc.o.NoIdentity {
				if args["identity-addr"] != "" || flagValues(inj.Spec.Template.Spec.Containers[0])["tap-client-identity"] != "" {
					t.Errorf("identity wiring without identity: dashboard %v, injector %v", pod.Containers[0].Args, inj.Spec.Template.Spec.Containers[0].Args)
				}
				return
			}
			ns := tc.o.namespace()
			if want := "meshscope-identity." + ns + ".svc.cluster.local:8080"; args["identity-addr"] != want {
				t.Errorf("dashboard --identity-addr=%q, want %q", args["identity-addr"], want)
			}
			// Each file flag names a file in a volume mounted there, holding what it must.
			mounted := func(path string) *corev1.Volume {
				for _, m := range pod.Containers[0].VolumeMounts {
					if strings.HasPrefix(path, m.MountPath+"/") {
						for i := range pod.Volumes {
							if pod.Volumes[i].Name == m.Name {
								return &pod.Volumes[i]
							}
						}
					}
				}
				return nil
			}
			if v := mounted(args["identity-trust-anchors"]); v == nil || v.ConfigMap == nil || v.ConfigMap.Name != TrustAnchorsConfig ||
				!strings.HasSuffix(args["identity-trust-anchors"], "/"+trustAnchorsFile) {
				t.Errorf("--identity-trust-anchors=%q is not the trust anchors ConfigMap's %s: %+v", args["identity-trust-anchors"], trustAnchorsFile, v)
			}
			v := mounted(args["identity-token-file"])
			if v == nil || v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
				t.Fatalf("--identity-token-file=%q is not a projected ServiceAccount token: %+v", args["identity-token-file"], v)
			}
			if tok := v.Projected.Sources[0].ServiceAccountToken; tok.Audience != meshid.Audience || !strings.HasSuffix(args["identity-token-file"], "/"+tok.Path) {
				t.Errorf("token for audience %q at %q, want %q at %s", tok.Audience, tok.Path, meshid.Audience, args["identity-token-file"])
			}
			// The identity the dashboard's token proves is the one the proxies let tap.
			proves := meshid.Name(dash.Namespace, pod.ServiceAccountName)
			if got := flagValues(inj.Spec.Template.Spec.Containers[0])["tap-client-identity"]; got != proves {
				t.Errorf("injector --tap-client-identity=%q, but the dashboard proves %q", got, proves)
			}
		})
	}
}
