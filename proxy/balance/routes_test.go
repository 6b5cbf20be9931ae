package balance_test

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
)

const routesFile = `
services:
  - authority: payments.payments:8080
    labels: {namespace: payments, deployment: payments}
    annotations:
      retry.meshscope.io/http: 5xx
      timeout.meshscope.io/request: 2s
    routes:
      - name: charge
        matches: [{method: POST, path: {exact: /charge}}]
        retry: {http: "503", limit: 2}
        backends:
          - {authority: payments-v1.payments:8080, weight: 90}
          - {authority: payments-v2.payments:8080, weight: 10}
  - authority: payments-v1.payments:8080
    endpoints: [{addr: "127.0.0.1:1"}]
  - authority: payments-v2.payments:8080
    endpoints: [{addr: "127.0.0.1:2"}]
`

func TestLoadReadsRoutesAndServiceAnnotations(t *testing.T) {
	r, err := balance.Load(writeFile(t, t.TempDir(), routesFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := r.Lookup("payments.payments:8080")
	rt := d.Routes.Match("POST", "/charge", nil)
	if rt.Name != "charge" || len(rt.Backends) != 2 || rt.Backends[1].Authority != "payments-v2.payments:8080" || !rt.Retry.RetryHTTP(503) || rt.Retry.RetryHTTP(500) {
		t.Fatalf("route %+v", rt)
	}
	if rt.Timeouts.Request != 2*time.Second {
		t.Errorf("the route does not inherit the service's request timeout: %+v", rt.Timeouts)
	}
	def := d.Routes.Match("GET", "/", nil)
	if def != d.Routes.Default || !def.Retry.RetryHTTP(500) || def.Timeouts.Request != 2*time.Second {
		t.Errorf("default route %+v does not carry the annotations", def)
	}
	if other := r.Lookup("payments-v1.payments:8080"); other.Routes == nil || other.Routes.Match("GET", "/", nil) != other.Routes.Default {
		t.Error("a service without routes has no default route")
	}
}

func TestLoadRejectsBadRoutesNamingServiceRouteAndField(t *testing.T) {
	tests := []struct{ name, from, to, want string }{
		{"backend that does not exist", "payments-v2.payments:8080, weight: 10", "payments-v3.payments:8080, weight: 10",
			`14: services[0] payments.payments:8080: routes[0] charge: backends[1]: bad authority "payments-v3.payments:8080": no such service in this file`},
		{"weights summing to zero", "weight: 90}\n          - {authority: payments-v2.payments:8080, weight: 10}",
			"weight: 0}\n          - {authority: payments-v2.payments:8080, weight: 0}",
			"13: services[0] payments.payments:8080: routes[0] charge: backends: weights sum to zero"},
		{"invalid regex", "path: {exact: /charge}", `path: {regex: "/charge["}`,
			"10: services[0] payments.payments:8080: routes[0] charge: matches[0]: path.regex: bad expression \"/charge[\": missing closing ]: `[`"},
		{"timeout that does not parse", "request: 2s", "request: 2 seconds",
			`7: services[0] payments.payments:8080: annotation timeout.meshscope.io/request: bad duration "2 seconds": want a number with a unit, such as 500ms or 2s`},
		{"unknown annotation", "retry.meshscope.io/http:", "retry.meshscope.io/htp:",
			"6: services[0] payments.payments:8080: annotation retry.meshscope.io/htp: unknown annotation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := strings.Replace(routesFile, tt.from, tt.to, 1)
			if content == routesFile {
				t.Fatal("the replacement changed nothing")
			}
			path := writeFile(t, t.TempDir(), content)
			_, err := balance.Load(path, nil)
			if err == nil {
				t.Fatal("accepted")
			}
			if got, want := err.Error(), path+":"+tt.want; got != want {
				t.Errorf("error\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestABadRouteKeepsTheLastGoodConfiguration(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, routesFile)
	r, err := balance.Load(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	go r.Run(ctx)
	bad := strings.Replace(routesFile, "weight: 90", "weight: -1", 1)
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	// Then a good change that proves the reload ran after the bad one was refused.
	good := strings.Replace(routesFile, "name: charge", "name: charge2", 1)
	time.Sleep(300 * time.Millisecond)
	if rt := r.Lookup("payments.payments:8080").Routes.Match("POST", "/charge", nil); rt.Name != "charge" {
		t.Fatalf("after a bad file the route is %q, want the last good one", rt.Name)
	}
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Lookup("payments.payments:8080").Routes.Match("POST", "/charge", nil).Name != "charge2" {
		if time.Now().After(deadline) {
			t.Fatal("the good file was never loaded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func accrualFile(addrs ...string) string {
	return strings.Replace(serviceFile(addrs...), "    endpoints:\n",
		"    annotations:\n      balancer.meshscope.io/failure-accrual: consecutive\n      balancer.meshscope.io/failure-accrual-consecutive-max-failures: \"3\"\n    endpoints:\n", 1)
}

func TestFailureAccrualTakesAFailingEndpointOutAndProbesItBack(t *testing.T) {
	clk := newFakeClock()
	r, err := balance.Load(writeFile(t, t.TempDir(), accrualFile("10.0.0.1:80", "10.0.0.2:80")), nil, balance.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	d := r.Lookup("web.shop")
	// Endpoint 2 fails every response, endpoint 1 never does.
	send := func(n int) map[string]int {
		counts := map[string]int{}
		for range n {
			ep, err := d.Pick()
			if err != nil {
				t.Fatal(err)
			}
			counts[ep.Addr]++
			done := ep.Begin()
			done(nil)
			ep.Observe(ep.Addr == "10.0.0.2:80")
		}
		return counts
	}
	send(50) // three failures in a row take endpoint 2 out
	if c := send(100); c["10.0.0.2:80"] != 0 {
		t.Fatalf("the failing endpoint still gets requests: %v", c)
	}
	// The first penalty is 1s to 1.5s; then exactly one request probes it, which fails.
	clk.Advance(1600 * time.Millisecond)
	if c := send(100); c["10.0.0.2:80"] != 1 {
		t.Fatalf("after the penalty: %v, want one probe", c)
	}
	// The failed probe doubles the penalty (2s to 3s): 1.6s later it is still out.
	clk.Advance(1600 * time.Millisecond)
	if c := send(100); c["10.0.0.2:80"] != 0 {
		t.Fatalf("after a failed probe it came back within the first penalty: %v", c)
	}
	clk.Advance(1600 * time.Millisecond)
	// Now it recovers: its probe succeeds and it takes its share again.
	counts := map[string]int{}
	for range 200 {
		ep, err := d.Pick()
		if err != nil {
			t.Fatal(err)
		}
		counts[ep.Addr]++
		ep.Begin()(nil)
		ep.Observe(false)
	}
	if counts["10.0.0.2:80"] < 50 {
		t.Fatalf("the recovered endpoint got %v", counts)
	}
}

func TestEveryEndpointOutFailsFast(t *testing.T) {
	clk := newFakeClock()
	r, err := balance.Load(writeFile(t, t.TempDir(), accrualFile("10.0.0.1:80")), nil, balance.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	d := r.Lookup("web.shop")
	for range 3 {
		ep, err := d.Pick()
		if err != nil {
			t.Fatal(err)
		}
		ep.Begin()(nil)
		ep.Observe(true)
	}
	if _, err := d.Pick(); !errors.Is(err, balance.ErrFailFast) || !errors.Is(err, balance.ErrNoEndpoints) {
		t.Fatalf("Pick with every endpoint out: %v, want ErrFailFast", err)
	}
}

func TestWithoutFailureAccrualFailuresKeepTheEndpoint(t *testing.T) {
	clk := newFakeClock()
	d := loadWeb(t, clk, "10.0.0.1:80")
	for range 100 {
		ep, err := d.Pick()
		if err != nil {
			t.Fatalf("after failures without failure accrual: %v", err)
		}
		ep.Begin()(nil)
		ep.Observe(true)
	}
}
