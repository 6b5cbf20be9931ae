package destination_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/meshscope/meshscope/proxy/destination"
)

// BenchmarkScale is the discovery service at scale, run once (not part of the default test run):
//
//	go test -run '^$' -bench Scale -benchtime 1x -timeout 30m ./proxy/destination/
//
// 10,000 pods behind 1,000 Services (10 each, 100 Deployments), and 1,000 simulated proxies in this
// process, each on its own HTTP/2 connection, following 5 Services (one of them the same for all).
// It reports the heap once the caches are in (the informers), with every stream open, the time for
// one endpoint change and for a whole Service's rollout to reach all 1,000 proxies, and the API
// requests the service makes in a minute at rest.
func BenchmarkScale(b *testing.B) {
	const services, perService, deployments, proxies, follows = 1000, 10, 100, 1000, 5
	srv := kubetest.Start(b)
	ctx := context.Background()
	ns := fmt.Sprintf("scale-%d", time.Now().UnixNano()%100000)
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	populate(b, srv.Client, ns, services, perService, deployments)
	b.Logf("created %d Services, %d pods, %d EndpointSlices, %d ReplicaSets in %v", services, services*perService, services, deployments, time.Since(start).Round(time.Second))

	// The service's own client counts its requests.
	var requests atomic.Int64
	cfg := rest.CopyConfig(srv.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { requests.Add(1); return rt.RoundTrip(r) })
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	before := heap()
	dsrv, err := destination.NewServer(client, destination.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go dsrv.Run(runCtx)
	hs := destination.NewHTTPServer(dsrv.Handler(), nil)
	go hs.Serve(ln)
	defer hs.Close()
	addr := ln.Addr().String()
	waitReady(b, addr)
	cached := heap() - before
	b.Logf("caches synced with %d API requests; heap +%.1f MiB", requests.Load(), mib(cached))

	// 1,000 proxies, each its own connection, following svc-0 and 4 others.
	hot := "svc-0." + ns + ".svc.cluster.local:80"
	var streams []*scaleStream
	for p := range proxies {
		tr := &http.Transport{}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		hc := &http.Client{Transport: tr}
		authorities := []string{hot}
		for range follows - 1 {
			authorities = append(authorities, fmt.Sprintf("svc-%d.%s:80", 1+rand.N(services-1), ns))
		}
		// One proxy at a time, as proxies start: a thousand connections at once would overflow the
		// listen backlog, and these simulated proxies do not retry as real ones do.
		for _, a := range authorities {
			s := openScaleStream(b, runCtx, hc, addr, a, p)
			s.waitFirst(b)
			streams = append(streams, s)
		}
	}
	withStreams := heap() - before
	b.Logf("%d streams open (%d proxies); heap +%.1f MiB (caches, streams and the simulated proxies)", len(streams), proxies, mib(withStreams))

	// One endpoint of svc-0 moves to a new pod: every proxy must see it.
	hotStreams := streams[:0:0]
	for _, s := range streams {
		if s.authority == hot {
			hotStreams = append(hotStreams, s)
		}
	}
	one := propagate(b, srv.Client, ns, hotStreams, func(i int) string { return fmt.Sprintf("10.200.0.%d", i) }, 1)
	all := propagate(b, srv.Client, ns, hotStreams, func(i int) string { return fmt.Sprintf("10.201.0.%d", i) }, perService)
	b.Logf("one endpoint change reached all %d proxies in %v; a whole rollout (%d endpoints) in %v", len(hotStreams), one.Round(time.Millisecond), perService, all.Round(time.Millisecond))

	// At rest: the watches stay open, nothing polls.
	atRest := requests.Load()
	time.Sleep(time.Minute)
	perMinute := requests.Load() - atRest
	b.Logf("API requests in one minute at rest: %d", perMinute)

	b.ReportMetric(mib(cached), "MiB-caches")
	b.ReportMetric(mib(withStreams), "MiB-with-streams")
	b.ReportMetric(float64(one.Milliseconds()), "ms-one-change")
	b.ReportMetric(float64(all.Milliseconds()), "ms-rollout")
	b.ReportMetric(float64(perMinute), "api-requests/min-at-rest")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// populate creates the cluster: Deployments' ReplicaSets, pods, Services and one EndpointSlice each,
// with 16 writers.
func populate(b *testing.B, c kubernetes.Interface, ns string, services, perService, deployments int) {
	ctx := context.Background()
	yes := true
	work := make(chan func() error)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range 16 {
		wg.Go(func() {
			for f := range work {
				if err := f(); err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for d := range deployments {
		work <- func() error {
			rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("deploy-%d-abc", d), OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "Deployment", Name: fmt.Sprintf("deploy-%d", d), UID: "uid", Controller: &yes}}},
				Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"d": fmt.Sprint(d)}},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"d": fmt.Sprint(d)}},
						Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}}}
			_, err := c.AppsV1().ReplicaSets(ns).Create(ctx, rs, metav1.CreateOptions{})
			return err
		}
	}
	for s := range services {
		work <- func() error {
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", s)},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
			_, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
			return err
		}
		for i := range perService {
			work <- func() error {
				d := (s*perService + i) % deployments
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d-%d", s, i), OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "apps/v1", Kind: "ReplicaSet", Name: fmt.Sprintf("deploy-%d-abc", d), UID: "uid", Controller: &yes}}},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}, {Name: destination.ProxyContainer, Image: "proxy"}}}}
				_, err := c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
				return err
			}
		}
		work <- func() error {
			return writeSlice(c, ns, s, perService, func(i int) string { return fmt.Sprintf("10.%d.%d.%d", 1+s/250, s%250, i+1) })
		}
	}
	close(work)
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
}

// writeSlice creates or replaces service s's EndpointSlice with n endpoints at ip(i), pods svc-s-i.
func writeSlice(c kubernetes.Interface, ns string, s, n int, ip func(int) string) error {
	ctx := context.Background()
	name, port, tcp, ready := fmt.Sprintf("svc-%d", s), int32(8080), corev1.ProtocolTCP, true
	portName := "http"
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &tcp}}}
	for i := range n {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip(i)}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: fmt.Sprintf("svc-%d-%d", s, i)}})
	}
	old, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{})
		return err
	}
	sl.ResourceVersion = old.ResourceVersion
	_, err = c.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{})
	return err
}

// propagate rewrites svc-0's slice with its first changed endpoints at ip(i) and returns how long
// until every stream has a set with all of them.
func propagate(b *testing.B, c kubernetes.Interface, ns string, streams []*scaleStream, ip func(int) string, changed int) time.Duration {
	for _, s := range streams {
		s.reset()
	}
	start := time.Now()
	err := writeSlice(c, ns, 0, 10, func(i int) string {
		if i < changed {
			return ip(i + 1)
		}
		return fmt.Sprintf("10.1.0.%d", i+1)
	})
	if err != nil {
		b.Fatal(err)
	}
	want := ip(changed) + ":8080"
	var last time.Time
	for _, s := range streams {
		if at := s.waitFor(b, want); at.After(last) {
			last = at
		}
	}
	return last.Sub(start)
}

// scaleStream is one simulated proxy's stream; it records when an address first appears.
type scaleStream struct {
	authority string
	first     chan struct{}
	mu        sync.Mutex
	seen      map[string]time.Time
	changed   chan struct{}
}

func openScaleStream(b *testing.B, ctx context.Context, hc *http.Client, addr, authority string, proxy int) *scaleStream {
	s := &scaleStream{authority: authority, first: make(chan struct{}), seen: map[string]time.Time{}, changed: make(chan struct{}, 1)}
	q := url.Values{"authority": {authority}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/endpoints?"+q.Encode(), nil)
	go func() {
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				b.Errorf("proxy %d: %v", proxy, err)
			}
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 16<<20)
		once := sync.Once{}
		for sc.Scan() {
			now := time.Now()
			var u destination.Update
			if json.Unmarshal(sc.Bytes(), &u) != nil {
				return
			}
			s.mu.Lock()
			for _, e := range u.Endpoints {
				if _, ok := s.seen[e.Addr]; !ok {
					s.seen[e.Addr] = now
				}
			}
			s.mu.Unlock()
			once.Do(func() { close(s.first) })
			select {
			case s.changed <- struct{}{}:
			default:
			}
		}
	}()
	return s
}

func (s *scaleStream) waitFirst(b *testing.B) {
	select {
	case <-s.first:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%s: no first update", s.authority)
	}
}

func (s *scaleStream) reset() {
	s.mu.Lock()
	clear(s.seen)
	s.mu.Unlock()
}

func (s *scaleStream) waitFor(b *testing.B, addr string) time.Time {
	deadline := time.After(5 * time.Minute)
	for {
		s.mu.Lock()
		at, ok := s.seen[addr]
		s.mu.Unlock()
		if ok {
			return at
		}
		select {
		case <-s.changed:
		case <-deadline:
			b.Fatalf("%s never saw %s", s.authority, addr)
		}
	}
}

func waitReady(b *testing.B, addr string) {
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("the service never synced")
		}
	}
}
