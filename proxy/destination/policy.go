package destination

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/routes"
)

// routesOf turns a Service's policy, as the discovery service sends it, into the proxy's routes and the
// Service's own policy (its default route and failure accrual). A rule or an annotation that does not
// hold is left out and logged with the route and the reason, as the destinations file would refuse it:
// the Service's other rules still route.
func routesOf(p *Policy, authority string, log *slog.Logger) ([]*routes.Route, routes.Policy) {
	if p == nil {
		return nil, routes.Policy{}
	}
	svc, err := routes.FromAnnotations(p.Annotations)
	if err != nil {
		log.Warn("service annotations ignored", "authority", authority, "err", err)
		svc = routes.Policy{}
	}
	var out []*routes.Route
	for i, wr := range p.Routes {
		r, err := routeOf(wr, svc)
		if err != nil {
			log.Warn("route rule ignored", "authority", authority, "route", wr.Kind+" "+wr.Namespace+"/"+wr.Name, "rule", i, "err", err)
			continue
		}
		out = append(out, r)
	}
	return out, svc
}

// routeOf converts one rule; the route's own annotations override the Service's, its rule's timeouts
// both (request: the whole exchange; backendRequest: each try, or the response headers without retries).
func routeOf(wr Route, svc routes.Policy) (*routes.Route, error) {
	r := &routes.Route{Name: wr.Name, Namespace: wr.Namespace, Kind: routes.KindHTTPRoute, Timeouts: svc.Timeouts, Retry: svc.Retry}
	if wr.Kind == "GRPCRoute" {
		r.Kind = routes.KindGRPCRoute
	}
	own, err := routes.FromAnnotations(wr.Annotations)
	if err != nil {
		return nil, err
	}
	if own.Retry != nil {
		r.Retry = own.Retry
	}
	if own.Timeouts != (routes.Timeouts{}) {
		r.Timeouts = own.Timeouts
	}
	if d, err := gatewayDuration(wr.Request); err != nil {
		return nil, fmt.Errorf("timeouts.request: %w", err)
	} else if d > 0 {
		r.Timeouts.Request = d
	}
	if d, err := gatewayDuration(wr.BackendRequest); err != nil {
		return nil, fmt.Errorf("timeouts.backendRequest: %w", err)
	} else if d > 0 && r.Retry != nil {
		retry := *r.Retry
		retry.Timeout = d
		r.Retry = &retry
	} else if d > 0 {
		r.Timeouts.ResponseHeaders = d
	}
	for i, wm := range wr.Matches {
		m := routes.Match{Method: wm.Method, Value: wm.Path}
		switch wm.PathType {
		case "Exact":
			m.Path = routes.PathExact
		case "RegularExpression":
			m.Path = routes.PathRegex
		}
		for _, h := range wm.Headers {
			m.Headers = append(m.Headers, routes.HeaderMatch{Name: h.Name, Value: h.Value, Regex: h.Regex})
		}
		if err := m.Compile(); err != nil {
			return nil, fmt.Errorf("matches[%d]: %w", i, err)
		}
		r.Matches = append(r.Matches, m)
	}
	var sum uint64
	for _, b := range wr.Backends {
		r.Backends = append(r.Backends, routes.Backend{Authority: balance.NormalizeAuthority(b.Authority), Weight: b.Weight})
		sum += uint64(b.Weight)
	}
	if len(r.Backends) > 0 && sum == 0 {
		return nil, errors.New("backendRefs: weights sum to zero")
	}
	return r, nil
}

// gatewayDuration reads a Gateway API duration ("10s", "1h30m"); zero ("0s") disables the timeout.
func gatewayDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return d, nil
}
