package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/proxy/metrics"
	"github.com/meshscope/meshscope/proxy/taphub"
)

// tapReader reads one /tap stream of a proxy.
type tapReader struct {
	dec  *tap.Decoder
	body io.ReadCloser
}

// openTap starts GET /tap?query on p's admin port as a loopback client; once
// it returns, the stream is subscribed.
func openTap(t *testing.T, p *proxy, query string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *tapReader {
	t.Helper()
	transport := &http.Transport{DialContext: dial}
	t.Cleanup(transport.CloseIdleConnections)
	res, err := (&http.Client{Transport: transport}).Get(p.url("--admin-listen") + "/tap?" + query)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != tap.ContentType {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("tap: %s %q", res.Status, b)
	}
	return &tapReader{dec: tap.NewDecoder(res.Body, 0), body: res.Body}
}

// requests reads events until n requests have ended and returns each
// request's events in order, keyed by the request's path.
func (r *tapReader) requests(t *testing.T, n int) map[string][]tap.Event {
	t.Helper()
	byID := map[uint64][]tap.Event{}
	ended := 0
	for ended < n {
		var ev tap.Event
		if err := r.dec.Decode(&ev); err != nil {
			t.Fatalf("after %d ended requests: %v", ended, err)
		}
		if ev.Type == tap.TypeDropped {
			t.Fatalf("dropped %d events", ev.Count)
		}
		byID[ev.ID] = append(byID[ev.ID], ev)
		if ev.Type == tap.TypeEnd {
			ended++
		}
	}
	out := map[string][]tap.Event{}
	for id, evs := range byID {
		if evs[0].Type != tap.TypeRequest {
			t.Fatalf("id %d starts with %s", id, evs[0].Type)
		}
		out[evs[0].Path] = evs
	}
	return out
}

// rest reads the stream to its end (the proxy closed it).
func (r *tapReader) rest(t *testing.T) []tap.Event {
	t.Helper()
	var out []tap.Event
	for {
		var ev tap.Event
		err := r.dec.Decode(&ev)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

func types(evs []tap.Event) []tap.Type {
	var out []tap.Type
	for _, ev := range evs {
		out = append(out, ev.Type)
	}
	return out
}

// shopApp answers "hello" (200), or 503 for paths containing "fail"; it sets a cookie.
func shopApp(t *testing.T) string {
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Set-Cookie", "session=secret-from-app")
		if strings.Contains(r.URL.Path, "fail") {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, "hello")
	}))
	return app.Listener.Addr().String()
}

// shopProxy is the proxy of pod web-0 in front of app, with web.shop:8080 (pod web-1) as a destination.
func shopProxy(t *testing.T, app string) *proxy {
	cfg := testConfig(app)
	cfg.Namespace, cfg.Deployment, cfg.Pod = "shop", "web", "web-0"
	cfg.Destinations = writeDestinations(t, fmt.Sprintf(`services:
  - authority: web.shop:8080
    labels: {namespace: shop, deployment: web}
    endpoints:
      - addr: %s
        labels: {pod: web-1}
`, app))
	return startProxy(t, cfg)
}

func do(t *testing.T, c *http.Client, method, url, host string, header http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range header {
		req.Header[k] = v
	}
	doBody(t, c, req)
}

func TestTapShowsHTTP1AndHTTP2RequestsWithAddressesAndLabels(t *testing.T) {
	app := shopApp(t)
	p := shopProxy(t, app)
	stream := openTap(t, p, "", nil)
	in, out := p.url("--inbound-listen"), p.url("--outbound-listen")
	do(t, h1Client(), "GET", in+"/h1", "", nil)
	do(t, h2cClient(), "POST", in+"/h2", "", nil)
	do(t, h1Client(), "GET", out+"/outbound", "web.shop:8080", nil)
	got := stream.requests(t, 3)

	self := map[string]string{"namespace": "shop", "deployment": "web", "pod": "web-0"}
	tests := []struct {
		path, method, direction string
		src, dst                map[string]string
	}{
		{"/h1", "GET", "inbound", nil, self},
		{"/h2", "POST", "inbound", nil, self},
		{"/outbound", "GET", "outbound", self, map[string]string{"namespace": "shop", "deployment": "web", "pod": "web-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			evs := got[tt.path]
			if !slices.Equal(types(evs), []tap.Type{tap.TypeRequest, tap.TypeResponse, tap.TypeEnd}) {
				t.Fatalf("events %v", types(evs))
			}
			req, rsp, end := evs[0], evs[1], evs[2]
			if req.Method != tt.method || req.Direction != tt.direction || req.Authority == "" {
				t.Errorf("request %+v", req)
			}
			for _, ev := range evs {
				if ev.ID != req.ID || ev.V != tap.Version {
					t.Errorf("%s: id %d v %d, want id %d v %d", ev.Type, ev.ID, ev.V, req.ID, tap.Version)
				}
				if !strings.HasPrefix(ev.Source.Addr, "127.0.0.1:") || ev.Destination.Addr != app {
					t.Errorf("%s: source %q destination %q, want the client and %s", ev.Type, ev.Source.Addr, ev.Destination.Addr, app)
				}
				if !maps.Equal(ev.Source.Labels, tt.src) || !maps.Equal(ev.Destination.Labels, tt.dst) {
					t.Errorf("%s: labels %v -> %v, want %v -> %v", ev.Type, ev.Source.Labels, ev.Destination.Labels, tt.src, tt.dst)
				}
			}
			if rsp.Status != 200 || rsp.LatencyMS < 0 {
				t.Errorf("response %+v", rsp)
			}
			if end.GRPCStatus != nil || end.Bytes != 5 || end.Error != "" || end.DurationMS < rsp.LatencyMS {
				t.Errorf("end %+v", end)
			}
		})
	}
}

func TestTapShowsGRPCStatusInEnd(t *testing.T) {
	addr, _ := startGRPC(t)
	p := startProxy(t, testConfig(addr))
	stream := openTap(t, p, "", nil)
	cc := dialGRPC(t, p.addr("--inbound-listen").String())
	ctx := t.Context()
	calls := []struct {
		msg  string
		want int
	}{
		{"ok:x", 0},
		{"fail-late:14", 14}, // status in the trailers after headers
		{"fail-early:5", 5},  // a trailers-only response
	}
	for _, c := range calls {
		unary(ctx, cc, c.msg)
		evs := stream.requests(t, 1)["/meshscope.test.Echo/Unary"]
		if !slices.Equal(types(evs), []tap.Type{tap.TypeRequest, tap.TypeResponse, tap.TypeEnd}) {
			t.Fatalf("%s: events %v", c.msg, types(evs))
		}
		if evs[0].Method != "POST" || evs[1].Status != 200 || !strings.HasPrefix(evs[1].Headers["content-type"][0], "application/grpc") {
			t.Errorf("%s: request %+v response %+v", c.msg, evs[0], evs[1])
		}
		if g := evs[2].GRPCStatus; g == nil || *g != c.want {
			t.Errorf("%s: grpc_status %v, want %d", c.msg, g, c.want)
		}
	}
}

// TestTapFailedFilterSeesGRPCFailuresOnHTTP200: "failed" and "grpc_status"
// select gRPC calls by the status in their trailers, which status=5xx cannot.
func TestTapFailedFilterSeesGRPCFailuresOnHTTP200(t *testing.T) {
	addr, _ := startGRPC(t)
	p := startProxy(t, testConfig(addr))
	failed := openTap(t, p, "failed=true", nil)
	unavailable := openTap(t, p, "grpc_status=UNAVAILABLE", nil)
	serverErrors := openTap(t, p, "status=5xx", nil)
	cc := dialGRPC(t, p.addr("--inbound-listen").String())
	for _, msg := range []string{"ok:x", "fail-late:14", "fail-early:5", "fail-late:14"} {
		unary(t.Context(), cc, msg)
	}
	waitMetric(t, p.registry, "response_total", nil, 4)
	p.tap.Close()
	count := func(r *tapReader) (ends []int) {
		for _, ev := range r.rest(t) {
			if ev.Type == tap.TypeEnd && ev.GRPCStatus != nil {
				ends = append(ends, *ev.GRPCStatus)
			}
		}
		return ends
	}
	if got := count(failed); !slices.Equal(got, []int{14, 5, 14}) {
		t.Errorf("failed=true reported gRPC statuses %v, want 14, 5, 14", got)
	}
	if got := count(unavailable); !slices.Equal(got, []int{14, 14}) {
		t.Errorf("grpc_status=UNAVAILABLE reported %v, want 14, 14", got)
	}
	if got := count(serverErrors); len(got) != 0 {
		t.Errorf("status=5xx reported %v: gRPC failures come on HTTP 200", got)
	}
}

func TestTapShowsTheQueryStringRedacted(t *testing.T) {
	p := startProxy(t, testConfig(shopApp(t)))
	stream := openTap(t, p, "", nil)
	do(t, h1Client(), "GET", p.url("--inbound-listen")+"/search?q=shoes&api_key=s3cret&page=2", "", nil)
	evs := stream.requests(t, 1)["/search"]
	if len(evs) == 0 || evs[0].Query != "q=shoes&api_key=REDACTED&page=2" {
		t.Fatalf("request events %+v: want the query with api_key redacted", evs)
	}
}

func TestTapFiltersThroughTheProxy(t *testing.T) {
	app := shopApp(t)
	p := shopProxy(t, app)
	tests := []struct {
		query string
		want  []string // paths reported
	}{
		{"", []string{"/a", "/api/fail", "/api/out"}},
		{"direction=outbound", []string{"/api/out"}},
		{"method=POST", []string{"/api/fail"}},
		{"authority=web.shop:8080", []string{"/api/out"}},
		{"path=/api", []string{"/api/fail", "/api/out"}},
		{"dst_deployment=web&dst_namespace=shop", []string{"/a", "/api/fail", "/api/out"}},
		{"dst_namespace=other", nil},
		{"status=5xx", []string{"/api/fail"}},
		{"status=200&path=/api", []string{"/api/out"}},
		{"direction=inbound&method=GET&status=2xx", []string{"/a"}},
	}
	streams := make([]*tapReader, len(tests))
	for i, tt := range tests {
		streams[i] = openTap(t, p, tt.query, nil)
	}
	in, out := p.url("--inbound-listen"), p.url("--outbound-listen")
	do(t, h1Client(), "GET", in+"/a", "", nil)
	do(t, h2cClient(), "POST", in+"/api/fail", "", nil)
	do(t, h1Client(), "GET", out+"/api/out", "web.shop:8080", nil)
	waitMetric(t, p.registry, "response_total", nil, 3)
	got := make([][]string, len(tests))
	for i, tt := range tests {
		for path := range streams[i].requests(t, len(tt.want)) {
			got[i] = append(got[i], path)
		}
		slices.Sort(got[i])
	}
	p.tap.Close() // ends every stream after what it holds: anything more is an extra
	for i, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			if !slices.Equal(got[i], tt.want) {
				t.Errorf("reported %q, want %q", got[i], tt.want)
			}
			if evs := streams[i].rest(t); len(evs) != 0 {
				t.Errorf("more events than the selected requests': %v", types(evs))
			}
		})
	}
}

func TestTapRedactsCredentialsThroughTheProxy(t *testing.T) {
	p := startProxy(t, testConfig(shopApp(t)))
	stream := openTap(t, p, "", nil)
	do(t, h1Client(), "GET", p.url("--inbound-listen")+"/secret", "", http.Header{
		"Authorization":       {"Bearer secret-token"},
		"Cookie":              {"session=secret-cookie"},
		"Proxy-Authorization": {"Basic c2VjcmV0"},
		"X-Visible":           {"shown"},
	})
	evs := stream.requests(t, 1)["/secret"]
	req, rsp := evs[0].Headers, evs[1].Headers
	for _, h := range []string{"authorization", "cookie", "proxy-authorization"} {
		if !slices.Equal(req[h], []string{tap.RedactedValue}) {
			t.Errorf("request %s: %q", h, req[h])
		}
	}
	if !slices.Equal(rsp["set-cookie"], []string{tap.RedactedValue}) {
		t.Errorf("response set-cookie: %q", rsp["set-cookie"])
	}
	if !slices.Equal(req["x-visible"], []string{"shown"}) {
		t.Errorf("other headers: %q", req)
	}
}

func TestTapAuthorizationWithToken(t *testing.T) {
	cfg := testConfig(shopApp(t))
	cfg.TapToken = "s3cret"
	p := startProxy(t, cfg)
	tests := []struct {
		name, auth string
		want       int
	}{
		{"missing token", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"right token", "Bearer s3cret", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", p.url("--admin-listen")+"/tap?max_rps=0", nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			res, err := h1Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if tt.want == 200 {
				// Authorized: the bad max_rps is what it hears about.
				if res.StatusCode != 400 || !strings.Contains(string(body), `"max_rps"`) {
					t.Errorf("%s %q, want 400 naming max_rps", res.Status, body)
				}
				return
			}
			if res.StatusCode != tt.want || strings.Contains(string(body), "max_rps") {
				t.Errorf("%s %q, want %d and no more", res.Status, body, tt.want)
			}
		})
	}
}

func TestTapMaxRPSLimitsReportedRequests(t *testing.T) {
	p := startProxy(t, testConfig(shopApp(t)))
	const maxRPS, n = 5, 60
	start := time.Now()
	stream := openTap(t, p, fmt.Sprintf("max_rps=%d", maxRPS), nil)
	c := h1Client()
	for i := range n {
		do(t, c, "GET", fmt.Sprintf("%s/r%d", p.url("--inbound-listen"), i), "", nil)
	}
	elapsed := time.Since(start)
	waitMetric(t, p.registry, "response_total", nil, n)
	p.tap.Close()
	requests := 0
	for _, ev := range stream.rest(t) {
		if ev.Type == tap.TypeRequest {
			requests++
		}
	}
	// A burst of one second's worth, then maxRPS per second.
	limit := int(float64(maxRPS) * (1 + elapsed.Seconds()))
	if requests < maxRPS || requests > limit || requests >= n {
		t.Errorf("%d of %d requests reported in %v at max_rps=%d, want %d to %d", requests, n, elapsed, maxRPS, maxRPS, limit)
	}
}

// smallReceiveBuffer dials with a tiny socket receive buffer, so a reader
// that stalls backs the proxy's writes up quickly.
func smallReceiveBuffer(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return d.DialContext(ctx, network, addr)
}

func TestSlowTapReaderGetsDroppedAndTheProxyKeepsServing(t *testing.T) {
	p := startProxy(t, testConfig(shopApp(t)))
	stream := openTap(t, p, "max_rps=10000", smallReceiveBuffer)
	// While the load runs the reader crawls, an event every few milliseconds
	// (a reader that stops altogether is cut off after the proxy's write
	// timeout), so the events back up far beyond what its buffer holds.
	const workers, perWorker = 4, 1500
	want := uint64(3 * workers * perWorker)
	var delivered, dropped uint64
	read := func() error {
		var ev tap.Event
		if err := stream.dec.Decode(&ev); err != nil {
			return fmt.Errorf("after %d delivered and %d dropped of %d: %w", delivered, dropped, want, err)
		}
		if ev.Type == tap.TypeDropped {
			dropped += ev.Count
		} else {
			delivered++
		}
		return nil
	}
	loadDone := make(chan struct{})
	readerDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-loadDone:
				readerDone <- nil
				return
			case <-time.After(5 * time.Millisecond):
				if err := read(); err != nil {
					readerDone <- err
					return
				}
			}
		}
	}()
	start := time.Now()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c := h1Client()
			for i := range perWorker {
				res, err := c.Get(fmt.Sprintf("%s/load/%d/%d", p.url("--inbound-listen"), w, i))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("load of %d requests took %v", workers*perWorker, time.Since(start))
	close(loadDone)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed while tap's reader crawled", n, workers*perWorker)
	}
	// Now read at full speed: every event either arrives or is counted in a
	// dropped event.
	for delivered+dropped < want {
		if err := read(); err != nil {
			t.Fatal(err)
		}
	}
	if dropped == 0 || delivered+dropped != want {
		t.Errorf("delivered %d, dropped %d, of %d events", delivered, dropped, want)
	}
	t.Logf("delivered %d, dropped %d", delivered, dropped)
}

func TestTapClientsThatLeaveLeaveNothingBehind(t *testing.T) {
	p := startProxy(t, testConfig(shopApp(t)))
	do(t, h1Client(), "GET", p.url("--inbound-listen")+"/warm", "", nil)
	baseline := runtime.NumGoroutine()
	var readers []*tapReader
	for _, q := range []string{"", "status=5xx", "path=/x&max_rps=10000"} {
		readers = append(readers, openTap(t, p, q, nil))
	}
	if !p.tap.Active() {
		t.Fatal("no subscriber")
	}
	for _, r := range readers {
		r.body.Close()
	}
	eventually(t, "subscribers removed", func() bool { return !p.tap.Active() })
	eventually(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}

func TestTapStreamEndsWhenTheProxyShutsDown(t *testing.T) {
	cfg := testConfig(shopApp(t))
	level := new(slog.LevelVar)
	p, err := newProxy(cfg, slog.New(slog.NewTextHandler(testLog{t}, nil)), level)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	eventually(t, "proxy ready", func() bool { return p.ready.Load() })
	stream := openTap(t, p, "", nil)
	cancel()
	if evs := stream.rest(t); len(evs) != 0 { // io.EOF: a clean end
		t.Errorf("events %v", types(evs))
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// exchangeLifecycle runs one request's observations, as the data path does,
// with hub as the proxy's tap.
func exchangeLifecycle(m *metrics.Metrics, hub *taphub.Hub, header http.Header) {
	ex := Exchange{
		Direction: Inbound, Method: "GET", Authority: "web.shop:8080", Path: "/api", Header: header,
		Source: "10.0.0.7:40000", Destination: "127.0.0.1:8080", Start: time.Now(),
		GRPCStatus: metrics.NoGRPCStatus, hub: hub,
	}
	ex.requestHeaders(m)
	ex.responseHeaders(200, header)
	ex.Bytes = 5
	ex.end()
}

func TestIdleTapAddsNoAllocationPerRequest(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry())
	header := http.Header{"Accept": {"*/*"}, "User-Agent": {"test"}}
	allocs := func(hub *taphub.Hub) float64 {
		return testing.AllocsPerRun(1000, func() { exchangeLifecycle(m, hub, header) })
	}
	idle, none := allocs(taphub.New(taphub.Options{})), allocs(nil)
	if idle != none {
		t.Errorf("%v allocations per request with an idle tap, %v without tap", idle, none)
	}
}

// Finding 5 of the hardening review: a tap subscriber that stalls while requests with huge headers flow
// made the proxy hold every buffered event whole (4,096 of them, 900 KB each). Events are cut to size and
// say so, and each subscriber's buffer is bounded in bytes, not only in events.
func TestStalledTapSubscriberHoldsBoundedMemory(t *testing.T) {
	p := startProxy(t, testConfig(shopApp(t)))
	stream := openTap(t, p, "max_rps=10000", smallReceiveBuffer)
	send := func(n int, header string, size int) {
		c := h1Client()
		value := strings.Repeat("v", size)
		for i := range n {
			req, _ := http.NewRequest("GET", fmt.Sprintf("%s/%s/%d", p.url("--inbound-listen"), header, i), nil)
			req.Header.Set(header, value)
			if res, _ := doBody(t, c, req); res.StatusCode != 200 {
				t.Fatalf("%s request %d: %s", header, i, res.Status)
			}
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	// The stream is not read until the end.
	before := heap()
	const huge, big = 64, 1200
	send(huge, "X-Huge", 900<<10)
	if grown := int64(heap()) - int64(before); grown > 24<<20 {
		t.Errorf("heap grew %d MiB holding %d tapped requests with 900 KB headers for a stalled reader, want under 24", grown>>20, huge)
	}
	waitMetric(t, p.registry, "limit_reached_total", map[string]string{"limit": taphub.LimitEventTruncated}, huge)
	// Events under the size cap, but more bytes of them than a subscriber may hold.
	send(big, "X-Big", 15<<10)
	if got := metricValue(t, p.registry, "limit_reached_total", map[string]string{"limit": taphub.LimitSubscriberBytes}); got == 0 {
		t.Errorf("limit_reached_total{limit=%q} = 0 after %d MiB of events for a stalled reader", taphub.LimitSubscriberBytes, big*15>>10)
	}

	// Read at last: every event arrived or was counted as dropped, and the huge ones say they were cut.
	want, delivered, dropped, truncated := uint64(3*(huge+big)), uint64(0), uint64(0), 0
	for delivered+dropped < want {
		var ev tap.Event
		if err := stream.dec.Decode(&ev); err != nil {
			t.Fatalf("after %d delivered and %d dropped of %d: %v", delivered, dropped, want, err)
		}
		if ev.Type == tap.TypeDropped {
			dropped += ev.Count
			continue
		}
		delivered++
		if v := ev.Headers["x-huge"]; v != nil {
			if !ev.Truncated || len(v[0]) > tap.MaxHeaderBytes {
				t.Fatalf("request with a 900 KB header: truncated %v, header of %d bytes", ev.Truncated, len(v[0]))
			}
			truncated++
		}
	}
	if dropped == 0 || truncated == 0 {
		t.Errorf("delivered %d (%d truncated), dropped %d", delivered, truncated, dropped)
	}
}

// TestTapOverMutualTLS: with identity on, the admin port also speaks mutual TLS, where the dashboard's
// identity taps and the client checks the proxy's; another workload's valid certificate and a client
// without one are refused in the handshake, before any request, each counted every time in
// tap_refused_total and logged once; plain text on loopback taps as without identity.
func TestTapOverMutualTLS(t *testing.T) {
	m := newTestMesh(t, time.Hour)
	cfg := testConfig(shopApp(t))
	cfg.TapClientIdentity = meshid.Name("meshscope", "meshscope-dashboard")
	catalog, logs := m.meshedProxy(t, "catalog", cfg)
	admin := catalog.addr("--admin-listen").String()
	tapURL := "https://" + admin + "/tap"

	over := func(tc *tls.Config) *http.Client {
		transport := &http.Transport{TLSClientConfig: tc}
		t.Cleanup(transport.CloseIdleConnections)
		return &http.Client{Transport: transport, Timeout: 10 * time.Second}
	}

	t.Run("the dashboard's identity taps", func(t *testing.T) {
		dashboard := m.workload(t, "dashboard")
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", tapURL, nil)
		res, err := over(dashboard.ClientConfig(name("catalog"))).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != tap.ContentType {
			b, _ := io.ReadAll(res.Body)
			t.Fatalf("tap over mutual TLS: %s %q", res.Status, b)
		}
		do(t, h1Client(), "GET", catalog.url("--inbound-listen")+"/over-mtls", "catalog.shop:8080", nil)
		r := &tapReader{dec: tap.NewDecoder(res.Body, 0), body: res.Body}
		if evs := r.requests(t, 1)["/over-mtls"]; len(evs) != 3 {
			t.Errorf("events of the tapped request: %v", types(evs))
		}
	})

	anotherWorkload := m.workload(t, "web")
	for _, tc := range []struct {
		name, reason string
		client       *tls.Config
	}{
		{"another workload's valid certificate", "identity_mismatch", anotherWorkload.ClientConfig(name("catalog"))},
		{"a client without a certificate", "no_client_certificate", &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: m.pool, ServerName: name("catalog")}},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			for range 2 {
				res, err := over(tc.client).Get(tapURL + "?max_rps=0")
				if err == nil {
					res.Body.Close()
					t.Fatalf("answered %s", res.Status)
				}
			}
			waitMetric(t, catalog.registry, "tap_refused_total", map[string]string{"reason": tc.reason}, 2)
			if n := logs.count("tap refused", "reason="+tc.reason); n != 1 {
				t.Errorf("%d log lines for two refusals, want 1", n)
			}
		})
	}

	t.Run("plain text on loopback taps as without identity", func(t *testing.T) {
		res, err := h1Client().Get(catalog.url("--admin-listen") + "/tap?max_rps=0")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		// Authorized: the bad max_rps is what it hears about.
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("plain-text loopback tap: %s, want 400 for max_rps", res.Status)
		}
	})
}
