package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRouteSeriesCountWithoutAllocatingOnceBound(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	k := RouteKey{GRPC: true, Parent: Ref{Group: "core", Kind: "Service", Namespace: "shop", Name: "checkout", Port: "9090"},
		Route: RouteRef{Group: "meshscope.io", Kind: "Route", Namespace: "shop", Name: "place-order"}, Hostname: "checkout.shop"}
	b := Ref{Group: "core", Kind: "Service", Namespace: "shop", Name: "checkout", Port: "9090"}
	ok := RouteStatus{GRPCStatus: 0}
	count := func() {
		s := m.Route(k)
		s.Done(ok, time.Millisecond)
		s.Backend(b).Done(ok, time.Millisecond)
	}
	count()
	if n := testing.AllocsPerRun(100, count); n != 0 {
		t.Errorf("counting a route request allocates %.0f times", n)
	}
	if got := testutil.ToFloat64(m.grpcRoutes.statuses.WithLabelValues("core", "Service", "shop", "checkout", "9090", "",
		"meshscope.io", "Route", "shop", "place-order", "checkout.shop", "OK", "")); got != 102 { // once, then AllocsPerRun's warm-up and 100 runs
		t.Errorf("outbound_grpc_route_request_statuses_total{grpc_status=OK} = %v, want 102", got)
	}
	m.Route(k).Done(RouteStatus{GRPCStatus: NoGRPCStatus, Error: "FAIL_FAST"}, 0)
	if got := testutil.ToFloat64(m.grpcRoutes.statuses.WithLabelValues("core", "Service", "shop", "checkout", "9090", "",
		"meshscope.io", "Route", "shop", "place-order", "checkout.shop", "UNKNOWN", "FAIL_FAST")); got != 1 {
		t.Errorf("a gRPC request failed by the proxy: grpc_status UNKNOWN error FAIL_FAST counted %v times, want 1", got)
	}
}
