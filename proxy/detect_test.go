package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// lenientApp accepts connections, counts them, and answers 200 to whatever it reads, however malformed: an
// app that would serve the requests a strict parser refuses.
func lenientApp(t *testing.T) (addr string, conns *atomic.Int64) {
	conns = new(atomic.Int64)
	addr = tcpServer(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" || line == "\n" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	return addr, conns
}

// Finding 2 of the hardening review: a request the proxy cannot parse as HTTP, or whose request line
// comes slower than the detection timeout, must not reach the app as opaque TCP, unseen by metrics and tap.
func TestDetectionIsNotAWayOutOfTheMesh(t *testing.T) {
	tests := []struct {
		name   string
		send   string
		status int
		reason string
	}{
		{"non-ASCII request line, then a pipelined request", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-request"},
		{"HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400, "bad-request"},
		{"unknown method, non-ASCII target", "FROB /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-request"},
		// The rest of the line never comes: past the detection timeout this used to become TCP.
		{"request line slower than the detection timeout", "GET /sl", 408, "request-line-timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, conns := lenientApp(t)
			cfg := testConfig(app)
			cfg.DetectTimeout, cfg.HeaderTimeout = 50*time.Millisecond, 500*time.Millisecond
			p := startProxy(t, cfg)
			c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute)) // a hang guard only
			io.WriteString(c, tt.send)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer from the proxy: %v", err)
			}
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tt.status || res.Header.Get(ProxyErrorHeader) != tt.reason {
				t.Fatalf("proxy answered %d (%s) %q, want %d (%s)", res.StatusCode, res.Header.Get(ProxyErrorHeader), body, tt.status, tt.reason)
			}
			if rest, _ := io.ReadAll(c); len(rest) != 0 {
				t.Fatalf("after the refusal the connection carried %q, want its end", rest)
			}
			if n := conns.Load(); n != 0 {
				t.Fatalf("the app got %d connections, want none", n)
			}
			inbound := map[string]string{"direction": "inbound", "target_addr": app}
			waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "status_code": strconv.Itoa(tt.status)}, 1)
			if got := metricValue(t, p.registry, "request_total", inbound); got != 1 {
				t.Errorf("request_total = %v, want 1", got)
			}
			if got := metricValue(t, p.registry, "protocol_detect_total", map[string]string{"direction": "inbound", "target_addr": app, "protocol": "malformed", "reason": tt.reason}); got != 1 {
				t.Errorf("protocol_detect_total{protocol=malformed,reason=%s} = %v, want 1", tt.reason, got)
			}
		})
	}
}

// On an opaque port the same bytes are the app's business: no detection, proxied as TCP and counted so.
func TestMalformedHTTPOnAnOpaquePortIsTCP(t *testing.T) {
	app, conns := lenientApp(t)
	_, port, _ := net.SplitHostPort(app)
	n, _ := strconv.Atoi(port)
	cfg := testConfig(app)
	cfg.OpaquePorts = []int{n}
	p := startProxy(t, cfg)
	c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	io.WriteString(c, "GET / HTTP/1.2\r\nHost: a\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("got %v, %v; want the app's 200", res, err)
	}
	if conns.Load() != 1 {
		t.Fatalf("app connections = %d, want 1", conns.Load())
	}
	if got := metricValue(t, p.registry, "protocol_detect_total", map[string]string{"protocol": "opaque", "reason": "opaque-port"}); got != 1 {
		t.Errorf("protocol_detect_total{opaque,opaque-port} = %v, want 1", got)
	}
}

// Every connection through a detecting listener is counted with what it was found to be, and why not HTTP.
func TestEveryDetectedConnectionIsCounted(t *testing.T) {
	server := tcpServer(t, bannerThenEcho)
	cfg := testConfig(server)
	cfg.DetectTimeout = 50 * time.Millisecond
	p := startProxy(t, cfg)
	addr := p.addr("--inbound-listen").String()
	send := func(b string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(c, b)
		bufio.NewReader(c).ReadString('\n') // the banner, or the status line of a response
	}
	send("")                                  // silent: server speaks first
	send("\x00binary\n")                      // not HTTP
	send("GET / HTTP/1.1\r\nHost: a\r\n\r\n") // HTTP/1.1 (the banner server answers it badly: 502)
	for _, want := range []struct{ protocol, reason string }{{"opaque", "silent"}, {"opaque", "not-http"}, {"http/1", ""}} {
		waitMetric(t, p.registry, "protocol_detect_total", map[string]string{"direction": "inbound", "protocol": want.protocol, "reason": want.reason}, 1)
	}
}
