package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// countingApp is an endpoint that counts the requests it served.
func countingApp(t *testing.T, name string) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.WriteString(w, name)
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestOutboundLoadSpreadsOverEndpointsWithTheirLabels(t *testing.T) {
	a, aCount := countingApp(t, "a")
	b, bCount := countingApp(t, "b")
	cfg := testConfig(a.Listener.Addr().String())
	cfg.Destinations = writeDestinations(t, fmt.Sprintf(`services:
  - authority: web.shop:8080
    labels: {namespace: shop, deployment: web}
    endpoints:
      - addr: %s
        labels: {pod: web-a}
      - addr: %s
        labels: {pod: web-b}
`, a.Listener.Addr(), b.Listener.Addr()))
	p := startProxy(t, cfg)
	c := h1Client()
	const n, clients = 400, 8
	errs := make(chan error, clients)
	for range clients {
		go func() {
			for range n / clients {
				req, _ := http.NewRequest("GET", p.url("--outbound-listen"), nil)
				req.Host = "web.shop:8080"
				res, err := c.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", res.StatusCode)
					return
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Two equal endpoints: each gets a share (the balancer's own tests check the exact policy).
	if aCount.Load() < n/10 || bCount.Load() < n/10 {
		t.Errorf("endpoints served %d and %d of %d requests, want both a fair share", aCount.Load(), bCount.Load(), n)
	}
	for pod, count := range map[string]*atomic.Int64{"web-a": aCount, "web-b": bCount} {
		waitMetric(t, p.registry, "response_total", map[string]string{
			"direction": "outbound", "authority": "web.shop:8080", "dst_namespace": "shop", "dst_deployment": "web",
			"dst_pod": pod, "classification": "success"}, float64(count.Load()))
		if got := metricValue(t, p.registry, "tcp_open_total", map[string]string{"direction": "outbound", "peer": "dst", "dst_pod": pod}); got < 1 {
			t.Errorf("tcp_open_total{peer=dst,dst_pod=%s} = %v, want at least 1", pod, got)
		}
	}
}

func TestKilledEndpointCostsTheClientNoError(t *testing.T) {
	alive, aliveCount := countingApp(t, "alive")
	killed, _ := countingApp(t, "killed")
	killedAddr := killed.Listener.Addr().String()
	cfg := testConfig(alive.Listener.Addr().String())
	cfg.Destinations = writeDestinations(t, fmt.Sprintf(`services:
  - authority: web.shop:80
    endpoints:
      - addr: %s
      - addr: %s
`, alive.Listener.Addr(), killedAddr))
	p := startProxy(t, cfg)
	killed.Close()

	c := h1Client()
	const n = 50
	for i := range n {
		method := []string{"GET", "POST"}[i%2]
		req, _ := http.NewRequest(method, p.url("--outbound-listen"), nil)
		if method == "POST" {
			req.Body = io.NopCloser(http.NoBody)
		}
		req.Host = "web.shop"
		res, body := doBody(t, c, req)
		if res.StatusCode != 200 || body != "alive" {
			t.Fatalf("request %d: %d %q (%s), want 200 from the live endpoint", i, res.StatusCode, body, res.Header.Get("meshscope-proxy-error"))
		}
	}
	if aliveCount.Load() != n {
		t.Errorf("live endpoint served %d requests, want %d", aliveCount.Load(), n)
	}
	if got := metricValue(t, p.registry, "response_total", map[string]string{"classification": "failure"}); got != 0 {
		t.Errorf("%v failures counted, want 0", got)
	}
}

func TestOutboundShunsASlowEndpoint(t *testing.T) {
	fast, fastCount := countingApp(t, "fast")
	var slowCount atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slowCount.Add(1)
		time.Sleep(100 * time.Millisecond)
		io.WriteString(w, "slow")
	}))
	defer slow.Close()
	cfg := testConfig(fast.Listener.Addr().String())
	cfg.Destinations = writeDestinations(t, fmt.Sprintf("services:\n  - authority: web.shop:80\n    endpoints:\n      - addr: %s\n      - addr: %s\n",
		fast.Listener.Addr(), slow.Listener.Addr()))
	p := startProxy(t, cfg)
	c := h1Client()
	const n = 60
	for range n {
		req, _ := http.NewRequest("GET", p.url("--outbound-listen"), nil)
		req.Host = "web.shop"
		if res, _ := doBody(t, c, req); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	// Once the slow endpoint answered, its peak-EWMA latency keeps it out of most picks.
	if slowCount.Load() > n/3 {
		t.Errorf("slow endpoint served %d of %d requests (fast: %d), want it shunned", slowCount.Load(), n, fastCount.Load())
	}
}
