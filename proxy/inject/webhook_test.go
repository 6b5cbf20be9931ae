package inject

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/dev/kubetest"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// servingCert makes a CA and a certificate for 127.0.0.1 signed by it, as `web install` arranges
// for the webhook in a cluster.
func servingCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "webhook-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// TestWebhookInTheAPIServer registers the webhook in a real API server, which calls it over TLS
// for every Pod it creates.
func TestWebhookInTheAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	client := srv.Client
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cert, caPEM := servingCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hook := &Webhook{
		Log: slog.New(slog.DiscardHandler),
		NamespaceAnnotations: func(ctx context.Context, name string) (map[string]string, error) {
			ns, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return ns.Annotations, nil
		},
	}
	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- hook.Serve(serveCtx, ln, cert) }()
	defer func() { stopServing(); <-served }()

	for name, annotations := range map[string]map[string]string{
		"mesh-on":  {InjectAnnotation: "enabled"},
		"mesh-off": nil,
	} {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}

	url := "https://" + ln.Addr().String() + "/inject"
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	timeout := int32(5)
	config := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "meshscope-proxy-injector-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "proxy-injector.meshscope.io",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
	if _, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, config, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), config.Name, metav1.DeleteOptions{})

	// The API server picks up a new webhook configuration asynchronously: wait until it calls it.
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := createPod(ctx, client, "mesh-on", "probe", nil, metav1.DryRunAll)
		if err != nil {
			t.Fatal(err)
		}
		if injected(p) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the API server never called the webhook")
		}
		time.Sleep(200 * time.Millisecond)
	}

	controller := true
	for _, tc := range []struct {
		name, namespace, pod string
		meta                 metav1.ObjectMeta
		wantInjected         bool
		wantLabel            string
	}{
		{name: "pod in an annotated namespace is injected", namespace: "mesh-on", pod: "on", wantInjected: true},
		{name: "pod in another namespace is unchanged", namespace: "mesh-off", pod: "off"},
		{name: "pod template annotated enabled is injected anywhere", namespace: "mesh-off", pod: "asked",
			meta: metav1.ObjectMeta{Annotations: map[string]string{InjectAnnotation: "enabled"}}, wantInjected: true},
		{name: "pod template annotated disabled opts out of its namespace", namespace: "mesh-on", pod: "optout",
			meta: metav1.ObjectMeta{Annotations: map[string]string{InjectAnnotation: "disabled"}}},
		{name: "a deployment's pod is labelled with the deployment's name", namespace: "mesh-on", pod: "web-5d9c7b-x2x9z",
			meta: metav1.ObjectMeta{
				Labels:          map[string]string{"pod-template-hash": "5d9c7b"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d9c7b", UID: "1", Controller: &controller}},
			},
			wantInjected: true, wantLabel: "web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := createPod(ctx, client, tc.namespace, tc.pod, &tc.meta, "")
			if err != nil {
				t.Fatal(err)
			}
			if injected(p) != tc.wantInjected {
				t.Fatalf("injected %v, want %v: init containers %v, containers %v", injected(p), tc.wantInjected, names(p.Spec.InitContainers), names(p.Spec.Containers))
			}
			if got := p.Labels["meshscope.io/proxy-deployment"]; got != tc.wantLabel {
				t.Errorf("label meshscope.io/proxy-deployment %q, want %q", got, tc.wantLabel)
			}
			if tc.wantInjected && (p.Spec.Containers[0].Name != "app" || names(p.Spec.InitContainers) != "meshscope-init,meshscope-proxy") {
				t.Errorf("init containers %s, containers %s", names(p.Spec.InitContainers), names(p.Spec.Containers))
			}
		})
	}

	t.Run("a pod it must not mesh is admitted unchanged with a warning saying why", func(t *testing.T) {
		warnings := &collectWarnings{}
		cfg := rest.CopyConfig(srv.Config)
		cfg.WarningHandler = warnings
		warned, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		p, err := createPod(ctx, warned, "mesh-on", "node-agent", nil, "", func(p *corev1.Pod) { p.Spec.HostNetwork = true })
		if err != nil {
			t.Fatal(err)
		}
		if injected(p) {
			t.Error("a hostNetwork pod was injected")
		}
		if want := "meshscope: not injected: hostNetwork: the proxy would intercept the node's own traffic"; !slices.Contains(warnings.texts, want) {
			t.Errorf("warnings %q, want %q", warnings.texts, want)
		}
	})

	t.Run("webhook down: the pod is still created, without a proxy", func(t *testing.T) {
		stopServing()
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		served <- nil // for the deferred wait
		p, err := createPod(ctx, client, "mesh-on", "while-down", nil, "")
		if err != nil {
			t.Fatalf("pod refused while the webhook is down: %v", err)
		}
		if injected(p) {
			t.Error("injected with no webhook running")
		}
	})
}

// collectWarnings keeps the warnings the API server sends back (admission webhooks' among them).
type collectWarnings struct{ texts []string }

func (c *collectWarnings) HandleWarningHeader(_ int, _ string, text string) {
	c.texts = append(c.texts, text)
}

func createPod(ctx context.Context, client kubernetes.Interface, ns, name string, meta *metav1.ObjectMeta, dryRun string, edits ...func(*corev1.Pod)) (*corev1.Pod, error) {
	p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "shop/app:1"}}}}
	if meta != nil {
		p.ObjectMeta = *meta
	}
	for _, edit := range edits {
		edit(p)
	}
	p.Name, p.Namespace = name, ns
	opts := metav1.CreateOptions{}
	if dryRun != "" {
		opts.DryRun = []string{dryRun}
	}
	return client.CoreV1().Pods(ns).Create(ctx, p, opts)
}

func injected(p *corev1.Pod) bool {
	return strings.Contains(names(p.Spec.InitContainers)+","+names(p.Spec.Containers), ProxyContainer)
}

func names(cs []corev1.Container) string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return strings.Join(out, ",")
}
