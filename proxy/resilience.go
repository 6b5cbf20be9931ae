package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/metrics"
	"github.com/meshscope/meshscope/proxy/routes"
)

// Routes on the outbound path: the route a request takes (proxy/routes), its timeouts, its retries
// within the route's budget, and the route metrics. Requests on routes without timeouts or retries take
// none of this: no context, no timer, no body copy.

// More reasons of responses the proxy produces (see httpproxy.go), for routes' policies.
const (
	errFailFast       = "fail-fast"                // every endpoint is out (failure accrual, refused connections)
	errRequestTimeout = "request-timeout"          // the route's request timeout expired
	errHeadersTimeout = "response-headers-timeout" // the route's response timeout expired before the headers
	// errTryTimeout is a retry policy's per-try timeout; once no retry follows it is reported as
	// errHeadersTimeout, what the client saw.
	errTryTimeout = "try-timeout"
)

// maxTries bounds the tries of one request: reroutes after refused connections and retries together.
const maxTries = maxReroutes + 11

// timeoutCause is the cause of a route's context ending, naming which limit expired.
type timeoutCause struct{ reason string }

func (c *timeoutCause) Error() string { return "route " + c.reason }

var (
	causeRequest = &timeoutCause{errRequestTimeout}
	causeHeaders = &timeoutCause{errHeadersTimeout}
	causeTry     = &timeoutCause{errTryTimeout}
)

// timeLimits are the contexts of one route request: the request timeout over everything, and per try a
// context that the response headers timeout (what is left of it) or the per-try timeout ends, whichever
// comes first. Once a try's headers arrive its timer stops, so its response may stream for as long as
// the request timeout allows.
type timeLimits struct {
	req       context.Context
	cancelReq context.CancelFunc
	headersBy time.Time     // zero: no response headers timeout
	perTry    time.Duration // zero: no per-try timeout

	tryCtx    context.Context
	cancelTry context.CancelCauseFunc
	timer     *time.Timer
}

func newTimeLimits(parent context.Context, rt *routes.Route, retry *routes.Retry, start time.Time) *timeLimits {
	t := &timeLimits{req: parent, cancelReq: func() {}}
	if d := rt.Timeouts.Request; d > 0 {
		t.req, t.cancelReq = context.WithDeadlineCause(parent, start.Add(d), causeRequest)
	}
	if d := rt.Timeouts.ResponseHeaders; d > 0 {
		t.headersBy = start.Add(d)
	}
	if retry != nil {
		t.perTry = retry.Timeout
	}
	return t
}

// try returns the context of the next try, ending the previous try's.
func (t *timeLimits) try() context.Context {
	if t.cancelTry != nil {
		t.cancelTry(nil)
	}
	d, cause := t.perTry, causeTry
	if !t.headersBy.IsZero() {
		if left := time.Until(t.headersBy); d == 0 || left < d {
			d, cause = max(left, 0), causeHeaders
		}
	} else if d == 0 {
		return t.req
	}
	ctx, cancel := context.WithCancelCause(t.req)
	t.tryCtx, t.cancelTry = ctx, cancel
	t.timer = time.AfterFunc(d, func() { cancel(cause) })
	return ctx
}

// headers is called when a try returned: ok with response headers, else with an error. It stops the
// try's timer and, after an error, returns the reason of the limit that ended the try ("" for none).
func (t *timeLimits) headers(ok bool) string {
	if t == nil {
		return ""
	}
	if t.timer != nil {
		t.timer.Stop()
	}
	if ok {
		return ""
	}
	ctx := t.req
	if t.tryCtx != nil {
		ctx = t.tryCtx // its own cause, or the request's when that ended first
	}
	var c *timeoutCause
	if errors.As(context.Cause(ctx), &c) {
		return c.reason
	}
	return ""
}

// requestExpired reports whether the route's request timeout ended the exchange.
func (t *timeLimits) requestExpired() bool {
	return t != nil && context.Cause(t.req) == causeRequest
}

func (t *timeLimits) cancel() {
	if t.cancelTry != nil {
		t.cancelTry(nil)
	}
	t.cancelReq()
}

// upstreamBody is a request body on its way upstream: a clientBody, or a retryBody when the route
// retries.
type upstreamBody interface {
	failed() bool     // reading the client's body failed: the client's fault
	resendable() bool // another try may send the body (again)
	tooLarge() bool   // the body was too large to keep for a retry
}

func (b *clientBody) resendable() bool { return !b.read.Load() }
func (b *clientBody) tooLarge() bool   { return false }

// errStaleTry is what a try's body reader returns once a later try replaced it.
var errStaleTry = errors.New("request body belongs to a later try")

// bodyEndWait bounds how long a retry waits for the end of a request body whose response came first (a
// server may answer before the proxy has read the client's end of stream). A body still open after it,
// a client stream, is not retried.
const bodyEndWait = 100 * time.Millisecond

// retryBody keeps a copy of the first routes.MaxRetryBody bytes of a request body while it streams
// upstream, so that a retry can send it again. A longer body streams on uncopied and is never resent.
//
// Whoever reads the client's body (a try's reader, or complete) holds srcMu while reading and appending,
// so the copy keeps the body's order; mu guards the state that tries read.
type retryBody struct {
	src   io.ReadCloser
	srcMu sync.Mutex

	mu   sync.Mutex
	buf  []byte
	read int // bytes read from src
	over bool
	eof  bool
	err  error
	gen  int // the current try
}

// attempt returns the body reader of a new try; the previous try's reader fails from now on.
func (b *retryBody) attempt() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gen++
	return &replayReader{b: b, gen: b.gen}
}

func (b *retryBody) failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err != nil
}

// resendable reports whether the body can be sent again: none of it was read yet, or all of it, within
// the copy's bound. A body not read to its end yet is given bodyEndWait to end.
func (b *retryBody) resendable() bool {
	b.mu.Lock()
	ok, open := b.read == 0 || b.eof && !b.over, !b.eof && !b.over && b.err == nil
	b.mu.Unlock()
	if ok || !open {
		return ok
	}
	done := make(chan struct{})
	go b.drain(done)
	select {
	case <-done:
	case <-time.After(bodyEndWait):
		return false // drain ends with the body: the server closes it when the handler returns
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof && !b.over
}

// drain reads the rest of the body into the copy, until its end, an error or the copy's bound.
func (b *retryBody) drain(done chan<- struct{}) {
	defer close(done)
	var p [4096]byte
	for {
		b.mu.Lock()
		stop := b.eof || b.over || b.err != nil
		b.mu.Unlock()
		if stop {
			return
		}
		b.fill(p[:])
	}
}

func (b *retryBody) tooLarge() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.over
}

// fill reads from the client's body into p and the copy.
func (b *retryBody) fill(p []byte) (int, error) {
	b.srcMu.Lock()
	defer b.srcMu.Unlock()
	n, err := b.src.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.read += n
	if !b.over {
		if len(b.buf)+n <= routes.MaxRetryBody {
			b.buf = append(b.buf, p[:n]...)
		} else {
			b.over, b.buf = true, nil
		}
	}
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = err
	}
	return n, err
}

type replayReader struct {
	b   *retryBody
	gen int
	off int
}

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	switch {
	case r.gen != b.gen:
		b.mu.Unlock()
		return 0, errStaleTry
	case r.off < len(b.buf):
		n := copy(p, b.buf[r.off:])
		r.off += n
		b.mu.Unlock()
		return n, nil
	case b.eof:
		b.mu.Unlock()
		return 0, io.EOF
	case r.off != b.read:
		b.mu.Unlock()
		return 0, errStaleTry // a body past the copy cannot be replayed (resendable said so)
	}
	b.mu.Unlock()
	// Not under mu: a client streaming its body slowly must not block the proxy's retry decision.
	n, err := b.fill(p)
	r.off += n
	return n, err
}

// Close leaves the client's body open for the next try; the server closes it when the handler returns.
func (r *replayReader) Close() error { return nil }

// retryableResponse reports whether res calls for a retry under policy. A gRPC response's status is in
// its headers (a trailers-only response) or its trailers: when the body ends at once, its trailers are
// read; when it has data, it is not retried and the data read is put back in front of its body.
func retryableResponse(res *http.Response, policy *routes.Retry) (*http.Response, bool) {
	if !isGRPC(res.Header) || policy.GRPC == 0 {
		return res, policy.RetryHTTP(res.StatusCode)
	}
	if len(res.Header["Grpc-Status"]) > 0 {
		return res, policy.RetryGRPC(grpcStatus(res))
	}
	pb := &peekedBody{rc: res.Body}
	var n int
	for n == 0 && pb.err == nil {
		n, pb.err = res.Body.Read(pb.buf[:])
	}
	if n == 0 && pb.err == io.EOF {
		return res, policy.RetryGRPC(grpcStatus(res))
	}
	pb.data = pb.buf[:n]
	res.Body = pb
	return res, false
}

// responseGRPCStatus is res's gRPC status for the metrics of a try that is retried.
func responseGRPCStatus(res *http.Response) int {
	if !isGRPC(res.Header) {
		return metrics.NoGRPCStatus
	}
	return grpcStatus(res)
}

// retryableError reports whether a try that failed without a response is retried: as the 502 (gRPC:
// UNAVAILABLE) the client would get.
func retryableError(r *http.Request, policy *routes.Retry) bool {
	if isGRPC(r.Header) {
		return policy.RetryGRPC(14)
	}
	return policy.RetryHTTP(http.StatusBadGateway)
}

// peekedBody is a response body whose first bytes were read to look for its gRPC status.
type peekedBody struct {
	rc   io.ReadCloser
	buf  [512]byte
	data []byte
	err  error
}

func (b *peekedBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	if b.err != nil {
		return 0, b.err
	}
	return b.rc.Read(p)
}

func (b *peekedBody) Close() error { return b.rc.Close() }

// retryOn decides whether a failed try is retried and returns the endpoint of the retry, nil for none:
// the body must be resendable, the policy's limit not reached, the route's budget not spent. The retry
// goes to another endpoint than those tried (failed included) while one is available, to the same one
// only when none is.
func (p *httpProxy) retryOn(ex *Exchange, rt *routes.Route, policy *routes.Retry, body upstreamBody, dest *balance.Destination,
	failed *balance.Endpoint, tried []*balance.Endpoint, retries *int) *balance.Endpoint {
	switch {
	case body != nil && !body.resendable():
		if body.tooLarge() {
			ex.route.RetryBodyTooLarge.Inc()
		}
		return nil
	case *retries >= policy.MaxRetries():
		ex.route.RetryLimitExceeded.Inc()
		return nil
	}
	next, err := dest.Pick(append(tried, failed)...)
	if err != nil {
		if next, err = dest.Pick(); err != nil {
			return nil
		}
	}
	if !rt.Budget.Withdraw() {
		ex.route.RetryOverflow.Inc()
		return nil
	}
	*retries++
	ex.route.RetryRequests.Inc()
	ex.retried = true
	return next
}

// moveTo sends the request's next try to ep.
func (p *httpProxy) moveTo(ex *Exchange, out *http.Request, ep *balance.Endpoint) *balance.Endpoint {
	ex.Destination, ex.DstLabels, ex.TLS = ep.Addr, ep.DstLabels, p.dialer.tlsTo(ep.Hints.Identity)
	out.URL.Host = ep.Addr
	if rb, ok := out.Body.(*replayReader); ok {
		out.Body = rb.b.attempt()
	}
	p.dialer.noteEndpoint(ep)
	ex.rerouted(p.metrics)
	return ep
}

// routeKey names the series of a request to dest on route rt.
func routeKey(dest *balance.Destination, rt *routes.Route, grpc bool) metrics.RouteKey {
	host, _, _ := strings.Cut(dest.Authority, ":")
	k := metrics.RouteKey{GRPC: grpc, Parent: backendRef(dest), Hostname: host}
	k.Route.Namespace = k.Parent.Namespace
	switch rt.Kind {
	case routes.KindDefault:
		k.Route = metrics.RouteRef{Kind: "default", Name: "http"}
		if grpc {
			k.Route.Name = "grpc"
		}
	case routes.KindHTTPRoute:
		k.Route.Group, k.Route.Kind, k.Route.Name = "gateway.networking.k8s.io", "HTTPRoute", rt.Name
	case routes.KindGRPCRoute:
		k.Route.Group, k.Route.Kind, k.Route.Name = "gateway.networking.k8s.io", "GRPCRoute", rt.Name
	default:
		k.Route.Group, k.Route.Kind, k.Route.Name = "meshscope.io", "Route", rt.Name
	}
	if rt.Namespace != "" {
		k.Route.Namespace = rt.Namespace
	}
	return k
}

// backendRef names a service as linkerd2-proxy names a Service parent or backend: its name is the first
// label of its authority's host, its namespace its namespace label.
func backendRef(dest *balance.Destination) metrics.Ref {
	host, port, err := net.SplitHostPort(dest.Authority)
	if err != nil {
		host = dest.Authority
	}
	name, _, _ := strings.Cut(host, ".")
	return metrics.Ref{Group: "core", Kind: "Service", Namespace: dest.DstLabels["dst_namespace"], Name: name, Port: port}
}

// routeStatusOf is a route status for the metrics; reason is linkerd2-proxy's error value or "".
func routeStatusOf(status, grpcStatus int, reason string) metrics.RouteStatus {
	return metrics.RouteStatus{HTTPStatus: status, GRPCStatus: grpcStatus, Error: reason}
}

// routeError maps the proxy's error reasons to linkerd2-proxy's error label values of route metrics.
func routeError(reason string) string {
	switch reason {
	case "":
		return ""
	case errFailFast, errNoEndpoints:
		return "FAIL_FAST"
	case errRequestTimeout:
		return "REQUEST_TIMEOUT"
	case errHeadersTimeout, errTryTimeout:
		return "RESPONSE_HEADERS_TIMEOUT"
	case errCancelled:
		return "CANCEL"
	case errStream:
		return "RESET"
	}
	return "UNKNOWN"
}
