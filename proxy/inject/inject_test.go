package inject

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/dev/kubetest"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// trustAnchors is a fixed root (testdata/trust-anchors.pem), so that the golden files stay put.
var trustAnchors = func() []byte {
	b, err := os.ReadFile("testdata/trust-anchors.pem")
	if err != nil {
		panic(err)
	}
	return b
}()

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

// goldenCases are real manifests and what `proxy inject` makes of them.
var goldenCases = []struct {
	name    string
	in      string
	golden  string
	cfg     Config
	reports []string
}{
	{
		name: "deployment with several containers, its own init container and every config annotation",
		in:   "deployment.yaml", golden: "deployment.golden",
		reports: []string{"deployment/web"},
	},
	{
		name: "already injected deployment comes out byte for byte",
		in:   "deployment.golden", golden: "deployment.golden",
		reports: []string{"deployment/web"},
	},
	{
		name: "statefulset", in: "statefulset.yaml", golden: "statefulset.golden",
		reports: []string{"statefulset/ledger"},
	},
	{
		name: "cronjob's template two levels down", in: "cronjob.yaml", golden: "cronjob.golden",
		reports: []string{"cronjob/report"},
	},
	{
		name: "list: daemonset and replicaset injected, configmap untouched", in: "list.yaml", golden: "list.golden",
		reports: []string{"daemonset/node-agent", "replicaset/worker"},
	},
	{
		name: "hostNetwork, Linkerd, Istio and disabled templates are left alone with a reason", in: "skipped.yaml", golden: "skipped.golden",
		reports: []string{
			"pod/node-exporter skipped: hostNetwork: the proxy would intercept the node's own traffic",
			"deployment/legacy skipped: already meshed by Linkerd",
			"deployment/istio-app skipped: already meshed by Istio",
			"job/backup skipped: meshscope.io/inject: disabled",
		},
	},
	{
		name: "classic sidecar with identity for a job and a bare pod", in: "job-classic.yaml", golden: "job-classic.golden",
		cfg: Config{Sidecar: Classic, Image: "registry.example/meshscope/proxy:v9",
			IdentityAddr: "meshscope-identity.meshscope.svc.cluster.local:8080", TrustAnchors: trustAnchors,
			TapClientIdentity: "meshscope-dashboard.mesh-ops.serviceaccount.identity.meshscope.cluster.local"},
		reports: []string{"job/seed", "pod/debug"},
	},
}

func run(t *testing.T, cfg Config, in []byte, mode Mode) ([]byte, []string) {
	t.Helper()
	var out bytes.Buffer
	reports, err := cfg.Manifests(bytes.NewReader(in), &out, mode)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, r := range reports {
		lines = append(lines, r.String())
	}
	return out.Bytes(), lines
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInjectGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			out, reports := run(t, tc.cfg, readFile(t, tc.in), Inject)
			if !reflect.DeepEqual(reports, tc.reports) {
				t.Errorf("reports:\n got %q\nwant %q", reports, tc.reports)
			}
			path := filepath.Join("testdata", tc.golden)
			if *update && tc.in != tc.golden {
				if err := os.WriteFile(path, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if want := readFile(t, tc.golden); !bytes.Equal(out, want) {
				t.Errorf("output differs from %s (go test ./proxy/inject -update rewrites it):\n%s", path, out)
			}
		})
	}
}

func TestInjectTwiceIsOnce(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			once, _ := run(t, tc.cfg, readFile(t, tc.in), Inject)
			twice, _ := run(t, tc.cfg, once, Inject)
			if !bytes.Equal(once, twice) {
				t.Errorf("injecting the injected output changed it:\n%s", twice)
			}
		})
	}
}

// TestUninjectRestores: uninjecting the injected output gives back the input's data, document by
// document: every value, whatever the key order or quoting; the documents inject left alone keep
// their bytes, comments included.
func TestUninjectRestores(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			in := readFile(t, tc.in)
			injected, _ := run(t, tc.cfg, in, Inject)
			back, _ := run(t, tc.cfg, injected, Remove)
			if tc.in == tc.golden {
				return // its input is injected: nothing to restore
			}
			want, got := documents(t, in), documents(t, back)
			if len(want) != len(got) {
				t.Fatalf("%d documents back, want %d", len(got), len(want))
			}
			for i := range want {
				if !reflect.DeepEqual(want[i].data, got[i].data) {
					t.Errorf("document %d: uninject(inject(x)) != x:\n got %v\nwant %v", i, got[i].data, want[i].data)
				}
				if !want[i].hasTemplate && want[i].text != got[i].text {
					t.Errorf("document %d without a pod template changed bytes:\n got %q\nwant %q", i, got[i].text, want[i].text)
				}
			}
		})
	}
}

type document struct {
	text        string
	data        any
	hasTemplate bool
}

func documents(t *testing.T, b []byte) []document {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs []document
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		var data any
		if err := yaml.Unmarshal(raw, &data); err != nil {
			t.Fatal(err)
		}
		if data == nil {
			continue
		}
		s := string(trimDocument(raw))
		docs = append(docs, document{text: s, data: data, hasTemplate: strings.Contains(s, "containers")})
	}
}

// TestInjectedAcceptedByAPIServer creates every injected object in a real API server with
// dryRun=All and strict field validation: native sidecars, probes, security contexts and all.
func TestInjectedAcceptedByAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := run(t, tc.cfg, readFile(t, tc.in), Inject)
			if err := srv.DryRun(ctx, out); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The same server refuses what is not valid, so the passes above mean something.
	out, _ := run(t, Config{}, readFile(t, "statefulset.yaml"), Inject)
	broken := bytes.Replace(out, []byte("restartPolicy: Always"), []byte("restartPolicy: Sometimes"), 1)
	if err := srv.DryRun(ctx, broken); err == nil || !strings.Contains(err.Error(), "restartPolicy") {
		t.Errorf("a sidecar with restartPolicy Sometimes: error %v, want the API server's refusal", err)
	}
}

func TestInjectRefusesBadAnnotations(t *testing.T) {
	for _, tc := range []struct{ annotation, value, want string }{
		{OpaquePortsAnnotation, "mysql", `deployment/web: annotation config.meshscope.io/opaque-ports "mysql": "mysql" is not a port (1-65535)`},
		{SkipInboundPortsAnnotation, "90-80", `deployment/web: annotation config.meshscope.io/skip-inbound-ports "90-80": range "90-80" runs backwards`},
		{SkipOutboundPortsAnnotation, "70000", `deployment/web: annotation config.meshscope.io/skip-outbound-ports "70000": "70000" is not a port (1-65535)`},
		{LogLevelAnnotation, "loud", `deployment/web: annotation config.meshscope.io/proxy-log-level "loud": want debug, info, warn or error`},
	} {
		t.Run(tc.annotation, func(t *testing.T) {
			in := `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata:
      annotations: {"` + tc.annotation + `": "` + tc.value + `"}
    spec:
      containers: [{name: web, image: web}]
`
			_, err := Config{}.Manifests(strings.NewReader(in), io.Discard, Inject)
			if err == nil || err.Error() != tc.want {
				t.Errorf("error %v, want %s", err, tc.want)
			}
		})
	}
}

func TestSourcesReadsFilesDirectoriesAndStdin(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a manifest"), 0o644)
	r, err := Sources([]string{dir, "-"}, strings.NewReader("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := (Config{}).Manifests(r, &out, Inject); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range documents(t, out.Bytes()) {
		names = append(names, d.data.(map[string]any)["metadata"].(map[string]any)["name"].(string))
	}
	if want := []string{"a", "b", "c"}; !reflect.DeepEqual(names, want) {
		t.Errorf("documents %v, want %v (directory in lexical order, .txt ignored, then stdin)", names, want)
	}
	if _, err := Sources([]string{filepath.Join(dir, "missing.yaml")}, nil); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: error %v, want one naming it", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{Sidecar: "sometimes"}, `sidecar "sometimes": want native or classic`},
		{Config{IdentityAddr: "identity:8080"}, "identity-addr needs the mesh's trust anchors (identity-trust-anchors)"},
		{Config{IdentityAddr: "identity:8080", TrustAnchors: []byte("not pem")}, "identity-trust-anchors: no PEM certificate"},
		{Config{IdentityAddr: "identity:8080", TrustAnchors: trustAnchors}, ""},
		{Config{IdentityAddr: "identity:8080", TrustAnchors: trustAnchors, TapClientIdentity: "dashboard"}, `tap-client-identity: identity "dashboard" is not in the trust domain identity.meshscope.cluster.local`},
	} {
		err := tc.cfg.Validate()
		if got := fmt.Sprint(err); (tc.want == "" && err != nil) || (tc.want != "" && got != tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
