package destination_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/meshscope/meshscope/dev/kubetest"
	"github.com/meshscope/meshscope/proxy/destination"
	"github.com/meshscope/meshscope/proxy/routes"
)

// TestGatewayRoutesWithServiceParentsReachTheProxy installs Gateway API's CRDs into the real API server,
// creates an HTTPRoute (a 90/10 split with a request timeout) and a GRPCRoute (retries by annotation) whose
// parents are Services, and checks that the proxy's client builds the routes from the discovery service's
// stream, that the Services' annotations set their default routes, and that deleting a route removes it.
func TestGatewayRoutesWithServiceParentsReachTheProxy(t *testing.T) {
	srv := kubetest.Start(t)
	srv.InstallGatewayAPI(t)
	dyn, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	ports := []portSpec{{name: "http", port: 8080, to: 8080}}
	c.service("payments", "", nil, ports...)
	c.slice("payments", "payments-1", ports, epSpec{ip: "10.40.0.1"})
	c.service("payments-v2", "", nil, ports...)
	c.slice("payments-v2", "payments-v2-1", ports, epSpec{ip: "10.40.0.2"})
	c.service("checkout", "", map[string]string{"retry.meshscope.io/http": "5xx", "timeout.meshscope.io/request": "4s",
		"balancer.meshscope.io/failure-accrual": "consecutive", "app.kubernetes.io/name": "checkout"}, ports...)
	c.slice("checkout", "checkout-1", ports, epSpec{ip: "10.40.0.3"})

	ctx := context.Background()
	httpRoute := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
		"metadata": map[string]any{"name": "charge"},
		"spec": map[string]any{
			"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "payments", "port": int64(8080)}},
			"rules": []any{map[string]any{
				"matches": []any{map[string]any{
					"method": "POST", "path": map[string]any{"type": "PathPrefix", "value": "/v1/charges"},
					"headers": []any{map[string]any{"type": "Exact", "name": "x-region", "value": "eu"}},
				}},
				"timeouts": map[string]any{"request": "3s"},
				"backendRefs": []any{
					map[string]any{"name": "payments", "port": int64(8080), "weight": int64(90)},
					map[string]any{"name": "payments-v2", "port": int64(8080), "weight": int64(10)},
				},
			}},
		},
	}}
	if _, err := dyn.Resource(destination.HTTPRoutes).Namespace(c.ns).Create(ctx, httpRoute, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	grpcRoute := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
		"metadata": map[string]any{"name": "place-order", "annotations": map[string]any{
			"retry.meshscope.io/grpc": "unavailable", "retry.meshscope.io/limit": "3"}},
		"spec": map[string]any{
			"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "checkout"}},
			"rules": []any{map[string]any{
				"matches": []any{map[string]any{"method": map[string]any{"service": "shop.Checkout", "method": "PlaceOrder"}}},
			}},
		},
	}}
	if _, err := dyn.Resource(destination.GRPCRoutes).Namespace(c.ns).Create(ctx, grpcRoute, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	addr, _ := startServer(t, "", destination.Options{Dynamic: dyn})
	cl := destination.NewClient(destination.ClientOptions{Addr: addr, Namespace: c.ns, FirstAnswer: 30 * time.Second})
	t.Cleanup(cl.Close)
	go cl.Run(t.Context())

	routeOf := func(authority, method, path string, h map[string][]string) *routes.Route {
		d := cl.Lookup(authority)
		if d == nil {
			return nil
		}
		return d.Routes.Match(method, path, h)
	}
	payments := "payments." + c.ns + ".svc.cluster.local:8080"
	eu := map[string][]string{"X-Region": {"eu"}}
	eventually(t, "the HTTPRoute on payments", func() bool {
		r := routeOf(payments, "POST", "/v1/charges/7", eu)
		return r != nil && r.Name == "charge"
	})
	r := routeOf(payments, "POST", "/v1/charges/7", eu)
	want := []routes.Backend{{Authority: payments, Weight: 90}, {Authority: "payments-v2." + c.ns + ".svc.cluster.local:8080", Weight: 10}}
	if r.Kind != routes.KindHTTPRoute || r.Namespace != c.ns || r.Timeouts.Request != 3*time.Second || len(r.Backends) != 2 ||
		r.Backends[0] != want[0] || r.Backends[1] != want[1] {
		t.Errorf("charge route %+v, want an HTTPRoute with a 3s request timeout and backends %v", r, want)
	}
	for _, miss := range []struct{ method, path string }{{"GET", "/v1/charges"}, {"POST", "/v2/charges"}} {
		if r := routeOf(payments, miss.method, miss.path, eu); r.Name != "" {
			t.Errorf("%s %s took route %q, want the default", miss.method, miss.path, r.Name)
		}
	}

	checkout := "checkout:8080" // a short name, in the client's namespace
	eventually(t, "the GRPCRoute on checkout", func() bool {
		r := routeOf(checkout, "POST", "/shop.Checkout/PlaceOrder", nil)
		return r != nil && r.Name == "place-order"
	})
	r = routeOf(checkout, "POST", "/shop.Checkout/PlaceOrder", nil)
	if r.Kind != routes.KindGRPCRoute || r.Retry == nil || !r.Retry.RetryGRPC(14) || r.Retry.MaxRetries() != 3 || r.Timeouts.Request != 4*time.Second {
		t.Errorf("place-order route %+v retry %+v: want a GRPCRoute retrying UNAVAILABLE 3 times, the Service's 4s request timeout", r, r.Retry)
	}
	def := routeOf(checkout, "POST", "/shop.Checkout/Cancel", nil)
	if def.Name != "" || def.Retry == nil || !def.Retry.RetryHTTP(503) {
		t.Errorf("checkout's default route %+v: want the Service's retry annotation", def)
	}

	if err := dyn.Resource(destination.HTTPRoutes).Namespace(c.ns).Delete(ctx, "charge", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted HTTPRoute gone", func() bool {
		r := routeOf(payments, "POST", "/v1/charges/7", eu)
		return r != nil && r.Name == ""
	})
}
