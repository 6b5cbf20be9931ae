package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api/democonfig"
	"github.com/meshscope/meshscope/dev/demo"
	"github.com/meshscope/meshscope/dev/grafana"
)

// demoRPS is the test's load: enough requests in the dashboard's one-minute
// window that the success-rate bands below stay tight.
const demoRPS = 40

// startDemo runs the whole demo (run, as "go run ./dev" does) on free ports
// with the given backend and returns once it is up; cleanup stops it and
// checks that no proxy outlives it.
func startDemo(t *testing.T, backend string, cfgDemo demo.Config) running {
	t.Helper()
	if backend == "prometheus" {
		if _, err := exec.LookPath("prometheus"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("the real Prometheus is required in CI: %v", err)
			}
			t.Skipf("no prometheus binary (apt-get install prometheus): %v", err)
		}
	}
	free := demo.FreePorts(host)
	addr := func() string {
		p, err := free()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%s:%d", host, p)
	}
	logPath := filepath.Join(t.TempDir(), "demo.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan running, 1)
	var (
		r      running
		cancel context.CancelFunc
		errc   chan error
	)
	// Free ports are chosen before use; a test running at the same time may
	// take one in between, which the launcher reports by name: try again.
	for attempt := 1; ; attempt++ {
		cfg := config{DashboardListen: addr(), PrometheusListen: addr(), Ports: free, Backend: backend, PrometheusBin: "prometheus", Demo: cfgDemo,
			DemoFile: filepath.Join(t.TempDir(), "demo.json")}
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		errc = make(chan error, 1)
		go func() { errc <- run(ctx, cfg, &console{out: logFile}, func(r running) { started <- r }) }()
		select {
		case r = <-started:
		case err := <-errc:
			cancel()
			if strings.Contains(err.Error(), "already in use") && attempt < 3 {
				continue
			}
			logFile.Close()
			tail(t, logPath)
			t.Fatalf("demo did not start: %v", err)
		case <-time.After(5 * time.Minute):
			cancel()
			<-errc
			logFile.Close()
			tail(t, logPath)
			t.Fatal("demo not up after 5 minutes")
		}
		break
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("demo stopped with: %v", err)
		}
		logFile.Close()
		if t.Failed() {
			tail(t, logPath)
		}
		for _, p := range r.Mesh.Pods {
			if c, err := net.DialTimeout("tcp", p.Admin, time.Second); err == nil {
				c.Close()
				t.Errorf("proxy %s still answers on %s after the demo stopped", p.Name, p.Admin)
			}
		}
	})
	return r
}

func tail(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Log(err)
		return
	}
	lines := strings.Split(string(b), "\n")
	t.Logf("last lines of the demo's log:\n%s", strings.Join(lines[max(0, len(lines)-60):], "\n"))
}

// eventually retries check until it passes or a generous deadline passes.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(6 * time.Minute)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(3 * time.Second)
	}
}

// row is one table row of the dashboard's JSON API.
type row struct {
	Labels      map[string]string `json:"labels"`
	SuccessRate *float64          `json:"success_rate"`
	RPS         float64           `json:"rps"`
	P50         *float64          `json:"latency_ms_p50"`
	TCP         float64           `json:"tcp_connections"`
	MTLS        *float64          `json:"mtls_share"`
}

type table struct {
	Rows []row `json:"rows"`
}

func getJSON(url string, v any) error {
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return fmt.Errorf("GET %s: %s (%s)", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// expectation is what the dashboard must show for one deployment, derived
// from the demo's configuration and the traffic mix.
type expectation struct {
	success  float64
	p50Range [2]float64 // milliseconds
}

// expectations follows the demo's call graph: a failure anywhere on a
// request's path fails it (checkout fails before calling payments, payments
// before the ledger); web's traffic is 70% catalog reads, 20% cart writes
// that call nothing, 10% checkouts, which web's proxy retries (the route
// story: up to demo.RetryLimit retries of an UNAVAILABLE PlaceOrder, each
// failing independently). Latency bands are wide (×0.5 to ×2)
// because histogram_quantile interpolates inside coarse buckets: leaves
// (catalog, payments) around their own median, callers at least their own
// median and at most twice everything on their slowest path.
func expectations(c demo.Config) map[string]expectation {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	payments := (1 - c.Payments.FailureRate) * (1 - c.Ledger.FailureRate)
	checkout := (1 - c.Checkout.FailureRate) * payments
	catalog := 1 - c.Catalog.FailureRate
	checkoutRetried := 1 - math.Pow(1-checkout, 1+demo.RetryLimit)
	web := (1 - c.Web.FailureRate) * (0.7*catalog + 0.2 + 0.1*checkoutRetried)
	slowest := ms(c.Checkout.P50) + ms(c.Payments.P50) + ms(c.Ledger.P50)
	return map[string]expectation{
		"web":      {web, [2]float64{ms(c.Web.P50) / 2, 2 * (ms(c.Web.P50) + max(ms(c.Catalog.P50), slowest))}},
		"catalog":  {catalog, [2]float64{ms(c.Catalog.P50) / 2, 2 * ms(c.Catalog.P50)}},
		"checkout": {checkout, [2]float64{ms(c.Checkout.P50) / 2, 2 * slowest}},
		"payments": {payments, [2]float64{ms(c.Payments.P50) / 2, 2 * (ms(c.Payments.P50) + ms(c.Ledger.P50))}},
	}
}

// band is the allowed distance of an observed success rate from the
// expected one: four binomial standard errors for the requests the one-minute
// window holds, plus two points for the window's edges.
func band(p, rps float64) float64 {
	n := max(rps*60, 1)
	return 4*math.Sqrt(p*(1-p)/n) + 0.02
}

// checkGoldenMetrics compares every deployment's row with its expectation.
func checkGoldenMetrics(dash string, want map[string]expectation) error {
	rows := map[string]row{}
	for _, ns := range []string{"shop", "payments"} {
		var page struct{ Deployments table }
		if err := getJSON(dash+"api/v1/namespaces/"+ns, &page); err != nil {
			return err
		}
		for _, r := range page.Deployments.Rows {
			rows[r.Labels["deployment"]] = r
		}
	}
	for dep, w := range want {
		r, ok := rows[dep]
		switch {
		case !ok:
			return fmt.Errorf("deployment %s missing", dep)
		case r.SuccessRate == nil || r.P50 == nil:
			return fmt.Errorf("%s: no success rate or latency yet", dep)
		case math.Abs(*r.SuccessRate-w.success) > band(w.success, r.RPS):
			return fmt.Errorf("%s: success rate %.3f, want %.3f ± %.3f", dep, *r.SuccessRate, w.success, band(w.success, r.RPS))
		case *r.P50 < w.p50Range[0] || *r.P50 > w.p50Range[1]:
			return fmt.Errorf("%s: p50 %.1f ms, want %.1f..%.1f ms", dep, *r.P50, w.p50Range[0], w.p50Range[1])
		}
	}
	if r, ok := rows["ledger"]; !ok || r.TCP <= 0 {
		return fmt.Errorf("ledger (opaque TCP): row %+v, want open TCP connections", r)
	}
	return nil
}

// checkRecorded checks that the deployments of a namespace and a
// deployment's edges come from the recording rules' series.
func checkRecorded(dash string) error {
	var ns struct {
		Deployments struct{ Source string }
	}
	if err := getJSON(dash+"api/v1/namespaces/shop", &ns); err != nil {
		return err
	}
	var dep struct {
		Inbound, Outbound struct{ Source string }
	}
	if err := getJSON(dash+"api/v1/namespaces/shop/deployments/web", &dep); err != nil {
		return err
	}
	if ns.Deployments.Source != "recorded" || dep.Outbound.Source != "recorded" {
		return fmt.Errorf("deployments of shop from %q series, edges of web from %q, want recorded", ns.Deployments.Source, dep.Outbound.Source)
	}
	return nil
}

// checkEdges compares the deployments' outbound edges with the call graph, each secured (all its traffic
// over mutual TLS), and each deployment's share of inbound traffic over mutual TLS with who calls it: all
// of it but web's, whose only caller, the traffic generator, is not meshed.
func checkEdges(dash string, m demo.Mesh) error {
	for _, s := range m.Services {
		var page struct{ Summary, Outbound, Inbound table }
		if err := getJSON(dash+"api/v1/namespaces/"+s.Namespace+"/deployments/"+s.Deployment, &page); err != nil {
			return err
		}
		var got []string
		for _, r := range page.Outbound.Rows {
			if d := r.Labels["dst_deployment"]; d != "" && (r.RPS > 0 || r.TCP > 0) {
				got = append(got, d)
				if r.MTLS == nil || *r.MTLS != 1 {
					return fmt.Errorf("edge %s -> %s: mTLS share %v, want 1 (secured)", s.Deployment, d, r.MTLS)
				}
			}
		}
		share := 1.0
		if s.Deployment == "web" {
			share = 0
		}
		if len(page.Summary.Rows) != 1 || page.Summary.Rows[0].MTLS == nil || *page.Summary.Rows[0].MTLS != share {
			return fmt.Errorf("%s: summary %+v, want an inbound mTLS share of %v", s.Deployment, page.Summary.Rows, share)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(s.Calls))
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s calls %v, want %v", s.Deployment, got, want)
		}
	}
	return nil
}

// checkRouteStory reads the routes tables of web and checkout: web's
// PlaceOrder route to checkout succeeds far more often than checkout does
// (0.83), thanks to retries that show; checkout's charges split about 90/10
// between payments and payments-v2.
func checkRouteStory(dash string) error {
	type routeRow struct {
		ParentName  string   `json:"parent_name"`
		Name        string   `json:"route_name"`
		SuccessRate *float64 `json:"success_rate"`
		RetryRPS    float64  `json:"retry_rps"`
		Backends    []struct {
			Name  string   `json:"backend_name"`
			Share *float64 `json:"share"`
		} `json:"backends"`
	}
	find := func(dep, parent, name string) (routeRow, error) {
		var page struct {
			Routes struct{ Rows []routeRow } `json:"routes"`
		}
		if err := getJSON(dash+"api/v1/namespaces/shop/deployments/"+dep, &page); err != nil {
			return routeRow{}, err
		}
		for _, r := range page.Routes.Rows {
			if r.ParentName == parent && r.Name == name {
				return r, nil
			}
		}
		return routeRow{}, fmt.Errorf("%s's routes lack %s/%s: %+v", dep, parent, name, page.Routes.Rows)
	}
	order, err := find("web", "checkout", "place-order")
	if err != nil {
		return err
	}
	if order.SuccessRate == nil || *order.SuccessRate < 0.95 || order.RetryRPS <= 0 {
		return fmt.Errorf("place-order route: success %v, retries %v/s; want at least 0.95 with retries", order.SuccessRate, order.RetryRPS)
	}
	charge, err := find("checkout", "payments", "charge")
	if err != nil {
		return err
	}
	for _, b := range charge.Backends {
		if b.Name == "payments-v2" && b.Share != nil && *b.Share > 0 && *b.Share < 0.25 {
			return nil
		}
	}
	return fmt.Errorf("charge route backends %+v: want payments-v2 with about %.0f%% of the tries", charge.Backends, 100*demo.PaymentsV2Share)
}

// checkBalancing wants traffic on both catalog pods.
func checkBalancing(dash string) error {
	var page struct{ Pods table }
	if err := getJSON(dash+"api/v1/namespaces/shop/deployments/catalog", &page); err != nil {
		return err
	}
	busy := 0
	for _, r := range page.Pods.Rows {
		if r.RPS > 0 {
			busy++
		}
	}
	if busy != 2 {
		return fmt.Errorf("catalog pods with traffic: %d of %+v, want 2", busy, page.Pods.Rows)
	}
	return nil
}

// checkTap reads the dashboard's live tap of web until it has seen a request
// and its response.
func checkTap(dash string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsURL := "ws" + strings.TrimPrefix(dash, "http") + "api/v1/tap/ws?namespace=shop&deployment=web&direction=inbound"
	c, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {strings.TrimSuffix(dash, "/")}}})
	if err != nil {
		return err
	}
	defer c.CloseNow()
	seen := map[string]bool{}
	for !seen["request"] || !seen["response"] {
		_, msg, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("tap saw %v before: %w", seen, err)
		}
		var frame struct {
			Events []struct {
				Proxy string
				Event struct {
					Type, Method, Path, Authority string
					Status                        int
				}
			}
		}
		if err := json.Unmarshal(msg, &frame); err != nil {
			return err
		}
		for _, e := range frame.Events {
			switch {
			case e.Event.Type == "request" && e.Event.Authority == "web.shop:8080" && strings.HasPrefix(e.Event.Path, "/"):
				seen["request"] = true
			case e.Event.Type == "response" && e.Event.Status >= 200:
				seen["response"] = true
			}
		}
	}
	return c.Close(websocket.StatusNormalClosure, "")
}

// checkSecured wants every edge of the call graph over mutual TLS, with the caller's identity on the
// callee's inbound side: outbound series to a deployment say tls="true" and its server_id, and each
// callee's inbound series name its callers by client_id (web's only caller, the traffic generator, is
// not meshed).
func checkSecured(promURL string, m demo.Mesh) error {
	client, err := api.NewClient(api.Config{Address: promURL})
	if err != nil {
		return err
	}
	prom := v1.NewAPI(client)
	query := func(q string) (model.Vector, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		val, _, _, err := prom.Query(ctx, q, time.Now())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
		vec, _ := val.(model.Vector)
		return vec, nil
	}
	// Opaque TCP (the ledger) has tcp_* series only, HTTP both: the TCP families cover every edge.
	out, err := query(`sum by (deployment, dst_deployment, tls, server_id) (tcp_open_total{direction="outbound", peer="dst"})`)
	if err != nil {
		return err
	}
	edges := 0
	for _, s := range out {
		caller, callee := string(s.Metric["deployment"]), string(s.Metric["dst_deployment"])
		want := m.PodsOf(callee)[0].Service.IdentityName()
		if s.Metric["tls"] != "true" || string(s.Metric["server_id"]) != want {
			return fmt.Errorf("edge %s -> %s: tls=%q server_id=%q, want tls=\"true\" server_id=%q", caller, callee, s.Metric["tls"], s.Metric["server_id"], want)
		}
		edges++
	}
	if want := len(m.Services) - 1; edges < want {
		return fmt.Errorf("%d secured edges, want %d", edges, want)
	}
	in, err := query(`sum by (deployment, tls, client_id) (tcp_open_total{direction="inbound", peer="src"})`)
	if err != nil {
		return err
	}
	for _, s := range in {
		callee := string(s.Metric["deployment"])
		var callers []string
		for _, c := range m.Services {
			if slices.Contains(c.Calls, callee) {
				callers = append(callers, c.IdentityName())
			}
		}
		switch id := string(s.Metric["client_id"]); {
		case len(callers) == 0 && s.Metric["tls"] != "no_identity":
			return fmt.Errorf("%s inbound from the unmeshed traffic generator: tls=%q", callee, s.Metric["tls"])
		case len(callers) > 0 && (s.Metric["tls"] != "true" || !slices.Contains(callers, id)):
			return fmt.Errorf("%s inbound: tls=%q client_id=%q, want one of %v", callee, s.Metric["tls"], id, callers)
		}
	}
	return nil
}

// checkGrafana runs every shipped Grafana expression, variables substituted,
// against the demo's backend: each must return data.
func checkGrafana(promURL string) error {
	client, err := api.NewClient(api.Config{Address: promURL})
	if err != nil {
		return err
	}
	prom := v1.NewAPI(client)
	vars := map[string]string{"namespace": "shop", "deployment": "checkout", "pod": "checkout-84d9c6-0", "__rate_interval": "1m"}
	var errs []error
	for _, d := range grafana.Dashboards() {
		for _, q := range d.Queries(vars) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			val, _, _, err := prom.Query(ctx, q, time.Now())
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", d.UID, q, err))
				continue
			}
			if vec, ok := val.(model.Vector); !ok || len(vec) == 0 {
				errs = append(errs, fmt.Errorf("%s: %s: no data", d.UID, q))
			}
		}
	}
	return errors.Join(errs...)
}

func TestDemoShowsItsStoryThroughTheDashboard(t *testing.T) {
	for _, backend := range []string{"prometheus", "embedded"} {
		t.Run(backend, func(t *testing.T) {
			cfg := demo.DefaultConfig()
			cfg.RPS = demoRPS
			r := startDemo(t, backend, cfg)
			if r.Backend != backend {
				t.Fatalf("backend %s, want %s", r.Backend, backend)
			}
			want := expectations(cfg)
			eventually(t, "golden metrics within their bands", func() error { return checkGoldenMetrics(r.DashboardURL, want) })
			eventually(t, "edges match the call graph", func() error { return checkEdges(r.DashboardURL, r.Mesh) })
			eventually(t, "the route story: retries and a traffic split", func() error { return checkRouteStory(r.DashboardURL) })
			eventually(t, "every edge is mutual TLS, its caller named", func() error { return checkSecured(r.PrometheusURL, r.Mesh) })
			eventually(t, "both catalog pods take traffic", func() error { return checkBalancing(r.DashboardURL) })
			eventually(t, "tap shows calls", func() error { return checkTap(r.DashboardURL) })
			checkTapByIdentity(t, r)
			eventually(t, "the first screen shows checkout first, with since when", func() error { return checkFirstScreen(r.DashboardURL) })
			eventually(t, "after the rules' first evaluation the pages read recorded series, with the same story", func() error {
				if err := checkRecorded(r.DashboardURL); err != nil {
					return err
				}
				if err := checkGoldenMetrics(r.DashboardURL, want); err != nil {
					return err
				}
				return checkEdges(r.DashboardURL, r.Mesh)
			})
			if backend == "prometheus" {
				eventually(t, "web top and tap work with the demo's file alone", func() error { return checkCLI(r) })
				checkCLIRefused(t, r)
				b := browser(t)
				checkFirstScreenInBrowser(t, b, r.DashboardURL)
				checkFailedTapInBrowser(t, b, r.DashboardURL)
			}
			eventually(t, "every Grafana expression returns data", func() error { return checkGrafana(r.PrometheusURL) })
		})
	}
}

func TestDemoRefusesATakenPortByName(t *testing.T) {
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out, errOut bytes.Buffer
	code := cli(context.Background(), []string{"--port-base=0", "--dashboard-listen=" + l.Addr().String()}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), l.Addr().String()+" (the dashboard) is already in use") ||
		!strings.Contains(errOut.String(), "--dashboard-listen") {
		t.Fatalf("exit %d, stderr %q: want 1 and a message naming the address and --dashboard-listen", code, errOut.String())
	}
}

func TestDemoRefusesOneAddressForTwoListeners(t *testing.T) {
	var out, errOut bytes.Buffer
	code := cli(context.Background(), []string{"--port-base=0", "--dashboard-listen=127.0.0.1:1", "--prometheus-listen=127.0.0.1:1"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "127.0.0.1:1 is given to both the dashboard and the metrics backend") {
		t.Fatalf("exit %d, stderr %q: want 1 and a message naming both listeners", code, errOut.String())
	}
}

// checkFirstScreen: checkout, failing 15% of its calls, is the first of the
// worst workloads, with its change against the last hour and since when.
func checkFirstScreen(dash string) error {
	var d struct {
		Workloads struct {
			Rows []struct {
				Labels              map[string]string
				SuccessRate         *float64   `json:"success_rate"`
				SuccessRateLastHour *float64   `json:"success_rate_last_hour"`
				UnhealthySince      *time.Time `json:"unhealthy_since"`
			}
		}
	}
	if err := getJSON(dash+"api/v1/namespaces", &d); err != nil {
		return err
	}
	if len(d.Workloads.Rows) == 0 {
		return errors.New("no workloads on the first screen")
	}
	first := d.Workloads.Rows[0]
	if first.Labels["deployment"] != "checkout" || first.UnhealthySince == nil || first.SuccessRateLastHour == nil {
		return fmt.Errorf("first workload %v since %v last hour %v, want checkout with both", first.Labels, first.UnhealthySince, first.SuccessRateLastHour)
	}
	return nil
}

// webCLI runs the demo's web binary with args, reading the demo's file, for
// at most d, and returns its output.
func webCLI(r running, d time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.WebBin, args...)
	cmd.Env = append(os.Environ(), "MESHSCOPE_WEB_DEMO_FILE="+r.DemoFile)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if ctx.Err() != nil {
		err = nil // stopped by the deadline: the normal end of a live view
	}
	return out.String(), errOut.String(), err
}

// checkCLI: right after the demo is up, "web top" and "web tap" show calls
// with no flag but the resource: the demo's file gives Prometheus and token.
func checkCLI(r running) error {
	out, errOut, err := webCLI(r, 8*time.Second, "top", "deploy/web", "-n", "shop", "-o", "json", "--interval", "1s")
	if err != nil || !strings.Contains(out, `"destination":"web-`) {
		return fmt.Errorf("web top: %v; stdout %.300q; stderr %.300q", err, out, errOut)
	}
	out, errOut, err = webCLI(r, 6*time.Second, "tap", "deploy/web", "-n", "shop", "-o", "json")
	if err != nil || !strings.Contains(out, `"type":"request"`) {
		return fmt.Errorf("web tap: %v; stdout %.300q; stderr %.300q", err, out, errOut)
	}
	return nil
}

// checkCLIRefused: with a wrong token every proxy refuses; tap and top say
// so and exit 1 instead of showing nothing forever.
func checkCLIRefused(t *testing.T, r running) {
	for _, cmd := range []string{"tap", "top"} {
		_, errOut, err := webCLI(r, time.Minute, cmd, "deploy/catalog", "-n", "shop", "--tap-token", "wrong")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(errOut, "every proxy selected (2) refused the tap") ||
			!strings.Contains(errOut, "tap token rejected") {
			t.Errorf("web %s with a wrong token: %v, stderr %q; want exit 1 naming the refusal", cmd, err, errOut)
		}
	}
}

// checkTapByIdentity: the demo's dashboard taps the proxies as its workload identity, over mutual TLS, as
// in a cluster. The proxies hold a tap token (the terminal twins', in the demo's file), so a plain-text
// tap without it is refused; the dashboard was started without it (its environment and command line do
// not hold it) and with its identity, holds a certificate, and live tap showed calls (checkTap), while no
// proxy refused a tap and the dashboard refused no proxy. Run it before anything taps with a wrong token.
func checkTapByIdentity(t *testing.T, r running) {
	t.Helper()
	d, ok, err := democonfig.Read(r.DemoFile)
	if err != nil || !ok || d.TapToken == "" {
		t.Fatalf("demo file %s: %+v, %v; want the terminal twins' tap token", r.DemoFile, d, err)
	}
	env, args := dashboardProcess(t, r)
	for _, s := range append(env, args...) {
		if strings.Contains(s, d.TapToken) {
			t.Errorf("the dashboard was given the tap token (%q): it must tap by identity alone", strings.SplitN(s, "=", 2)[0])
		}
	}
	if !slices.Contains(args, "--identity-addr") {
		t.Errorf("dashboard started with %q: want --identity-addr", args)
	}
	dash := strings.TrimSuffix(r.DashboardURL, "/")
	if exp := sumMetric(t, dash+"/metrics", "identity_cert_expiration_timestamp_seconds"); exp < float64(time.Now().Unix()) {
		t.Errorf("dashboard's identity certificate expires at %v: want one that holds", exp)
	}
	if n := sumMetric(t, dash+"/metrics", "meshscope_web_tap_refused_total"); n != 0 {
		t.Errorf("meshscope_web_tap_refused_total = %v on the dashboard, want 0", n)
	}
	for _, p := range r.Mesh.Pods {
		if n := sumMetric(t, "http://"+p.Admin+"/metrics", "tap_refused_total"); n != 0 {
			t.Errorf("proxy %s: tap_refused_total = %v, want 0", p.Name, n)
		}
	}
}

// dashboardProcess finds the demo's dashboard among this machine's processes (the web binary the demo built,
// listening on DashboardURL's address) and returns its environment and arguments.
func dashboardProcess(t *testing.T, r running) (env, args []string) {
	t.Helper()
	u, err := url.Parse(r.DashboardURL)
	if err != nil {
		t.Fatal(err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("list processes: %v", err)
	}
	split := func(b []byte) []string { return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00") }
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue // not a process, or gone
		}
		args := split(cmdline)
		if args[0] != r.WebBin || !slices.Contains(args, "--listen="+u.Host) {
			continue
		}
		environ, err := os.ReadFile(filepath.Join("/proc", p.Name(), "environ"))
		if err != nil {
			t.Fatalf("dashboard's environment: %v", err)
		}
		return split(environ), args[1:]
	}
	t.Fatalf("no process of %s with --listen=%s", r.WebBin, u.Host)
	return nil, nil
}

// sumMetric scrapes url and sums the samples of family name (0 when it has none).
func sumMetric(t *testing.T, url, name string) float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	var sum float64
	for _, m := range families[name].GetMetric() {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}
