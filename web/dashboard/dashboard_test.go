package dashboard

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshscope/meshscope/dev/kubetest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

// recorder keeps the method and path of every request that passes through it.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) add(method, path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, method+" "+path)
}

func (r *recorder) requests() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.seen, "\n")
}

type recordingTransport struct {
	rec  *recorder
	next http.RoundTripper
}

func (t recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.rec.add(req.Method, req.URL.Path)
	return t.next.RoundTrip(req)
}

// TestForwardGoesThroughTheAPIServer: the port-forward is the request kubectl port-forward makes
// (GET .../pods/POD/portforward upgraded to a websocket carrying SPDY; POST and SPDY only when the
// upgrade is refused on the way), the real API server takes it and relays it to the
// pod's node's kubelet, here a loopback server that records it and refuses, as no kubelet runs: the
// operator gets one clear error.
func TestForwardGoesThroughTheAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	client := srv.Client
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "mesh-dash"

	kubelet := &recorder{}
	fakeKubelet := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kubelet.add(r.Method, r.URL.Path)
		http.Error(w, "no kubelet here", http.StatusServiceUnavailable)
	}))
	defer fakeKubelet.Close()
	_, kubeletPort, _ := net.SplitHostPort(strings.TrimPrefix(fakeKubelet.URL, "https://"))
	port, _ := strconv.Atoi(kubeletPort)
	node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-dash"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{})
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sel := map[string]string{"app": "dashboard"}
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "meshscope-dashboard"},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{{Name: "http", Port: 8084, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	o := Options{Namespace: ns, Service: "meshscope-dashboard"}

	forward := func() (string, error) {
		rec := &recorder{}
		cfg := rest.CopyConfig(srv.Config)
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return recordingTransport{rec: rec, next: rt} })
		var errOut bytes.Buffer
		err := Forward(ctx, cfg, client, o, func(string) { t.Error("ready without a kubelet") }, &errOut)
		return rec.requests(), err
	}

	t.Run("no ready pod is a clear error", func(t *testing.T) {
		_, err := forward()
		if err == nil || err.Error() != "no ready pod behind service mesh-dash/meshscope-dashboard (0 pods): kubectl -n mesh-dash get pods -l app=dashboard" {
			t.Errorf("error %v", err)
		}
	})

	pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "meshscope-dashboard-0", Labels: sel},
		Spec: corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{
			Name: "dashboard", Image: "meshscope/web:v0.1.0", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8084}},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("the port-forward reaches the pod's kubelet through the API server", func(t *testing.T) {
		requests, err := forward()
		if want := "GET /api/v1/namespaces/mesh-dash/pods/meshscope-dashboard-0/portforward"; requests != want {
			t.Errorf("requests to the API server:\n%s\nwant %s", requests, want)
		}
		// The API server translates the websocket tunnel into the kubelet's SPDY request.
		if want := "POST /portForward/mesh-dash/meshscope-dashboard-0"; kubelet.requests() != want {
			t.Errorf("requests the kubelet got:\n%s\nwant %s", kubelet.requests(), want)
		}
		if err == nil || !strings.HasPrefix(err.Error(), "port-forward to pod mesh-dash/meshscope-dashboard-0: error upgrading connection") || !strings.Contains(err.Error(), "no kubelet here") {
			t.Errorf("error %v, want one naming the pod and the failed upgrade", err)
		}
		t.Logf("the operator sees: %v", err)
	})
}

func TestContainerPort(t *testing.T) {
	p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8084}}}}}}
	for _, tc := range []struct {
		sp   corev1.ServicePort
		want int
		err  string
	}{
		{corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8084)}, 8084, ""},
		{corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http")}, 8084, ""},
		{corev1.ServicePort{Port: 8084}, 8084, ""},
		{corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("admin")}, 0, "pod  has no port named admin"},
	} {
		got, err := containerPort(p, tc.sp)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("%+v: %d, %v; want %d, %q", tc.sp, got, err, tc.want, tc.err)
		}
	}
}
