package balance_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
)

// fakeClock is the balancer's time in these tests: it moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

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

// serviceFile lists one service, web.shop:80, with endpoints at the given addresses.
func serviceFile(addrs ...string) string {
	var b strings.Builder
	b.WriteString("services:\n  - authority: web.shop:80\n    labels: {namespace: shop, deployment: web}\n    endpoints:\n")
	for i, a := range addrs {
		fmt.Fprintf(&b, "      - addr: %q\n        labels: {pod: web-%d}\n", a, i)
	}
	return b.String()
}

func loadWeb(t *testing.T, clk *fakeClock, addrs ...string) *balance.Destination {
	t.Helper()
	r, err := balance.Load(writeFile(t, t.TempDir(), serviceFile(addrs...)), nil, balance.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	return r.Lookup("web.shop")
}

// inflight is a simulated client keeping a fixed number of requests outstanding on the fake clock: a
// request picked at time t completes at t+latency(addr), and each completion starts the next request.
type inflight struct {
	clk     *fakeClock
	latency func(addr string) time.Duration
	counts  map[string]int
}

type pending struct {
	at   time.Time
	done func(error)
}

func (f *inflight) send(t *testing.T, d *balance.Destination, concurrency, requests int) {
	t.Helper()
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	var queue []pending // kept sorted by completion time
	for sent := 0; sent < requests || len(queue) > 0; {
		for sent < requests && len(queue) < concurrency {
			ep, err := d.Pick()
			if err != nil {
				t.Fatal(err)
			}
			f.counts[ep.Addr]++
			sent++
			p := pending{at: f.clk.Now().Add(f.latency(ep.Addr)), done: ep.Begin()}
			i, _ := slices.BinarySearchFunc(queue, p, func(a, b pending) int { return a.at.Compare(b.at) })
			queue = slices.Insert(queue, i, p)
		}
		next := queue[0]
		queue = queue[1:]
		f.clk.Advance(next.at.Sub(f.clk.Now()))
		next.done(nil)
	}
}

func TestPickSpreadsLoadAcrossEqualEndpoints(t *testing.T) {
	for _, concurrency := range []int{4, 16} {
		t.Run(fmt.Sprintf("%d concurrent requests", concurrency), func(t *testing.T) {
			clk := newFakeClock()
			addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
			d := loadWeb(t, clk, addrs...)
			f := &inflight{clk: clk, latency: func(string) time.Duration { return 2 * time.Millisecond }}
			const requests = 8000
			f.send(t, d, concurrency, requests)
			t.Logf("requests per endpoint: %v", f.counts)
			for _, a := range addrs {
				share := float64(f.counts[a]) / requests
				if share < 0.15 || share > 0.35 {
					t.Errorf("%s got %.0f%% of requests, want about 25%%: %v", a, share*100, f.counts)
				}
			}
		})
	}
}

func TestPickShunsASlowEndpoint(t *testing.T) {
	clk := newFakeClock()
	d := loadWeb(t, clk, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	f := &inflight{clk: clk, latency: func(addr string) time.Duration {
		if addr == "10.0.0.3:80" {
			return 80 * time.Millisecond
		}
		return 2 * time.Millisecond
	}}
	f.send(t, d, 4, 200) // every endpoint gets measured
	f.counts = nil
	const requests = 6000
	f.send(t, d, 4, requests)
	t.Logf("requests per endpoint: %v", f.counts)
	if share := float64(f.counts["10.0.0.3:80"]) / requests; share > 0.05 {
		t.Errorf("the slow endpoint got %.1f%% of requests, want under 5%%: %v", share*100, f.counts)
	}
	for _, a := range []string{"10.0.0.1:80", "10.0.0.2:80"} {
		if share := float64(f.counts[a]) / requests; share < 0.3 {
			t.Errorf("fast endpoint %s got %.1f%% of requests, want over 30%%: %v", a, share*100, f.counts)
		}
	}
}

func TestPickSendsMoreRequestsToAnIdleSlowEndpointWhenTheFastOnesAreBusy(t *testing.T) {
	// Latency is weighed by outstanding requests: a slow endpoint is shunned, not abandoned, so its
	// estimate can recover. With 2 fast endpoints 10 requests deep, the idle slow one wins some picks.
	clk := newFakeClock()
	d := loadWeb(t, clk, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	f := &inflight{clk: clk, latency: func(addr string) time.Duration {
		if addr == "10.0.0.3:80" {
			return 8 * time.Millisecond
		}
		return 2 * time.Millisecond
	}}
	f.send(t, d, 30, 3000)
	t.Logf("requests per endpoint: %v", f.counts)
	if n := f.counts["10.0.0.3:80"]; n < 30 {
		t.Errorf("the slower endpoint got %d requests under deep concurrency, want some: %v", n, f.counts)
	}
}

func TestDoneRecordsTheLatencyOfFailuresButNotOfCancelledRequests(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantShare func(float64) bool
	}{
		{"a request failing after 5s makes the endpoint look slow", errors.New("stream reset"),
			func(share float64) bool { return share < 0.05 }},
		{"a request cancelled by its client after 5s says nothing", context.Canceled,
			func(share float64) bool { return share > 0.3 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			d := loadWeb(t, clk, "10.0.0.1:80", "10.0.0.2:80")
			f := &inflight{clk: clk, latency: func(string) time.Duration { return time.Millisecond }}
			f.send(t, d, 4, 200)
			var ep *balance.Endpoint
			for ep == nil || ep.Addr != "10.0.0.1:80" {
				ep, _ = d.Pick()
			}
			done := ep.Begin()
			clk.Advance(5 * time.Second)
			done(tt.err)
			f.counts = nil
			f.send(t, d, 4, 2000)
			if share := float64(f.counts["10.0.0.1:80"]) / 2000; !tt.wantShare(share) {
				t.Errorf("10.0.0.1 got %.1f%% of the next requests: %v", share*100, f.counts)
			}
		})
	}
}

func TestPickReturnsErrNoEndpoints(t *testing.T) {
	clk := newFakeClock()
	d := loadWeb(t, clk, "10.0.0.1:80", "10.0.0.2:80")
	a, err := d.Pick()
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		b, err := d.Pick(a)
		if err != nil {
			t.Fatal(err)
		}
		if b.Addr == a.Addr {
			t.Fatalf("Pick(%s) returned the excluded endpoint", a.Addr)
		}
		if _, err := d.Pick(a, b); !errors.Is(err, balance.ErrNoEndpoints) {
			t.Fatalf("Pick excluding every endpoint: err %v, want ErrNoEndpoints", err)
		}
	}

	none := loadWeb(t, clk)
	if _, err := none.Pick(); !errors.Is(err, balance.ErrNoEndpoints) {
		t.Fatalf("Pick on a service without endpoints: err %v, want ErrNoEndpoints", err)
	}
}

// refusedError dials a port nothing listens on and returns the real error, wrapped as net/http does.
func refusedError(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = http.Get("http://" + addr + "/")
	if err == nil {
		t.Fatalf("GET %s succeeded, want connection refused", addr)
	}
	return err
}

func TestUnreachableRecognisesErrorsOfRequestsThatNeverReachedTheEndpoint(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused through net/http", refusedError(t), true},
		{"dial timeout", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("i/o timeout")}, true},
		{"wrapped dial error", fmt.Errorf("proxy: %w", &net.OpError{Op: "dial", Err: errors.New("no route")}), true},
		{"read error after connecting", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, false},
		{"other error", errors.New("stream reset"), false},
		{"success", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := balance.Unreachable(tt.err); got != tt.want {
				t.Errorf("Unreachable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestRefusingEndpointIsLeftOutThenProbedBackIn(t *testing.T) {
	clk := newFakeClock()
	d := loadWeb(t, clk, "10.0.0.1:80", "10.0.0.2:80")
	refused := refusedError(t)

	var bad *balance.Endpoint
	for bad == nil || bad.Addr != "10.0.0.2:80" {
		var err error
		if bad, err = d.Pick(); err != nil {
			t.Fatal(err)
		}
	}
	bad.Begin()(refused)

	pickCounts := func(n int) map[string]int {
		counts := map[string]int{}
		for range n {
			ep, err := d.Pick()
			if err != nil {
				t.Fatal(err)
			}
			counts[ep.Addr]++
		}
		return counts
	}
	if c := pickCounts(100); c["10.0.0.2:80"] != 0 {
		t.Fatalf("refusing endpoint picked during its backoff: %v", c)
	}
	good, err := d.Pick()
	if err != nil || good.Addr != "10.0.0.1:80" {
		t.Fatalf("Pick = %v, %v; want the good endpoint", good, err)
	}
	if _, err := d.Pick(good); !errors.Is(err, balance.ErrNoEndpoints) {
		t.Fatalf("with the good endpoint excluded and the other backing off: err %v, want ErrNoEndpoints", err)
	}

	// After the backoff (at most 250ms + 25% jitter), exactly one Pick probes it.
	clk.Advance(400 * time.Millisecond)
	if c := pickCounts(100); c["10.0.0.2:80"] != 1 {
		t.Fatalf("after the backoff the endpoint was picked %d times, want once (one probe): %v", c["10.0.0.2:80"], c)
	}
	// The probe fails too: the backoff doubles, so the same wait is no longer enough.
	bad.Begin()(refused)
	clk.Advance(400 * time.Millisecond)
	if c := pickCounts(100); c["10.0.0.2:80"] != 0 {
		t.Fatalf("after a failed probe the endpoint came back within the first backoff: %v", c)
	}
	clk.Advance(400 * time.Millisecond) // 800ms > 500ms + 25%
	if c := pickCounts(100); c["10.0.0.2:80"] != 1 {
		t.Fatalf("after the doubled backoff: %v, want one probe", c)
	}
	// The probe succeeds: the endpoint is back for every Pick.
	bad.Begin()(nil)
	f := &inflight{clk: clk, latency: func(string) time.Duration { return time.Millisecond }}
	f.send(t, d, 8, 2000)
	if n := f.counts["10.0.0.2:80"]; n < 400 {
		t.Fatalf("recovered endpoint got %d of 2000 requests: %v", n, f.counts)
	}
}
