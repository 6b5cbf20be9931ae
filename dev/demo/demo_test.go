package demo

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestLatencyFollowsTheConfiguredPercentiles(t *testing.T) {
	tests := []struct {
		name          string
		b             Behaviour
		wantP50, want time.Duration // want: the 99th percentile
		tolerance     float64
	}{
		{"log-normal between p50 and p99", Behaviour{P50: 100 * time.Millisecond, P99: 800 * time.Millisecond}, 100 * time.Millisecond, 800 * time.Millisecond, 0.15},
		{"p99 at p50 is constant", Behaviour{P50: 5 * time.Millisecond, P99: 5 * time.Millisecond}, 5 * time.Millisecond, 5 * time.Millisecond, 0},
		{"zero p50 means no delay", Behaviour{}, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 40000
			d := make([]time.Duration, n)
			for i := range d {
				d[i] = tt.b.Latency()
			}
			slices.Sort(d)
			for _, q := range []struct {
				got, want time.Duration
				name      string
			}{{d[n/2], tt.wantP50, "p50"}, {d[n*99/100], tt.want, "p99"}} {
				lo, hi := float64(q.want)*(1-tt.tolerance), float64(q.want)*(1+tt.tolerance)
				if float64(q.got) < lo || float64(q.got) > hi {
					t.Errorf("%s %v, want %v ±%.0f%%", q.name, q.got, q.want, tt.tolerance*100)
				}
			}
		})
	}
}

func TestConfigValidateNamesTheBadKnob(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"defaults are valid", func(*Config) {}, ""},
		{"failure rate above one", func(c *Config) { c.Checkout.FailureRate = 1.5 }, "checkout failure rate"},
		{"negative latency", func(c *Config) { c.Payments.P99 = -time.Second }, "payments latency"},
		{"no load", func(c *Config) { c.RPS = 0 }, "rps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.change(&c)
			err := c.Validate()
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("error %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestLayoutGivesEveryPodItsProxyAndDiscovery(t *testing.T) {
	m, err := Layout("127.0.0.1", SequentialPorts(14000))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, p := range m.Pods {
		addrs := []string{p.App, p.Inbound, p.Outbound, p.Admin}
		for _, r := range p.Routes {
			addrs = append(addrs, r)
		}
		for _, a := range addrs {
			if other, dup := seen[a]; dup {
				t.Fatalf("%s used by %s and %s", a, other, p.Name)
			}
			seen[a] = p.Name
		}
	}
	if len(m.PodsOf("catalog")) != 2 {
		t.Fatalf("catalog pods %v, want 2", m.PodsOf("catalog"))
	}

	t.Run("destinations file lists every service's pods by proxy inbound", func(t *testing.T) {
		raw, err := m.Destinations()
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Services []struct {
				Authority string
				Labels    map[string]string
				Endpoints []struct {
					Addr   string
					Labels map[string]string
				}
			}
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		if len(doc.Services) != len(m.Services) {
			t.Fatalf("%d services, want %d", len(doc.Services), len(m.Services))
		}
		for i, s := range doc.Services {
			want := m.Services[i]
			if s.Authority != want.Authority || s.Labels["namespace"] != want.Namespace || s.Labels["deployment"] != want.Deployment {
				t.Errorf("service %+v, want %s in %s/%s", s, want.Authority, want.Namespace, want.Deployment)
			}
			pods := m.PodsOf(want.Deployment)
			if len(s.Endpoints) != len(pods) {
				t.Fatalf("%s: %d endpoints, want %d", want.Deployment, len(s.Endpoints), len(pods))
			}
			for j, e := range s.Endpoints {
				if e.Addr != pods[j].Inbound || e.Labels["pod"] != pods[j].Name {
					t.Errorf("%s endpoint %+v, want %s %s", want.Deployment, e, pods[j].Inbound, pods[j].Name)
				}
			}
		}
	})

	t.Run("file_sd targets name each proxy admin with its workload", func(t *testing.T) {
		raw, err := m.Targets()
		if err != nil {
			t.Fatal(err)
		}
		var groups []struct {
			Targets []string
			Labels  map[string]string
		}
		if err := json.Unmarshal(raw, &groups); err != nil {
			t.Fatal(err)
		}
		for i, g := range groups {
			p := m.Pods[i]
			if len(g.Targets) != 1 || g.Targets[0] != p.Admin ||
				g.Labels["namespace"] != p.Service.Namespace || g.Labels["deployment"] != p.Service.Deployment || g.Labels["pod"] != p.Name {
				t.Errorf("group %+v, want %s with %s/%s/%s", g, p.Admin, p.Service.Namespace, p.Service.Deployment, p.Name)
			}
		}
	})

	t.Run("opaque TCP is routed and undetected on both sides", func(t *testing.T) {
		payments, ledger := m.PodsOf("payments")[0], m.PodsOf("ledger")[0]
		route := payments.Routes["ledger.payments:5432"]
		args := strings.Join(m.ProxyArgs(payments, "d.yaml"), " ")
		if !strings.Contains(args, "--outbound-route "+route+"=ledger.payments:5432") || !strings.Contains(args, "--opaque-ports "+port(route)) {
			t.Errorf("payments proxy args %q: want a route to the ledger on an opaque port", args)
		}
		args = strings.Join(m.ProxyArgs(ledger, "d.yaml"), " ")
		if !strings.Contains(args, "--opaque-ports "+port(ledger.Inbound)) {
			t.Errorf("ledger proxy args %q: want its inbound port opaque", args)
		}
	})
}

// startWired runs every app with each caller wired straight to its callee's
// app (standing in for a perfect proxy, which the launcher's test brings):
// web → catalog, checkout → payments, payments → ledger. The listeners are
// open when it returns, so calls queue until the servers accept them.
func startWired(t *testing.T, cfg Config) Mesh {
	t.Helper()
	m, err := Layout("127.0.0.1", FreePorts("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	// The apps listen on kernel-chosen ports, so that tests running at the
	// same time cannot take them between choice and use.
	listeners := make([]net.Listener, len(m.Pods))
	for i := range m.Pods {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners[i], m.Pods[i].App = l, l.Addr().String()
	}
	app := func(dep string) string { return m.PodsOf(dep)[0].App }
	for i := range m.Pods {
		p := &m.Pods[i]
		switch p.Service.Deployment {
		case "web":
			p.Outbound = app("catalog")
		case "checkout":
			p.Outbound = app("payments")
		case "payments":
			p.Routes["ledger.payments:5432"] = app("ledger")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(m.Pods))
	for i, p := range m.Pods {
		go func() { done <- runPod(ctx, m, p, cfg, listeners[i], discard()) }()
	}
	t.Cleanup(func() {
		cancel()
		for range m.Pods {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})
	return m
}

func TestServicesAnswerAndFailAsConfigured(t *testing.T) {
	quiet := DefaultConfig()
	for _, b := range []*Behaviour{&quiet.Web, &quiet.Catalog, &quiet.Checkout, &quiet.Payments, &quiet.Ledger} {
		*b = Behaviour{}
	}
	failing := func(change func(*Config)) Config {
		c := quiet
		change(&c)
		return c
	}
	tests := []struct {
		name     string
		cfg      Config
		wantCode codes.Code
		wantMsg  string
	}{
		{"checkout charges through payments and the ledger", quiet, codes.OK, ""},
		{"checkout's own failure is UNAVAILABLE", failing(func(c *Config) { c.Checkout.FailureRate = 1 }), codes.Unavailable, "checkout: injected failure"},
		{"a payments 503 fails the order", failing(func(c *Config) { c.Payments.FailureRate = 1 }), codes.Unavailable, "503"},
		{"a ledger refusal fails the order", failing(func(c *Config) { c.Ledger.FailureRate = 1 }), codes.Unavailable, "502"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startWired(t, tt.cfg)
			conn, err := grpcClient(m.PodsOf("checkout")[0].App, "checkout.shop:9090")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var reply PlaceOrderReply
			st := status.Convert(conn.Invoke(ctx, methodPlaceOrder, &PlaceOrderRequest{CartID: "c1", TotalCents: 1200}, &reply))
			if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("status %v %q, want %v containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			if tt.wantCode == codes.OK && (reply.OrderID == "" || !strings.HasPrefix(reply.Charge, "l")) {
				t.Fatalf("reply %+v, want an order with a ledger entry", reply)
			}
		})
	}
}

func TestWebServesTheShopOverHTTP1(t *testing.T) {
	quiet := DefaultConfig()
	for _, b := range []*Behaviour{&quiet.Web, &quiet.Catalog} {
		*b = Behaviour{}
	}
	broken := quiet
	broken.Web.FailureRate = 1
	tests := []struct {
		name   string
		cfg    Config
		method string
		path   string
		want   int
	}{
		{"product page comes from the catalog", quiet, http.MethodGet, "/products/p003", http.StatusOK},
		{"unknown product is 404", quiet, http.MethodGet, "/products/nope", http.StatusNotFound},
		{"cart write calls nothing", quiet, http.MethodPost, "/cart/items", http.StatusCreated},
		{"web's own failure is a 500", broken, http.MethodGet, "/products/p003", http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startWired(t, tt.cfg)
			req, err := http.NewRequest(tt.method, "http://"+m.PodsOf("web")[0].App+tt.path, strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			client := &http.Client{Timeout: 30 * time.Second}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want || resp.ProtoMajor != 1 {
				t.Fatalf("%s %d, want HTTP/1.x %d", resp.Proto, resp.StatusCode, tt.want)
			}
		})
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
