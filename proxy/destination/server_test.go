package destination_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/meshscope/meshscope/proxy/destination"
)

var httpPort = []portSpec{{name: "http", port: 80, to: 8080}}

func TestEndpointsAppearMoveAndDisappearAsTheClusterChanges(t *testing.T) {
	c := newCluster(t)
	addr, _ := startServer(t, "", destination.Options{})
	rs := c.replicaSet("web", "web-7d9f")
	c.pod(podSpec{name: "web-7d9f-a", ip: "10.10.0.1", sa: "web", owner: &rs, meshed: true})
	c.pod(podSpec{name: "web-7d9f-b", ip: "10.10.0.2", owner: &rs})
	clusterIP := c.service("web", "", nil, httpPort...)

	full := openStream(t, addr, "web."+c.ns+".svc.cluster.local:80", "elsewhere")
	u, _ := full.waitFor("the service, no endpoints yet", func(u destination.Update) bool { return u.Exists })
	if len(u.Endpoints) != 0 || u.Labels["service"] != "web" || u.Labels["namespace"] != c.ns {
		t.Fatalf("before any slice: %+v", u)
	}

	c.slice("web", "web-1", httpPort, epSpec{ip: "10.10.0.1", pod: "web-7d9f-a"})
	u, _ = full.waitFor("pod a", func(u destination.Update) bool { return addrs(u) == "10.10.0.1:8080" })
	want := destination.Endpoint{Addr: "10.10.0.1:8080",
		Labels: map[string]string{"namespace": c.ns, "pod": "web-7d9f-a", "deployment": "web", "serviceaccount": "web"},
		Hints:  destination.Hints{Meshed: true, Identity: "web." + c.ns + ".serviceaccount.identity.meshscope.cluster.local"}}
	if !reflect.DeepEqual(u.Endpoints[0], want) {
		t.Fatalf("endpoint:\n got %+v\nwant %+v", u.Endpoints[0], want)
	}

	// Every spelling of the authority, the cluster IP and the pod's own IP find the same pod.
	for _, a := range []struct{ authority, ns, want string }{
		{"web." + c.ns + ":80", "elsewhere", "10.10.0.1:8080"},
		{"web:80", c.ns, "10.10.0.1:8080"},
		{"WEB." + c.ns + ".svc.:80", "", "10.10.0.1:8080"},
		{clusterIP + ":80", "", "10.10.0.1:8080"},
		{"10.10.0.1:8080", "", "10.10.0.1:8080"},
	} {
		s := openStream(t, addr, a.authority, a.ns)
		s.waitFor(a.authority+" -> "+a.want, func(u destination.Update) bool { return addrs(u) == a.want })
	}

	// The endpoint moves to pod b: a non-meshed pod with the default ServiceAccount.
	c.slice("web", "web-1", httpPort, epSpec{ip: "10.10.0.2", pod: "web-7d9f-b"})
	u, _ = full.waitFor("pod b only", func(u destination.Update) bool { return addrs(u) == "10.10.0.2:8080" })
	if e := u.Endpoints[0]; e.Hints.Meshed || e.Hints.Identity != "" || e.Labels["serviceaccount"] != "default" || e.Labels["pod"] != "web-7d9f-b" {
		t.Fatalf("pod b: %+v", e)
	}
	// Not ready: out of the set, which exists but is empty.
	c.slice("web", "web-1", httpPort, epSpec{ip: "10.10.0.2", pod: "web-7d9f-b", notReady: true})
	full.waitFor("no ready endpoint", func(u destination.Update) bool { return u.Exists && len(u.Endpoints) == 0 })

	// The Service goes: not found.
	c.must(nil, c.client.CoreV1().Services(c.ns).Delete(t.Context(), "web", deleteNow))
	full.waitFor("not found", func(u destination.Update) bool { return !u.Exists })
}

func TestHeadlessServiceResolvesEachStatefulSetPod(t *testing.T) {
	c := newCluster(t)
	addr, _ := startServer(t, "", destination.Options{})
	ports := []portSpec{{name: "pg", port: 5432, to: 5432, appProtocol: "postgresql"}}
	db := owner("StatefulSet", "db")
	for i := range 2 {
		c.pod(podSpec{name: fmt.Sprint("db-", i), ip: fmt.Sprint("10.11.0.", i+1), owner: &db})
	}
	c.service("db", "None", nil, ports...)
	c.slice("db", "db-x", ports, epSpec{ip: "10.11.0.1", pod: "db-0"}, epSpec{ip: "10.11.0.2", pod: "db-1"})

	all := openStream(t, addr, "db."+c.ns+".svc.cluster.local:5432", "")
	all.waitFor("both pods", func(u destination.Update) bool { return addrs(u) == "10.11.0.1:5432,10.11.0.2:5432" })
	one := openStream(t, addr, "db-1.db."+c.ns+".svc.cluster.local:5432", "")
	u, _ := one.waitFor("db-1", func(u destination.Update) bool { return u.Exists })
	if addrs(u) != "10.11.0.2:5432" || u.Endpoints[0].Labels["statefulset"] != "db" || u.Endpoints[0].Labels["pod"] != "db-1" {
		t.Fatalf("db-1: %+v", u)
	}
	if !u.Endpoints[0].Hints.Opaque {
		t.Fatalf("appProtocol postgresql is not HTTP, want an opaque hint: %+v", u.Endpoints[0])
	}
	none := openStream(t, addr, "db-7.db."+c.ns+".svc.cluster.local:5432", "")
	none.waitFor("no db-7", func(u destination.Update) bool { return !u.Exists })
}

func TestOpaquePortsAnnotationAndDaemonSetOwner(t *testing.T) {
	c := newCluster(t)
	addr, _ := startServer(t, "", destination.Options{})
	ports := []portSpec{{name: "http", port: 80, to: 8080}, {name: "mysql", port: 3306, to: 3306}}
	ds := owner("DaemonSet", "agent")
	c.pod(podSpec{name: "agent-x", ip: "10.12.0.1", owner: &ds, annotations: map[string]string{destination.OpaquePortsAnnotation: "9000-9100"}})
	c.service("agent", "", map[string]string{destination.OpaquePortsAnnotation: "3306"}, ports...)
	c.slice("agent", "agent-1", ports, epSpec{ip: "10.12.0.1", pod: "agent-x"})
	for _, tc := range []struct {
		authority string
		opaque    bool
	}{
		{"agent." + c.ns + ":80", false},
		{"agent." + c.ns + ":3306", true},
		{"10.12.0.1:9050", true}, // the pod's own annotation
		{"10.12.0.1:8080", false},
	} {
		u, _ := openStream(t, addr, tc.authority, "").waitFor(tc.authority, func(u destination.Update) bool { return len(u.Endpoints) == 1 })
		if e := u.Endpoints[0]; e.Hints.Opaque != tc.opaque || e.Labels["daemonset"] != "agent" {
			t.Errorf("%s: opaque %v, want %v (%+v)", tc.authority, e.Hints.Opaque, tc.opaque, e)
		}
	}
}

func TestUnknownAuthorityIsNotFoundUntilItsServiceAppears(t *testing.T) {
	c := newCluster(t)
	addr, _ := startServer(t, "", destination.Options{})
	s := openStream(t, addr, "later."+c.ns+":80", "")
	s.waitFor("not found", func(u destination.Update) bool { return !u.Exists })
	openStream(t, addr, "api.example.com:443", "").waitFor("not found", func(u destination.Update) bool { return !u.Exists })

	c.service("later", "", nil, httpPort...)
	s.waitFor("found once created", func(u destination.Update) bool { return u.Exists })
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"\ndestination_streams 2\n", "\ndestination_watched_targets 2\n", "\ndestination_streams_refused_total 0\n"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q:\n%s", strings.TrimSpace(want), metrics)
		}
	}

	for _, bad := range []string{"no-port", "web:0", "web:99999", ""} {
		resp, err := http.Get("http://" + addr + "/v1/endpoints?authority=" + url.QueryEscape(bad))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("authority %q: %s, want 400", bad, resp.Status)
		}
	}
}

func TestThousandsOfEndpointsArriveAsFewUpdates(t *testing.T) {
	c := newCluster(t)
	// A wide window: the assertion is that many changes coalesce, whatever the machine's speed.
	addr, _ := startServer(t, "", destination.Options{Coalesce: 2 * time.Second})
	c.service("big", "", nil, httpPort...)
	s := openStream(t, addr, "big."+c.ns+":80", "")
	s.waitFor("the empty service", func(u destination.Update) bool { return u.Exists })

	const slices, per = 10, 300
	var wg sync.WaitGroup
	for i := range slices {
		wg.Go(func() {
			var eps []epSpec
			for j := range per {
				eps = append(eps, epSpec{ip: fmt.Sprintf("10.%d.%d.%d", i, j/250, j%250+1)})
			}
			c.slice("big", fmt.Sprint("big-", i), httpPort, eps...)
		})
	}
	wg.Wait()
	_, before := s.waitFor("all endpoints", func(u destination.Update) bool { return len(u.Endpoints) == slices*per })
	if before >= slices-1 {
		t.Fatalf("%d updates before the whole set for %d slice changes: changes are not coalesced", before+1, slices)
	}
}

// The service needs no more than the ClusterRole web install grants it: started as its ServiceAccount
// with only those rules bound, it syncs and serves.
func TestServesWithOnlyItsClusterRole(t *testing.T) {
	c := newCluster(t)
	srv := kubetest.Start(t)
	role := "meshscope-destination-" + c.ns
	user := "system:serviceaccount:" + c.ns + ":" + kube.Destination
	c.must(c.client.RbacV1().ClusterRoles().Create(t.Context(), &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules: kube.ClusterRules()[kube.Destination]}, metav1.CreateOptions{}))
	c.must(c.client.RbacV1().ClusterRoleBindings().Create(t.Context(), &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: kube.Destination, Namespace: c.ns}}}, metav1.CreateOptions{}))
	cfg := rest.CopyConfig(srv.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs := c.replicaSet("web", "web-1")
	c.pod(podSpec{name: "web-1-a", ip: "10.40.0.1", owner: &rs})
	c.service("web", "", nil, httpPort...)
	c.slice("web", "web-1", httpPort, epSpec{ip: "10.40.0.1", pod: "web-1-a"})

	addr := startServerWith(t, client, destination.Options{})
	u, _ := openStream(t, addr, "web."+c.ns+":80", "").waitFor("the endpoint", func(u destination.Update) bool { return len(u.Endpoints) == 1 })
	if u.Endpoints[0].Labels["deployment"] != "web" {
		t.Fatalf("endpoint %+v: its ReplicaSet's Deployment unknown", u.Endpoints[0])
	}
}

// An API server that cannot be reached at start is logged once, with the reason, and retried; the
// service stays up, not ready, and stops cleanly.
func TestAPIServerDownAtStartIsRetriedNotFatal(t *testing.T) {
	client, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv, err := destination.NewServer(client, destination.Options{Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()
	eventually(t, "the failure logged with its reason", func() bool {
		return strings.Contains(logs.String(), "waiting for the kubernetes API server, retrying") && strings.Contains(logs.String(), "connection refused")
	})
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/ready %d while the API server is down, want 503", rec.Code)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := strings.Count(logs.String(), "waiting for the kubernetes API server"); n != 1 {
		t.Errorf("logged %d times, want once (then once a minute):\n%s", n, logs)
	}
}

// The API server restarts mid-stream: the informers' watches are cut and resume, the proxies' sets
// never lose an endpoint meanwhile, and a change made after the restart arrives.
func TestWatchCutByAPIServerRestartLosesNothing(t *testing.T) {
	c := newCluster(t)
	addr, _ := startServer(t, "", destination.Options{})
	rs := c.replicaSet("web", "web-1")
	c.pod(podSpec{name: "web-1-a", ip: "10.50.0.1", owner: &rs})
	c.pod(podSpec{name: "web-1-b", ip: "10.50.0.2", owner: &rs})
	c.service("web", "", nil, httpPort...)
	c.slice("web", "web-1", httpPort, epSpec{ip: "10.50.0.1", pod: "web-1-a"})
	s := openStream(t, addr, "web."+c.ns+":80", "")
	s.waitFor("pod a", func(u destination.Update) bool { return addrs(u) == "10.50.0.1:8080" })

	kubetest.Start(t).RestartAPIServer(t)
	c.slice("web", "web-1", httpPort, epSpec{ip: "10.50.0.1", pod: "web-1-a"}, epSpec{ip: "10.50.0.2", pod: "web-1-b"})
	var lost []string
	s.waitFor("both pods after the restart", func(u destination.Update) bool {
		if !strings.Contains(addrs(u), "10.50.0.1:8080") {
			lost = append(lost, addrs(u))
		}
		return addrs(u) == "10.50.0.1:8080,10.50.0.2:8080"
	})
	if len(lost) > 0 {
		t.Fatalf("sets without pod a during the restart: %q", lost)
	}
}
