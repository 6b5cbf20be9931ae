package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/proxy/netns"
	"github.com/meshscope/meshscope/proxy/netns/netnstest"
)

// pod is a network namespace standing in for a Kubernetes pod: an address on a veth to the other pod,
// proxy init's rules, and a proxy running as uid 2102 without --inbound-forward.
type pod struct {
	name, path, ip string
	// ipv6: proxy init --ipv6, and the outbound listener where the kernel redirects IPv6 to ([::1]).
	ipv6 bool
}

// The test's own addresses, inside the namespaces it creates: nothing leaves the machine.
const (
	clientIP = "10.250.10.1"
	serverIP = "10.250.10.2"
	proxyUID = 2102
	// Ports of the server pod's apps.
	httpPort, grpcPort, wsPort, bannerPort, slowBannerPort = 8080, 8081, 8082, 3306, 7000
	// freshPort is only called once the rules are wrong: the proxy has no pooled connection to it.
	freshPort = 8083
	// inboundIgnored is skipped by the server pod's rules, outboundIgnored by the client pod's.
	inboundIgnored, outboundIgnored = 9000, 9001
)

// dialer returns a DialContext that opens its connections inside p's network namespace, as p's app.
func (p pod) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = netns.Do(p.path, func() error {
			c, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// client is an HTTP client for p's app: a plain net/http client that knows nothing of the mesh.
func (p pod) client() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: p.dialer(), DisableKeepAlives: true}}
}

// listen opens a listener inside p's network namespace.
func (p pod) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(p.path, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// metrics scrapes p's proxy from inside p (its admin port over loopback, which proxy init leaves alone).
func (p pod) metrics(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := p.client().Get("http://127.0.0.1:4191/metrics")
	if err != nil {
		t.Fatalf("%s: scrape: %v", p.name, err)
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("%s: parse metrics: %v", p.name, err)
	}
	return families
}

// count sums the samples of family name in p's metrics whose labels include labels.
func (p pod) count(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	f := p.metrics(t)[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		sum += value(m)
	}
	return sum
}

// targets lists the target_addr values of family name in direction in p's metrics.
func (p pod) targets(t *testing.T, name, direction string) []string {
	t.Helper()
	var out []string
	for _, m := range p.metrics(t)[name].GetMetric() {
		var dir, target string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "direction":
				dir = l.GetValue()
			case "target_addr":
				target = l.GetValue()
			}
		}
		if dir == direction {
			out = append(out, target)
		}
	}
	return out
}

// proxyBinary copies the test binary (which runs the proxy's main when asked, see TestMain) where uid 2102
// may run it: go test's own directory is root's alone.
func proxyBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshscope-interception-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "proxy")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// binCommand runs the proxy binary bin with args (the test binary re-running itself as the proxy).
func binCommand(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "MESHSCOPE_PROXY_TEST_RUN_MAIN=1", "MESHSCOPE_PROXY_TEST_ARGS="+strings.Join(args, " "))
	return cmd
}

// startPod runs proxy init in p, then p's proxy as uid 2102, and returns once its admin port answers.
func startPod(t *testing.T, bin string, p pod, initArgs ...string) {
	t.Helper()
	outbound := "127.0.0.1:4140"
	if p.ipv6 {
		initArgs, outbound = append(initArgs, "--ipv6"), "[::1]:4140"
	}
	out, err := binCommand(bin, append([]string{"init", "--netns", p.path}, initArgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: proxy init: %v: %s", p.name, err, out)
	}
	cmd := binCommand(bin, "--inbound-listen", "0.0.0.0:4143", "--outbound-listen", outbound, "--admin-listen", "0.0.0.0:4191",
		"--namespace", "test", "--deployment", p.name, "--pod", p.name+"-0", "--detect-timeout", "1s", "--log-level", "debug")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: proxyUID, Gid: proxyUID}}
	logs, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Not Pdeathsig: it fires when the thread that started the child ends, and netns.Do's thread ends at
	// once. The cleanup below stops the proxy.
	if err := netns.Do(p.path, cmd.Start); err != nil {
		t.Fatalf("%s: start proxy: %v", p.name, err)
	}
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			t.Logf("%s proxy: %s", p.name, sc.Text())
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	eventually(t, p.name+" proxy ready", func() bool {
		res, err := p.client().Get("http://127.0.0.1:4191/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}

// serveBanner runs a server-speaks-first TCP server (bannerThenEcho) on ln.
func serveBanner(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			bannerThenEcho(c)
		}()
	}
}

func TestInterceptionMeshesUnmodifiedApps(t *testing.T) {
	netnstest.Require(t)
	id := os.Getpid() % 100000
	client := pod{name: fmt.Sprintf("msc%d", id), ip: clientIP}
	server := pod{name: fmt.Sprintf("mss%d", id), ip: serverIP}
	client.path = netnstest.Add(t, client.name)
	server.path = netnstest.Add(t, server.name)
	netnstest.Veth(t, client.name, clientIP+"/24", server.name, serverIP+"/24")

	// The server pod's unmodified apps, each listening on all its addresses.
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello %s", r.Host) })
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go httpSrv.Serve(server.listen(t, fmt.Sprintf(":%d", httpPort)))
	t.Cleanup(func() { httpSrv.Close() })
	for _, port := range []int{inboundIgnored, outboundIgnored, freshPort} {
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(server.listen(t, fmt.Sprintf(":%d", port)))
		t.Cleanup(func() { srv.Close() })
	}
	grpcSrv := grpc.NewServer()
	healthpb.RegisterHealthServer(grpcSrv, health.NewServer())
	go grpcSrv.Serve(server.listen(t, fmt.Sprintf(":%d", grpcPort)))
	t.Cleanup(grpcSrv.Stop)
	wsSrv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		typ, msg, err := c.Read(r.Context())
		if err == nil {
			c.Write(r.Context(), typ, append([]byte("echo "), msg...))
			c.Close(websocket.StatusNormalClosure, "")
		}
	})}
	go wsSrv.Serve(server.listen(t, fmt.Sprintf(":%d", wsPort)))
	t.Cleanup(func() { wsSrv.Close() })
	go serveBanner(server.listen(t, fmt.Sprintf(":%d", bannerPort)))
	go serveBanner(server.listen(t, fmt.Sprintf(":%d", slowBannerPort)))

	bin := proxyBinary(t)
	startPod(t, bin, server, "--inbound-ports-to-ignore", fmt.Sprint(inboundIgnored))
	startPod(t, bin, client, "--outbound-ports-to-ignore", fmt.Sprint(outboundIgnored))

	// Tap both proxies before the calls: they show the original destination.
	tapCtx, stopTap := context.WithCancel(context.Background())
	defer stopTap()
	serverTap, clientTap := tapStream(t, tapCtx, server), tapStream(t, tapCtx, client)

	httpTarget := fmt.Sprintf("%s:%d", serverIP, httpPort)
	t.Run("HTTP/1.1 to an authority no destination claims goes to the original destination", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+httpTarget+"/hi", nil)
		req.Host = "web.shop.svc.cluster.local" // not in any destinations file, and not resolvable
		for range 3 {
			res, body := doBody(t, client.client(), req)
			if res.StatusCode != http.StatusOK || body != "hello web.shop.svc.cluster.local" {
				t.Fatalf("got %d %q from the app; want 200 and its greeting", res.StatusCode, body)
			}
		}
		if n := client.count(t, "request_total", map[string]string{"direction": "outbound", "target_addr": httpTarget}); n != 3 {
			t.Errorf("client proxy counted %v outbound requests to %s, want 3", n, httpTarget)
		}
		if n := server.count(t, "request_total", map[string]string{"direction": "inbound", "target_addr": httpTarget}); n != 3 {
			t.Errorf("server proxy counted %v inbound requests to %s, want 3", n, httpTarget)
		}
		for _, tt := range []struct {
			p      pod
			events <-chan tap.Event
			dir    string
		}{{client, clientTap, "outbound"}, {server, serverTap, "inbound"}} {
			ev := nextRequest(t, tt.events)
			if ev.Direction != tt.dir || ev.Destination.Addr != httpTarget || ev.Path != "/hi" {
				t.Errorf("%s tap: request %s to %s %s, want %s to %s /hi", tt.p.name, ev.Direction, ev.Destination.Addr, ev.Path, tt.dir, httpTarget)
			}
		}
	})

	t.Run("gRPC", func(t *testing.T) {
		target := fmt.Sprintf("%s:%d", serverIP, grpcPort)
		cc, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return client.dialer()(ctx, "tcp", addr)
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		res, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health check: %v %v, want SERVING", res, err)
		}
		for _, p := range []struct {
			pod
			dir string
		}{{client, "outbound"}, {server, "inbound"}} {
			if n := p.count(t, "response_total", map[string]string{"direction": p.dir, "target_addr": target, "grpc_status": "0"}); n != 1 {
				t.Errorf("%s proxy counted %v %s gRPC responses to %s with grpc_status 0, want 1", p.name, n, p.dir, target)
			}
		}
	})

	t.Run("websocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, fmt.Sprintf("ws://%s:%d/", serverIP, wsPort), &websocket.DialOptions{HTTPClient: client.client()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		_, msg, err := c.Read(ctx)
		if err != nil || string(msg) != "echo ping" {
			t.Fatalf("read %q, %v; want the echo", msg, err)
		}
		target := fmt.Sprintf("%s:%d", serverIP, wsPort)
		for _, p := range []struct {
			pod
			dir string
		}{{client, "outbound"}, {server, "inbound"}} {
			if n := p.count(t, "request_total", map[string]string{"direction": p.dir, "target_addr": target}); n != 1 {
				t.Errorf("%s proxy counted %v %s upgrade requests to %s, want 1", p.name, n, p.dir, target)
			}
		}
	})

	t.Run("server-speaks-first TCP", func(t *testing.T) {
		// 3306 is one of the default opaque ports: no detection, the banner comes at once. 7000 is not:
		// each proxy waits out --detect-timeout (1s here) for the silent client, then proxies TCP.
		for _, port := range []int{bannerPort, slowBannerPort} {
			target := fmt.Sprintf("%s:%d", serverIP, port)
			c, err := client.dialer()(context.Background(), "tcp", target)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(20 * time.Second))
			r := bufio.NewReader(c)
			banner, err := r.ReadString('\n')
			if err != nil || banner != "220 hello from the server\r\n" {
				t.Fatalf("%s: banner %q, %v", target, banner, err)
			}
			io.WriteString(c, "hi\n")
			if echo, err := r.ReadString('\n'); err != nil || echo != "250 hi\n" {
				t.Fatalf("%s: echo %q, %v", target, echo, err)
			}
			c.Close()
			for _, p := range []struct {
				pod
				dir string
			}{{client, "outbound"}, {server, "inbound"}} {
				if n := p.count(t, "tcp_open_total", map[string]string{"direction": p.dir, "peer": "dst", "target_addr": target}); n != 1 {
					t.Errorf("%s proxy opened %v %s connections to %s, want 1", p.name, n, p.dir, target)
				}
			}
		}
	})

	t.Run("ignored ports bypass the proxy", func(t *testing.T) {
		for _, tt := range []struct {
			port       int
			bypassed   pod
			bypassedIn string
		}{{inboundIgnored, server, "inbound"}, {outboundIgnored, client, "outbound"}} {
			target := fmt.Sprintf("%s:%d", serverIP, tt.port)
			if res, body := get(t, client.client(), "http://"+target+"/"); res.StatusCode != http.StatusOK {
				t.Fatalf("%s: %d %q", target, res.StatusCode, body)
			}
			for _, family := range []string{"request_total", "tcp_open_total"} {
				for _, got := range tt.bypassed.targets(t, family, tt.bypassedIn) {
					if got == target {
						t.Errorf("%s proxy counted %s %s to the ignored port %s", tt.bypassed.name, tt.bypassedIn, family, target)
					}
				}
			}
		}
	})

	t.Run("the admin port answers without redirection", func(t *testing.T) {
		// From the other pod: through the client's proxy (outbound), then straight to the server's admin
		// server, which proxy init leaves alone (4191).
		res, _ := get(t, client.client(), "http://"+serverIP+":4191/ready")
		if res.StatusCode != http.StatusOK {
			t.Fatalf("admin /ready: %d", res.StatusCode)
		}
		for _, got := range server.targets(t, "tcp_open_total", "inbound") {
			if strings.HasSuffix(got, ":4191") {
				t.Errorf("the server proxy's inbound listener carried a connection to its admin port (%s)", got)
			}
		}
	})

	t.Run("a connection to the proxy's own listener is refused as proxy-loop", func(t *testing.T) {
		loops := map[string]string{"direction": "inbound", "reason": "proxy-loop"}
		before := server.count(t, "tcp_refused_total", loops)
		res, _ := get(t, client.client(), "http://"+serverIP+":4143/")
		if res.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, want 502 from the client's proxy: the server's refused the connection", res.StatusCode)
		}
		if n := server.count(t, "tcp_refused_total", loops) - before; n != 1 {
			t.Errorf("server proxy refused %v connections as proxy-loop, want 1", n)
		}
	})

	t.Run("the proxies' own connections are not redirected back to them", func(t *testing.T) {
		// Had the client proxy's connection to the server been redirected to itself, it would have been
		// refused as a loop; had the server proxy's connection to the app been redirected, the same.
		for _, p := range []pod{client, server} {
			if n := p.count(t, "tcp_refused_total", map[string]string{"direction": "outbound"}); n != 0 {
				t.Errorf("%s proxy refused %v outbound connections", p.name, n)
			}
		}
		if n := client.count(t, "tcp_refused_total", map[string]string{"direction": "inbound"}); n != 0 {
			t.Errorf("client proxy refused %v inbound connections", n)
		}
	})

	t.Run("a proxy not running as --proxy-uid refuses its own connections coming back", func(t *testing.T) {
		// Rules for another uid: the client proxy's upstream connections are redirected to it again.
		initArgs := []string{"init", "--netns", client.path, "--outbound-ports-to-ignore", fmt.Sprint(outboundIgnored)}
		if out, err := binCommand(bin, append(initArgs, "--proxy-uid", "2999")...).CombinedOutput(); err != nil {
			t.Fatalf("proxy init: %v: %s", err, out)
		}
		defer func() {
			if out, err := binCommand(bin, initArgs...).CombinedOutput(); err != nil {
				t.Fatalf("proxy init: %v: %s", err, out)
			}
		}()
		loops := map[string]string{"direction": "outbound", "reason": "proxy-loop"}
		before := client.count(t, "tcp_refused_total", loops)
		res, _ := get(t, client.client(), fmt.Sprintf("http://%s:%d/", serverIP, freshPort))
		if res.StatusCode != http.StatusBadGateway || res.Header.Get(ProxyErrorHeader) != errUpstream {
			t.Errorf("status %d, %s %q; want 502 upstream-error: the request cannot leave the pod", res.StatusCode, ProxyErrorHeader, res.Header.Get(ProxyErrorHeader))
		}
		if n := client.count(t, "tcp_refused_total", loops) - before; n < 1 {
			t.Errorf("client proxy refused %v of its own connections as proxy-loop, want at least 1", n)
		}
	})

	t.Run("init again leaves the same rules", func(t *testing.T) {
		before := netnstest.Output(t, client.name, "iptables-nft-save", "-t", "nat")
		out, err := binCommand(bin, "init", "--netns", client.path, "--outbound-ports-to-ignore", fmt.Sprint(outboundIgnored)).CombinedOutput()
		if err != nil {
			t.Fatalf("proxy init: %v: %s", err, out)
		}
		after := netnstest.Output(t, client.name, "iptables-nft-save", "-t", "nat")
		if strip(before) != strip(after) {
			t.Fatalf("second init changed the table:\n%s\nthen:\n%s", before, after)
		}
	})
}

func TestInterceptionOverIPv6(t *testing.T) {
	netnstest.Require(t)
	id := os.Getpid() % 100000
	client := pod{name: fmt.Sprintf("msc6%d", id), ip: "fd00:250::1", ipv6: true}
	server := pod{name: fmt.Sprintf("mss6%d", id), ip: "fd00:250::2", ipv6: true}
	client.path = netnstest.Add(t, client.name)
	server.path = netnstest.Add(t, server.name)
	netnstest.Veth(t, client.name, client.ip+"/64", server.name, server.ip+"/64")
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello over IPv6")
	})}
	go srv.Serve(server.listen(t, fmt.Sprintf("[::]:%d", httpPort)))
	t.Cleanup(func() { srv.Close() })
	bin := proxyBinary(t)
	startPod(t, bin, server)
	startPod(t, bin, client)

	target := fmt.Sprintf("[%s]:%d", server.ip, httpPort)
	if res, body := get(t, client.client(), "http://"+target+"/"); res.StatusCode != http.StatusOK || body != "hello over IPv6" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	for _, p := range []struct {
		pod
		dir string
	}{{client, "outbound"}, {server, "inbound"}} {
		if n := p.count(t, "request_total", map[string]string{"direction": p.dir, "target_addr": target}); n != 1 {
			t.Errorf("%s proxy counted %v %s requests to %s, want 1 (IP6T_SO_ORIGINAL_DST)", p.name, n, p.dir, target)
		}
	}
}

// strip drops iptables-save's timestamped comment lines.
func strip(saved string) string {
	var b strings.Builder
	for line := range strings.Lines(saved) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// tapStream taps p's proxy (from inside p: loopback needs no token) and returns its events.
func tapStream(t *testing.T, ctx context.Context, p pod) <-chan tap.Event {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://127.0.0.1:4191/tap", nil)
	c := p.client()
	c.Timeout = 0 // a stream
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s tap: %d", p.name, res.StatusCode)
	}
	events := make(chan tap.Event, 100)
	go func() {
		defer res.Body.Close()
		d := tap.NewDecoder(res.Body, 0)
		for {
			var ev tap.Event
			if err := d.Decode(&ev); err != nil {
				return
			}
			select {
			case events <- ev:
			default:
			}
		}
	}()
	return events
}

// nextRequest returns the next request event of events.
func nextRequest(t *testing.T, events <-chan tap.Event) tap.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Type == tap.TypeRequest {
				return ev
			}
		case <-timeout:
			t.Fatal("no request event on tap")
		}
	}
}
