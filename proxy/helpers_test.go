package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// testConfig is a proxy on loopback ports chosen by the kernel, forwarding inbound traffic to forward.
func testConfig(forward string) Config {
	return Config{
		InboundListen:  "127.0.0.1:0",
		InboundForward: forward,
		OutboundListen: "127.0.0.1:0",
		AdminListen:    "127.0.0.1:0",
		DetectTimeout:  10 * time.Second,
		HeaderTimeout:  30 * time.Second,
		ShutdownGrace:  10 * time.Second,
	}
}

// startProxy runs a proxy with cfg, logging to the test's log, until the test ends.
func startProxy(t *testing.T, cfg Config) *proxy {
	t.Helper()
	level := new(slog.LevelVar)
	level.Set(slog.LevelDebug)
	p, err := newProxy(cfg, slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: level})), level)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, p)
	return p
}

// serve runs p until the test or benchmark ends and returns once it is ready; it fails the test if Serve
// returns an error.
func serve(tb testing.TB, p *proxy) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	eventually(tb, "proxy ready", func() bool { return p.ready.Load() })
}

// testLog sends the proxy's logs to the test's log, shown when it fails.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func (p *proxy) url(listener string) string {
	return "http://" + p.addr(listener).String()
}

// eventually polls cond for a generous while: metrics are counted as a stream ends, which may be just after
// the client has read the last byte.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metricValue sums the samples of the family name whose labels include want: counter and gauge values,
// histogram sample counts.
func metricValue(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue metric
				}
			}
			sum += value(m)
		}
	}
	return sum
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// waitMetric waits until the metric reaches want.
func waitMetric(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string, want float64) {
	t.Helper()
	var got float64
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got = metricValue(t, g, name, labels); got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// get fetches url with client and returns the status, headers and body.
func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return doBody(t, c, req)
}

// doBody sends req with client and returns the status, headers and body.
func doBody(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// h1Client speaks HTTP/1.1 only; h2cClient HTTP/2 with prior knowledge.
func h1Client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 30 * time.Second}
}

func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 30 * time.Second}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// writeDestinations writes a destinations file with content and returns its path.
func writeDestinations(t testing.TB, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "destinations.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// h2cServer starts an upstream serving HTTP/1.1 and HTTP/2 cleartext with prior knowledge.
func h2cServer(tb testing.TB, h http.Handler) *httptest.Server {
	s := httptest.NewUnstartedServer(h)
	s.Config.Protocols = new(http.Protocols)
	s.Config.Protocols.SetHTTP1(true)
	s.Config.Protocols.SetUnencryptedHTTP2(true)
	s.Start()
	tb.Cleanup(s.Close)
	return s
}
