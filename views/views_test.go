package views

import (
	"context"
	"strings"
	"testing"

	"github.com/PuerkitoBio/goquery"
	"github.com/a-h/templ"
)

func render(t *testing.T, c templ.Component) *goquery.Document {
	t.Helper()
	var b strings.Builder
	if err := c.Render(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	doc, err := goquery.NewDocumentFromReader(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestComponents(t *testing.T) {
	row := Row{Name: "voting", Href: "/namespaces/shop/deployments/voting", Meshed: "1/1",
		Success: Cell{Text: "75.00%", Class: "bad"}, RPS: "20.00", P50: "25 ms", P95: "30 ms", P99: "40 ms", TCP: "3"}
	for _, tc := range []struct {
		name     string
		c        templ.Component
		selector string
		text     string // expected in the selection's text; "" only checks presence
		absent   string // a selector that must match nothing
	}{
		{"row links to its resource and colours its health",
			DataFragment(Data{Tables: []Table{{TestID: "deployments", Rows: []Row{row}}}}),
			`[data-testid=deployments] [data-testid=row][data-name=voting] [data-testid=success].bad`, "75.00%", ""},
		{"empty table says why instead of an empty grid",
			DataFragment(Data{Tables: []Table{{TestID: "pods", Empty: "no pods with proxies in namespace shop"}}}),
			`[data-testid=pods] [data-testid=panel-empty]`, "no pods with proxies", `[data-testid=pods] table`},
		{"failed panel does not claim emptiness",
			DataFragment(Data{Tables: []Table{{TestID: "pods", Empty: "no pods", Error: "could not get success rate: refused"}}}),
			`[data-testid=pods] [data-testid=panel-error]`, "refused", `[data-testid=pods] [data-testid=panel-empty]`},
		{"panel error is shown next to the rows it could get",
			DataFragment(Data{Tables: []Table{{TestID: "pods", Rows: []Row{row}, Error: "could not get latency p99: timeout"}}}),
			`[data-testid=pods] [data-testid=panel-error]`, "latency p99", ""},
		{"backend banner is inside the refreshed fragment",
			DataFragment(Data{Banners: []string{"Prometheus at http://p:9090 did not answer"}}),
			`#data [data-testid=backend-banner]`, "http://p:9090", ""},
		{"fragment polls its own URL",
			DataFragment(Data{RefreshHref: "/namespaces?window=5m", RefreshEvery: "5s", UpdatedAt: "12:00:00 UTC"}),
			`#data[hx-get="/namespaces?window=5m"][hx-trigger="every 5s"][data-poll] [data-testid=updated-at]`, "12:00:00 UTC", ""},
		{"chart draws its lines",
			DataFragment(Data{Charts: []Chart{{TestID: "chart-rps", Width: 10, Height: 10, Lines: []ChartLine{{Name: "rps", Class: "s0", Path: "M1,1 L2,2"}}}}}),
			`[data-testid=chart-rps] svg path[data-testid=chart-line][d="M1,1 L2,2"]`, "", ""},
		{"chart that failed says so instead of drawing",
			DataFragment(Data{Charts: []Chart{{TestID: "chart-rps", Error: "could not get requests per second: refused"}}}),
			`[data-testid=chart-rps] [data-testid=panel-error]`, "refused", `[data-testid=chart-rps] svg`},
		{"grafana link only when given",
			ResourcePage(Resource{Kind: "namespace", Heading: "Namespace shop"}),
			`[data-testid=page-namespace] [data-testid=page-title]`, "Namespace shop", `[data-testid=grafana-link]`},
		{"window selector marks the active window",
			ResourcePage(Resource{Kind: "namespaces", Windows: []Link{{Label: "10s", Href: "?window=10s"}, {Label: "1m", Href: "?", Active: true}}}),
			`[data-testid=window-1m].active`, "1m", `[data-testid=window-10s].active`},
		{"layout marks the active nav entry and loads no inline script",
			Layout(Shell{Title: "T", Nav: []NavItem{{Label: "Namespaces", Href: "/namespaces", Active: true}, {Label: "Tap", Href: "/tap"}},
				StaticHref: "/static/", HTMX: "htmx.js"}),
			`[data-testid=nav-Namespaces].active`, "Namespaces", `script:not([src])`},
		{"html in values is escaped",
			DataFragment(Data{Tables: []Table{{TestID: "t", Rows: []Row{{Name: `<img src=x onerror=alert(1)>`}}}}}),
			`[data-testid=t] [data-testid=name]`, `<img src=x onerror=alert(1)>`, `[data-testid=t] img`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := render(t, tc.c)
			sel := doc.Find(tc.selector)
			if sel.Length() == 0 {
				h, _ := doc.Html()
				t.Fatalf("no %s in\n%s", tc.selector, h)
			}
			if !strings.Contains(sel.Text(), tc.text) {
				t.Errorf("text %q, want %q in it", sel.Text(), tc.text)
			}
			if tc.absent != "" && doc.Find(tc.absent).Length() > 0 {
				t.Errorf("%s present, want none", tc.absent)
			}
		})
	}
}
