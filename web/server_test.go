package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// newTestServer returns the dashboard's handler for cfg, with a backend that
// is not listening unless cfg names one.
func newTestServer(t testing.TB, cfg config) (*server, http.Handler) {
	t.Helper()
	if cfg.PrometheusURL == "" {
		cfg.PrometheusURL = "http://127.0.0.1:1"
	}
	s, err := newServer(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, s.routes()
}

func get(h http.Handler, host, target string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, target, nil)
	req.Host = host
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHostCheckRunsBeforeRouting(t *testing.T) {
	for _, tc := range []struct {
		name     string
		enforced string
		host     string
		path     string
		want     int
	}{
		{"localhost with port is allowed", "", "localhost:8084", "/healthz", 200},
		{"loopback v4 is allowed", "", "127.0.0.1:9999", "/healthz", 200},
		{"loopback v6 is allowed", "", "[::1]:8084", "/healthz", 200},
		{"bare localhost is allowed", "", "localhost", "/healthz", 200},
		{"foreign host is refused on a probe", "", "evil.example:8084", "/healthz", 403},
		{"foreign host is refused on a missing page", "", "evil.example", "/no/such/page", 403},
		{"foreign host is refused on static files", "", "evil.example", "/static/style.css", 403},
		{"localhost suffix trick is refused", "", "localhost.evil.example", "/healthz", 403},
		{"enforced host admits its own name", `dash\.example\.com(:\d+)?`, "dash.example.com:443", "/healthz", 200},
		{"enforced host is anchored", `dash\.example\.com`, "dash.example.com.evil.net", "/healthz", 403},
		{"enforced host replaces the default", `dash\.example\.com`, "localhost", "/healthz", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg config
			if tc.enforced != "" {
				if err := (regexpFlag{&cfg.EnforcedHost}).Set(tc.enforced); err != nil {
					t.Fatal(err)
				}
			}
			_, h := newTestServer(t, cfg)
			rec := get(h, tc.host, tc.path)
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.want, rec.Body)
			}
			if tc.want == 403 {
				body := rec.Body.String()
				for _, want := range []string{tc.host, "--enforced-host", cfg.enforcedHost().String()} {
					if !strings.Contains(body, want) {
						t.Errorf("rejection page does not name %q:\n%s", want, body)
					}
				}
				if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("rejection content type %q, want text/plain", ct)
				}
			}
		})
	}
}

func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	_, h := newTestServer(t, config{})
	for _, path := range []string{"/healthz", "/static/style.css", "/no/such/page", "/metrics"} {
		t.Run(path, func(t *testing.T) {
			rec := get(h, "localhost:8084", path)
			csp := rec.Header().Get("Content-Security-Policy")
			if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("CSP %q lacks frame-ancestors 'none' or script-src 'self'", csp)
			}
			if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
				t.Errorf("CSP %q allows inline or eval script", csp)
			}
			if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", got)
			}
		})
	}
}

func TestURLHelperHonoursBasePath(t *testing.T) {
	for _, tc := range []struct {
		name, base, pattern string
		segs                []string
		want                string
	}{
		{"root", "", "/namespaces", nil, "/namespaces"},
		{"prefixed", "/mesh", "/namespaces", nil, "/mesh/namespaces"},
		{"segments filled in order", "/mesh", "/namespaces/{ns}/deployments/{name}", []string{"shop", "web"}, "/mesh/namespaces/shop/deployments/web"},
		{"segments escaped", "", "/namespaces/{ns}", []string{"a/b?c"}, "/namespaces/a%2Fb%3Fc"},
		{"static dir keeps its slash", "/mesh", "/static/", nil, "/mesh/static/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &server{cfg: config{BasePath: tc.base}}
			if got := s.url(tc.pattern, nil, tc.segs...); got != tc.want {
				t.Errorf("url = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBasePathServesUnderPrefixOnly(t *testing.T) {
	_, h := newTestServer(t, config{BasePath: "/mesh"})
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/mesh/healthz", 200},
		{"/mesh/static/" + "app.js", 200},
		{"/healthz", 404},
	} {
		if rec := get(h, "localhost", tc.path); rec.Code != tc.want {
			t.Errorf("GET %s: status %d, want %d", tc.path, rec.Code, tc.want)
		}
	}
	rec := get(h, "localhost", "/")
	if loc := rec.Header().Get("Location"); rec.Code != http.StatusFound || loc != "/mesh/namespaces" {
		t.Errorf("GET / = %d to %q, want a redirect to /mesh/namespaces", rec.Code, loc)
	}
}

func TestReadyzReportsBackendDown(t *testing.T) {
	_, h := newTestServer(t, config{})
	rec := get(h, "localhost", "/readyz")
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "http://127.0.0.1:1") {
		t.Fatalf("readyz = %d %q, want 503 naming the backend", rec.Code, rec.Body)
	}
}

func TestMetricsServesOwnRegistry(t *testing.T) {
	_, h := newTestServer(t, config{})
	get(h, "localhost", "/healthz")
	rec := get(h, "localhost", "/metrics")
	if !regexp.MustCompile(`meshscope_web_http_requests_total\{code="200",route="/healthz"\} 1`).MatchString(rec.Body.String()) {
		t.Errorf("metrics lack the healthz request:\n%s", rec.Body)
	}
}

func TestFlagsAndTheirEnvironmentTwins(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		wantURL string
		wantWin string
		wantErr string
	}{
		{"defaults", nil, nil, "http://127.0.0.1:9090", "1m0s", ""},
		{"environment twin applies", nil, map[string]string{"MESHSCOPE_WEB_PROMETHEUS_URL": "http://prom:9090", "MESHSCOPE_WEB_WINDOW": "5m"}, "http://prom:9090", "5m0s", ""},
		{"flag wins over its twin", []string{"--prometheus-url", "http://flag:9090"}, map[string]string{"MESHSCOPE_WEB_PROMETHEUS_URL": "http://env:9090"}, "http://flag:9090", "1m0s", ""},
		{"bad twin names itself", nil, map[string]string{"MESHSCOPE_WEB_QUERY_TIMEOUT": "soon"}, "", "", "MESHSCOPE_WEB_QUERY_TIMEOUT"},
		{"stray argument is refused", []string{"extra"}, nil, "", "", "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg config
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			backendFlags(fs, &cfg)
			err := parseFlags(fs, tc.args, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.PrometheusURL != tc.wantURL || cfg.Window.String() != tc.wantWin {
				t.Errorf("got %s %s, want %s %s", cfg.PrometheusURL, cfg.Window, tc.wantURL, tc.wantWin)
			}
		})
	}
}

func TestCommandsRefuseBadUsageInOneLineWithExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--base-path", "mesh/"}, "--base-path"},
		{[]string{"serve", "--window", "2m"}, "flag -window"},
		{[]string{"serve", "--prometheus-url", "ftp://x"}, "--prometheus-url"},
		{[]string{"serve", "--enforced-host", "("}, "enforced-host"},
		{[]string{"top", "--no-such-flag"}, "no-such-flag"},
		{[]string{"tap", "deploy/web", "-n", "shop", "--no-such-flag"}, "no-such-flag"},
		{[]string{"stat"}, "missing RESOURCE"},
		{[]string{"stat", "deploy", "-n", "shop", "web", "extra"}, `unexpected argument "extra"`},
		{[]string{"stat", "svc"}, `unknown resource "svc"`},
		{[]string{"stat", "deploy", "--window", "bogus"}, "want one of 10s, 1m, 5m, 15m, 1h"},
		{[]string{"top", "--window", "2m"}, "want one of 10s, 1m, 5m, 15m, 1h"},
		{[]string{"install", "--no-such-flag"}, "no-such-flag"},
		{[]string{"install", "--injector-replicas", "0"}, "--injector-replicas 0: want 1 or more"},
		{[]string{"install", "--namespace", "Mesh"}, `namespace "Mesh"`},
		{[]string{"check", "-o", "yaml"}, `-o "yaml": want text or json`},
		{[]string{"dashboard", "--port", "70000"}, "--port 70000: want 0 to 65535"},
	} {
		var stdout, stderr strings.Builder
		code := cli(context.Background(), tc.args, &stdout, &stderr)
		if code != 2 || strings.Count(stderr.String(), tc.want) != 1 {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s once", tc.args, code, stderr.String(), tc.want)
		}
		if strings.Contains(tc.want, "flag") && strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 {
			t.Errorf("%v: stderr %q, want one line", tc.args, stderr.String())
		}
	}
}

func TestHelpListsEverySubcommand(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		var stdout, stderr strings.Builder
		if code := cli(context.Background(), args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d", args, code)
		}
		for _, sub := range []string{"serve", "stat", "top", "tap", "routes", "install", "check", "dashboard"} {
			if !strings.Contains(stdout.String(), "web "+sub) {
				t.Errorf("%v: usage does not list %s:\n%s", args, sub, stdout.String())
			}
		}
	}
}
