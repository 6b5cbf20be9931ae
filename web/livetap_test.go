package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestLivePages(t *testing.T) {
	cases := []struct {
		name     string
		basePath string
		target   string
		status   int
		// section is the live view's element; empty when the page must not start one.
		section, socket, query string
		// field and value: one filter input of the form and what it must show.
		field, value string
		errorHas     string
	}{
		{name: "tap page carries its filter to the socket and the form", target: "/tap?deployment=web&hide_path=%2Fhealth&max_rps=50&namespace=shop&path=%2Fapi",
			status: http.StatusOK, section: "live-calls", socket: "/api/v1/tap/ws",
			query: "deployment=web&max_rps=50&namespace=shop&path=%2Fapi", field: "filter-path", value: "/api"},
		{name: "tap page without a filter taps everything", target: "/tap",
			status: http.StatusOK, section: "live-calls", socket: "/api/v1/tap/ws", query: "", field: "filter-namespace", value: ""},
		{name: "top page uses the top socket", target: "/top?dst_deployment=voting&namespace=shop",
			status: http.StatusOK, section: "live-top", socket: "/api/v1/top/ws",
			query: "dst_deployment=voting&namespace=shop", field: "filter-dst_deployment", value: "voting"},
		{name: "under a base path every URL has the prefix", basePath: "/mesh", target: "/mesh/tap?namespace=shop",
			status: http.StatusOK, section: "live-calls", socket: "/mesh/api/v1/tap/ws", query: "namespace=shop"},
		{name: "a bad filter is a 400 showing the form with the error", target: "/tap?namespace=shop&status=6xx",
			status: http.StatusBadRequest, field: "filter-status", value: "6xx", errorHas: `"status"`},
		{name: "a bad name is a 400 naming it", target: "/top?deployment=Web_1",
			status: http.StatusBadRequest, field: "filter-deployment", value: "Web_1", errorHas: "deployment"},
		{name: "an unknown parameter is a 400 naming it", target: "/tap?colour=red",
			status: http.StatusBadRequest, errorHas: "colour"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, h := newTestServer(t, config{BasePath: tc.basePath})
			if tc.status == http.StatusOK {
				// The canonical URL is served as is: no redirect loop.
				if rec := get(h, "localhost:8084", tc.target); rec.Code != http.StatusOK {
					t.Fatalf("%s answered %d, Location %q", tc.target, rec.Code, rec.Header().Get("Location"))
				}
			}
			rec := get(h, "localhost:8084", tc.target)
			if rec.Code != tc.status || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
				t.Fatalf("status %d, content type %q; want %d, text/html", rec.Code, rec.Header().Get("Content-Type"), tc.status)
			}
			doc := parseDoc(t, rec.Body.String())
			live := doc.Find("[data-live]")
			if tc.section == "" {
				if live.Length() != 0 {
					t.Error("a live view starts despite the bad filter")
				}
			} else {
				if testid, _ := live.Attr("data-testid"); testid != tc.section {
					t.Errorf("live view %q, want %q", testid, tc.section)
				}
				if socket, _ := live.Attr("data-socket"); socket != tc.socket {
					t.Errorf("data-socket %q, want %q", socket, tc.socket)
				}
				if query, _ := live.Attr("data-query"); query != tc.query {
					t.Errorf("data-query %q, want %q", query, tc.query)
				}
				if src, _ := doc.Find(`script[src$="tap.js"]`).Attr("src"); src != tc.basePath+"/static/tap.js" {
					t.Errorf("script %q, want %s/static/tap.js", src, tc.basePath)
				}
			}
			if tc.field != "" {
				if v, _ := doc.Find(`[data-testid="` + tc.field + `"]`).Attr("value"); v != tc.value {
					t.Errorf("form field %s shows %q, want %q", tc.field, v, tc.value)
				}
			}
			if msg := doc.Find("[data-testid=filter-error]").Text(); !strings.Contains(msg, tc.errorHas) || (tc.errorHas == "") != (msg == "") {
				t.Errorf("filter error %q, want one containing %q", msg, tc.errorHas)
			}
		})
	}
}

func TestLivePagesRedirectToTheirCanonicalURL(t *testing.T) {
	_, h := newTestServer(t, config{BasePath: "/mesh"})
	for target, want := range map[string]string{
		"/mesh/tap?namespace=shop&pod=&method=&hide_path=/health&deployment=web&max_rps=": "/mesh/tap?deployment=web&hide_path=%2Fhealth&namespace=shop",
		"/mesh/top?status=5xx&namespace=shop&direction=":                                  "/mesh/top?namespace=shop&status=5xx",
		"/mesh/tap?method=get": "/mesh/tap?method=GET",
	} {
		rec := get(h, "localhost:8084", target)
		if rec.Code != http.StatusFound || rec.Header().Get("Location") != want {
			t.Errorf("%s: %d to %q, want 302 to %q", target, rec.Code, rec.Header().Get("Location"), want)
		}
	}
}

func TestLivePageEscapesTheFilter(t *testing.T) {
	_, h := newTestServer(t, config{})
	rec := get(h, "localhost:8084", "/tap?"+url.Values{"path": {`/"><script>alert(1)</script>`}}.Encode())
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if strings.Contains(rec.Body.String(), "<script>alert") {
		t.Error("the path filter reached the page unescaped")
	}
	if v, _ := parseDoc(t, rec.Body.String()).Find("[data-testid=filter-path]").Attr("value"); v != `/"><script>alert(1)</script>` {
		t.Errorf("form shows %q, want the path as typed", v)
	}
}

func TestDeploymentAndPodPagesHaveTheLiveCallsPanel(t *testing.T) {
	_, h := newTestServer(t, config{BasePath: "/mesh"}) // the backend is down: the panel does not need it
	for target, query := range map[string]string{
		"/mesh/namespaces/shop/deployments/web": "deployment=web&namespace=shop",
		"/mesh/namespaces/shop/pods/web-0":      "namespace=shop&pod=web-0",
	} {
		rec := get(h, "localhost:8084", target)
		panel := parseDoc(t, rec.Body.String()).Find("[data-testid=live-calls]")
		if q, _ := panel.Attr("data-query"); q != query {
			t.Errorf("%s: live calls panel with query %q, want %q", target, q, query)
		}
		if href, _ := panel.Find("[data-testid=open-tap]").Attr("href"); href != "/mesh/tap?"+query {
			t.Errorf("%s: panel links to %q, want the tap page with its filter", target, href)
		}
	}
}
