package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshscope/meshscope/proxy/netns"
	"github.com/meshscope/meshscope/proxy/netns/netnstest"
)

func TestAdminEndpoints(t *testing.T) {
	p := startProxy(t, testConfig("127.0.0.1:1"))
	admin := p.url("--admin-listen")
	c := h1Client()
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantBody   string
	}{
		{"live", "GET", "/live", "", 200, "live\n"},
		{"ready once listening", "GET", "/ready", "", 200, "ready\n"},
		{"log level shows", "GET", "/log-level", "", 200, "debug\n"},
		{"log level changes", "PUT", "/log-level", "warn", 200, "warn\n"},
		{"log level shows the change", "GET", "/log-level", "", 200, "warn\n"},
		{"bad log level is refused", "PUT", "/log-level", "chatty", 400, "bad level \"chatty\": want debug, info, warn or error\n"},
		{"log level unchanged by a bad request", "GET", "/log-level", "", 200, "warn\n"},
		{"log level cannot be posted", "POST", "/log-level", "info", 405, "Method Not Allowed\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, admin+tt.path, strings.NewReader(tt.body))
			res, body := doBody(t, c, req)
			if res.StatusCode != tt.wantStatus || body != tt.wantBody {
				t.Fatalf("%d %q, want %d %q", res.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
	if p.level.Level() != slog.LevelWarn {
		t.Errorf("level %v after PUT warn", p.level.Level())
	}
}

func TestMetricsExposition(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(503)
		}
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c := h1Client()
	for _, path := range []string{"/ok", "/ok", "/fail"} {
		get(t, c, p.url("--inbound-listen")+path)
	}
	waitMetric(t, p.registry, "response_total", nil, 3)
	target := app.Listener.Addr().String()
	authority := p.addr("--inbound-listen").String()
	want := `
# HELP request_total HTTP requests whose headers the proxy read.
# TYPE request_total counter
request_total{authority="` + authority + `",client_id="",direction="inbound",dst_deployment="",dst_namespace="",dst_pod="",no_tls_reason="disabled",server_id="",target_addr="` + target + `",tls="no_identity"} 3
# HELP response_total HTTP response streams that ended, classified as success or failure.
# TYPE response_total counter
response_total{authority="` + authority + `",classification="failure",client_id="",direction="inbound",dst_deployment="",dst_namespace="",dst_pod="",error="",grpc_status="",no_tls_reason="disabled",server_id="",status_code="503",target_addr="` + target + `",tls="no_identity"} 1
response_total{authority="` + authority + `",classification="success",client_id="",direction="inbound",dst_deployment="",dst_namespace="",dst_pod="",error="",grpc_status="",no_tls_reason="disabled",server_id="",status_code="200",target_addr="` + target + `",tls="no_identity"} 2
`
	if err := testutil.GatherAndCompare(p.registry, strings.NewReader(want), "request_total", "response_total"); err != nil {
		t.Error(err)
	}
	// The latency histogram has DESIGN's buckets.
	mfs, _ := p.registry.Gather()
	var buckets []float64
	for _, mf := range mfs {
		if mf.GetName() == "response_latency_ms" {
			for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
				buckets = append(buckets, b.GetUpperBound())
			}
		}
	}
	wantBuckets := []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}
	if len(buckets) != len(wantBuckets) {
		t.Fatalf("buckets %v, want %v", buckets, wantBuckets)
	}
	for i := range buckets {
		if buckets[i] != wantBuckets[i] {
			t.Fatalf("buckets %v, want %v", buckets, wantBuckets)
		}
	}
	// /metrics serves the same registry, with the Go and process collectors.
	res, body := get(t, c, p.url("--admin-listen")+"/metrics")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, want := range []string{"go_goroutines ", "process_resident_memory_bytes ", `response_latency_ms_bucket{authority="` + authority, "tcp_open_connections{"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// (response_latency_ms and tcp_connection_duration_ms keep linkerd's names, which the linter dislikes.)
	if problems, err := testutil.GatherAndLint(p.registry, "request_total", "response_total", "tcp_open_total", "tcp_read_bytes_total"); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestShutdownLetsInFlightRequestsFinish(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	var open atomic.Int32
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "finished")
	}))
	app.Config.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	app.Start()
	defer app.Close()
	cfg := testConfig(app.Listener.Addr().String())
	p, err := newProxy(cfg, slog.New(slog.NewTextHandler(testLog{t}, nil)), new(slog.LevelVar))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	eventually(t, "ready", func() bool { return p.ready.Load() })
	inbound := p.url("--inbound-listen")

	result := make(chan string, 1)
	go func() {
		res, err := h1Client().Get(inbound)
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		result <- string(b)
	}()
	<-started
	cancel() // SIGTERM
	eventually(t, "stop accepting", func() bool {
		c, err := (&http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Get(inbound)
		if err == nil {
			c.Body.Close()
		}
		return err != nil
	})
	close(release)
	if got := <-result; got != "finished" {
		t.Errorf("in-flight request got %q, want finished", got)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve returned %v, want nil (exit 0)", err)
	}
	// Nothing is left open upstream either.
	eventually(t, "upstream connections closed", func() bool { return open.Load() == 0 })
}

func TestShutdownCutsWhatOutlivesTheGrace(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // a long poll that never answers
	}))
	defer app.Close()
	cfg := testConfig(app.Listener.Addr().String())
	cfg.ShutdownGrace = 100 * time.Millisecond
	p, err := newProxy(cfg, slog.New(slog.NewTextHandler(testLog{t}, nil)), new(slog.LevelVar))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	eventually(t, "ready", func() bool { return p.ready.Load() })
	failed := make(chan error, 1)
	go func() {
		_, err := h1Client().Get(p.url("--inbound-listen"))
		failed <- err
	}()
	eventually(t, "request in flight", func() bool {
		return metricValue(t, p.registry, "request_total", nil) == 1
	})
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve returned %v, want nil", err)
	}
	if err := <-failed; err == nil {
		t.Error("the request outliving the grace succeeded; want it cut")
	}
}

// rawRequest sends one HTTP/1.1 request over c, with host as its Host and token, when set, as its bearer
// token, and returns the response's status and body.
func rawRequest(t *testing.T, c net.Conn, method, path, host, token, body string) (int, string) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // a hang guard only
	req, _ := http.NewRequest(method, "http://"+host+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Close = true
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// Finding 3 of the hardening review: a web page whose name resolves to 127.0.0.1 (DNS rebinding through
// kubectl port-forward) must not read /metrics or loopback-only /tap, nor set the log level.
func TestAdminRefusesHostsThatAreNotAddresses(t *testing.T) {
	cfg := testConfig("127.0.0.1:1")
	cfg.AdminHost = regexp.MustCompile(`^(?:proxy\.internal)$`)
	p := startProxy(t, cfg)
	admin := p.addr("--admin-listen").String()
	_, port, _ := net.SplitHostPort(admin)
	tests := []struct {
		method, path, host string
		want               int
	}{
		{"GET", "/metrics", "rebind.attacker.example:" + port, 403},
		{"GET", "/tap", "rebind.attacker.example:" + port, 403},
		{"PUT", "/log-level", "rebind.attacker.example", 403},
		{"GET", "/log-level", "rebind.attacker.example", 403},
		{"GET", "/live", "rebind.attacker.example", 200},
		{"GET", "/ready", "rebind.attacker.example", 200},
		{"GET", "/metrics", admin, 200},
		{"GET", "/metrics", "localhost:" + port, 200},
		{"GET", "/metrics", "[::1]:" + port, 200},
		{"GET", "/metrics", "proxy.internal:" + port, 200},
		{"GET", "/metrics", "proxy.internal.attacker.example", 403},
	}
	for _, tt := range tests {
		c, err := net.Dial("tcp", admin)
		if err != nil {
			t.Fatal(err)
		}
		if status, body := rawRequest(t, c, tt.method, tt.path, tt.host, "", "error"); status != tt.want {
			t.Errorf("%s %s Host %s: %d %q, want %d", tt.method, tt.path, tt.host, status, body, tt.want)
		}
	}
	if p.level.Level() != slog.LevelDebug {
		t.Errorf("log level %v: a refused PUT changed it", p.level.Level())
	}
}

// PUT /log-level from another address than loopback needs the tap token. The proxy runs in a network
// namespace of the test's own, where the client has a second, non-loopback address.
func TestLogLevelChangesOnlyFromLoopbackOrWithTheToken(t *testing.T) {
	netnstest.Require(t)
	ns := "msi16-admin"
	path := netnstest.Add(t, ns)
	const other = "10.250.16.1"
	netnstest.IP(t, "-n", ns, "addr", "add", other+"/32", "dev", "lo")
	for _, token := range []string{"", "s3cret"} {
		t.Run("token="+token, func(t *testing.T) {
			cfg := testConfig("127.0.0.1:1")
			cfg.AdminListen, cfg.TapToken = "0.0.0.0:0", token
			var p *proxy
			level := new(slog.LevelVar)
			if err := netns.Do(path, func() (err error) {
				p, err = newProxy(cfg, slog.New(slog.NewTextHandler(testLog{t}, nil)), level)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			serve(t, p)
			_, port, _ := net.SplitHostPort(p.addr("--admin-listen").String())
			put := func(from, token, level string) int {
				var c net.Conn
				if err := netns.Do(path, func() (err error) {
					d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
					c, err = d.Dial("tcp", net.JoinHostPort(from, port))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				status, _ := rawRequest(t, c, "PUT", "/log-level", net.JoinHostPort(from, port), token, level)
				return status
			}
			if got := put(other, "", "error"); got != 403 {
				t.Errorf("PUT from %s without a token: %d, want 403", other, got)
			}
			if got := put(other, "wrong", "error"); got != 403 {
				t.Errorf("PUT from %s with a wrong token: %d, want 403", other, got)
			}
			if level.Level() != slog.LevelInfo {
				t.Fatalf("level %v after refused PUTs", level.Level())
			}
			if token != "" {
				if got := put(other, token, "warn"); got != 200 || level.Level() != slog.LevelWarn {
					t.Errorf("PUT from %s with the token: %d, level %v; want 200, warn", other, got, level.Level())
				}
			}
			if got := put("127.0.0.1", "", "debug"); got != 200 || level.Level() != slog.LevelDebug {
				t.Errorf("PUT from loopback: %d, level %v; want 200, debug", got, level.Level())
			}
		})
	}
}
