package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/chromedp/chromedp"

	"github.com/meshscope/meshscope/api"
)

// Tolerances against the shop's known truth: success rate within 5 points
// (one request in four fails, exactly), request rate within 10% of what the
// traffic generator achieved over the same 10s window, judged once the window is full of traffic.
const (
	successTolerance = 0.05
	rpsTolerance     = 0.10
	window           = 10 * time.Second
)

func parseDoc(t *testing.T, body string) *goquery.Document {
	t.Helper()
	doc, err := goquery.NewDocumentFromReader(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// percent parses "75.00%" into 0.75.
func percent(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	return v / 100, err
}

func rowFor(t *testing.T, rows []api.Row, labels map[string]string) (api.Row, error) {
	t.Helper()
next:
	for _, r := range rows {
		for k, v := range labels {
			if r.Labels[k] != v {
				continue next
			}
		}
		return r, nil
	}
	return api.Row{}, fmt.Errorf("no row %v in %d rows", labels, len(rows))
}

func getJSON(t *testing.T, url string, into any) error {
	t.Helper()
	status, ct, body := getBody(t, url)
	if status != 200 || ct != "application/json" {
		return fmt.Errorf("GET %s: %d %s", url, status, ct)
	}
	return json.Unmarshal([]byte(body), into)
}

// checkGolden compares a row with the truth of its deployment.
func checkGolden(tr *traffic, r api.Row, wantSuccess float64) error {
	// Prometheus discovers the targets and scrapes them for a while before a
	// rate over the window sees the whole traffic: judge after two windows.
	if warm := time.Since(tr.start); warm < 2*window {
		return fmt.Errorf("traffic has run %v, less than two windows", warm)
	}
	wantRPS := tr.rateOver(window)
	if r.SuccessRate == nil {
		return fmt.Errorf("%v: no traffic, want success %.2f", r.Labels, wantSuccess)
	}
	if d := *r.SuccessRate - wantSuccess; d > successTolerance || d < -successTolerance {
		return fmt.Errorf("%v: success %.3f, want %.2f±%.2f", r.Labels, *r.SuccessRate, wantSuccess, successTolerance)
	}
	if !within(r.RPS, wantRPS, rpsTolerance) {
		return fmt.Errorf("%v: rps %.2f, want %.2f±%.0f%%", r.Labels, r.RPS, wantRPS, 100*rpsTolerance)
	}
	return nil
}

func TestEndToEndWithRealPrometheusAndProxies(t *testing.T) {
	s := startShop(t)
	dash := startDashboard(t, config{PrometheusURL: s.Prom.URL(), QueryTimeout: 5 * time.Second,
		Refresh: time.Second, GrafanaURL: "http://grafana.test:3000"})
	const w = "?window=10s"

	t.Run("the first window says it is not full, with the time data starts", func(t *testing.T) {
		eventually(t, 60*time.Second, "window note at 1m", func() error {
			var d namespacesData
			if err := getJSON(t, dash+"/api/v1/namespaces?window=1m", &d); err != nil {
				return err
			}
			if d.Window.Full || d.Window.DataSince == nil {
				return fmt.Errorf("window %+v, want not full with data_since", d.Window)
			}
			want := "window not full: data since " + d.Window.DataSince.Format("15:04:05") + " UTC"
			if !strings.HasPrefix(d.Window.Note, want) || d.Window.Seconds >= 60 {
				return fmt.Errorf("window %+v, want a note starting %q and under 60 s", d.Window, want)
			}
			// The 1h window looks at the data a minute apart at first: it must
			// still find when the data began, not the next whole minute.
			var hour namespacesData
			if err := getJSON(t, dash+"/api/v1/namespaces?window=1h", &hour); err != nil {
				return err
			}
			if hour.Window.Full || hour.Window.DataSince == nil || hour.Window.DataSince.Sub(*d.Window.DataSince).Abs() > 5*time.Second {
				t.Errorf("1h window %+v, want not full with data since %v, as the 1m window says", hour.Window, d.Window.DataSince)
			}
			_, _, body := getBody(t, dash+"/namespaces?window=1m")
			doc := parseDoc(t, body)
			for _, panel := range []string{"workloads", "namespaces"} {
				if note := doc.Find(`[data-testid=` + panel + `] [data-testid=window-note]`).Text(); !strings.HasPrefix(note, "window not full: data since ") {
					return fmt.Errorf("panel %s note %q", panel, note)
				}
			}
			return nil
		})
	})

	t.Run("JSON twin of a namespace shows each deployment's success rate and RPS", func(t *testing.T) {
		eventually(t, 90*time.Second, "golden metrics of shop", func() error {
			var d namespaceData
			if err := getJSON(t, dash+"/api/v1/namespaces/shop"+w, &d); err != nil {
				return err
			}
			if len(d.Deployments.Failures) > 0 {
				return fmt.Errorf("failures: %v", d.Deployments.Failures)
			}
			voting, err := rowFor(t, d.Deployments.Rows, map[string]string{"deployment": "voting"})
			if err != nil {
				return err
			}
			web, err := rowFor(t, d.Deployments.Rows, map[string]string{"deployment": "web"})
			if err != nil {
				return err
			}
			if err := checkGolden(s.Traffic, voting, votingSuccessRate); err != nil {
				return err
			}
			if err := checkGolden(s.Traffic, web, 1); err != nil {
				return err
			}
			if voting.LatencyP50 == nil || *voting.LatencyP50 < float64(votingDelay/time.Millisecond) {
				return fmt.Errorf("voting p50 %v, want at least its %v delay", voting.LatencyP50, votingDelay)
			}
			if voting.MeshedUp != 1 || voting.MeshedTotal != 1 {
				return fmt.Errorf("voting meshed %d/%d, want 1/1", voting.MeshedUp, voting.MeshedTotal)
			}
			t.Logf("voting: success %.4f (truth %.2f), rps %.2f (sent %.2f/s), p50 %.1fms; web: success %.4f, rps %.2f",
				*voting.SuccessRate, votingSuccessRate, voting.RPS, s.Traffic.rateOver(window), *voting.LatencyP50, *web.SuccessRate, web.RPS)
			return nil
		})
	})

	t.Run("JSON twins of deployments show the edge between them", func(t *testing.T) {
		eventually(t, 60*time.Second, "edge web -> voting", func() error {
			var voting, web resourceData
			if err := getJSON(t, dash+"/api/v1/namespaces/shop/deployments/voting"+w, &voting); err != nil {
				return err
			}
			if err := getJSON(t, dash+"/api/v1/namespaces/shop/deployments/web"+w, &web); err != nil {
				return err
			}
			caller, err := rowFor(t, voting.Inbound.Rows, map[string]string{"namespace": "shop", "deployment": "web"})
			if err != nil {
				return fmt.Errorf("voting's callers: %w", err)
			}
			callee, err := rowFor(t, web.Outbound.Rows, map[string]string{"dst_namespace": "shop", "dst_deployment": "voting"})
			if err != nil {
				return fmt.Errorf("web's callees: %w", err)
			}
			for _, r := range []api.Row{caller, callee} {
				if err := checkGolden(s.Traffic, r, votingSuccessRate); err != nil {
					return err
				}
			}
			if len(web.History.RPS.Series) == 0 || len(web.History.RPS.Series[0].Points) == 0 {
				return fmt.Errorf("web has no RPS history")
			}
			return nil
		})
	})

	t.Run("pages show the same numbers", func(t *testing.T) {
		eventually(t, 60*time.Second, "namespace page", func() error {
			status, ct, body := getBody(t, dash+"/namespaces/shop"+w)
			if status != 200 || !strings.HasPrefix(ct, "text/html") {
				return fmt.Errorf("status %d %s", status, ct)
			}
			doc := parseDoc(t, body)
			row := doc.Find(`[data-testid=deployments] [data-testid=row][data-name=voting]`)
			got, err := percent(row.Find(`[data-testid=success]`).Text())
			if err != nil {
				return fmt.Errorf("voting success cell: %v", err)
			}
			if d := got - votingSuccessRate; d > successTolerance || d < -successTolerance {
				return fmt.Errorf("voting success %.3f on the page", got)
			}
			if cls, _ := row.Find(`[data-testid=success]`).Attr("class"); cls != "bad" {
				return fmt.Errorf("75%% success coloured %q, want bad", cls)
			}
			rps, err := strconv.ParseFloat(row.Find(`[data-testid=rps]`).Text(), 64)
			if err != nil || !within(rps, s.Traffic.rateOver(window), rpsTolerance) {
				return fmt.Errorf("voting rps %q on the page, want %.1f", row.Find(`[data-testid=rps]`).Text(), s.Traffic.rateOver(window))
			}
			href, _ := row.Find(`[data-testid=row-grafana]`).Attr("href")
			if want := "http://grafana.test:3000/d/meshscope-deployment/deployment?var-namespace=shop&var-deployment=voting&from=now-1h&to=now"; href != want {
				return fmt.Errorf("grafana link %q, want %q", href, want)
			}
			return nil
		})
		eventually(t, 60*time.Second, "deployment page", func() error {
			_, _, body := getBody(t, dash+"/namespaces/shop/deployments/voting"+w)
			doc := parseDoc(t, body)
			if doc.Find(`[data-testid=inbound] [data-testid=row][data-name="shop/web"]`).Length() != 1 {
				return fmt.Errorf("voting's page does not list web as a caller")
			}
			if doc.Find(`[data-testid=chart-rps] [data-testid=chart-line]`).Length() == 0 {
				return fmt.Errorf("voting's page has no RPS chart line")
			}
			if doc.Find(`[data-testid=pods] [data-testid=row][data-name=voting-0]`).Length() != 1 {
				return fmt.Errorf("voting's page does not list its pod")
			}
			return nil
		})
	})

	t.Run("stat prints the golden metrics table", func(t *testing.T) {
		eventually(t, 60*time.Second, "stat deploy", func() error {
			var out, errOut bytes.Buffer
			err := statCmd(context.Background(), []string{"deploy", "-n", "shop", "--prometheus-url", s.Prom.URL(), "--window", "10s"}, &out, &errOut)
			if err != nil {
				return fmt.Errorf("%v: %s", err, errOut.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if strings.Join(strings.Fields(lines[0]), " ") != "NAME MESHED SUCCESS RPS LATENCY_P50 LATENCY_P95 LATENCY_P99 TCP_CONN" {
				return fmt.Errorf("header %q", lines[0])
			}
			for _, l := range lines[1:] {
				if f := strings.Fields(l); f[0] == "voting" {
					got, err := percent(f[2])
					if err != nil || f[1] != "1/1" || got < votingSuccessRate-successTolerance || got > votingSuccessRate+successTolerance {
						return fmt.Errorf("voting line %q", l)
					}
					return nil
				}
			}
			return fmt.Errorf("no voting line in\n%s", out.String())
		})
	})

	t.Run("the first screen lists the failing workload first, with its change and since when", func(t *testing.T) {
		eventually(t, 60*time.Second, "voting first", func() error {
			var d namespacesData
			if err := getJSON(t, dash+"/api/v1/namespaces"+w, &d); err != nil {
				return err
			}
			if len(d.Workloads.Rows) < 2 {
				return fmt.Errorf("%d workloads, want voting and web", len(d.Workloads.Rows))
			}
			first := d.Workloads.Rows[0]
			if workloadName(first) != "shop/voting" || first.Trend == nil || first.UnhealthySince == nil || first.SuccessRateLastHour == nil {
				return fmt.Errorf("first workload %v (trend %+v), want shop/voting with since and last hour", first.Labels, first.Trend)
			}
			if web := d.Workloads.Rows[1]; workloadName(web) != "shop/web" || web.UnhealthySince != nil {
				return fmt.Errorf("second workload %v, want shop/web, healthy", web.Labels)
			}
			return nil
		})
	})

	t.Run("a real browser follows links, changes the window and sees the refresh", func(t *testing.T) {
		browseDashboard(t, dash)
	})

	t.Run("the window note goes once the window is full", func(t *testing.T) {
		eventually(t, 60*time.Second, "no window note at 10s", func() error {
			var d namespacesData
			if err := getJSON(t, dash+"/api/v1/namespaces"+w, &d); err != nil {
				return err
			}
			if !d.Window.Full || d.Window.Note != "" || d.Window.Seconds != 10 {
				return fmt.Errorf("window %+v, want full, 10 s, no note", d.Window)
			}
			_, _, body := getBody(t, dash+"/namespaces"+w)
			if n := parseDoc(t, body).Find(`[data-testid=window-note]`).Length(); n != 0 {
				return fmt.Errorf("%d window notes on the page", n)
			}
			return nil
		})
	})

	t.Run("Prometheus stopped: pages degrade, then recover", func(t *testing.T) {
		s.Prom.Stop()
		for _, path := range []string{"/namespaces", "/namespaces/shop", "/namespaces/shop/deployments/voting", "/namespaces/shop/pods/voting-0"} {
			status, ct, body := getBody(t, dash+path)
			if status != 200 || !strings.HasPrefix(ct, "text/html") {
				t.Errorf("%s with Prometheus down: %d %s, want 200 html", path, status, ct)
			}
			doc := parseDoc(t, body)
			if doc.Find(`[data-testid=nav]`).Length() != 1 {
				t.Errorf("%s: no navigation", path)
			}
			if b := doc.Find(`[data-testid=backend-banner]`).Text(); !strings.Contains(b, s.Prom.URL()) || !strings.Contains(b, "connection refused") {
				t.Errorf("%s: banner %q does not name the backend and its error", path, b)
			}
			if doc.Find(`[data-testid=panel-error]`).Length() == 0 {
				t.Errorf("%s: no panel says what it could not get", path)
			}
		}
		b := newBrowser(t)
		b.do(t, "open a page with Prometheus down", chromedp.Navigate(dash+"/namespaces/shop/deployments/voting"),
			chromedp.WaitVisible(`[data-testid=backend-banner]`), chromedp.WaitVisible(`[data-testid=nav]`))
		b.screenshot(t, artifactsDir(t), "deployment-prometheus-down")
		if status, _, body := getBody(t, dash+"/readyz"); status != 503 || !strings.Contains(body, s.Prom.URL()) {
			t.Errorf("readyz with Prometheus down: %d %q", status, body)
		}
		s.Prom.Start()
		eventually(t, 60*time.Second, "recovery", func() error {
			if status, _, body := getBody(t, dash+"/readyz"); status != 200 {
				return fmt.Errorf("readyz %d %s", status, body)
			}
			_, _, body := getBody(t, dash+"/namespaces/shop"+w)
			doc := parseDoc(t, body)
			if b := doc.Find(`[data-testid=backend-banner]`); b.Length() > 0 {
				return fmt.Errorf("banner still shown: %s", b.Text())
			}
			if doc.Find(`[data-testid=deployments] [data-testid=row][data-name=voting]`).Length() != 1 {
				return fmt.Errorf("voting not back on the page")
			}
			return nil
		})
	})
}

// TestEndToEndZeroSuccessIsNotNoTraffic: a deployment failing every request
// shows 0% success, one without requests shows no traffic, on a real
// Prometheus scraping real proxies.
func TestEndToEndZeroSuccessIsNotNoTraffic(t *testing.T) {
	requireTool(t, "/usr/bin/prometheus")
	bin := buildProxy(t)
	broken := startWorkload(t, bin, "bank", "broken", "broken-0", failingApp(1, 0), "")
	idle := startWorkload(t, bin, "bank", "idle", "idle-0", failingApp(0, 0), "")
	prom := startPrometheus(t, broken, idle)
	tr := sendTraffic(t, "http://"+broken.Inbound+"/", 10)
	dash := startDashboard(t, config{PrometheusURL: prom.URL()})
	eventually(t, 90*time.Second, "broken at 0%, idle without traffic", func() error {
		if time.Since(tr.start) < 2*window {
			return fmt.Errorf("traffic has run less than two windows")
		}
		var d namespaceData
		if err := getJSON(t, dash+"/api/v1/namespaces/bank?window=10s", &d); err != nil {
			return err
		}
		b, err := rowFor(t, d.Deployments.Rows, map[string]string{"deployment": "broken"})
		if err != nil {
			return err
		}
		i, err := rowFor(t, d.Deployments.Rows, map[string]string{"deployment": "idle"})
		if err != nil {
			return err
		}
		if b.SuccessRate == nil || *b.SuccessRate != 0 || b.RPS == 0 {
			return fmt.Errorf("broken: success %s rps %.2f, want 0%% with traffic", successCell(b.SuccessRate).Text, b.RPS)
		}
		if i.SuccessRate != nil || i.MeshedTotal != 1 {
			return fmt.Errorf("idle: success %s meshed %d/%d, want no traffic and 1/1", successCell(i.SuccessRate).Text, i.MeshedUp, i.MeshedTotal)
		}
		_, _, body := getBody(t, dash+"/namespaces/bank?window=10s")
		doc := parseDoc(t, body)
		for name, want := range map[string]string{"broken": "0.00%", "idle": "no traffic"} {
			if got := doc.Find(`[data-testid=deployments] [data-testid=row][data-name=` + name + `] [data-testid=success]`).Text(); got != want {
				return fmt.Errorf("%s success cell %q, want %q", name, got, want)
			}
		}
		return nil
	})
}
