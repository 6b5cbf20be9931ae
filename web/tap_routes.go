package main

import "github.com/go-chi/chi/v5"

// liveRoutes registers the live tap's routes (/tap, /top, /api/v1/tap/ws,
// /api/v1/top...) on the dashboard's router, inside the Host check and the
// security headers. This file belongs to the live-tap helper, who replaces
// its body; the dashboard calls it from server.routes.
func (s *server) liveRoutes(r chi.Router) {}
