package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshscope/meshscope/proxy/taphub"
)

// adminRoutes mounts every admin endpoint: metrics, readiness, liveness, log level and tap, behind the
// Host check.
func (p *proxy) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if !p.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if p.mtls != nil && !p.mtls.id.Ready() {
			// Linkerd's proxy is not ready before it has an identity either: traffic sent to it now could
			// not be secured.
			http.Error(w, "not ready: no identity certificate yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /tap", &taphub.Handler{Hub: p.tap, Token: p.cfg.TapToken, Log: p.log})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "live\n")
	})
	mux.HandleFunc("GET /log-level", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.ToLower(p.level.Level().String())+"\n")
	})
	mux.HandleFunc("PUT /log-level", func(w http.ResponseWriter, r *http.Request) {
		// The one mutation: from the pod itself (kubectl port-forward arrives on loopback), or with the
		// tap token; never from whoever reaches the admin port.
		if !taphub.Loopback(r.RemoteAddr) && (p.cfg.TapToken == "" || !taphub.BearerIs(r, p.cfg.TapToken)) {
			http.Error(w, "log level: only loopback clients, or clients sending the --tap-token as a bearer token, may change it", http.StatusForbidden)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64))
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(strings.TrimSpace(string(body)))); err != nil {
			http.Error(w, fmt.Sprintf("bad level %q: want debug, info, warn or error", strings.TrimSpace(string(body))), http.StatusBadRequest)
			return
		}
		old := p.level.Level()
		p.level.Set(level)
		p.log.Info("log level changed", "from", old, "to", level, "peer", r.RemoteAddr)
		io.WriteString(w, strings.ToLower(level.String())+"\n")
	})
	return p.adminHostCheck(mux)
}

// adminHostCheck refuses requests whose Host is not localhost or an IP address and does not match
// --admin-enforced-host: a web page whose name its attacker points at 127.0.0.1 (DNS rebinding, through
// kubectl port-forward) would otherwise read /metrics and loopback-only /tap, and set the log level. The
// probes stay open: they say nothing, and the kubelet must reach them.
func (p *proxy) adminHostCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/live" || r.URL.Path == "/ready" || p.adminHostAllowed(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		http.Error(w, fmt.Sprintf("admin: Host %q is not localhost or an IP address; start the proxy with --admin-enforced-host set to a regex matching it to allow it", r.Host), http.StatusForbidden)
	})
}

func (p *proxy) adminHostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(host); err == nil || strings.EqualFold(host, "localhost") {
		return true
	}
	return p.cfg.AdminHost != nil && p.cfg.AdminHost.MatchString(host)
}
