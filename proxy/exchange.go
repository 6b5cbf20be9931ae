package main

import (
	"net/http"
	"time"

	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/metrics"
	"github.com/meshscope/meshscope/proxy/taphub"
)

// Direction is which way traffic flows through the proxy: the direction label of the metrics and tap's
// direction, which taphub compares against.
const (
	Inbound  = tap.DirectionInbound  // from other workloads to the local app
	Outbound = tap.DirectionOutbound // from the local app to other services
)

// Exchange is one proxied HTTP request, from its headers read to its response stream's end. Everything
// observed per request goes through its three lifecycle methods (requestHeaders, responseHeaders, end),
// which count the metrics and are where tap reports the request, response and end events.
//
// Its exported fields are what an observer may read; they must not be modified.
type Exchange struct {
	Direction string
	Method    string
	Authority string      // Host or :authority as routed
	Path      string      // the request's URL path (never a metric label)
	Query     string      // the request's raw query string, for tap alone
	Header    http.Header // request headers, without hop-by-hop fields
	Source    string      // the client's address, host:port
	// Destination is the address the request was sent to: the local app (inbound), the endpoint picked
	// (outbound) or the authority as written; empty when no endpoint was available.
	Destination string
	// DstLabels are the destination's dst_* labels from the destinations file; nil inbound and for
	// authorities not in the file.
	DstLabels map[string]string
	// TLS is how the request's connection is secured: inbound, the client's; outbound, the endpoint's.
	TLS metrics.TLS
	// Route is the name of the outbound route the request took; empty for a default route or none.
	Route string
	Start time.Time // when the request headers were read

	Status     int   // response status, once the response headers were written
	GRPCStatus int   // gRPC status from trailers or a trailers-only response, else metrics.NoGRPCStatus
	Bytes      int64 // response body bytes sent to the client
	Error      string

	localID string // this proxy's identity, reported to tap with a mutual TLS peer's
	series  *metrics.HTTPSeries
	// Route metrics and failure accrual (outbound requests to a destinations file service): the route's
	// series, its backend's, the endpoint of the current try and when it began, whether a try was sent
	// and whether a retry was.
	route    *metrics.RouteSeries
	backend  *metrics.BackendSeries
	ep       *balance.Endpoint
	tryStart time.Time
	retried  bool
	hub      *taphub.Hub  // the proxy's tap; nil for none
	tap      *taphub.Span // nil unless a tap subscriber wants this request
}

// requestHeaders is called once the request is routed: its headers are read and its destination known.
func (e *Exchange) requestHeaders(m *metrics.Metrics) {
	e.series = e.seriesOn(m)
	e.series.Requests.Inc()
	if e.hub.Active() { // one atomic load when nobody taps: nothing built, nothing allocated
		e.tap = e.hub.Request(&taphub.RequestInfo{
			Direction: e.Direction, Method: e.Method, Authority: e.Authority, Path: e.Path, Query: e.Query, Header: e.Header,
			Source: e.Source, Destination: e.Destination, DstLabels: e.DstLabels, Start: e.Start, Route: e.Route,
			PeerIdentity: e.TLS.PeerID, LocalIdentity: e.localID,
		})
	}
}

// tried is called when a try of the request is sent to ep.
func (e *Exchange) tried(ep *balance.Endpoint) {
	e.ep = ep
	if e.backend != nil {
		e.tryStart = time.Now()
		e.backend.Requests.Inc()
	}
}

// backendDone counts the end of the current try on the route's backend metrics.
func (e *Exchange) backendDone(st metrics.RouteStatus) {
	if e.backend != nil {
		e.backend.Done(st, time.Since(e.tryStart))
	}
}

// rerouted is called when a request that never reached its endpoint is retried on another one: the
// response is counted on the series of the endpoint that answers it.
func (e *Exchange) rerouted(m *metrics.Metrics) {
	e.series = e.seriesOn(m)
	e.tap.Reroute(e.Destination, e.DstLabels, e.TLS.PeerID)
}

// responseHeaders is called once the response headers, header, were written to the client.
func (e *Exchange) responseHeaders(status int, header http.Header) {
	e.Status = status
	e.series.Latency.Observe(metrics.Millis(time.Since(e.Start)))
	e.tap.Response(status, header)
}

// end is called once, when the response stream ended (or failed: Error set).
func (e *Exchange) end() {
	o := metrics.Outcome{Status: e.Status, GRPCStatus: e.GRPCStatus, Error: e.Error}
	e.series.Response(o)
	if e.route != nil {
		st := routeStatusOf(e.Status, e.GRPCStatus, routeError(e.Error))
		e.route.Done(st, time.Since(e.Start))
		if e.ep != nil {
			e.backendDone(st)
		}
		if e.retried && !o.Failure() {
			e.route.RetrySuccesses.Inc()
		}
	}
	if e.ep != nil && e.Error != errCancelled {
		e.ep.Observe(o.Failure())
	}
	e.tap.End(e.GRPCStatus, e.Bytes, e.Error)
}

// seriesOn returns the series of m that counts the exchange as routed now: its authority and destination.
func (e *Exchange) seriesOn(m *metrics.Metrics) *metrics.HTTPSeries {
	return m.HTTP(metrics.HTTPKey{
		Direction:  e.Direction,
		Authority:  e.Authority,
		TargetAddr: e.Destination,
		TLS:        e.TLS,
		Dst:        dstOf(e.DstLabels),
	})
}

func dstOf(labels map[string]string) metrics.Dst {
	if labels == nil {
		return metrics.Dst{}
	}
	return metrics.Dst{
		Namespace:  labels["dst_namespace"],
		Deployment: labels["dst_deployment"],
		Pod:        labels["dst_pod"],
	}
}
