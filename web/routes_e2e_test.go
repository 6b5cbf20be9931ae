package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api"
)

// TestRoutesOnTheDeploymentPageAndInTheTerminal runs web → voting through real proxies whose destinations
// file gives voting a route "vote" with a retry policy and a 90/10 split to voting-v2, scraped by a real
// Prometheus: the deployment page's JSON, its routes table and `web routes` show the route, its retries
// and its backends.
func TestRoutesOnTheDeploymentPageAndInTheTerminal(t *testing.T) {
	requireTool(t, "/usr/bin/prometheus")
	bin := buildProxy(t)
	voting := startWorkload(t, bin, "shop", "voting", "voting-0", failingApp(4, 0), "")
	votingV2 := startWorkload(t, bin, "shop", "voting-v2", "voting-v2-0", failingApp(0, 0), "")
	dests := fmt.Sprintf(`services:
  - authority: voting.shop:8080
    labels: {namespace: shop, deployment: voting}
    endpoints: [{addr: %q, labels: {pod: voting-0}}]
    routes:
      - name: vote
        matches: [{method: GET, path: {prefix: /vote}}]
        retry: {http: 5xx, limit: 2}
        backends:
          - {authority: voting.shop:8080, weight: 90}
          - {authority: voting-v2.shop:8080, weight: 10}
  - authority: voting-v2.shop:8080
    labels: {namespace: shop, deployment: voting-v2}
    endpoints: [{addr: %q, labels: {pod: voting-v2-0}}]
`, voting.Inbound, votingV2.Inbound)
	var webOutbound string
	web := startWorkload(t, bin, "shop", "web", "web-0", callingApp(&webOutbound, "voting.shop:8080"), dests)
	webOutbound = web.Outbound
	prom := startPrometheus(t, web, voting, votingV2)
	sendTraffic(t, "http://"+web.Inbound+"/", 20)
	base := startDashboard(t, config{PrometheusURL: prom.URL(), Window: 10 * time.Second})

	var vote api.RouteRow
	eventually(t, 90*time.Second, "the vote route with retries and both backends in the page's JSON", func() error {
		var d struct {
			Routes api.RouteTable `json:"routes"`
		}
		if err := getJSON(t, base+"/api/v1/namespaces/shop/deployments/web", &d); err != nil {
			return err
		}
		if len(d.Routes.Failures) > 0 {
			return fmt.Errorf("failures: %v", d.Routes.Failures)
		}
		for _, r := range d.Routes.Rows {
			if r.Name == "vote" && r.Authority() == "voting.shop:8080" && r.Kind == "Route" {
				vote = r
			}
		}
		switch {
		case vote.SuccessRate == nil || vote.RPS == 0:
			return fmt.Errorf("no traffic on the vote route yet: %+v", d.Routes.Rows)
		case vote.RetryRPS == 0 || len(vote.Backends) != 2:
			return fmt.Errorf("vote route without retries or both backends yet: %+v", vote)
		}
		return nil
	})
	// voting fails one request in four; the retry goes elsewhere or tries again: what the client sees
	// is nearly always a success, and the retries are about a quarter of voting's share.
	if *vote.SuccessRate < 0.95 {
		t.Errorf("vote route success %.3f after retries, want at least 0.95", *vote.SuccessRate)
	}
	if *vote.RetryShare < 0.05 || *vote.RetryShare > 0.5 {
		t.Errorf("retries are %.3f of the route's tries, want about 0.18", *vote.RetryShare)
	}
	for _, b := range vote.Backends {
		if b.Name == "voting-v2" && (b.Share == nil || *b.Share > 0.3) {
			t.Errorf("voting-v2 takes %v of the tries, want about a tenth", b.Share)
		}
	}

	status, _, page := getBody(t, base+"/namespaces/shop/deployments/web")
	if status != 200 {
		t.Fatalf("deployment page: %d", status)
	}
	row := parseDoc(t, page).Find(`[data-testid=routes] [data-testid=route-row][data-name=vote]`)
	if row.Length() != 1 {
		t.Fatalf("routes table has %d rows for vote:\n%s", row.Length(), page)
	}
	if n := row.Find(`[data-testid=backend]`).Length(); n != 2 {
		t.Errorf("vote row lists %d backends, want 2", n)
	}
	href, _ := row.Find(`[data-testid=route-tap]`).Attr("href")
	u, err := url.Parse(href)
	if err != nil || u.Path != "/tap" || u.Query().Get("route") != "vote" || u.Query().Get("authority") != "voting.shop:8080" ||
		u.Query().Get("deployment") != "web" {
		t.Errorf("tap link %q does not open the tap on the route", href)
	}

	// voting's page: who calls its service, route by route.
	var votingPage struct {
		InboundRoutes api.RouteTable `json:"inbound_routes"`
	}
	if err := getJSON(t, base+"/api/v1/namespaces/shop/deployments/voting", &votingPage); err != nil {
		t.Fatal(err)
	}
	callers := 0
	for _, r := range votingPage.InboundRoutes.Rows {
		if r.CallerNamespace == "shop" && r.CallerDeployment == "web" && r.Name == "vote" && r.RPS > 0 {
			callers++
		}
	}
	if callers != 1 {
		t.Errorf("voting's inbound routes %+v: want web's vote route", votingPage.InboundRoutes.Rows)
	}
	_, _, votingHTML := getBody(t, base+"/namespaces/shop/deployments/voting")
	if got := parseDoc(t, votingHTML).Find(`[data-testid=inbound-routes] [data-testid=route-row][data-name=vote] [data-testid=caller]`).Text(); got != "shop/web" {
		t.Errorf("voting's inbound routes table names caller %q, want shop/web", got)
	}

	var out, errOut bytes.Buffer
	if code := cli(t.Context(), []string{"routes", "deploy/web", "-n", "shop", "--prometheus-url", prom.URL(), "--window", "10s", "-o", "json"}, &out, &errOut); code != 0 {
		t.Fatalf("web routes exit %d: %s", code, errOut.String())
	}
	var rows []api.RouteRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rows {
		found = found || r.Name == "vote" && r.RetryRPS > 0
	}
	if !found {
		t.Errorf("web routes -o json lacks the vote route with retries: %s", out.String())
	}
	out.Reset()
	if code := cli(t.Context(), []string{"routes", "deploy/web", "-n", "shop", "--prometheus-url", prom.URL(), "--window", "10s"}, &out, &errOut); code != 0 ||
		!strings.Contains(out.String(), "voting.shop:8080") || !strings.Contains(out.String(), "-> voting-v2.shop:8080") {
		t.Errorf("web routes table (exit %d):\n%s", code, out.String())
	}
	out.Reset()
	if code := cli(t.Context(), []string{"routes", "deploy/voting", "-n", "shop", "--inbound", "--prometheus-url", prom.URL(), "--window", "10s"}, &out, &errOut); code != 0 ||
		!strings.Contains(out.String(), "CALLER") || !strings.Contains(out.String(), "shop/web") {
		t.Errorf("web routes --inbound (exit %d):\n%s", code, out.String())
	}
}
