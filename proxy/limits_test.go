package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/metrics"
)

// Finding 4 of the hardening review: connections that send nothing each became opaque after the detection
// timeout with an upstream connection of their own, without bound, until the proxy ran out of descriptors.
// Past --max-connections a listener closes new connections at once, so silent ones, and the upstream
// connections they become, are bounded; a closed one makes room again.
func TestMaxConnectionsBoundsSilentConnectionsAndTheirUpstreams(t *testing.T) {
	var upstreams atomic.Int64
	server := tcpServer(t, func(c net.Conn) {
		upstreams.Add(1)
		bannerThenEcho(c)
	})
	cfg := testConfig(server)
	cfg.MaxConnections, cfg.DetectTimeout = 5, 50*time.Millisecond
	p := startProxy(t, cfg)
	addr := p.addr("--inbound-listen").String()
	var held []net.Conn
	refused := 0
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute)) // a hang guard only
		// Each held connection is proxied to the server, which speaks first; a refused one is closed.
		if line, err := bufio.NewReader(c).ReadString('\n'); err == nil && line == "220 hello from the server\r\n" {
			held = append(held, c)
			continue
		}
		refused++
	}
	if len(held) != 5 || refused != 15 {
		t.Fatalf("%d connections held, %d refused; want 5 and 15", len(held), refused)
	}
	waitMetric(t, p.registry, "tcp_refused_total", map[string]string{"direction": "inbound", "reason": "max-connections"}, 15)
	if n := upstreams.Load(); n != 5 {
		t.Fatalf("%d upstream connections for 5 held, want 5", n)
	}
	held[0].Close()
	waitMetric(t, p.registry, "tcp_open_connections", map[string]string{"direction": "inbound", "peer": "src"}, 4)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "220 hello from the server\r\n" {
		t.Fatalf("after one closed, a new connection read %q, %v; want the banner", line, err)
	}
}

// Opaque connections over which nothing moves are closed after --opaque-idle-timeout; a stream that flows
// one way only is not idle.
func TestOpaqueIdleTimeout(t *testing.T) {
	server := tcpServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if line, err := br.ReadString('\n'); err != nil || line != "stream\n" {
			io.Copy(io.Discard, br) // silent, until the proxy closes the connection
			return
		}
		for range 25 {
			io.WriteString(c, "x")
			time.Sleep(100 * time.Millisecond)
		}
	})
	_, port, _ := net.SplitHostPort(server)
	cfg := testConfig(server)
	n, _ := strconv.Atoi(port)
	cfg.OpaquePorts = []int{n}
	cfg.OpaqueIdleTimeout = time.Second
	p := startProxy(t, cfg)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(time.Minute)) // a hang guard only
		return c
	}

	quiet := dial()
	io.WriteString(quiet, "hello\n")
	if b, err := io.ReadAll(quiet); len(b) != 0 || (err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !strings.Contains(err.Error(), "reset")) {
		t.Fatalf("idle connection read %q, %v; want it closed", b, err)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("idle opaque connection still open after a minute")
	}
	waitMetric(t, p.registry, "limit_reached_total", map[string]string{"limit": "opaque-idle-timeout"}, 1)

	flowing := dial()
	io.WriteString(flowing, "stream\n")
	flowing.(*net.TCPConn).CloseWrite() // the client's direction ends: only the server's bytes move
	if b, err := io.ReadAll(flowing); string(b) != strings.Repeat("x", 25) {
		t.Fatalf("one-way stream read %q, %v; want all 25 bytes", b, err)
	}
}

// Finding 6 of the hardening review: 3,000 distinct Host values kept the 2,000-series bound but made each
// proxy's /metrics 10 MB long. The series' bytes are bounded too: past --max-metrics-bytes, new
// authorities count as overflow.
func TestManyHostValuesKeepMetricsSmall(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	cfg := testConfig(app.Listener.Addr().String())
	cfg.MaxMetricsBytes = metrics.DefaultExpositionBytes
	p := startProxy(t, cfg)
	c := h1Client()
	const hosts = 3000
	for i := range hosts {
		req, _ := http.NewRequest("GET", p.url("--inbound-listen")+"/", nil)
		req.Host = fmt.Sprintf("host-%d.attacker.example", i)
		if res, _ := doBody(t, c, req); res.StatusCode != 200 {
			t.Fatalf("request %d: %s", i, res.Status)
		}
	}
	waitMetric(t, p.registry, "request_total", map[string]string{"direction": "inbound"}, hosts)
	res, body := get(t, c, p.url("--admin-listen")+"/metrics")
	if res.StatusCode != 200 || !strings.Contains(body, `authority="overflow"`) {
		t.Fatalf("/metrics: %s, overflow series %v", res.Status, strings.Contains(body, `authority="overflow"`))
	}
	// The HTTP series' bound, plus the rest of the page (TCP, Go runtime, process: tens of kilobytes).
	if len(body) > metrics.DefaultExpositionBytes+(1<<20) {
		t.Errorf("/metrics is %d bytes after %d distinct Host values, want at most %d", len(body), hosts, metrics.DefaultExpositionBytes+(1<<20))
	}
	t.Logf("/metrics: %d bytes", len(body))
}
