package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api"
)

// memProm answers the dashboard's queries from memory for a namespace "shop"
// of n deployments with one pod each: deployment dep-i has success rate
// (i%100)/100, except dep-0, which has no traffic; every pod's proxy is up.
// It counts the calls.
type memProm struct {
	n       int
	calls   atomic.Int64
	answers sync.Map // query -> model.Vector, built once
}

var (
	byClause          = regexp.MustCompile(`by \(([^)]*)\)`)
	deploymentMatcher = regexp.MustCompile(`[{,]deployment="([^"]*)"`)
)

func (m *memProm) Query(_ context.Context, q string, _ time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	m.calls.Add(1)
	if v, ok := m.answers.Load(q); ok {
		return v.(model.Vector), nil, nil, nil
	}
	v := m.answer(q)
	m.answers.Store(q, v)
	return v, nil, nil, nil
}

func (m *memProm) answer(q string) model.Vector {
	if q == "vector(1)" {
		return model.Vector{{Value: 1}}
	}
	if strings.Contains(q, "identity_cert_expiration_timestamp_seconds") {
		return nil // no certificate near its end, unless a test stores one
	}
	var by []string
	if g := byClause.FindStringSubmatch(q); g != nil {
		by = strings.Split(g[1], ", ")
	}
	vec := make(model.Vector, 0, m.n)
	first := 1 // dep-0 has no traffic, but its proxy is scraped
	if strings.Contains(q, "up{") {
		first = 0
	}
	for i := first; i < m.n; i++ {
		if g := deploymentMatcher.FindStringSubmatch(q); g != nil && g[1] != fmt.Sprintf("dep-%d", i) {
			continue
		}
		metric := model.Metric{}
		if first == 0 {
			metric["up"] = "1" // count_values' label: every proxy answers
		}
		for _, l := range by {
			switch l {
			case "namespace", "dst_namespace":
				metric[model.LabelName(l)] = "shop"
			case "deployment", "dst_deployment":
				metric[model.LabelName(l)] = model.LabelValue(fmt.Sprintf("dep-%d", i))
			case "pod":
				metric[model.LabelName(l)] = model.LabelValue(fmt.Sprintf("dep-%d-0", i))
			}
		}
		var v float64
		switch {
		case strings.Contains(q, "up{"):
			v = 1 // one proxy per deployment, up
		case strings.HasPrefix(q, "histogram_quantile"):
			v = float64(i)
		case strings.Contains(q, "response_total"):
			v = float64(i%100) / 100
		case strings.Contains(q, `tls="true"`):
			v = 0.5 // half the traffic over mutual TLS
		case strings.Contains(q, "request_total"):
			v = 10
		default:
			v = 3
		}
		vec = append(vec, &model.Sample{Metric: metric, Value: model.SampleValue(v)})
	}
	return vec
}

func (m *memProm) QueryRange(_ context.Context, q string, r v1.Range, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	m.calls.Add(1)
	var values []model.SamplePair
	for t := r.Start; !t.After(r.End); t = t.Add(r.Step) {
		values = append(values, model.SamplePair{Timestamp: model.TimeFromUnixNano(t.UnixNano()), Value: 0.5})
	}
	return model.Matrix{{Metric: model.Metric{}, Values: values}}, nil, nil, nil
}

func (m *memProm) Targets(context.Context) (v1.TargetsResult, error) {
	m.calls.Add(1)
	if v, ok := m.answers.Load("targets"); ok {
		return v.(v1.TargetsResult), nil
	}
	var res v1.TargetsResult
	for i := range m.n {
		res.Active = append(res.Active, v1.ActiveTarget{Health: v1.HealthGood, Labels: model.LabelSet{
			"job": api.Job, "namespace": "shop",
			"deployment": model.LabelValue(fmt.Sprintf("dep-%d", i)), "pod": model.LabelValue(fmt.Sprintf("dep-%d-0", i)),
		}})
	}
	m.answers.Store("targets", res)
	return res, nil
}

// memServer is the dashboard over a memProm of n deployments.
func memServer(t testing.TB, n int, cfg config) (*memProm, http.Handler) {
	t.Helper()
	s, _ := newTestServer(t, cfg)
	m := &memProm{n: n}
	s.prom = api.New(m, "memory")
	return m, s.routes()
}

func request(h http.Handler, target string, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.Host = "localhost:8084"
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestPagesAnswerWithStatusTypeAndContent(t *testing.T) {
	_, h := memServer(t, 5, config{GrafanaURL: "https://grafana.example/"})
	for _, tc := range []struct {
		name, target string
		header       []string
		status       int
		contentType  string
		// selector must match at least one element, and text, when set, be in its text.
		selector, text string
	}{
		{"namespaces list the namespace", "/namespaces", nil, 200, "text/html; charset=utf-8",
			`[data-testid=namespaces] [data-testid=row][data-name=shop]`, "shop"},
		{"namespace page lists deployments worst first", "/namespaces/shop", nil, 200, "text/html; charset=utf-8",
			`[data-testid=deployments] [data-testid=row]:first-child [data-testid=name]`, "dep-1"},
		{"no traffic is not zero success", "/namespaces/shop", nil, 200, "text/html; charset=utf-8",
			`[data-testid=deployments] [data-testid=row][data-name=dep-0] [data-testid=success].none`, "no traffic"},
		{"sorting by p99 puts the slowest first", "/namespaces/shop?sort=p99", nil, 200, "text/html; charset=utf-8",
			`[data-testid=deployments] [data-testid=row]:first-child [data-testid=name]`, "dep-4"},
		{"reversed sort puts the best success first", "/namespaces/shop?sort=-success", nil, 200, "text/html; charset=utf-8",
			`[data-testid=deployments] [data-testid=row]:first-child [data-testid=name]`, "dep-4"},
		{"deployment page has charts and callers", "/namespaces/shop/deployments/dep-2", nil, 200, "text/html; charset=utf-8",
			`[data-testid=chart-success] [data-testid=chart-line]`, ""},
		{"deployment links to its grafana dashboard", "/namespaces/shop/deployments/dep-2", nil, 200, "text/html; charset=utf-8",
			`[data-testid=grafana-link][href="https://grafana.example/d/meshscope-deployment/deployment?var-namespace=shop&var-deployment=dep-2&from=now-1h&to=now"]`, ""},
		{"pod page", "/namespaces/shop/pods/dep-2-0", nil, 200, "text/html; charset=utf-8",
			`[data-testid=page-pod] [data-testid=summary-success]`, ""},
		{"htmx refresh gets the fragment only", "/namespaces/shop?window=5m", []string{"HX-Request", "true"}, 200, "text/html; charset=utf-8",
			`#data[hx-get="/namespaces/shop?window=5m"]`, ""},
		{"window selector marks the window", "/namespaces?window=15m", nil, 200, "text/html; charset=utf-8",
			`[data-testid=window-15m].active`, "15m"},
		{"JSON twin", "/api/v1/namespaces/shop", nil, 200, "application/json", "", ""},
		{"bad window is a 400 with the shell", "/namespaces?window=2m", nil, 400, "text/html; charset=utf-8",
			`[data-testid=nav] + *, [data-testid=error-message]`, "want one of 10s, 1m, 5m, 15m, 1h"},
		{"bad sort is a 400", "/namespaces?sort=evil", nil, 400, "text/html; charset=utf-8", `[data-testid=error-message]`, "sort"},
		{"invalid namespace is a 404 naming the rule", "/namespaces/Not_Valid", nil, 404, "text/html; charset=utf-8",
			`[data-testid=error-message]`, "lower-case"},
		{"invalid name in the JSON twin is a JSON 404", "/api/v1/namespaces/shop/deployments/a%22b", nil, 404, "application/json", "", ""},
		{"control character in an API path is still valid JSON", "/api/v1/no%01such", nil, 404, "application/json", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := request(h, tc.target, tc.header...)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != tc.contentType {
				t.Errorf("content type %q, want %q", ct, tc.contentType)
			}
			if tc.contentType == "application/json" && !json.Valid(rec.Body.Bytes()) {
				t.Errorf("invalid JSON: %s", rec.Body)
			}
			if tc.selector == "" {
				return
			}
			doc := parseDoc(t, rec.Body.String())
			sel := doc.Find(tc.selector)
			if sel.Length() == 0 {
				t.Fatalf("no %s in\n%s", tc.selector, rec.Body)
			}
			if !strings.Contains(sel.Text(), tc.text) {
				t.Errorf("%s text %q, want %q in it", tc.selector, sel.Text(), tc.text)
			}
			if len(tc.header) > 0 && doc.Find(`[data-testid=nav]`).Length() != 0 {
				t.Error("htmx fragment carries the whole page")
			}
		})
	}
}

func TestBackendWarningsAreShown(t *testing.T) {
	warn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"status":"success","warnings":["results truncated"],"data":{"resultType":"vector","result":[]}}`)
	}))
	defer warn.Close()
	_, h := newTestServer(t, config{PrometheusURL: warn.URL})
	rec := request(h, "/namespaces")
	doc := parseDoc(t, rec.Body.String())
	if got := doc.Find(`[data-testid=backend-warning]`).Text(); rec.Code != 200 || !strings.Contains(got, "results truncated") {
		t.Errorf("status %d, warning %q; want the backend's warning on the page", rec.Code, got)
	}
}

func TestGrafanaLinksOnlyWithGrafanaURL(t *testing.T) {
	_, h := memServer(t, 3, config{})
	doc := parseDoc(t, request(h, "/namespaces/shop").Body.String())
	if n := doc.Find(`[data-testid=grafana-link], [data-testid=row-grafana]`).Length(); n != 0 {
		t.Errorf("%d Grafana links without --grafana-url", n)
	}
}

// TestQueriesPerPageIndependentOfRows: one query per metric per table, never
// one per row.
func TestQueriesPerPageIndependentOfRows(t *testing.T) {
	for _, page := range []string{"/namespaces", "/namespaces/shop", "/namespaces/shop/deployments/dep-1", "/namespaces/shop/pods/dep-1-0"} {
		t.Run(page, func(t *testing.T) {
			var counts []int64
			for _, n := range []int{2, 50, 1000} {
				m, h := memServer(t, n, config{})
				if rec := request(h, page); rec.Code != 200 {
					t.Fatalf("%d rows: status %d", n, rec.Code)
				}
				counts = append(counts, m.calls.Load())
			}
			if counts[0] != counts[1] || counts[1] != counts[2] {
				t.Errorf("backend calls for 2, 50, 1000 rows: %v, want the same", counts)
			}
			t.Logf("%s: %d backend calls whatever the rows", page, counts[0])
		})
	}
}

// BenchmarkNamespacePage1000Deployments measures the server time of
// /namespaces/{ns} with 1,000 deployments (and their 1,000 pods), the backend
// answering from memory.
func BenchmarkNamespacePage1000Deployments(b *testing.B) {
	_, h := memServer(b, 1000, config{})
	b.ReportAllocs()
	for b.Loop() {
		if rec := request(h, "/namespaces/shop"); rec.Code != 200 {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

func TestSlowOrEmptyBackendStillRendersEveryPage(t *testing.T) {
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // until the body is read, the server cannot see the client leave
		<-r.Context().Done()        // never answers before the client gives up
	}))
	defer hang.Close()
	empty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasSuffix(r.URL.Path, "/targets") {
			fmt.Fprint(w, `{"status":"success","data":{"activeTargets":[],"droppedTargets":[]}}`)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/query_range") {
			fmt.Fprint(w, `{"status":"success","data":{"resultType":"matrix","result":[]}}`)
			return
		}
		fmt.Fprint(w, `{"status":"success","data":{"resultType":"vector","result":[]}}`)
	}))
	defer empty.Close()
	for _, tc := range []struct {
		name, backend string
		// want is in the page's text; banner says whether a banner is expected.
		want   string
		banner bool
	}{
		{"slow backend times out into a banner", hang.URL, "context deadline exceeded", true},
		{"empty backend says there is nothing, without a banner", empty.URL, "no deployments with proxies in namespace shop", false},
	} {
		for _, page := range []string{"/namespaces", "/namespaces/shop", "/namespaces/shop/deployments/web", "/namespaces/shop/pods/web-0"} {
			t.Run(tc.name+" "+page, func(t *testing.T) {
				_, h := newTestServer(t, config{PrometheusURL: tc.backend, QueryTimeout: 300 * time.Millisecond})
				rec := request(h, page)
				if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
					t.Fatalf("status %d %s, want a 200 page", rec.Code, rec.Header().Get("Content-Type"))
				}
				doc := parseDoc(t, rec.Body.String())
				if doc.Find(`[data-testid=nav]`).Length() != 1 {
					t.Error("no navigation")
				}
				if got := doc.Find(`[data-testid=backend-banner]`).Length() > 0; got != tc.banner {
					t.Errorf("banner shown %v, want %v", got, tc.banner)
				}
				if page == "/namespaces/shop" && !strings.Contains(doc.Text(), tc.want) {
					t.Errorf("page does not say %q", tc.want)
				}
				if tc.banner && !strings.Contains(doc.Find(`[data-testid=backend-banner]`).Text(), tc.backend) {
					t.Errorf("banner does not name the backend %s", tc.backend)
				}
			})
		}
	}
}

// FuzzPageURL: whatever a pasted link holds, the dashboard answers a page or
// a client error, never a server error, and reflects nothing unescaped.
func FuzzPageURL(f *testing.F) {
	for _, seed := range [][3]string{{"shop", "1m", "success"}, {"a\"b", "5m", "-rps"}, {"<script>alert(1)</script>", "2m", "<img src=x onerror=alert(1)>"},
		{"", "", ""}, {"x/../y", "1h", "-"}, {"<b onclick=x>", "1m", "name"}} {
		f.Add(seed[0], seed[1], seed[2])
	}
	_, h := memServer(f, 3, config{})
	f.Fuzz(func(t *testing.T, ns, window, sort string) {
		target := "/namespaces/" + url.PathEscape(ns) + "/deployments/dep-1?window=" + url.QueryEscape(window) + "&sort=" + url.QueryEscape(sort)
		rec := request(h, target)
		switch rec.Code {
		case 200, 400, 404:
		case 301, 308: // the router cleaning a path like x/../y
		default:
			t.Fatalf("GET %s: status %d", target, rec.Code)
		}
		doc := parseDoc(t, rec.Body.String())
		if n := doc.Find(`script:not([src]), [onerror], [onload], [onclick], [onmouseover]`).Length(); n > 0 {
			t.Fatalf("GET %s: %d injected script elements or handlers", target, n)
		}
	})
}

func TestEveryLinkHonoursBasePath(t *testing.T) {
	_, h := memServer(t, 3, config{BasePath: "/mesh"})
	rec := request(h, "/mesh/namespaces/shop/deployments/dep-1")
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	doc := parseDoc(t, rec.Body.String())
	n := 0
	for _, attr := range []string{"href", "src", "hx-get"} {
		doc.Find("[" + attr + "]").Each(func(_ int, el *goquery.Selection) {
			v, _ := el.Attr(attr)
			if strings.HasPrefix(v, "/") {
				n++
				if !strings.HasPrefix(v, "/mesh/") {
					t.Errorf("%s=%q escapes the base path", attr, v)
				}
			}
		})
	}
	if n < 10 {
		t.Errorf("only %d same-origin URLs checked", n)
	}
}

// TestJSONTwinsFollowEveryPageParameter: for every sort and window a page
// takes, its JSON twin lists the same rows in the same order as the page.
func TestJSONTwinsFollowEveryPageParameter(t *testing.T) {
	_, h := memServer(t, 30, config{})
	type table struct {
		testID string
		rows   func(body []byte) ([]api.Row, error)
		name   func(api.Row) string
	}
	rowsOf := func(field string) func([]byte) ([]api.Row, error) {
		return func(b []byte) ([]api.Row, error) {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, err
			}
			var tb api.Table
			err := json.Unmarshal(m[field], &tb)
			return tb.Rows, err
		}
	}
	pages := map[string][]table{
		"/namespaces/shop": {
			{"deployments", rowsOf("deployments"), labelName(api.LabelDeployment)},
			{"pods", rowsOf("pods"), labelName(api.LabelPod)},
		},
		"/namespaces/shop/deployments/dep-1": {
			{"inbound", rowsOf("inbound"), edgeName(false)},
			{"outbound", rowsOf("outbound"), edgeName(true)},
			{"pods", rowsOf("pods"), labelName(api.LabelPod)},
		},
	}
	var sorts []string
	for k := range sortKeys {
		sorts = append(sorts, k, "-"+k)
	}
	sorts = append(sorts, "", "worst", "-worst")
	for path, tables := range pages {
		for _, sort := range sorts {
			for _, window := range []string{"", "10s", "1h"} {
				q := url.Values{}
				if sort != "" {
					q.Set("sort", sort)
				}
				if window != "" {
					q.Set("window", window)
				}
				page := request(h, path+"?"+q.Encode())
				twin := request(h, "/api/v1"+path+"?"+q.Encode())
				if page.Code != 200 || twin.Code != 200 {
					t.Fatalf("%s?%s: page %d, twin %d", path, q.Encode(), page.Code, twin.Code)
				}
				doc, err := goquery.NewDocumentFromReader(page.Body)
				if err != nil {
					t.Fatal(err)
				}
				body := twin.Body.Bytes()
				for _, tb := range tables {
					var onPage []string
					doc.Find(`[data-testid=` + tb.testID + `] [data-testid=row]`).Each(func(_ int, s *goquery.Selection) {
						onPage = append(onPage, s.AttrOr("data-name", ""))
					})
					rows, err := tb.rows(body)
					if err != nil {
						t.Fatal(err)
					}
					var inJSON []string
					for _, r := range rows {
						inJSON = append(inJSON, tb.name(r))
					}
					if len(onPage) == 0 || strings.Join(onPage, ",") != strings.Join(inJSON, ",") {
						t.Errorf("%s?%s %s: page %v, JSON %v", path, q.Encode(), tb.testID, onPage, inJSON)
					}
				}
			}
		}
	}
}

func TestDeploymentPageShowsMTLSAndWarnsOfExpiringCertificates(t *testing.T) {
	m, h := memServer(t, 3, config{})
	self := api.Scope{Direction: "inbound", Match: []api.Match{{Label: api.LabelNamespace, Value: "shop"}, {Label: api.LabelDeployment, Value: "dep-1"}}}
	m.answers.Store(api.CertExpiryQuery(self, certWarnWithin), model.Vector{
		{Metric: model.Metric{"namespace": "shop", "pod": "dep-1-0"}, Value: 7200},
	})
	rec := request(h, "/namespaces/shop/deployments/dep-1")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	doc, err := goquery.NewDocumentFromReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := doc.Find(`[data-testid="cert-warning"]`).Text(); !strings.Contains(got, "pod shop/dep-1-0 ends in 2h0m0s") {
		t.Errorf("cert warning %q", got)
	}
	if got := doc.Find(`[data-testid="summary-mtls"]`).Text(); got != "50% mTLS" {
		t.Errorf("summary mTLS %q, want 50%% mTLS", got)
	}
	if got := doc.Find(`[data-testid="outbound"] [data-testid="mtls"]`).First().Text(); got != "50% mTLS" {
		t.Errorf("outbound edge mTLS %q", got)
	}
	if got := doc.Find(`[data-testid="outbound"] th`).Eq(8).Text(); got != "mTLS" {
		t.Errorf("outbound header %q, want mTLS", got)
	}
	// Another deployment's page: no warning.
	doc2, _ := goquery.NewDocumentFromReader(request(h, "/namespaces/shop/deployments/dep-2").Body)
	if n := doc2.Find(`[data-testid="cert-warning"]`).Length(); n != 0 {
		t.Errorf("%d cert warnings on a deployment whose certificates are fine", n)
	}
}
