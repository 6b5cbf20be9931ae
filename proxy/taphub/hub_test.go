package taphub

import (
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/tap"
)

// fakeClock is a clock tests move by hand, so rate limits are exact.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// request is one request pushed through a hub, as the proxy would.
type request struct {
	info       RequestInfo
	status     int
	header     http.Header // response header
	grpc       int
	noResponse bool // the request ends without a response
}

func (r request) run(h *Hub) {
	info := r.info
	span := h.Request(&info)
	if !r.noResponse {
		span.Response(r.status, r.header)
	}
	span.End(r.grpc, 42, "")
}

// drain returns the events buffered for sub, without waiting.
func drain(sub *Subscription) []*tap.Event {
	var out []*tap.Event
	for {
		select {
		case ev := <-sub.Events():
			out = append(out, ev)
		default:
			return out
		}
	}
}

func subscribe(t *testing.T, h *Hub, query string) *Subscription {
	t.Helper()
	q, err := url.ParseQuery(query)
	if err != nil {
		t.Fatal(err)
	}
	f, err := tap.ParseFilter(q)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := h.Subscribe(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Unsubscribe)
	return sub
}

// traffic is a mix of requests; each one's path names it.
var traffic = []request{
	{info: RequestInfo{Direction: "inbound", Method: "GET", Authority: "web.shop:8080", Path: "/ok", Source: "10.0.0.9:5000", Destination: "127.0.0.1:8080"}, status: 200, grpc: -1},
	{info: RequestInfo{Direction: "inbound", Method: "POST", Authority: "web.shop:8080", Path: "/api/fail", Source: "10.0.0.9:5001", Destination: "127.0.0.1:8080"}, status: 503, grpc: -1},
	{info: RequestInfo{Direction: "outbound", Method: "GET", Authority: "voting.shop:8080", Path: "/api/vote", Source: "127.0.0.1:6000", Destination: "127.0.0.1:14143",
		DstLabels: map[string]string{"dst_namespace": "shop", "dst_deployment": "voting", "dst_pod": "voting-0"}}, status: 404, grpc: -1},
	{info: RequestInfo{Direction: "outbound", Method: "POST", Authority: "emoji.other:8080", Path: "/emoji.Svc/List", Source: "127.0.0.1:6001", Destination: "127.0.0.1:15143",
		DstLabels: map[string]string{"dst_namespace": "other", "dst_deployment": "emoji"}}, status: 200, grpc: 14},
	{info: RequestInfo{Direction: "outbound", Method: "GET", Authority: "unknown:80", Path: "/lost", Source: "127.0.0.1:6002", Destination: "unknown:80"}, noResponse: true, grpc: -1},
}

func TestHubDeliversTheRequestsEachFilterSelects(t *testing.T) {
	tests := []struct {
		query string
		want  []string // paths of the requests reported
	}{
		{"", []string{"/ok", "/api/fail", "/api/vote", "/emoji.Svc/List", "/lost"}},
		{"direction=inbound", []string{"/ok", "/api/fail"}},
		{"direction=outbound", []string{"/api/vote", "/emoji.Svc/List", "/lost"}},
		{"method=post", []string{"/api/fail", "/emoji.Svc/List"}},
		{"authority=voting.shop:8080", []string{"/api/vote"}},
		{"path=/api", []string{"/api/fail", "/api/vote"}},
		{"dst_deployment=voting", []string{"/api/vote"}},
		{"dst_deployment=web", []string{"/ok", "/api/fail"}}, // inbound: this workload is the destination
		{"dst_namespace=other", []string{"/emoji.Svc/List"}},
		{"status=5xx", []string{"/api/fail"}},
		{"status=2xx", []string{"/ok", "/emoji.Svc/List"}},
		{"status=404", []string{"/api/vote"}},
		{"direction=outbound&method=GET", []string{"/api/vote", "/lost"}},
		{"direction=outbound&status=2xx&dst_namespace=other", []string{"/emoji.Svc/List"}},
		{"path=/api&status=4xx", []string{"/api/vote"}},
		{"path=/api&dst_namespace=other", nil},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			h := New(Options{Identity: Identity{Namespace: "shop", Deployment: "web", Pod: "web-0"}})
			sub := subscribe(t, h, tt.query)
			for _, r := range traffic {
				r.run(h)
			}
			events := drain(sub)
			var got []string
			byID := map[uint64][]tap.Type{}
			for _, ev := range events {
				if ev.Type == tap.TypeRequest {
					got = append(got, ev.Path)
				}
				byID[ev.ID] = append(byID[ev.ID], ev.Type)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("reported %q, want %q", got, tt.want)
			}
			for id, types := range byID {
				want := []tap.Type{tap.TypeRequest, tap.TypeResponse, tap.TypeEnd}
				if !slices.Equal(types, want) && !slices.Equal(types, []tap.Type{tap.TypeRequest, tap.TypeEnd}) {
					t.Errorf("id %d: events %v, want request, response, end in order", id, types)
				}
			}
		})
	}
}

func TestEventsCarryAddressesLabelsAndOutcome(t *testing.T) {
	h := New(Options{Identity: Identity{Namespace: "shop", Deployment: "web", Pod: "web-0"}})
	sub := subscribe(t, h, "")
	traffic[0].run(h) // inbound
	traffic[3].run(h) // outbound gRPC, status 14
	events := drain(sub)
	if len(events) != 6 {
		t.Fatalf("%d events, want 6", len(events))
	}
	self := map[string]string{"namespace": "shop", "deployment": "web", "pod": "web-0"}
	in, out := events[:3], events[3:]
	for _, ev := range in {
		if ev.Source.Addr != "10.0.0.9:5000" || ev.Source.Labels != nil ||
			ev.Destination.Addr != "127.0.0.1:8080" || !maps.Equal(ev.Destination.Labels, self) {
			t.Errorf("inbound %s: source %+v destination %+v", ev.Type, ev.Source, ev.Destination)
		}
	}
	for _, ev := range out {
		if ev.Source.Addr != "127.0.0.1:6001" || !maps.Equal(ev.Source.Labels, self) ||
			ev.Destination.Addr != "127.0.0.1:15143" ||
			!maps.Equal(ev.Destination.Labels, map[string]string{"namespace": "other", "deployment": "emoji"}) {
			t.Errorf("outbound %s: source %+v destination %+v", ev.Type, ev.Source, ev.Destination)
		}
	}
	if ids := []uint64{in[0].ID, in[1].ID, in[2].ID}; ids[0] == 0 || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Errorf("one request's ids %v, want one non-zero id", ids)
	}
	if in[0].ID == out[0].ID {
		t.Error("two requests share an id")
	}
	if end := in[2]; end.GRPCStatus != nil || end.Bytes != 42 {
		t.Errorf("HTTP end: grpc_status %v bytes %d, want none and 42", end.GRPCStatus, end.Bytes)
	}
	if end := out[2]; end.GRPCStatus == nil || *end.GRPCStatus != 14 {
		t.Errorf("gRPC end: grpc_status %v, want 14", end.GRPCStatus)
	}
	if rsp := in[1]; rsp.Status != 200 || rsp.LatencyMS < 0 {
		t.Errorf("response status %d latency %v", rsp.Status, rsp.LatencyMS)
	}
}

func TestSensitiveHeaderValuesAreRedacted(t *testing.T) {
	h := New(Options{})
	sub := subscribe(t, h, "")
	r := request{
		info: RequestInfo{Direction: "inbound", Method: "GET", Path: "/", Header: http.Header{
			"Authorization":       {"Bearer hunter2"},
			"Cookie":              {"session=hunter2"},
			"Proxy-Authorization": {"Basic aHVudGVyMg=="},
			"Accept":              {"text/html"},
		}},
		status: 200,
		header: http.Header{"Set-Cookie": {"session=hunter2"}, "Content-Type": {"text/html"}},
		grpc:   -1,
	}
	r.run(h)
	events := drain(sub)
	if len(events) != 3 {
		t.Fatalf("%d events", len(events))
	}
	req, rsp := events[0].Headers, events[1].Headers
	for _, name := range []string{"authorization", "cookie", "proxy-authorization"} {
		if !slices.Equal(req[name], []string{tap.RedactedValue}) {
			t.Errorf("request %s: %q", name, req[name])
		}
	}
	if !slices.Equal(rsp["set-cookie"], []string{tap.RedactedValue}) {
		t.Errorf("response set-cookie: %q", rsp["set-cookie"])
	}
	if req["accept"][0] != "text/html" || rsp["content-type"][0] != "text/html" {
		t.Errorf("other headers lost: %q %q", req, rsp)
	}
}

func TestMaxRPSLimitsRequestsPerStream(t *testing.T) {
	clock := newFakeClock()
	h := New(Options{Now: clock.Now})
	limited := subscribe(t, h, "max_rps=5")
	statusLimited := subscribe(t, h, "max_rps=5&status=2xx")
	other := subscribe(t, h, "max_rps=10000")
	count := func(sub *Subscription) (requests, events int) {
		for _, ev := range drain(sub) {
			events++
			if ev.Type == tap.TypeRequest {
				requests++
			}
		}
		return
	}
	ok := traffic[0]
	for range 20 {
		ok.run(h)
	}
	if n, e := count(limited); n != 5 || e != 15 {
		t.Errorf("first second: %d requests (%d events), want 5 (15)", n, e)
	}
	if n, _ := count(statusLimited); n != 5 {
		t.Errorf("first second, status filter: %d requests, want 5", n)
	}
	if n, _ := count(other); n != 20 {
		t.Errorf("another stream got %d requests, want all 20", n)
	}
	clock.Advance(400 * time.Millisecond) // two more requests' worth
	for range 20 {
		ok.run(h)
	}
	if n, _ := count(limited); n != 2 {
		t.Errorf("after 400ms: %d requests, want 2", n)
	}
	clock.Advance(10 * time.Second) // a burst is at most one second's worth
	for range 20 {
		ok.run(h)
	}
	if n, _ := count(limited); n != 5 {
		t.Errorf("after a quiet spell: %d requests, want 5", n)
	}
}

func TestFullBufferDropsAndCountsWithoutBlocking(t *testing.T) {
	h := New(Options{Buffer: 4})
	sub := subscribe(t, h, "max_rps=10000")
	for range 10 {
		traffic[0].run(h) // 30 events, nobody reading
	}
	if got := len(drain(sub)); got != 4 {
		t.Errorf("buffered %d events, want 4", got)
	}
	if got := sub.TakeDropped(); got != 26 {
		t.Errorf("dropped %d, want 26", got)
	}
	if got := sub.TakeDropped(); got != 0 {
		t.Errorf("dropped count not reset: %d", got)
	}
}

func TestNoSubscriberCostsNoAllocation(t *testing.T) {
	h := New(Options{})
	if h.Active() {
		t.Fatal("a new hub is active")
	}
	sub := subscribe(t, h, "")
	if !h.Active() {
		t.Fatal("hub with a subscriber is not active")
	}
	sub.Unsubscribe()
	sub.Unsubscribe() // twice is harmless
	if h.Active() {
		t.Fatal("hub still active after its only subscriber left")
	}
	hdr := http.Header{"Accept": {"*/*"}}
	allocs := testing.AllocsPerRun(1000, func() {
		info := RequestInfo{Direction: "inbound", Method: "GET", Path: "/", Header: hdr}
		span := h.Request(&info)
		span.Reroute("127.0.0.1:1", nil, "")
		span.Response(200, hdr)
		span.End(0, 10, "")
	})
	if allocs != 0 {
		t.Errorf("%v allocations per untapped request, want 0", allocs)
	}
	var nilHub *Hub
	if nilHub.Active() || nilHub.Request(&RequestInfo{}) != nil {
		t.Error("a nil hub is active")
	}
}

func TestUnwantedRequestGetsNoSpan(t *testing.T) {
	h := New(Options{})
	subscribe(t, h, "direction=outbound")
	info := traffic[0].info // inbound
	if span := h.Request(&info); span != nil {
		t.Error("span for a request no subscriber wants")
	}
}

func TestClosedHubRefusesSubscribers(t *testing.T) {
	h := New(Options{})
	sub := subscribe(t, h, "")
	h.Close()
	h.Close()
	select {
	case <-sub.Done():
	default:
		t.Error("subscription not done after Close")
	}
	if _, err := h.Subscribe(tap.Filter{}); err != ErrClosed {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
}

// TestFailedAndGRPCStatusFiltersDecideAtTheEnd: "failed" selects what the
// success rate counts as a failure, gRPC's UNAVAILABLE on HTTP 200 included,
// and delivers each selected request's events in order once it has ended.
func TestFailedAndGRPCStatusFiltersDecideAtTheEnd(t *testing.T) {
	h := New(Options{})
	failed := subscribe(t, h, "failed=true")
	unavailable := subscribe(t, h, "grpc_status=unavailable")
	serverErrors := subscribe(t, h, "failed=true&status=5xx")
	info := func(path string) RequestInfo {
		return RequestInfo{Direction: tap.DirectionInbound, Method: "POST", Authority: "checkout.shop:9090", Path: path}
	}
	for _, r := range []request{
		{info: info("/grpc-unavailable"), status: 200, grpc: 14},
		{info: info("/grpc-ok"), status: 200, grpc: 0},
		{info: info("/http-503"), status: 503, grpc: -1},
		{info: info("/http-200"), status: 200, grpc: -1},
		{info: info("/http-404"), status: 404, grpc: -1},
		{info: info("/no-response"), grpc: -1, noResponse: true},
	} {
		r.run(h)
	}
	paths := func(sub *Subscription) []string {
		var out []string
		var last tap.Type
		for _, ev := range drain(sub) {
			if ev.Type == tap.TypeRequest {
				out = append(out, ev.Path)
			}
			if ev.Type == last {
				t.Errorf("two %s events in a row: each request's events come in order", ev.Type)
			}
			last = ev.Type
		}
		return out
	}
	for name, tc := range map[string]struct {
		sub  *Subscription
		want []string
	}{
		"failed":                {failed, []string{"/grpc-unavailable", "/http-503", "/no-response"}},
		"grpc_status":           {unavailable, []string{"/grpc-unavailable"}},
		"failed and status 5xx": {serverErrors, []string{"/http-503"}},
	} {
		if got := paths(tc.sub); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", name, got, tc.want)
		}
	}
}
