package main

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"testing"
	"time"
)

// tcpServer accepts connections and runs serve on each until the test ends.
func tcpServer(t testing.TB, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// bannerThenEcho speaks first, like SMTP or MySQL, then echoes lines until the client half-closes.
func bannerThenEcho(c net.Conn) {
	io.WriteString(c, "220 hello from the server\r\n")
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		io.WriteString(c, "250 "+line)
	}
}

func TestOpaqueTCP(t *testing.T) {
	server := tcpServer(t, bannerThenEcho)
	_, serverPort, _ := net.SplitHostPort(server)
	port, _ := strconv.Atoi(serverPort)

	tests := []struct {
		name string
		cfg  func(*Config)
		// first is what the client sends before reading the banner, if anything.
		first string
	}{
		{"server speaks first after the detection timeout", func(c *Config) { c.DetectTimeout = 50 * time.Millisecond }, ""},
		{"opaque port skips detection", func(c *Config) { c.OpaquePorts = []int{port} }, ""},
		{"client bytes that are not HTTP", func(c *Config) {}, "\x00binary hello\n"},
		{"a text protocol that is not HTTP", func(c *Config) {}, "HELO client.example\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(server)
			tt.cfg(&cfg)
			p := startProxy(t, cfg)
			c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tt.first)
			br := bufio.NewReader(c)
			if banner, err := br.ReadString('\n'); err != nil || banner != "220 hello from the server\r\n" {
				t.Fatalf("banner %q, %v", banner, err)
			}
			if tt.first != "" {
				if echo, _ := br.ReadString('\n'); echo != "250 "+tt.first {
					t.Fatalf("echo of first bytes %q", echo)
				}
			}
			io.WriteString(c, "EHLO me\n")
			if echo, _ := br.ReadString('\n'); echo != "250 EHLO me\n" {
				t.Fatalf("echo %q", echo)
			}
			c.(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("after half-close: %q, %v; want a clean end of stream", rest, err)
			}
			c.Close()
			inbound := map[string]string{"direction": "inbound", "target_addr": server}
			for _, peer := range []string{"src", "dst"} {
				labels := map[string]string{"direction": "inbound", "peer": peer, "target_addr": server}
				waitMetric(t, p.registry, "tcp_close_total", labels, 1)
				if got := metricValue(t, p.registry, "tcp_open_total", labels); got != 1 {
					t.Errorf("tcp_open_total{peer=%s} = %v, want 1", peer, got)
				}
				waitMetric(t, p.registry, "tcp_open_connections", labels, 0)
			}
			sent := float64(len(tt.first) + len("EHLO me\n"))
			recv := float64(len("220 hello from the server\r\n") + len("250 EHLO me\n") + len(tt.first) + 4*min(len(tt.first), 1))
			inbound["peer"] = "src"
			if got := metricValue(t, p.registry, "tcp_read_bytes_total", inbound); got != sent {
				t.Errorf("src read %v bytes, want %v", got, sent)
			}
			if got := metricValue(t, p.registry, "tcp_write_bytes_total", inbound); got != recv {
				t.Errorf("src wrote %v bytes, want %v", got, recv)
			}
			if got := metricValue(t, p.registry, "request_total", nil); got != 0 {
				t.Errorf("request_total = %v for an opaque connection, want 0", got)
			}
		})
	}
}

func TestOpaqueTCPThroughAnOutboundRouteIsBalanced(t *testing.T) {
	server := tcpServer(t, bannerThenEcho)
	dead := freeAddr(t)
	cfg := testConfig(server)
	cfg.DetectTimeout = 50 * time.Millisecond
	cfg.Destinations = writeDestinations(t, "services:\n  - authority: smtp.mail:25\n    labels: {namespace: mail, deployment: smtp}\n    endpoints:\n      - addr: "+dead+"\n      - addr: "+server+"\n        labels: {pod: smtp-0}\n")
	cfg.OutboundRoutes = []Route{{Listen: "127.0.0.1:0", Authority: "smtp.mail:25"}}
	p := startProxy(t, cfg)
	for range 5 {
		c, err := net.Dial("tcp", p.addr("--outbound-route 127.0.0.1:0=smtp.mail:25").String())
		if err != nil {
			t.Fatal(err)
		}
		if banner, err := bufio.NewReader(c).ReadString('\n'); err != nil || banner != "220 hello from the server\r\n" {
			t.Fatalf("banner %q, %v", banner, err)
		}
		c.Close()
	}
	waitMetric(t, p.registry, "tcp_open_total", map[string]string{"direction": "outbound", "peer": "dst", "dst_deployment": "smtp", "dst_pod": "smtp-0"}, 5)
}

func TestOpaqueConnectionWithoutADestinationIsClosed(t *testing.T) {
	p := startProxy(t, testConfig("127.0.0.1:1"))
	c, err := net.Dial("tcp", p.addr("--outbound-listen").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "\x00\x01 not http\n")
	// The outbound listener routes HTTP by authority; an opaque stream has none: the proxy hangs up.
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v; want the proxy to close the connection", b, err)
	}
	waitMetric(t, p.registry, "tcp_close_total", map[string]string{"direction": "outbound", "peer": "src"}, 1)
}
