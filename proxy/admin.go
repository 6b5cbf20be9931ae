package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshscope/meshscope/proxy/taphub"
)

// adminRoutes mounts every admin endpoint: metrics, readiness, liveness, log level and tap.
func (p *proxy) adminRoutes() *http.ServeMux {
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
	return mux
}
