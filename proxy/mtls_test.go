package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshscope/meshscope/proxy/identity"
)

// testMesh is a trust anchor, an issuer and the issuer service, on loopback, with a token per
// ServiceAccount reviewed from a file, as in the demo.
type testMesh struct {
	dir     string
	anchors string // trust anchor bundle path
	pool    *x509.CertPool
	issuer  *identity.Issuer
	addr    string // the issuer service
	tokens  map[string]string
}

func newTestMesh(t *testing.T, lifetime time.Duration) *testMesh {
	t.Helper()
	dir := t.TempDir()
	if _, err := identity.Generate(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	m := &testMesh{dir: dir, anchors: filepath.Join(dir, identity.TrustAnchorsFile), tokens: map[string]string{}}
	var err error
	if m.pool, _, err = identity.LoadTrustAnchors(m.anchors); err != nil {
		t.Fatal(err)
	}
	if m.issuer, err = identity.NewIssuer(filepath.Join(dir, identity.IssuerCertFile), filepath.Join(dir, identity.IssuerKeyFile), m.pool); err != nil {
		t.Fatal(err)
	}
	m.issuer.Lifetime = lifetime
	users := map[string]string{}
	for _, w := range []string{"web", "catalog", "checkout", "ledger"} {
		token := "token-of-" + w
		m.tokens[w] = filepath.Join(dir, w+".token")
		os.WriteFile(m.tokens[w], []byte(token), 0o600)
		users[token] = identity.ServiceAccountUser("shop", w)
	}
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := identity.WriteTokenFile(tokens, users); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	svc := &identity.Service{Issuer: m.issuer, Reviewer: &identity.FileReviewer{Path: tokens}}
	go func() { defer close(done); svc.Serve(ctx, ln, 20*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// logLines keeps a proxy's log lines for a test to count, and shows them in the test's log.
type logLines struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logLines) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(b), "\n"))
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(b)
}

func (l *logLines) count(substrings ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		all := true
		for _, s := range substrings {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// meshedProxy starts a proxy with the identity of ServiceAccount sa (namespace shop) and waits until it
// is ready, which it is only once it has its certificate.
func (m *testMesh) meshedProxy(t *testing.T, sa string, cfg Config) (*proxy, *logLines) {
	t.Helper()
	cfg.IdentityAddr, cfg.IdentityTrustAnchors, cfg.IdentityTokenFile = m.addr, m.anchors, m.tokens[sa]
	logs := &logLines{t: t}
	level := new(slog.LevelVar)
	p, err := newProxy(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})), level)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, p)
	eventually(t, sa+" proxy ready with its certificate", func() bool { return adminStatus(t, p, "/ready") == http.StatusOK })
	return p, logs
}

func adminStatus(t *testing.T, p *proxy, path string) int {
	res, err := http.Get("http://" + p.addr("--admin-listen").String() + path)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func name(sa string) string { return identity.Name("shop", sa) }

// TestMutualTLSBetweenTwoProxies sends HTTP/1.1, h2c, gRPC streams and opaque TCP from a client proxy
// (web) to server proxies (catalog, ledger) over mutual TLS, and checks what the metrics say of it.
func TestMutualTLSBetweenTwoProxies(t *testing.T) {
	m := newTestMesh(t, time.Hour)

	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	}))
	grpcAddr, _ := startGRPC(t)
	tcpApp := tcpServer(t, bannerThenEcho)
	_, tcpPort, _ := net.SplitHostPort(tcpApp)
	port, _ := strconv.Atoi(tcpPort)

	catalog, _ := m.meshedProxy(t, "catalog", testConfig(app.Listener.Addr().String()))
	grpcSrv, _ := m.meshedProxy(t, "checkout", testConfig(grpcAddr))
	ledgerCfg := testConfig(tcpApp)
	ledgerCfg.OpaquePorts = []int{port}
	ledger, _ := m.meshedProxy(t, "ledger", ledgerCfg)

	webCfg := testConfig("127.0.0.1:1")
	webCfg.Destinations = writeDestinations(t, fmt.Sprintf(`services:
  - authority: catalog.shop:8080
    labels: {namespace: shop, deployment: catalog}
    identity: %s
    endpoints: [{addr: "%s"}]
  - authority: checkout.shop:8080
    labels: {namespace: shop, deployment: checkout}
    identity: %s
    endpoints: [{addr: "%s"}]
  - authority: ledger.shop:7000
    labels: {namespace: shop, deployment: ledger}
    identity: %s
    endpoints: [{addr: "%s"}]
  - authority: legacy.shop:8080
    labels: {namespace: shop, deployment: legacy}
    endpoints: [{addr: "%s"}]
`, name("catalog"), catalog.addr("--inbound-listen"), name("checkout"), grpcSrv.addr("--inbound-listen"),
		name("ledger"), ledger.addr("--inbound-listen"), app.Listener.Addr()))
	webCfg.OutboundRoutes = []Route{{Listen: "127.0.0.1:0", Authority: "ledger.shop:7000"}}
	web, _ := m.meshedProxy(t, "web", webCfg)
	outbound := web.url("--outbound-listen")

	t.Run("HTTP/1.1", func(t *testing.T) {
		req, _ := http.NewRequest("GET", outbound+"/h1", nil)
		req.Host = "catalog.shop:8080"
		if res, body := doBody(t, h1Client(), req); res.StatusCode != 200 || body != "HTTP/1.1 /h1" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	})
	t.Run("h2c", func(t *testing.T) {
		req, _ := http.NewRequest("GET", outbound+"/h2", nil)
		req.Host = "catalog.shop:8080"
		if res, body := doBody(t, h2cClient(), req); res.StatusCode != 200 || body != "HTTP/2.0 /h2" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	})
	t.Run("gRPC streams", func(t *testing.T) {
		cc, err := grpc.NewClient("passthrough:///"+web.addr("--outbound-listen").String(), grpc.WithAuthority("checkout.shop:8080"),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if got, err := bidi(ctx, cc, "ok:1", "ok:2", "ok:3"); err != nil || got != "echo:1,echo:2,echo:3" {
			t.Fatalf("bidi %q, %v", got, err)
		}
		if got, err := serverStream(ctx, cc, "ok:a"); err != nil || got == "" {
			t.Fatalf("server stream %q, %v", got, err)
		}
	})
	t.Run("opaque TCP, the server speaking first", func(t *testing.T) {
		c, err := net.Dial("tcp", web.addr("--outbound-route 127.0.0.1:0=ledger.shop:7000").String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if banner, err := br.ReadString('\n'); err != nil || banner != "220 hello from the server\r\n" {
			t.Fatalf("banner %q, %v", banner, err)
		}
		io.WriteString(c, "EHLO me\n")
		if echo, _ := br.ReadString('\n'); echo != "250 EHLO me\n" {
			t.Fatalf("echo %q", echo)
		}
		c.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
			t.Fatalf("after half-close: %q, %v; want a clean end of stream", rest, err)
		}
	})
	t.Run("an unmeshed endpoint stays plain text", func(t *testing.T) {
		req, _ := http.NewRequest("GET", outbound+"/plain", nil)
		req.Host = "legacy.shop:8080"
		if res, body := doBody(t, h1Client(), req); res.StatusCode != 200 || body != "HTTP/1.1 /plain" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	})

	// What the metrics say: the client proxy names each server's identity, each server its client's.
	for _, tc := range []struct {
		p      *proxy
		metric string
		labels map[string]string
		want   float64
	}{
		{web, "response_total", map[string]string{"direction": "outbound", "dst_deployment": "catalog", "tls": "true", "server_id": name("catalog"), "client_id": "", "no_tls_reason": ""}, 2},
		{web, "response_total", map[string]string{"direction": "outbound", "dst_deployment": "checkout", "tls": "true", "server_id": name("checkout")}, 2},
		{web, "response_total", map[string]string{"direction": "outbound", "dst_deployment": "legacy", "tls": "no_identity", "server_id": "", "no_tls_reason": "not_provided_by_service_discovery"}, 1},
		{web, "tcp_open_total", map[string]string{"direction": "outbound", "peer": "dst", "dst_deployment": "ledger", "tls": "true", "server_id": name("ledger")}, 1},
		{web, "tcp_open_total", map[string]string{"direction": "outbound", "peer": "src", "tls": "no_identity", "no_tls_reason": "loopback"}, 5}, // the five clients above
		{catalog, "response_total", map[string]string{"direction": "inbound", "tls": "true", "client_id": name("web"), "server_id": ""}, 2},
		{catalog, "tcp_open_total", map[string]string{"direction": "inbound", "peer": "src", "tls": "true", "client_id": name("web")}, 2}, // one HTTP/1.1, one HTTP/2
		{catalog, "response_total", map[string]string{"direction": "inbound", "tls": "no_identity"}, 0},
		{grpcSrv, "response_total", map[string]string{"direction": "inbound", "tls": "true", "client_id": name("web"), "grpc_status": "0"}, 2},
		{ledger, "tcp_close_total", map[string]string{"direction": "inbound", "peer": "src", "tls": "true", "client_id": name("web")}, 1},
		{ledger, "tcp_open_total", map[string]string{"direction": "inbound", "peer": "dst", "tls": "no_identity", "no_tls_reason": "loopback"}, 1},
	} {
		waitMetric(t, tc.p.registry, tc.metric, tc.labels, tc.want)
	}
	for _, p := range []*proxy{web, catalog} {
		if got := metricValue(t, p.registry, "identity_cert_expiration_timestamp_seconds", nil); got < float64(time.Now().Add(50*time.Minute).Unix()) {
			t.Errorf("identity_cert_expiration_timestamp_seconds = %v, want about an hour from now", got)
		}
	}
}
