package destination_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/meshscope/meshscope/proxy/destination"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

// cluster plays the kubelet and the controllers in one namespace of the test API server.
type cluster struct {
	t      *testing.T
	client kubernetes.Interface
	ns     string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	srv := kubetest.Start(t)
	name := strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.Trim(name, "-") + fmt.Sprintf("-%d", time.Now().UnixNano()%100000)
	c := &cluster{t: t, client: srv.Client, ns: name}
	c.must(srv.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}))
	return c
}

func (c *cluster) must(_ any, err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

// replicaSet creates a ReplicaSet owned by Deployment deployment and returns the reference its pods carry.
func (c *cluster) replicaSet(deployment, name string) metav1.OwnerReference {
	c.t.Helper()
	yes := true
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "Deployment", Name: deployment, UID: types.UID("uid-" + deployment), Controller: &yes}}},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": deployment}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": deployment}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
			},
		},
	}
	got, err := c.client.AppsV1().ReplicaSets(c.ns).Create(context.Background(), rs, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name, UID: got.UID, Controller: &yes}
}

// owner is a controller reference to a workload that need not exist (no controller runs here).
func owner(kind, name string) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: name, UID: types.UID("uid-" + name), Controller: &yes}
}

type podSpec struct {
	name, ip, sa string
	owner        *metav1.OwnerReference
	meshed       bool
	annotations  map[string]string
}

// pod creates a running pod with an IP, as the kubelet would report it.
func (c *cluster) pod(p podSpec) {
	c.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Annotations: p.annotations},
		Spec: corev1.PodSpec{ServiceAccountName: p.sa, Hostname: p.name,
			Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if p.owner != nil {
		pod.OwnerReferences = []metav1.OwnerReference{*p.owner}
	}
	if p.meshed {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: destination.ProxyContainer, Image: "proxy"})
	}
	ctx := context.Background()
	got, err := c.client.CoreV1().Pods(c.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	got.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}}}
	c.must(c.client.CoreV1().Pods(c.ns).UpdateStatus(ctx, got, metav1.UpdateOptions{}))
}

type portSpec struct {
	name        string
	port, to    int32
	appProtocol string
}

// service creates a Service (headless when clusterIP is "None") and returns its cluster IP.
func (c *cluster) service(name, clusterIP string, annotations map[string]string, ports ...portSpec) string {
	c.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: corev1.ServiceSpec{ClusterIP: clusterIP, Selector: map[string]string{"app": name}}}
	for _, p := range ports {
		sp := corev1.ServicePort{Name: p.name, Port: p.port, TargetPort: intstr.FromInt32(p.to), Protocol: corev1.ProtocolTCP}
		if p.appProtocol != "" {
			sp.AppProtocol = &p.appProtocol
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	got, err := c.client.CoreV1().Services(c.ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return got.Spec.ClusterIP
}

type epSpec struct {
	ip, pod  string
	notReady bool
}

// slice creates or replaces EndpointSlice name of service with endpoints on the ports, as the
// EndpointSlice controller would.
func (c *cluster) slice(service, name string, ports []portSpec, eps ...epSpec) {
	c.t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range ports {
		tcp := corev1.ProtocolTCP
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: &p.name, Port: &p.to, Protocol: &tcp})
	}
	for _, e := range eps {
		ready := !e.notReady
		ep := discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
		if e.pod != "" {
			hostname := e.pod
			ep.Hostname = &hostname
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: c.ns, Name: e.pod}
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	ctx := context.Background()
	slices := c.client.DiscoveryV1().EndpointSlices(c.ns)
	if old, err := slices.Get(ctx, name, metav1.GetOptions{}); err == nil {
		s.ResourceVersion = old.ResourceVersion
		c.must(slices.Update(ctx, s, metav1.UpdateOptions{}))
		return
	}
	c.must(slices.Create(ctx, s, metav1.CreateOptions{}))
}

// startServer runs a discovery service over the test API server (as its administrator) on a loopback
// port, addr when given, and returns its address and a function that stops it.
func startServer(t *testing.T, addr string, opts destination.Options) (string, func()) {
	t.Helper()
	return startServerOn(t, kubetest.Start(t).Client, addr, opts)
}

// startServerWith runs a discovery service over client on a free loopback port.
func startServerWith(t *testing.T, client kubernetes.Interface, opts destination.Options) string {
	t.Helper()
	addr, _ := startServerOn(t, client, "", opts)
	return addr
}

func startServerOn(t *testing.T, client kubernetes.Interface, addr string, opts destination.Options) (string, func()) {
	t.Helper()
	srv, err := destination.NewServer(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { srv.Run(ctx); close(ran) }()
	hs := destination.NewHTTPServer(srv.Handler(), nil)
	go hs.Serve(ln)
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-ran
		hs.Close()
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// stream is one raw endpoints stream, read line by line.
type stream struct {
	t       *testing.T
	updates chan destination.Update
}

func openStream(t *testing.T, addr, authority, namespace string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	q := url.Values{"authority": {authority}, "namespace": {namespace}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/endpoints?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("stream %s: %s %s", authority, resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &stream{t: t, updates: make(chan destination.Update, 1000)}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			var u destination.Update
			if err := json.Unmarshal(sc.Bytes(), &u); err != nil {
				t.Errorf("bad line %q: %v", sc.Text(), err)
				return
			}
			s.updates <- u
		}
		close(s.updates)
	}()
	return s
}

// waitFor returns the first update that ok accepts, failing the test after a generous deadline (a hang
// guard, not a latency assertion). It also returns how many updates came before it.
func (s *stream) waitFor(what string, ok func(destination.Update) bool) (destination.Update, int) {
	s.t.Helper()
	deadline := time.After(30 * time.Second)
	var last destination.Update
	n := 0
	for {
		select {
		case u, open := <-s.updates:
			if !open {
				s.t.Fatalf("stream ended waiting for %s; last update %+v", what, last)
			}
			n++
			if ok(u) {
				return u, n - 1
			}
			last = u
		case <-deadline:
			s.t.Fatalf("no update with %s; last %+v", what, last)
		}
	}
}

// addrs lists an update's endpoint addresses.
func addrs(u destination.Update) string {
	var a []string
	for _, e := range u.Endpoints {
		a = append(a, e.Addr)
	}
	return strings.Join(a, ",")
}

var deleteNow = metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
