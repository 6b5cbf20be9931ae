package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
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
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshscope/meshscope/api/meshid"
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

func newTestMesh(t testing.TB, lifetime time.Duration) *testMesh {
	t.Helper()
	dir := t.TempDir()
	if _, err := identity.Generate(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	m := &testMesh{dir: dir, anchors: filepath.Join(dir, identity.TrustAnchorsFile), tokens: map[string]string{}}
	var err error
	if m.pool, _, err = meshid.LoadTrustAnchors(m.anchors); err != nil {
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
	// The dashboard, in the control plane's namespace: the one identity that may tap.
	m.tokens["dashboard"] = filepath.Join(dir, "dashboard.token")
	os.WriteFile(m.tokens["dashboard"], []byte("token-of-dashboard"), 0o600)
	users["token-of-dashboard"] = identity.ServiceAccountUser("meshscope", "meshscope-dashboard")
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
	t  testing.TB
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
func (m *testMesh) meshedProxy(t testing.TB, sa string, cfg Config) (*proxy, *logLines) {
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

// workload returns the identity of ServiceAccount sa (as the dashboard or any workload holds one): a key
// in memory and the certificate the issuer signed for it.
func (m *testMesh) workload(t testing.TB, sa string) *meshid.Client {
	t.Helper()
	c, err := meshid.NewClient(meshid.ClientConfig{Addr: m.addr, Anchors: m.pool, TokenFile: m.tokens[sa]})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, sa+" certificate", c.Ready)
	return c
}

func adminStatus(t testing.TB, p *proxy, path string) int {
	res, err := http.Get("http://" + p.addr("--admin-listen").String() + path)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func name(sa string) string { return meshid.Name("shop", sa) }

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
	webCfg.OpaquePorts = []int{7000} // the ledger's server speaks first: no detection on its route
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

// rawTLSClient connects to a proxy's inbound listener as a meshed client would, with cert (none when
// nil), sends a request and returns what came back: a refused handshake surfaces as a read error, since
// a TLS 1.3 server checks the client's certificate after the client considers the handshake done.
func rawTLSClient(t *testing.T, addr, serverName string, anchors *x509.CertPool, cert *tls.Certificate) error {
	t.Helper()
	cfg := &tls.Config{ServerName: serverName, RootCAs: anchors, MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: catalog.shop:8080\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	res.Body.Close()
	return nil
}

// certFrom signs a certificate for name with issuer, as a proxy of that mesh would hold.
func certFrom(t *testing.T, issuer *identity.Issuer, name string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := issuer.Sign(key.Public(), name)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}
}

// TestMutualTLSRefusals: a wrong trust anchor, an expired certificate, a client without one and a server
// proving another workload's identity are each refused, counted every time and logged once.
func TestMutualTLSRefusals(t *testing.T) {
	m := newTestMesh(t, time.Hour)
	other := newTestMesh(t, time.Hour)
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	catalog, catalogLogs := m.meshedProxy(t, "catalog", testConfig(app.Listener.Addr().String()))
	inbound := catalog.addr("--inbound-listen").String()

	// An issuer of this mesh whose clock is two days behind: what it signs has expired.
	late, err := identity.NewIssuer(filepath.Join(m.dir, identity.IssuerCertFile), filepath.Join(m.dir, identity.IssuerKeyFile), m.pool)
	if err != nil {
		t.Fatal(err)
	}
	late.Now = func() time.Time { return time.Now().Add(-48 * time.Hour) }

	for _, tc := range []struct {
		name, reason string
		cert         *tls.Certificate
	}{
		{"a client certificate from another mesh's anchor", "unknown_authority", certFrom(t, other.issuer, name("web"))},
		{"an expired client certificate", "expired", certFrom(t, late, name("web"))},
		{"a client without a certificate", "no_client_certificate", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 {
				if err := rawTLSClient(t, inbound, name("catalog"), m.pool, tc.cert); err == nil {
					t.Fatal("request answered")
				}
			}
			labels := map[string]string{"direction": "inbound", "reason": tc.reason}
			waitMetric(t, catalog.registry, "identity_tls_refused_total", labels, 2)
			if n := catalogLogs.count("mutual TLS refused", "reason="+tc.reason); n != 1 {
				t.Errorf("%d log lines for two refusals, want 1", n)
			}
		})
	}
	// The request the app never saw is not counted as one.
	if got := metricValue(t, catalog.registry, "request_total", nil); got != 0 {
		t.Errorf("request_total = %v after refused connections only", got)
	}

	dest := func(identity string) string {
		return writeDestinations(t, fmt.Sprintf("services:\n  - authority: catalog.shop:8080\n    identity: %s\n    endpoints: [{addr: %q}]\n", identity, inbound))
	}
	for _, tc := range []struct {
		name, reason string
		mesh         *testMesh
		identity     string
	}{
		{"a server whose certificate chains to another anchor", "unknown_authority", other, name("catalog")},
		{"a server proving another workload's identity", "identity_mismatch", m, name("checkout")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("127.0.0.1:1")
			cfg.Destinations = dest(tc.identity)
			web, webLogs := tc.mesh.meshedProxy(t, "web", cfg)
			for range 2 {
				req, _ := http.NewRequest("GET", web.url("--outbound-listen")+"/", nil)
				req.Host = "catalog.shop:8080"
				res, body := doBody(t, h1Client(), req)
				if res.StatusCode != http.StatusBadGateway || res.Header.Get(ProxyErrorHeader) != "tls-refused" {
					t.Fatalf("%d %s %q, want 502 tls-refused", res.StatusCode, res.Header.Get(ProxyErrorHeader), body)
				}
			}
			waitMetric(t, web.registry, "identity_tls_refused_total", map[string]string{"direction": "outbound", "reason": tc.reason}, 2)
			waitMetric(t, web.registry, "response_total", map[string]string{"direction": "outbound", "error": "tls-refused", "tls": "true", "server_id": tc.identity}, 2)
			if n := webLogs.count("mutual TLS refused", "reason="+tc.reason); n != 1 {
				t.Errorf("%d log lines for two refusals, want 1", n)
			}
		})
	}
}

// TestIssuerRotationWhileTrafficFlows rotates the issuer under steady traffic between two proxies whose
// certificates live seconds: both renew from the new issuer, and no request fails.
func TestIssuerRotationWhileTrafficFlows(t *testing.T) {
	m := newTestMesh(t, 6*time.Second)
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	catalog, _ := m.meshedProxy(t, "catalog", testConfig(app.Listener.Addr().String()))
	cfg := testConfig("127.0.0.1:1")
	cfg.Destinations = writeDestinations(t, fmt.Sprintf("services:\n  - authority: catalog.shop:8080\n    identity: %s\n    endpoints: [{addr: %q}]\n",
		name("catalog"), catalog.addr("--inbound-listen")))
	web, _ := m.meshedProxy(t, "web", cfg)

	var sent, failed atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		client := h1Client()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%10 == 0 {
				// New proxy-to-proxy connections, so handshakes happen with whatever certificates are held.
				for _, u := range web.upstreams {
					u.CloseIdleConnections()
				}
			}
			req, _ := http.NewRequest("GET", web.url("--outbound-listen")+"/", nil)
			req.Host = "catalog.shop:8080"
			sent.Add(1)
			res, err := client.Do(req)
			if err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					err = fmt.Errorf("status %d %s", res.StatusCode, res.Header.Get(ProxyErrorHeader))
				}
			}
			if err != nil {
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	old := m.issuer.Certificate()
	if _, err := identity.Generate(m.dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the issuer service to switch to the new issuer", func() bool { return !m.issuer.Certificate().Equal(old) })
	rotated := m.issuer.Certificate()
	for _, p := range []*proxy{web, catalog} {
		eventually(t, "a proxy to renew from the new issuer", func() bool {
			cert := p.mtls.id.Certificate()
			return cert != nil && bytes.Equal(cert.Certificate[1], rotated.Raw)
		})
	}
	// A little more traffic on certificates of the new issuer only.
	before := sent.Load()
	eventually(t, "more requests", func() bool { return sent.Load() > before+20 })
	close(stop)
	<-done
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed during the rotation; first: %v", n, sent.Load(), firstFailure.Load())
	}
	if got := metricValue(t, web.registry, "response_total", map[string]string{"direction": "outbound", "tls": "true", "classification": "success"}); got != float64(sent.Load()) {
		t.Errorf("%v requests counted over mutual TLS, want all %d", got, sent.Load())
	}
	t.Logf("%d requests, none failed, across the rotation", sent.Load())
}

// TestWithoutACertificateAProxyIsNotReadyAndCallsInPlainText: a proxy whose token the issuer does not
// accept never gets a certificate: /ready says so, its calls to a meshed endpoint go out in plain text
// labelled no_local_identity (the meshed server accepts unmeshed clients), and it keeps asking.
func TestWithoutACertificateAProxyIsNotReadyAndCallsInPlainText(t *testing.T) {
	m := newTestMesh(t, time.Hour)
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	catalog, _ := m.meshedProxy(t, "catalog", testConfig(app.Listener.Addr().String()))

	cfg := testConfig("127.0.0.1:1")
	cfg.Destinations = writeDestinations(t, fmt.Sprintf("services:\n  - authority: catalog.shop:8080\n    identity: %s\n    endpoints: [{addr: %q}]\n",
		name("catalog"), catalog.addr("--inbound-listen")))
	cfg.IdentityAddr, cfg.IdentityTrustAnchors = m.addr, m.anchors
	cfg.IdentityTokenFile = filepath.Join(t.TempDir(), "token")
	os.WriteFile(cfg.IdentityTokenFile, []byte("a token nobody issued"), 0o600)
	logs := &logLines{t: t}
	level := new(slog.LevelVar)
	web, err := newProxy(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})), level)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, web)
	eventually(t, "a refused certificate request", func() bool { return logs.count("identity certificate request failed", "403") > 0 })
	if code := adminStatus(t, web, "/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/ready %d without a certificate, want 503", code)
	}
	req, _ := http.NewRequest("GET", web.url("--outbound-listen")+"/", nil)
	req.Host = "catalog.shop:8080"
	if res, body := doBody(t, h1Client(), req); res.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", res.StatusCode, body)
	}
	waitMetric(t, web.registry, "response_total", map[string]string{"direction": "outbound", "tls": "no_identity", "no_tls_reason": "no_local_identity"}, 1)
	waitMetric(t, catalog.registry, "response_total", map[string]string{"direction": "inbound", "tls": "no_identity", "no_tls_reason": "no_tls_from_remote"}, 1)
	if got := metricValue(t, web.registry, "identity_cert_expiration_timestamp_seconds", nil); got != 0 {
		t.Errorf("identity_cert_expiration_timestamp_seconds = %v without a certificate, want 0", got)
	}
}
