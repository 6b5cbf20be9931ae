package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/a-h/templ"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/static"
	"github.com/meshscope/meshscope/views"
)

// server holds what the dashboard's handlers share. Handlers live in files
// by topic: pages.go, livetap.go and tapws.go.
type server struct {
	cfg config
	log *slog.Logger
	// stop ends with the process: long-lived streams (the live tap websocket)
	// select on it, because http.Server.Shutdown does not wait for hijacked
	// connections.
	stop context.Context
	// hijacked counts the live websockets still open, so that run can wait for
	// their closing handshakes after Shutdown, which does not.
	hijacked sync.WaitGroup
	reg      *prometheus.Registry
	metrics  *serverMetrics
	// prom is the one way to the metrics backend.
	prom *api.Querier
	// proxies finds the proxies to tap; nil means prom's targets.
	proxies api.ProxyFinder
	// dataSince spares pages of an established mesh the window query.
	dataSince sinceCache
	// identity is the dashboard's workload identity, which taps the proxies
	// over mutual TLS; nil with identity off.
	identity *meshid.Client
	// tapRefused counts the proxies the live views did not tap, or that
	// refused them, for security's sake, by reason.
	tapRefused *prometheus.CounterVec
}

// serverMetrics are the dashboard's own metrics, on its own registry.
type serverMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	rejected prometheus.Counter
	queries  *prometheus.HistogramVec
}

func newServer(stop context.Context, cfg config, log *slog.Logger) (*server, error) {
	reg := prometheus.NewRegistry()
	m := &serverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshscope_web_http_requests_total",
			Help: "Dashboard HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshscope_web_http_request_duration_seconds",
			Help:    "Dashboard HTTP request duration by route pattern.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshscope_web_host_rejected_total",
			Help: "Requests refused because their Host header is not allowed (DNS rebinding protection).",
		}),
	}
	m.queries = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "meshscope_web_prometheus_call_duration_seconds",
		Help:    "Calls to the metrics backend by kind (query, query_range, targets) and outcome (ok, error).",
		Buckets: prometheus.DefBuckets,
	}, []string{"call", "outcome"})
	reg.MustRegister(m.requests, m.duration, m.rejected, m.queries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	prom, err := api.Dial(cfg.prometheusURL(), api.Options{Timeout: cfg.queryTimeout()})
	if err != nil {
		return nil, err
	}
	prom.Log = log
	prom.Observe = func(call string, d time.Duration, err error) {
		outcome := "ok"
		if err != nil {
			outcome = "error"
		}
		m.queries.WithLabelValues(call, outcome).Observe(d.Seconds())
	}
	proxies, err := cfg.proxyFinder(os.Getenv)
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, log: log, stop: stop, reg: reg, metrics: m, prom: prom, proxies: proxies,
		tapRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshscope_web_tap_refused_total",
			Help: "Proxies the live views did not tap, or that refused them, for security's sake, by reason: identity_mismatch (the proxy proved another identity than its pod's ServiceAccount's), refused_by_peer (it refused the dashboard's), unknown_authority, expired, no_local_identity (the dashboard has no certificate yet), identity_unknown, token_withheld (outside --tap-token-networks).",
		}, []string{"reason"})}
	reg.MustRegister(s.tapRefused)
	if cfg.IdentityAddr != "" {
		if s.identity, err = newIdentity(cfg, log); err != nil {
			return nil, err
		}
		reg.MustRegister(s.identity.Collector())
		go s.identity.Run(stop)
	}
	return s, nil
}

// newIdentity makes the dashboard's workload identity: a key in memory, and
// the certificate the issuer signs for its ServiceAccount once Run fetches it.
func newIdentity(cfg config, log *slog.Logger) (*meshid.Client, error) {
	pool, _, err := meshid.LoadTrustAnchors(cfg.IdentityTrustAnchors)
	if err != nil {
		return nil, fmt.Errorf("--identity-trust-anchors: %w", err)
	}
	return meshid.NewClient(meshid.ClientConfig{Addr: cfg.IdentityAddr, ServerName: cfg.IdentityServerName,
		Anchors: pool, TokenFile: cfg.IdentityTokenFile, Log: log})
}

// routes builds the dashboard's handler. The Host allowlist and the security
// headers wrap the whole router, so they run before routing on every route,
// including 404s.
func (s *server) routes() http.Handler {
	home := func(w http.ResponseWriter, req *http.Request) {
		http.Redirect(w, req, s.url("/namespaces", nil), http.StatusFound)
	}
	r := chi.NewRouter()
	r.Use(s.instrument)
	r.Get("/", home)
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	r.Get("/readyz", s.handle(s.readyz))
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	r.Method(http.MethodGet, "/static/*", http.StripPrefix(s.cfg.BasePath+"/static/", staticHandler()))
	s.pageRoutes(r)
	s.liveRoutes(r)
	r.NotFound(s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return notFound("no page at %s", r.URL.Path)
	}))

	var h http.Handler = r
	if s.cfg.BasePath != "" {
		root := chi.NewRouter()
		root.Get("/", home)
		root.Mount(s.cfg.BasePath, r)
		h = root
	}
	return s.hostCheck(securityHeaders(h))
}

func staticHandler() http.Handler {
	files := http.FileServerFS(static.FS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// htmx carries its version in its name; the rest is small.
		w.Header().Set("Cache-Control", "public, max-age=300")
		files.ServeHTTP(w, r)
	})
}

// hostCheck refuses requests whose Host does not match --enforced-host: a
// page on an attacker's domain resolving to 127.0.0.1 (DNS rebinding) would
// otherwise read the dashboard and drive the tap.
func (s *server) hostCheck(next http.Handler) http.Handler {
	re := s.cfg.enforcedHost()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if re.MatchString(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		s.metrics.rejected.Inc()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, "Meshscope refused this request: its Host header %q does not match the allowed hosts /%s/.\n\n"+
			"This check protects the dashboard against DNS rebinding. If you reach the dashboard through a name of\n"+
			"your own (an ingress, a tunnel), start it with --enforced-host set to a regex matching that host,\n"+
			"e.g. --enforced-host='^dashboard\\.example\\.com(:\\d+)?$'.\n", r.Host, re.String())
	})
}

// contentSecurityPolicy allows only the dashboard's own scripts, styles and
// connections (the tap websocket is same-origin), and no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController (and the websocket upgrade) reach the
// underlying connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// instrument counts requests by chi route pattern (bounded, unlike raw paths).
func (s *server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// httpError is an error with the status and the message the user sees; the
// cause goes to the log only.
type httpError struct {
	status int
	msg    string
	err    error
}

func (e *httpError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *httpError) Unwrap() error { return e.err }

func notFound(format string, args ...any) error {
	return &httpError{status: http.StatusNotFound, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// handlerFunc is a handler that returns its error instead of writing it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle adapts h, and is the one place that writes error responses: JSON
// for /api/ paths, a page with the shell and navigation otherwise. A request
// the client cancelled gets no response and is no server error.
func (s *server) handle(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		if r.Context().Err() != nil && errors.Is(err, r.Context().Err()) {
			s.log.Debug("request cancelled", "path", r.URL.Path)
			return
		}
		status, msg := http.StatusInternalServerError, "internal error"
		var he *httpError
		if errors.As(err, &he) {
			status, msg = he.status, he.msg
		}
		if status >= 500 {
			s.log.Error("request failed", "path", r.URL.Path, "err", err)
		}
		if s.isAPI(r) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			// encoding/json, not strconv.Quote: Go's \x escapes are not JSON.
			if err := json.NewEncoder(w).Encode(struct {
				Error string `json:"error"`
			}{msg}); err != nil {
				s.log.Debug("writing error", "err", err)
			}
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		page := views.ErrorPage(http.StatusText(status), msg)
		if err := views.Layout(s.shell(r, http.StatusText(status), nil)).Render(templ.WithChildren(r.Context(), page), w); err != nil {
			s.log.Debug("writing error page", "err", err)
		}
	}
}

func (s *server) isAPI(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, s.cfg.BasePath+"/api/")
}

// render writes a full page with status, or only its data fragment when htmx
// asks for it (the auto-refresh swaps the fragment in place).
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, shell views.Shell, page, fragment templ.Component) error {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Vary", "HX-Request")
	// 200 stays implicit until the first flush, so that a render error before
	// it can still become handle's error page.
	if status != http.StatusOK {
		w.WriteHeader(status)
	}
	// templ writes many small pieces; one buffer turns them into few writes.
	bw := bufio.NewWriterSize(w, 32<<10)
	var err error
	if fragment != nil && r.Header.Get("HX-Request") == "true" {
		err = fragment.Render(r.Context(), bw)
	} else {
		err = views.Layout(shell).Render(templ.WithChildren(r.Context(), page), bw)
	}
	if err != nil {
		return err
	}
	return bw.Flush()
}

// url is the one builder of the dashboard's own URLs: it prefixes
// --base-path, escapes every path segment and encodes the query.
// url("/namespaces/{ns}", nil, "a b") fills the braces in order.
func (s *server) url(pattern string, q url.Values, segments ...string) string {
	var b strings.Builder
	b.WriteString(s.cfg.BasePath)
	for part := range strings.SplitSeq(strings.TrimPrefix(pattern, "/"), "/") {
		b.WriteByte('/')
		if strings.HasPrefix(part, "{") && len(segments) > 0 {
			part, segments = url.PathEscape(segments[0]), segments[1:]
		}
		b.WriteString(part)
	}
	if len(q) > 0 {
		b.WriteByte('?')
		b.WriteString(q.Encode())
	}
	return b.String()
}

// shell is the layout of every page; active names the nav entry to mark.
func (s *server) shell(r *http.Request, title string, banners []string) views.Shell {
	nav := []views.NavItem{
		{Label: "Namespaces", Href: s.url("/namespaces", nil)},
		{Label: "Tap", Href: s.url("/tap", nil)},
		{Label: "Top", Href: s.url("/top", nil)},
	}
	for i := range nav {
		nav[i].Active = r.URL.Path == nav[i].Href || strings.HasPrefix(r.URL.Path, nav[i].Href+"/")
	}
	return views.Shell{
		Title:      title,
		HomeHref:   s.url("/namespaces", nil),
		Nav:        nav,
		StaticHref: s.url("/static/", nil),
		HTMX:       static.HTMX,
		Banners:    banners,
		Theme:      theme(r),
	}
}

// theme is the colour scheme the toggle chose, from its cookie: "dark",
// "light", or "" to follow the browser's prefers-color-scheme.
func theme(r *http.Request) string {
	if c, err := r.Cookie("theme"); err == nil && (c.Value == "dark" || c.Value == "light") {
		return c.Value
	}
	return ""
}

// readyz reports whether the metrics backend answers: the dashboard serves
// degraded pages without it, but is not ready to show data.
func (s *server) readyz(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.prom.Ping(r.Context()); err != nil {
		if r.Context().Err() != nil {
			return r.Context().Err()
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: prometheus at %s: %v\n", s.prom.Backend, err)
		return nil
	}
	fmt.Fprintf(w, "ready: prometheus at %s answers\n", s.prom.Backend)
	return nil
}

// windowNames are the rate windows offered by the window selector.
var windowNames = map[time.Duration]string{
	10 * time.Second: "10s",
	time.Minute:      "1m",
	5 * time.Minute:  "5m",
	15 * time.Minute: "15m",
	time.Hour:        "1h",
}
