package main

import (
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshscope/meshscope/api"
)

// liveRoutes registers the live tap's routes (/tap, /top, /api/v1/tap/ws,
// /api/v1/top/ws) on the dashboard's router, inside the Host check and the
// security headers; the dashboard calls it from server.routes.
func (s *server) liveRoutes(r chi.Router) {
	fanin := &api.FanIn{Targets: s.prom, Finder: s.proxies, Rates: s.prom.ProxyRates, Token: s.cfg.TapToken, TokenNetworks: s.cfg.TapTokenNetworks, Logger: s.log,
		Refused: func(reason string) { s.tapRefused.WithLabelValues(reason).Inc() }}
	if s.identity != nil {
		fanin.Identity = s.identity
	}
	ls := &liveSockets{
		fanin: fanin,
		log:   s.log,
		stop:  s.stop,
		open:  &s.hijacked,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshscope_web_live_sockets_refused_total",
			Help: "Live view websockets refused by reason: total (all taken), client (its address has a quarter of them), no-origin (sockets without an Origin have an eighth).",
		}, []string{"reason"}),
	}
	// routes may be built more than once on one server (tests swap the backend and build them again):
	// the counter is registered once and shared.
	if err := s.reg.Register(ls.refused); err != nil {
		are, ok := err.(prometheus.AlreadyRegisteredError)
		if !ok {
			panic(err)
		}
		ls.refused = are.ExistingCollector.(*prometheus.CounterVec)
	}
	r.Get("/tap", s.handle(s.tapPage))
	r.Get("/top", s.handle(s.topPage))
	r.Get("/api/v1/tap/ws", ls.serveTap)
	r.Get("/api/v1/top/ws", ls.serveTop)
}
