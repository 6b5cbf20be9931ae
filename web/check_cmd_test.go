package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/meshscope/meshscope/web/check"
	"github.com/meshscope/meshscope/web/install"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestCheckAgainstTheAPIServer applies the control plane to a real API server, runs the real
// injector (`proxy inject --webhook`) and a real Prometheus on loopback, plays the kubelet for the
// pods, and runs `web check`: every check passes, then each fails with its own message when its
// cause is introduced.
func TestCheckAgainstTheAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	client := srv.Client
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const ns = "mesh-check"

	tlsFiles, err := install.NewTLSFor(time.Now(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	id, err := install.NewIdentity(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	manifests, err := install.Render(install.Options{Namespace: ns, TLS: tlsFiles, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Create(ctx, manifests); err != nil {
		t.Fatal(err)
	}
	stopWebhook := startWebhook(t, ctx, srv, tlsFiles, ns)
	// Prometheus scrapes web-0's proxy: a loopback server standing in for its admin port.
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1")
	}))
	defer admin.Close()
	promURL := startPrometheus(t, &workload{Namespace: "shop", Deployment: "web", Pod: "web-0", Admin: strings.TrimPrefix(admin.URL, "http://")}).URL()

	// The kubelet's part: the control plane's pods are ready, and one meshed pod runs.
	for _, component := range []string{"meshscope-dashboard", "meshscope-destination", "meshscope-identity", "meshscope-injector", "meshscope-prometheus"} {
		p := runPod(t, ctx, client, ns, component+"-0", map[string]string{install.ComponentLabel: component}, false)
		setReady(t, ctx, client, p, true, nil)
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web0 := runPod(t, ctx, client, "shop", "web-0", nil, true)
	setReady(t, ctx, client, web0, true, nil)

	args := []string{"check", "--kubeconfig", srv.Kubeconfig, "--namespace", ns, "--prometheus-url", promURL, "-o", "json"}
	results := func() (int, map[string]check.Result, []check.Result) {
		var stdout, stderr bytes.Buffer
		code := cli(ctx, args, &stdout, &stderr)
		var rs []check.Result
		if err := json.Unmarshal(stdout.Bytes(), &rs); err != nil {
			t.Fatalf("web check -o json: %v: %s %s", err, stdout.String(), stderr.String())
		}
		byName := map[string]check.Result{}
		for _, r := range rs {
			byName[r.Name] = r
		}
		return code, byName, rs
	}

	// Prometheus scrapes every second; wait for its first scrape of the proxy.
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, _, rs := results()
		if code == 0 {
			for _, r := range rs {
				if r.Status != check.OK {
					t.Errorf("%s: %s with exit 0", r.Name, r.Status)
				}
			}
			if len(rs) != 7 {
				t.Errorf("%d checks, want 7", len(rs))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checks never all passed: %+v", rs)
		}
		time.Sleep(time.Second)
	}

	expectFail := func(t *testing.T, name, detail string) {
		t.Helper()
		code, byName, _ := results()
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		r := byName[name]
		if r.Status != check.Fail || r.Detail != detail || r.Hint == "" {
			t.Errorf("%s: %+v, want fail %q with a hint", name, r, detail)
		}
		for n, other := range byName {
			if n != name && other.Status == check.Fail {
				t.Errorf("%s also fails: %s", n, other.Detail)
			}
		}
	}
	t.Run("the installed Prometheus is asked through the API server's service proxy", func(t *testing.T) {
		// Without --prometheus-url: the request goes to the API server's proxy to the
		// meshscope-prometheus Service, which answers 503 as the Service has no endpoints here (no
		// kubelet, and the API server refuses loopback endpoints).
		var stdout, stderr bytes.Buffer
		code := cli(ctx, []string{"check", "--kubeconfig", srv.Kubeconfig, "--namespace", ns, "-o", "json"}, &stdout, &stderr)
		var rs []check.Result
		json.Unmarshal(stdout.Bytes(), &rs)
		r := rs[len(rs)-1]
		if code != 1 || r.Name != "prometheus-scrapes-proxies" || r.Status != check.Fail ||
			r.Detail != "cannot ask Prometheus (service mesh-check/meshscope-prometheus through the API server) for its targets: targets: server_error: server error: 503" {
			t.Errorf("exit %d, %+v", code, r)
		}
	})
	t.Run("a control-plane pod not ready", func(t *testing.T) {
		p, _ := client.CoreV1().Pods(ns).Get(ctx, "meshscope-destination-0", metav1.GetOptions{})
		setReady(t, ctx, client, p, false, nil)
		expectFail(t, "control-plane", "meshscope-destination: 0 of 1 pods ready")
		setReady(t, ctx, client, p, true, nil)
	})
	t.Run("a meshed pod's proxy not ready", func(t *testing.T) {
		p, _ := client.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
		setReady(t, ctx, client, p, false, &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"})
		expectFail(t, "proxies-ready", "shop/web-0: proxy not ready (waiting: CrashLoopBackOff)")
		setReady(t, ctx, client, p, true, nil)
	})
	t.Run("a meshed pod whose proxy lets another control plane's dashboard tap", func(t *testing.T) {
		// web-0 again, as the injector of a default install (namespace meshscope) would have made it.
		recreate := func(env ...corev1.EnvVar) {
			t.Helper()
			client.CoreV1().Pods("shop").Delete(ctx, "web-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
			setReady(t, ctx, client, runPod(t, ctx, client, "shop", "web-0", nil, true, env...), true, nil)
		}
		recreate(corev1.EnvVar{Name: kube.IdentityAddrEnv, Value: "meshscope-identity.meshscope.svc.cluster.local:8080"})
		expectFail(t, "proxies-let-dashboard-tap", "shop/web-0: its proxy lets meshscope-dashboard.meshscope.serviceaccount.identity.meshscope.cluster.local tap, "+
			"not this dashboard (meshscope-dashboard.mesh-check.serviceaccount.identity.meshscope.cluster.local): the live views cannot tap it")
		recreate(corev1.EnvVar{Name: kube.IdentityAddrEnv, Value: "meshscope-identity.mesh-check.svc.cluster.local:8080"},
			corev1.EnvVar{Name: kube.TapClientIdentityEnv, Value: meshid.Name(ns, kube.Dashboard)})
		if _, byName, _ := results(); byName["proxies-let-dashboard-tap"].Status != check.OK {
			t.Errorf("a proxy that lets this dashboard tap: %+v", byName["proxies-let-dashboard-tap"])
		}
		recreate()
	})
	t.Run("a meshed pod Prometheus does not scrape", func(t *testing.T) {
		p := runPod(t, ctx, client, "shop", "web-1", nil, true)
		setReady(t, ctx, client, p, true, nil)
		expectFail(t, "prometheus-scrapes-proxies", "shop/web-1: Prometheus has no target for its proxy (job meshscope-proxy)")
		client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
	})
	t.Run("a pod created without its proxy in a namespace that asks for one", func(t *testing.T) {
		// Created before the namespace asked for injection, as if while the injector was down.
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop-auto"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p := runPod(t, ctx, client, "shop-auto", "cart-0", nil, false)
		setReady(t, ctx, client, p, true, nil)
		nsObj, _ := client.CoreV1().Namespaces().Get(ctx, "shop-auto", metav1.GetOptions{})
		nsObj.Annotations = map[string]string{"meshscope.io/inject": "enabled"}
		if _, err := client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectFail(t, "pods-injected", "shop-auto/cart-0 has no proxy though injection is enabled for it (created while the injector was down?)")
		client.CoreV1().Pods("shop-auto").Delete(ctx, "cart-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
	})
	t.Run("the injector down", func(t *testing.T) {
		stopWebhook()
		expectFail(t, "webhook", "the API server created a dry-run pod without a proxy: the injector did not answer (failurePolicy Ignore let the pod through)")
	})
	t.Run("the API server unreachable", func(t *testing.T) {
		addr := freeAddr(t)
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://"+addr+"\", insecure-skip-tls-verify: true}}]\n"+
			"users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"), 0o600)
		var stdout, stderr bytes.Buffer
		code := cli(ctx, []string{"check", "--kubeconfig", kc, "--namespace", ns}, &stdout, &stderr)
		out := stdout.String()
		if code != 1 || !regexp.MustCompile(`(?m)^FAIL kubernetes-api +cannot reach the API server: .*connection refused`).MatchString(out) ||
			!strings.Contains(out, "hint: check --kubeconfig and --context") || !regexp.MustCompile(`(?m)^skip control-plane +the API server is not usable$`).MatchString(out) {
			t.Errorf("exit %d:\n%s%s", code, out, stderr.String())
		}
	})
}

// TestCheckWithoutAnInstall: a cluster without Meshscope is reachable but has no control plane.
func TestCheckWithoutAnInstall(t *testing.T) {
	srv := kubetest.Start(t)
	c := &check.Checker{Client: srv.Client, Namespace: "mesh-none"}
	rs := c.Run(context.Background())
	if rs[0].Status != check.OK || !strings.HasPrefix(rs[0].Detail, "Kubernetes v1.") {
		t.Errorf("kubernetes-api: %+v", rs[0])
	}
	if rs[1].Status != check.Fail || rs[1].Detail != "no Meshscope control plane in namespace mesh-none" || rs[1].Hint != "web install | kubectl apply -f -" {
		t.Errorf("control-plane without an install: %+v", rs[1])
	}
}

// runPod creates a pod as its controller would; meshed gives it the injector's native sidecar, with env.
func runPod(t *testing.T, ctx context.Context, client kubernetes.Interface, ns, name string, labels map[string]string, meshed bool, env ...corev1.EnvVar) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	if meshed {
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = []corev1.Container{{Name: "meshscope-proxy", Image: "meshscope/proxy:v0.1.0", RestartPolicy: &always, Env: env}}
	}
	p, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// setReady sets a pod's status as the kubelet would: running, ready or not, its proxy likewise.
func setReady(t *testing.T, ctx context.Context, client kubernetes.Interface, p *corev1.Pod, ready bool, waiting *corev1.ContainerStateWaiting) {
	t.Helper()
	p, err := client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	state := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	if waiting != nil {
		state = corev1.ContainerState{Waiting: waiting}
	}
	p.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      "10.1.0.7",
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: "app:1", Ready: ready, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
		}},
	}
	if len(p.Spec.InitContainers) > 0 {
		p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "meshscope-proxy", Image: "meshscope/proxy:v0.1.0", Ready: ready, State: state, Started: new(true)}}
	}
	if _, err := client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// startWebhook runs the real injector, `proxy inject --webhook`, on loopback, and points the
// installed webhook configuration at it. The returned func stops it.
func startWebhook(t *testing.T, ctx context.Context, srv *kubetest.Server, tlsFiles *install.TLS, ns string) func() {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tls.crt"), tlsFiles.CertPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "tls.key"), tlsFiles.KeyPEM, 0o600)
	addr := freeAddr(t)
	proc := startProcess(t, "injector", buildProxy(t), "inject", "--webhook", "--listen", addr, "--tls-dir", dir, "--kubeconfig", srv.Kubeconfig)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(tlsFiles.CAPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	eventually(t, 60*time.Second, "injector serving", func() error {
		resp, err := hc.Get("https://" + addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})

	hooks := srv.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	cfg, err := hooks.Get(ctx, install.WebhookConfig+"-"+ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + addr + "/inject"
	cfg.Webhooks[0].ClientConfig.Service, cfg.Webhooks[0].ClientConfig.URL = nil, &url
	if _, err := hooks.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hooks.Delete(context.Background(), cfg.Name, metav1.DeleteOptions{}) })
	return proc.Stop
}
