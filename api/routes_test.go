package api

import (
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
)

func TestRouteQueries(t *testing.T) {
	rs := RouteScope{Namespace: "shop", Deployment: "web", Window: 5 * time.Minute}
	sel := func(family, extra string) string {
		s := `{__name__=~"outbound_(http|grpc)_route_` + family + `",namespace="shop",deployment="web"`
		if extra != "" {
			s += "," + extra
		}
		return s + "}[5m]"
	}
	by := "sum by (parent_namespace, parent_name, parent_port, route_kind, route_name) "
	byBackend := "sum by (parent_namespace, parent_name, parent_port, route_kind, route_name, backend_namespace, backend_name, backend_port) "
	for _, tc := range []struct{ name, got, want string }{
		{"rps counts both families' route requests", RouteRPSQuery(rs), by + "(rate(" + sel("request_statuses_total", "") + "))"},
		{"success: no error, no 5xx, gRPC OK; no traffic apart from zero", RouteSuccessQuery(rs),
			"(" + by + "(rate(" + sel("request_statuses_total", `error="",http_status!~"5..",grpc_status=~"|OK"`) + ")) or " +
				by + "(rate(" + sel("request_statuses_total", "") + ")) * 0) / " + by + "(rate(" + sel("request_statuses_total", "") + "))"},
		{"latency in ms from seconds", RouteLatencyQuery(rs, 0.95),
			"1000 * histogram_quantile(0.95, sum by (le, parent_namespace, parent_name, parent_port, route_kind, route_name) (rate(" +
				sel("request_duration_seconds_bucket", "") + ")))"},
		{"retries", RouteRetriesQuery(rs), by + "(rate(" + sel("retry_requests_total", "") + "))"},
		{"timeouts are the two route timeouts", RouteTimeoutsQuery(rs),
			by + "(rate(" + sel("request_statuses_total", `error=~"REQUEST_TIMEOUT|RESPONSE_HEADERS_TIMEOUT"`) + "))"},
		{"backend tries", BackendRPSQuery(rs), byBackend + "(rate(" + sel("backend_requests_total", "") + "))"},
		{"hostile value stays inside its quotes", RouteRPSQuery(RouteScope{Namespace: `a"} or vector(1) #`, Deployment: "w"}),
			by + `(rate({__name__=~"outbound_(http|grpc)_route_request_statuses_total",namespace="a\"} or vector(1) #",deployment="w"}[1m]))`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", tc.got, tc.want)
			}
			if _, err := parser.NewParser(parser.Options{}).ParseExpr(tc.got); err != nil {
				t.Errorf("query does not parse: %v", err)
			}
		})
	}
	inbound := RouteScope{Namespace: "shop", Deployment: "checkout", Window: time.Minute, Inbound: true}
	if got, want := RouteRPSQuery(inbound), `sum by (namespace, deployment, parent_namespace, parent_name, parent_port, route_kind, route_name) `+
		`(rate({__name__=~"outbound_(http|grpc)_route_request_statuses_total",parent_namespace="shop",parent_name="checkout"}[1m]))`; got != want {
		t.Errorf("inbound rps\n got %s\nwant %s", got, want)
	}
	if _, err := parser.NewParser(parser.Options{}).ParseExpr(BackendSuccessQuery(rs)); err != nil {
		t.Errorf("backend success query does not parse: %v", err)
	}
}

func TestRouteAuthority(t *testing.T) {
	r := Route{ParentNamespace: "shop", ParentName: "checkout", ParentPort: "9090"}
	if got := r.Authority(); got != "checkout.shop:9090" {
		t.Errorf("Authority() = %q", got)
	}
}
