package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// namedApp answers every request with its name (HTTP/1.1 and h2c) and counts them.
func namedApp(t *testing.T, name string) (string, *atomic.Int64) {
	var n atomic.Int64
	s := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, name)
	}))
	return s.Listener.Addr().String(), &n
}

// failingApp answers status to every request while fail is set, else 200 "ok"; it counts requests and
// remembers the SHA-256 of the bodies it read.
type failingApp struct {
	addr   string
	n      atomic.Int64
	fail   atomic.Bool
	status int
	bodies chan [32]byte
}

func newFailingApp(t *testing.T, status int) *failingApp {
	a := &failingApp{status: status, bodies: make(chan [32]byte, 100)}
	a.fail.Store(true)
	s := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.n.Add(1)
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 {
			select {
			case a.bodies <- sha256.Sum256(b):
			default:
			}
		}
		if a.fail.Load() {
			w.WriteHeader(a.status)
			return
		}
		io.WriteString(w, "ok")
	}))
	a.addr = s.Listener.Addr().String()
	return a
}

// routed sends a request through the outbound listener to authority.
func routed(t *testing.T, p *proxy, c *http.Client, method, authority, path string, body []byte, header http.Header) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, p.url("--outbound-listen")+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = authority
	for k, v := range header {
		req.Header[k] = v
	}
	return doBody(t, c, req)
}

func routesProxy(t *testing.T, destinations string) *proxy {
	cfg := testConfig("127.0.0.1:1")
	cfg.InboundListen = ""
	cfg.Destinations = writeDestinations(t, destinations)
	return startProxy(t, cfg)
}

func TestRoutesSelectBackendsByEveryMatchKind(t *testing.T) {
	names := []string{"default", "exact", "prefix", "regex", "method", "header"}
	addrs := map[string]string{}
	for _, n := range names {
		addrs[n], _ = namedApp(t, n)
	}
	var file strings.Builder
	file.WriteString(`services:
  - authority: web.shop:80
    labels: {namespace: shop, deployment: web}
    endpoints: [{addr: "` + addrs["default"] + `"}]
    routes:
      - name: exact
        matches: [{path: {exact: /login}}]
        backends: [{authority: exact.shop:80}]
      - name: prefix
        matches: [{path: {prefix: /api}}]
        backends: [{authority: prefix.shop:80}]
      - name: regex
        matches: [{path: {regex: "/items/[0-9]+"}}]
        backends: [{authority: regex.shop:80}]
      - name: method
        matches: [{method: DELETE, path: {prefix: /api}}]
        backends: [{authority: method.shop:80}]
      - name: header
        matches: [{headers: [{name: x-canary, value: "yes"}]}]
        backends: [{authority: header.shop:80}]
`)
	for _, n := range names[1:] {
		fmt.Fprintf(&file, "  - authority: %s.shop:80\n    labels: {namespace: shop, deployment: %s}\n    endpoints: [{addr: %q}]\n", n, n, addrs[n])
	}
	p := routesProxy(t, file.String())
	tests := []struct {
		name, method, path string
		header             http.Header
		want               string
	}{
		{"exact path", "GET", "/login", nil, "exact"},
		{"exact path is whole", "GET", "/login/x", nil, "default"},
		{"path prefix", "GET", "/api/users", nil, "prefix"},
		{"path prefix on a segment boundary", "GET", "/apiary", nil, "default"},
		{"path regex", "GET", "/items/42", nil, "regex"},
		{"path regex is whole", "GET", "/items/42/x", nil, "default"},
		{"method and prefix beat prefix alone", "DELETE", "/api/users", nil, "method"},
		{"header", "GET", "/", http.Header{"X-Canary": {"yes"}}, "header"},
		{"no match: the default route", "GET", "/", nil, "default"},
	}
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"HTTP/1.1", h1Client()}, {"h2c", h2cClient()}} {
		for _, tt := range tests {
			t.Run(c.name+"/"+tt.name, func(t *testing.T) {
				res, body := routed(t, p, c.client, tt.method, "web.shop", tt.path, nil, tt.header)
				if res.StatusCode != 200 || body != tt.want {
					t.Errorf("%s %s: %d %q, want 200 %q", tt.method, tt.path, res.StatusCode, body, tt.want)
				}
			})
		}
	}
	// Route metrics name the parent service and the route; the backend is where the split sent it.
	waitMetric(t, p.registry, "outbound_http_route_request_statuses_total", map[string]string{
		"parent_group": "core", "parent_kind": "Service", "parent_namespace": "shop", "parent_name": "web", "parent_port": "80",
		"parent_section_name": "", "route_group": "meshscope.io", "route_kind": "Route", "route_namespace": "shop", "route_name": "exact",
		"hostname": "web.shop", "http_status": "200", "error": ""}, 2)
	waitMetric(t, p.registry, "outbound_http_route_backend_requests_total", map[string]string{
		"parent_name": "web", "route_name": "header", "backend_group": "core", "backend_kind": "Service",
		"backend_namespace": "shop", "backend_name": "header", "backend_port": "80", "backend_section_name": ""}, 2)
	waitMetric(t, p.registry, "outbound_http_route_request_statuses_total", map[string]string{
		"parent_name": "web", "route_group": "", "route_kind": "default", "route_name": "http", "http_status": "200"}, 8)
}

// stallingApp sends its response headers after headersAfter, then its body after bodyAfter; it stops at
// once when the request is cancelled.
func stallingApp(t *testing.T, headersAfter, bodyAfter time.Duration) string {
	s := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(headersAfter):
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-time.After(bodyAfter):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "late")
	}))
	return s.Listener.Addr().String()
}

func TestTimeoutsOverHTTP1AndH2c(t *testing.T) {
	slowHeaders := stallingApp(t, time.Hour, 0)
	slowBody := stallingApp(t, 0, time.Hour)
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: slow.shop:80
    labels: {namespace: shop, deployment: slow}
    endpoints: [{addr: %q}]
    routes:
      - name: headers
        matches: [{path: {prefix: /headers}}]
        timeouts: {response: 200ms}
      - name: request
        matches: [{path: {prefix: /request}}]
        timeouts: {request: 2s} # long enough for the headers to arrive first on a loaded machine
        backends: [{authority: slowbody.shop:80}]
      - name: request-before-headers
        matches: [{path: {prefix: /both}}]
        timeouts: {request: 200ms}
  - authority: slowbody.shop:80
    labels: {namespace: shop, deployment: slowbody}
    endpoints: [{addr: %q}]
`, slowHeaders, slowBody))
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"HTTP/1.1", h1Client()}, {"h2c", h2cClient()}} {
		t.Run(c.name, func(t *testing.T) {
			res, _ := routed(t, p, c.client, "GET", "slow.shop", "/headers", nil, nil)
			if res.StatusCode != 504 || res.Header.Get(ProxyErrorHeader) != "response-headers-timeout" {
				t.Errorf("response timeout: %d %q, want 504 response-headers-timeout", res.StatusCode, res.Header.Get(ProxyErrorHeader))
			}
			res, _ = routed(t, p, c.client, "GET", "slow.shop", "/both", nil, nil)
			if res.StatusCode != 504 || res.Header.Get(ProxyErrorHeader) != "request-timeout" {
				t.Errorf("request timeout before headers: %d %q, want 504 request-timeout", res.StatusCode, res.Header.Get(ProxyErrorHeader))
			}
			// After the upstream's headers, the request timeout cuts the stream: the client sees it broken
			// (POST: net/http's client would resend a GET on a connection that closed).
			req, _ := http.NewRequest("POST", p.url("--outbound-listen")+"/request", nil)
			req.Host = "slow.shop"
			res, err := c.client.Do(req)
			if err == nil {
				_, err = io.ReadAll(res.Body)
				res.Body.Close()
			}
			if err == nil {
				t.Errorf("request timeout after headers: status %d and a whole body, want the stream broken", res.StatusCode)
			}
		})
	}
	for route, errLabel := range map[string]string{"headers": "RESPONSE_HEADERS_TIMEOUT", "request-before-headers": "REQUEST_TIMEOUT", "request": "REQUEST_TIMEOUT"} {
		waitMetric(t, p.registry, "outbound_http_route_request_statuses_total", map[string]string{
			"route_name": route, "error": errLabel}, 2)
	}
	waitMetric(t, p.registry, "response_total", map[string]string{"authority": "slow.shop:80", "error": "response-headers-timeout", "status_code": "504"}, 2)
	waitMetric(t, p.registry, "response_total", map[string]string{"authority": "slow.shop:80", "error": "request-timeout"}, 4)
}

// startUnavailableGRPC is a gRPC server failing every call with UNAVAILABLE: in a trailers-only response,
// or, with late, after sending its headers (the status then in the trailers).
func startUnavailableGRPC(t *testing.T, late bool) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		n.Add(1)
		var in []byte
		ss.RecvMsg(&in)
		if late {
			ss.SendHeader(metadata.Pairs("x-sent", "headers"))
		}
		return status.Error(codes.Unavailable, "sick")
	}))
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), &n
}

func TestGRPCTimeoutIsDeadlineExceededAndRetriesTurnUnavailableIntoSuccess(t *testing.T) {
	// The timeouts are long enough that a healthy answer on a loaded machine never meets them; only the
	// calls the server never answers do.
	okAddr, _ := startGRPC(t)
	sickEarly, earlyN := startUnavailableGRPC(t, false)
	sickLate, lateN := startUnavailableGRPC(t, true)
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: checkout.shop:9090
    labels: {namespace: shop, deployment: checkout}
    endpoints: [{addr: %q}, {addr: %q}, {addr: %q}]
    routes:
      - name: unary
        matches: [{path: {exact: /meshscope.test.Echo/Unary}}]
        timeouts: {response: 2s}
        retry: {grpc: unavailable, limit: 3}
      - name: whole-call
        matches: [{path: {exact: /meshscope.test.Echo/Unary}, headers: [{name: x-limit, value: request}]}]
        timeouts: {request: 2s}
        retry: {grpc: unavailable, limit: 3}
`, okAddr, sickEarly, sickLate))
	conn := dialGRPCAuthority(t, p.addr("--outbound-listen").String(), "checkout.shop:9090")
	const calls = 60
	for i := range calls {
		out, err := unary(context.Background(), conn, fmt.Sprintf("ok:%d", i))
		if err != nil || out != fmt.Sprintf("echo:%d", i) {
			t.Fatalf("call %d: %q %v; want every UNAVAILABLE retried onto the healthy endpoint", i, out, err)
		}
	}
	if earlyN.Load() == 0 || lateN.Load() == 0 {
		t.Fatalf("the sick endpoints got %d (trailers-only) and %d (trailers) calls: the test proves nothing", earlyN.Load(), lateN.Load())
	}
	retries := earlyN.Load() + lateN.Load()
	waitMetric(t, p.registry, "outbound_grpc_route_retry_requests_total", map[string]string{"route_name": "unary", "parent_name": "checkout"}, float64(retries))
	waitMetric(t, p.registry, "outbound_grpc_route_request_statuses_total", map[string]string{"route_name": "unary", "grpc_status": "OK", "error": ""}, calls)
	waitMetric(t, p.registry, "outbound_grpc_route_backend_response_statuses_total", map[string]string{"route_name": "unary", "grpc_status": "UNAVAILABLE"}, float64(retries))

	// A call the server never answers: the route's response timeout, as DEADLINE_EXCEEDED.
	_, err := unary(context.Background(), conn, "block")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("blocked call: %v, want DEADLINE_EXCEEDED", err)
	}
	waitMetric(t, p.registry, "outbound_grpc_route_request_statuses_total", map[string]string{"route_name": "unary", "error": "RESPONSE_HEADERS_TIMEOUT"}, 1)
	// The same call on the route with a request timeout.
	_, err = unary(metadata.AppendToOutgoingContext(context.Background(), "x-limit", "request"), conn, "block")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("blocked call on the request timeout's route: %v, want DEADLINE_EXCEEDED", err)
	}
	waitMetric(t, p.registry, "outbound_grpc_route_request_statuses_total", map[string]string{"route_name": "whole-call", "error": "REQUEST_TIMEOUT", "grpc_status": "UNKNOWN"}, 1)
	waitMetric(t, p.registry, "response_total", map[string]string{"authority": "checkout.shop:9090", "error": "request-timeout", "grpc_status": "4", "status_code": "200"}, 1)
}

func dialGRPCAuthority(t *testing.T, addr, authority string) *grpc.ClientConn {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithAuthority(authority),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestRetriesSucceedExhaustAndNeverReturnToTheFailedEndpoint(t *testing.T) {
	sick := newFailingApp(t, 503)
	healthy := newFailingApp(t, 503)
	healthy.fail.Store(false)
	alone := newFailingApp(t, 502)
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: pay.shop:80
    labels: {namespace: shop, deployment: pay}
    annotations: {retry.meshscope.io/http: 5xx, retry.meshscope.io/limit: "2"}
    endpoints: [{addr: %q}, {addr: %q}]
  - authority: alone.shop:80
    labels: {namespace: shop, deployment: alone}
    annotations: {retry.meshscope.io/http: gateway-error, retry.meshscope.io/limit: "2"}
    endpoints: [{addr: %q}]
`, sick.addr, healthy.addr, alone.addr))
	c := h1Client()
	const n = 100
	small := bytes.Repeat([]byte("x"), 1000)
	for i := range n {
		var body []byte
		if i%2 == 0 {
			body = small // a body small enough to keep is resent
		}
		res, _ := routed(t, p, c, "POST", "pay.shop", "/", body, nil)
		if res.StatusCode != 200 {
			t.Fatalf("request %d: %d, want every failure retried onto the healthy endpoint", i, res.StatusCode)
		}
	}
	if s := sick.n.Load(); s == 0 || healthy.n.Load() != n {
		t.Fatalf("sick endpoint %d, healthy %d requests; want some on the sick one and every request on the healthy one", s, healthy.n.Load())
	}
	for len(healthy.bodies) > 0 {
		if sum := <-healthy.bodies; sum != sha256.Sum256(small) {
			t.Fatal("a retried body arrived changed")
		}
	}
	waitMetric(t, p.registry, "outbound_http_route_retry_requests_total", map[string]string{"parent_name": "pay", "route_kind": "default"}, float64(sick.n.Load()))
	waitMetric(t, p.registry, "outbound_http_route_retry_successes_total", map[string]string{"parent_name": "pay"}, float64(sick.n.Load()))

	// One endpoint, failing: the retries go back to it (no other exists) and exhaust the limit.
	res, _ := routed(t, p, c, "GET", "alone.shop", "/", nil, nil)
	if res.StatusCode != 502 || alone.n.Load() != 3 {
		t.Fatalf("exhausted: status %d after %d tries, want 502 after 3 (1 + limit 2)", res.StatusCode, alone.n.Load())
	}
	waitMetric(t, p.registry, "outbound_http_route_retry_limit_exceeded_total", map[string]string{"parent_name": "alone"}, 1)
	waitMetric(t, p.registry, "outbound_http_route_request_statuses_total", map[string]string{"parent_name": "alone", "http_status": "502"}, 1)
	waitMetric(t, p.registry, "outbound_http_route_backend_response_statuses_total", map[string]string{"parent_name": "alone", "http_status": "502"}, 3)
}

func TestABodyTooLargeToKeepIsSentOnceAndCounted(t *testing.T) {
	sick := newFailingApp(t, 503)
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: pay.shop:80
    labels: {namespace: shop, deployment: pay}
    annotations: {retry.meshscope.io/http: 5xx}
    endpoints: [{addr: %q}]
`, sick.addr))
	big := bytes.Repeat([]byte("y"), 100<<10)
	res, _ := routed(t, p, h1Client(), "POST", "pay.shop", "/", big, nil)
	if res.StatusCode != 503 || sick.n.Load() != 1 {
		t.Fatalf("big body: %d after %d tries, want 503 after exactly one", res.StatusCode, sick.n.Load())
	}
	if sum := <-sick.bodies; sum != sha256.Sum256(big) {
		t.Fatal("the big body arrived changed")
	}
	waitMetric(t, p.registry, "outbound_http_route_retry_body_too_large_total", map[string]string{"parent_name": "pay"}, 1)
	if got := metricValue(t, p.registry, "outbound_http_route_retry_requests_total", nil); got != 0 {
		t.Fatalf("%v retries of a body too large to keep", got)
	}
}

func TestTheRetryBudgetBoundsRetriesUnderAFloodOfFailures(t *testing.T) {
	sick := newFailingApp(t, 503)
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: pay.shop:80
    labels: {namespace: shop, deployment: pay}
    annotations: {retry.meshscope.io/http: 5xx, retry.meshscope.io/limit: "3"}
    endpoints: [{addr: %q}]
`, sick.addr))
	c := h1Client()
	const n = 600
	start := time.Now()
	for range n {
		if res, _ := routed(t, p, c, "GET", "pay.shop", "/", nil, nil); res.StatusCode != 503 {
			t.Fatalf("status %d, want 503", res.StatusCode)
		}
	}
	// Over the flood's duration the budget allows 20% of the requests plus 10 per second of a 10 s
	// window: 100 at once, 10 more per second once the flood outlasts the window.
	secs := time.Since(start).Seconds()
	allowed := 0.2*n + 100 + 10*math.Max(0, secs-10) + 1
	retries := float64(sick.n.Load() - n)
	if retries > allowed || retries < 0.2*n {
		t.Fatalf("%v retries for %d failing requests in %.1fs; the budget allows %v (and at least 20%%)", retries, n, secs, allowed)
	}
	waitMetric(t, p.registry, "outbound_http_route_retry_requests_total", map[string]string{"parent_name": "pay"}, retries)
	if o := metricValue(t, p.registry, "outbound_http_route_retry_overflow_total", map[string]string{"parent_name": "pay"}); o == 0 {
		t.Fatal("the budget refused no retry")
	}
	t.Logf("%d requests failing: %v retries (budget %v), %v refused by the budget", n, retries, allowed,
		metricValue(t, p.registry, "outbound_http_route_retry_overflow_total", nil))
}

func TestFailureAccrualTakesOutAFailingEndpointAndBringsItBack(t *testing.T) {
	sick := newFailingApp(t, 500)
	healthy := newFailingApp(t, 500)
	healthy.fail.Store(false)
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: pay.shop:80
    labels: {namespace: shop, deployment: pay}
    annotations:
      balancer.meshscope.io/failure-accrual: consecutive
      balancer.meshscope.io/failure-accrual-consecutive-max-failures: "3"
      balancer.meshscope.io/failure-accrual-consecutive-min-penalty: 200ms
      balancer.meshscope.io/failure-accrual-consecutive-max-penalty: 400ms
    endpoints: [{addr: %q}, {addr: %q}]
  - authority: solo.shop:80
    labels: {namespace: shop, deployment: solo}
    annotations:
      balancer.meshscope.io/failure-accrual: consecutive
      balancer.meshscope.io/failure-accrual-consecutive-max-failures: "3"
      balancer.meshscope.io/failure-accrual-consecutive-min-penalty: 1m
      balancer.meshscope.io/failure-accrual-consecutive-max-penalty: 1m
    endpoints: [{addr: %q}]
`, sick.addr, healthy.addr, sick.addr))
	c := h1Client()
	for sick.n.Load() < 3 {
		routed(t, p, c, "GET", "pay.shop", "/", nil, nil)
	}
	// Three failures in a row took it out: the next requests all go to the healthy endpoint (and a
	// probe may reach it after the penalty, at most one per penalty).
	before := sick.n.Load()
	for range 20 {
		if res, _ := routed(t, p, c, "GET", "pay.shop", "/", nil, nil); res.StatusCode != 200 {
			t.Fatalf("status %d while the failing endpoint is out", res.StatusCode)
		}
	}
	if got := sick.n.Load() - before; got > 1 {
		t.Fatalf("the failing endpoint got %d of 20 requests while out", got)
	}
	// It recovers: after its penalty a probe finds it well and it takes traffic again.
	sick.fail.Store(false)
	eventually(t, "the recovered endpoint back in", func() bool {
		routed(t, p, c, "GET", "pay.shop", "/", nil, nil)
		return sick.n.Load() > before+5
	})

	// Every endpoint out: fail fast.
	sick.fail.Store(true)
	for range 3 {
		routed(t, p, c, "GET", "solo.shop", "/", nil, nil)
	}
	res, _ := routed(t, p, c, "GET", "solo.shop", "/", nil, nil)
	if res.StatusCode != 503 || res.Header.Get(ProxyErrorHeader) != "fail-fast" {
		t.Fatalf("with every endpoint out: %d %q, want 503 fail-fast", res.StatusCode, res.Header.Get(ProxyErrorHeader))
	}
	waitMetric(t, p.registry, "outbound_http_route_request_statuses_total", map[string]string{"parent_name": "solo", "error": "FAIL_FAST", "http_status": ""}, 1)
	waitMetric(t, p.registry, "response_total", map[string]string{"authority": "solo.shop:80", "error": "fail-fast"}, 1)
}

func TestATrafficSplitFollowsItsWeights(t *testing.T) {
	v1, n1 := namedApp(t, "v1")
	v2, n2 := namedApp(t, "v2")
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: payments.payments:8080
    labels: {namespace: payments, deployment: payments}
    routes:
      - name: split
        backends: [{authority: "payments-v1.payments:8080", weight: 90}, {authority: "payments-v2.payments:8080", weight: 10}]
  - authority: payments-v1.payments:8080
    labels: {namespace: payments, deployment: payments-v1}
    endpoints: [{addr: %q}]
  - authority: payments-v2.payments:8080
    labels: {namespace: payments, deployment: payments-v2}
    endpoints: [{addr: %q}]
`, v1, v2))
	c := h1Client()
	const n = 2000
	for range n {
		if res, _ := routed(t, p, c, "GET", "payments.payments:8080", "/", nil, nil); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	// Within four standard deviations of Binomial(2000, 0.1): 200 ± 4·√180 ≈ 200 ± 54.
	sd := math.Sqrt(n * 0.1 * 0.9)
	if got := float64(n2.Load()); math.Abs(got-n*0.1) > 4*sd || n1.Load()+n2.Load() != n {
		t.Fatalf("v1 %d, v2 %d of %d; want v2 within 200 ± %.0f", n1.Load(), n2.Load(), n, 4*sd)
	}
	waitMetric(t, p.registry, "outbound_http_route_backend_requests_total", map[string]string{"route_name": "split", "backend_name": "payments-v2"}, float64(n2.Load()))
	// Edges follow the backend: the requests to v2 carry its deployment.
	waitMetric(t, p.registry, "response_total", map[string]string{"authority": "payments.payments:8080", "dst_deployment": "payments-v2"}, float64(n2.Load()))
}

func TestRouteMetricFamiliesAndLabelsAreLinkerd2Proxys(t *testing.T) {
	app, _ := namedApp(t, "a")
	p := routesProxy(t, fmt.Sprintf(`services:
  - authority: web.shop:80
    labels: {namespace: shop, deployment: web}
    annotations: {retry.meshscope.io/http: 5xx}
    endpoints: [{addr: %q}]
`, app))
	routed(t, p, h1Client(), "GET", "web.shop", "/", nil, nil)
	parent := []string{"parent_group", "parent_kind", "parent_namespace", "parent_name", "parent_port", "parent_section_name"}
	route := append(append([]string(nil), parent...), "route_group", "route_kind", "route_namespace", "route_name", "hostname")
	backend := append(append(append([]string(nil), parent...), "route_group", "route_kind", "route_namespace", "route_name"),
		"backend_group", "backend_kind", "backend_namespace", "backend_name", "backend_port", "backend_section_name")
	want := map[string][]string{
		"outbound_http_route_request_duration_seconds":          route,
		"outbound_http_route_request_statuses_total":            append(append([]string(nil), route...), "http_status", "error"),
		"outbound_http_route_backend_requests_total":            backend,
		"outbound_http_route_backend_response_duration_seconds": backend,
		"outbound_http_route_backend_response_statuses_total":   append(append([]string(nil), backend...), "http_status", "error"),
	}
	eventually(t, "route metrics", func() bool {
		return metricValue(t, p.registry, "outbound_http_route_request_statuses_total", nil) == 1
	})
	mfs, err := p.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		labels, ok := want[mf.GetName()]
		if !ok {
			continue
		}
		seen[mf.GetName()] = true
		var have []string
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			have = append(have, lp.GetName())
		}
		if !sameSet(have, labels) {
			t.Errorf("%s labels %v, want %v", mf.GetName(), have, labels)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("family %s missing", name)
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}
