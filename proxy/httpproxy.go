package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/metrics"
	"github.com/meshscope/meshscope/proxy/routes"
	"github.com/meshscope/meshscope/proxy/taphub"
)

// ProxyErrorHeader names the reason of a response the proxy produced itself (no endpoint, connection
// refused, upstream timeout ...).
const ProxyErrorHeader = "Meshscope-Proxy-Error"

// Reasons of the responses the proxy produces; they are also the error label of response_total.
const (
	errNoEndpoints       = "no-endpoints"
	errConnectionRefused = "connection-refused"
	errConnectTimeout    = "connect-timeout"
	errUnresolved        = "unresolved-authority"
	errUpstream          = "upstream-error"
	errStream            = "stream-error"
	errCancelled         = "cancelled"
	errLoop              = "proxy-loop"
	errTLS               = "tls-refused" // the mutual TLS handshake with the endpoint failed
	// errBadRequest is the client's fault: it names the 400 response but is not a failure of the service.
	errBadRequest = "bad-request-body"
)

// httpProxy forwards the requests of one listener.
type httpProxy struct {
	direction string
	// forward, when set, receives every request (inbound: the local app).
	forward string
	// route, when set, is the authority of every request (an --outbound-route listener).
	route string
	// resolver finds outbound destinations; nil when there is neither a destinations file nor a
	// discovery service.
	resolver balance.Source
	// self tells whether an address is one of the proxy's own listeners, to refuse requests to itself.
	self func(authority string) bool

	h1      *h1Upstream
	h2      http.RoundTripper
	dialer  *dialer
	metrics *metrics.Metrics
	tap     *taphub.Hub
	log     *slog.Logger
	hijacks *tracker
}

// ServeHTTP proxies one request that net/http's server read.
func (p *httpProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.serve(r.Context(), w, r) }

// serve proxies one request; ctx ends when its client goes away. It writes the response itself rather
// than through httputil.ReverseProxy: no header clones, no per-request closures, a pooled copy buffer, and
// the metrics and tap observations at the exact points DESIGN names.
func (p *httpProxy) serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	ex := Exchange{
		Direction:  p.direction,
		Method:     r.Method,
		Authority:  r.Host,
		Path:       r.URL.Path,
		Query:      r.URL.RawQuery,
		Header:     r.Header,
		Source:     r.RemoteAddr,
		Start:      time.Now(),
		GRPCStatus: metrics.NoGRPCStatus,
		hub:        p.tap,
	}
	if p.route != "" {
		ex.Authority = p.route
	}
	if p.direction == Inbound {
		ex.TLS = peerTLS(ctx)
	} else {
		ex.TLS = p.dialer.tlsTo("")
	}
	orig := originalDst(ctx)
	if ex.Authority == "" && p.forward == "" && orig == "" {
		// HTTP/1.0 without Host on the outbound listener: nothing to route by.
		http.Error(w, "missing Host header: the outbound proxy routes requests by their authority", http.StatusBadRequest)
		return
	}

	var dest *balance.Destination
	var ep *balance.Endpoint
	switch {
	case p.forward != "":
		ex.Destination = p.forward
	case p.resolver != nil:
		dest = p.resolver.Lookup(ex.Authority)
	}
	var rt *routes.Route
	if dest != nil {
		// The route, and its backend: the service itself or, in a traffic split, another one.
		ex.Authority = dest.Authority // normalized: one series however clients spell it
		rt = dest.Routes.Match(r.Method, r.URL.Path, r.Header)
		ex.Route = rt.Name
		ex.route = p.metrics.Route(routeKey(dest, rt, isGRPC(r.Header)))
		if b := rt.PickBackend(); b != nil && b.Authority != dest.Authority {
			if dest = p.resolver.Lookup(b.Authority); dest == nil {
				dest = &balance.Destination{Authority: b.Authority} // removed by a reload since: no endpoints
			}
		}
		ex.backend = ex.route.Backend(backendRef(dest))
		var err error
		if ep, err = dest.Pick(); err != nil {
			ex.DstLabels = dest.DstLabels
			ex.requestHeaders(p.metrics)
			reason := errNoEndpoints
			if errors.Is(err, balance.ErrFailFast) {
				reason = errFailFast
			}
			p.fail(w, r, &ex, http.StatusServiceUnavailable, reason, err)
			return
		}
		ex.Destination, ex.DstLabels, ex.TLS = ep.Addr, ep.DstLabels, p.dialer.tlsTo(ep.Hints.Identity)
		p.dialer.noteEndpoint(ep)
	} else if ex.Destination == "" && orig != "" {
		ex.Destination = orig // redirected: where the app sent it, whatever its authority says
	} else if ex.Destination == "" {
		ex.Destination = withPort(ex.Authority)
		if p.self(ex.Destination) {
			ex.requestHeaders(p.metrics)
			p.fail(w, r, &ex, http.StatusBadGateway, errLoop, errors.New("the request's authority is this proxy"))
			return
		}
	}
	if ex.TLS.PeerID != "" && p.tap.Active() {
		ex.localID = p.dialer.mtls.id.Name()
	}
	ex.requestHeaders(p.metrics)

	upgrade := r.ProtoMajor == 1 && headerHasToken(r.Header, "Connection", "upgrade") && r.Header.Get("Upgrade") != ""
	// Upstream 1xx responses go to the client before the final one, but never to an HTTP/1.0 client
	// (RFC 9110 section 15.2). h1Upstream's own round trip (a body-less request upgrading nothing) writes
	// them to inform itself; a Transport (h2c, a body, an upgrade) reports them through httptrace to a
	// pooled informer.
	var inform http.ResponseWriter
	var in *informer
	outCtx := ctx
	if r.ProtoAtLeast(1, 1) {
		inform = w
		if r.ProtoMajor == 2 || r.ContentLength != 0 || upgrade {
			in = newInformer(w)
			outCtx = httptrace.WithClientTrace(ctx, &in.trace)
			if r.ProtoMajor == 1 && headerHasToken(r.Header, "Expect", "100-continue") {
				// net/http's server writes its 100 Continue when the Transport's goroutine first reads
				// the body, unsynchronized with a 1xx the Transport's other goroutine forwards: answer the
				// expectation now (the Transport sends the body at once anyway: ExpectContinueTimeout 0).
				w.WriteHeader(http.StatusContinue)
			}
		}
	}

	out := r.WithContext(outCtx) // a shallow copy; only the fields set below differ
	u := *r.URL
	out.URL = &u
	out.URL.Scheme = "http"
	out.URL.Host = ex.Destination
	if p.route != "" {
		out.Host = p.route // the client could not name the service; the route does
	}
	out.RequestURI = ""
	out.Close = false
	if upgrade {
		removeHopByHopKeepUpgrade(out.Header)
	} else {
		removeHopByHop(out.Header)
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = emptyValue // keep net/http from adding its own
	}
	if r.ContentLength == 0 {
		out.Body = nil
	}
	var retry *routes.Retry
	if rt != nil && !upgrade {
		retry = rt.Retry
	}
	var body upstreamBody
	if out.Body != nil {
		if retry != nil {
			rb := &retryBody{src: out.Body}
			body, out.Body = rb, rb.attempt()
		} else {
			cb := &clientBody{rc: out.Body}
			body, out.Body = cb, cb
		}
	}
	// Timeouts and retries: a context per route request and per try, only on routes that ask for them.
	var tl *timeLimits
	if rt != nil && (rt.Timeouts != (routes.Timeouts{}) || retry != nil && retry.Timeout > 0) {
		tl = newTimeLimits(outCtx, rt, retry, ex.Start)
		defer tl.cancel()
	}
	if retry != nil {
		rt.Budget.Deposit()
	}

	var res *http.Response
	var tried [maxTries]*balance.Endpoint
	retries := 0
	for attempt := 0; ; attempt++ {
		if tl != nil {
			out = out.WithContext(tl.try())
		}
		var done func(error)
		if ep != nil {
			done = ep.Begin()
			ex.tried(ep)
		}
		var err error
		if r.ProtoMajor == 2 {
			res, err = p.h2.RoundTrip(out)
		} else {
			res, err = p.h1.roundTrip(out, inform)
		}
		timedOut := tl.headers(err == nil) // the try's timer stops here; the stream may still run
		if err == nil {
			if done != nil {
				done(nil) // the balancer's latency is time to response headers, as linkerd's
			}
			if retry != nil && attempt+1 < len(tried) {
				var again bool
				if res, again = retryableResponse(res, retry); again {
					if next := p.retryOn(&ex, rt, retry, body, dest, ep, tried[:attempt], &retries); next != nil {
						tried[attempt] = ep
						ex.backendDone(routeStatusOf(res.StatusCode, responseGRPCStatus(res), ""))
						ep.Observe(true)
						res.Body.Close()
						ep = p.moveTo(&ex, out, next)
						continue
					}
				}
			}
			in.done(true)
			break
		}
		if done != nil {
			done(err)
		}
		if ctx.Err() != nil {
			in.done(false)
			ex.Error = errCancelled
			ex.end()
			return
		}
		if body != nil && body.failed() {
			in.done(false)
			p.fail(w, r, &ex, http.StatusBadRequest, errBadRequest, err)
			return
		}
		if ep != nil && balance.Unreachable(err) && attempt < len(tried) && (body == nil || body.resendable()) {
			tried[attempt] = ep
			if next, perr := dest.Pick(tried[:attempt+1]...); perr == nil {
				ex.backendDone(routeStatusOf(0, metrics.NoGRPCStatus, routeError(errConnectionRefused)))
				ep = p.moveTo(&ex, out, next)
				ex.rerouted(p.metrics)
				continue
			}
		}
		status, reason := classifyError(err)
		if timedOut != "" {
			status, reason = http.StatusGatewayTimeout, timedOut
		}
		if retry != nil && attempt+1 < len(tried) && (timedOut == errTryTimeout || timedOut == "" && retryableError(r, retry)) {
			if next := p.retryOn(&ex, rt, retry, body, dest, ep, tried[:attempt], &retries); next != nil {
				tried[attempt] = ep
				ex.backendDone(routeStatusOf(0, metrics.NoGRPCStatus, routeError(reason)))
				if ep != nil {
					ep.Observe(true)
				}
				ep = p.moveTo(&ex, out, next)
				continue
			}
		}
		if reason == errTryTimeout {
			reason = errHeadersTimeout // the last try's timeout: the client waited for headers in vain
		}
		in.done(false)
		p.fail(w, r, &ex, status, reason, err)
		return
	}
	defer res.Body.Close()

	if res.StatusCode == http.StatusSwitchingProtocols && upgrade {
		p.switchProtocols(w, r, res, &ex)
		return
	}

	h := w.Header()
	removeHopByHop(res.Header)
	for k, vv := range res.Header {
		h[k] = vv
	}
	if len(res.Trailer) > 0 {
		// Trailers the upstream announced are announced to the client too: an HTTP/1.1 response must
		// then be chunked to carry them (gRPC's are not announced; all are set through TrailerPrefix at the end).
		names := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = names
	}
	w.WriteHeader(res.StatusCode)
	ex.responseHeaders(res.StatusCode, h)

	grpc := isGRPC(res.Header)
	if err := p.copyResponse(w, res, &ex); err != nil {
		ex.Error = errStream
		if ctx.Err() != nil {
			ex.Error = errCancelled
		} else if tl.requestExpired() {
			ex.Error = errRequestTimeout
		}
		ex.end()
		p.log.Debug("response stream failed", "peer", ex.Source, "target", ex.Destination, "authority", ex.Authority, "err", err)
		// Abort the client's stream (RST_STREAM on HTTP/2, a closed connection on HTTP/1.1) so it cannot
		// mistake a truncated response for a whole one.
		panic(http.ErrAbortHandler)
	}
	for k, vv := range res.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	if grpc {
		ex.GRPCStatus = grpcStatus(res)
	}
	ex.end()
}

// copyResponse streams res's body to the client, flushing after each read so that server-sent events,
// long polls and gRPC streams reach the client at once. A body whose declared length is complete is left
// for the server to flush with the end of the response (one write for a small response).
func (p *httpProxy) copyResponse(w http.ResponseWriter, res *http.Response, ex *Exchange) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	flusher, _ := w.(http.Flusher)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			ex.Bytes += int64(n)
			if flusher != nil && rerr == nil && ex.Bytes != res.ContentLength {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// switchProtocols completes an HTTP/1.1 Upgrade (websockets): the 101 response goes to the client, then
// bytes flow both ways until either side closes.
func (p *httpProxy) switchProtocols(w http.ResponseWriter, r *http.Request, res *http.Response, ex *Exchange) {
	backend, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		p.fail(w, r, ex, http.StatusBadGateway, errUpstream, errors.New("101 response without a writable body"))
		return
	}
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.fail(w, r, ex, http.StatusBadGateway, errUpstream, err)
		return
	}
	defer client.Close()
	release := p.hijacks.add(client)
	defer release()

	removeHopByHopKeepUpgrade(res.Header)
	res.Body = nil
	if err := res.Write(brw); err != nil {
		ex.Error = errStream
		ex.end()
		return
	}
	if err := brw.Flush(); err != nil {
		ex.Error = errStream
		ex.end()
		return
	}
	ex.responseHeaders(res.StatusCode, res.Header)

	errc := make(chan error, 2)
	go func() {
		// Bytes the client sent after its request, already buffered by the server, go first.
		_, err := io.Copy(backend, io.MultiReader(brw.Reader, client))
		errc <- err
	}()
	n, err := io.Copy(client, backend)
	ex.Bytes = n
	// Either direction ending ends the tunnel: close both so the other copy returns too.
	client.Close()
	backend.Close()
	err2 := <-errc
	if err == nil {
		err = err2
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		ex.Error = errStream
	}
	ex.end()
}

// fail answers a request the proxy could not forward, naming the reason in ProxyErrorHeader, and counts it.
func (p *httpProxy) fail(w http.ResponseWriter, r *http.Request, ex *Exchange, status int, reason string, err error) {
	p.log.Info("request failed", "peer", ex.Source, "target", ex.Destination, "authority", ex.Authority, "reason", reason, "err", err)
	h := w.Header()
	h.Set(ProxyErrorHeader, reason)
	if isGRPC(r.Header) && (reason == errRequestTimeout || reason == errHeadersTimeout) {
		// A route's timeout: DEADLINE_EXCEEDED in a trailers-only response (HTTP 200, no body), as a
		// gRPC server answers a call it gave up on (gRPC over HTTP/2, "Responses").
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", "4")
		h.Set("Grpc-Message", "meshscope proxy: "+reason)
		ex.GRPCStatus = 4
		w.WriteHeader(http.StatusOK)
		ex.responseHeaders(http.StatusOK, h)
		ex.Error = reason
		ex.end()
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	if isGRPC(r.Header) {
		// gRPC clients read the status from here; UNAVAILABLE tells them the call may be retried.
		h.Set("Grpc-Status", "14")
		h.Set("Grpc-Message", "meshscope proxy: "+reason)
		ex.GRPCStatus = 14
	}
	w.WriteHeader(status)
	io.WriteString(w, reason+"\n")
	ex.responseHeaders(status, h)
	if reason != errBadRequest {
		ex.Error = reason
	}
	ex.end()
}

// classifyError maps a transport error to the status and reason of the response the proxy produces.
func classifyError(err error) (int, string) {
	var dnsErr *net.DNSError
	var netErr net.Error
	var tlsErr *tlsError
	switch {
	case errors.As(err, &tlsErr):
		return http.StatusBadGateway, errTLS
	case errors.Is(err, syscall.ECONNREFUSED):
		return http.StatusBadGateway, errConnectionRefused
	case errors.As(err, &dnsErr):
		return http.StatusBadGateway, errUnresolved
	case errors.As(err, &netErr) && netErr.Timeout():
		return http.StatusGatewayTimeout, errConnectTimeout
	}
	return http.StatusBadGateway, errUpstream
}

// isGRPC reports whether h's content type is gRPC's.
func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// grpcStatus reads a gRPC response's status from its trailers or, for a trailers-only response, its
// headers. A gRPC response without any status is malformed: UNKNOWN, as gRPC clients treat it.
func grpcStatus(res *http.Response) int {
	v := res.Trailer["Grpc-Status"]
	if len(v) == 0 {
		v = res.Header["Grpc-Status"]
	}
	if len(v) == 0 {
		return 2
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 0 {
		return 2
	}
	return n
}

var (
	connectionUpgrade = []string{"Upgrade"}
	emptyValue        = []string{""}
	bufPool           = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}
)

// hopByHop are the connection-specific fields a proxy must not forward (RFC 9110 section 7.6.1), plus
// Trailer, which net/http rewrites from the message's trailers itself.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Transfer-Encoding", "Upgrade", "Trailer"}

// removeHopByHop deletes hop-by-hop fields from h, including those the Connection field lists. "TE:
// trailers" stays: HTTP/2 allows it, and gRPC servers require it (RFC 9113 section 8.2.2).
func removeHopByHop(h http.Header) {
	if c, ok := h["Connection"]; ok {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = http.CanonicalHeaderKey(strings.TrimSpace(f)); f != "" && f != "Te" {
					delete(h, f)
				}
			}
		}
	}
	for _, f := range hopByHop {
		if _, ok := h[f]; !ok {
			continue
		}
		if f == "Te" && len(h[f]) == 1 && strings.EqualFold(h[f][0], "trailers") {
			continue
		}
		delete(h, f)
	}
}

// removeHopByHopKeepUpgrade removes hop-by-hop fields from h, an upgrade request or its 101 response, but
// "Connection: Upgrade" and Upgrade, which carry the upgrade to the next hop (RFC 9110 section 7.8).
func removeHopByHopKeepUpgrade(h http.Header) {
	to := h["Upgrade"]
	removeHopByHop(h)
	h["Connection"] = connectionUpgrade
	h["Upgrade"] = to
}

// headerHasToken reports whether the comma-separated field name of h contains token (case-insensitive).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// originalDstKey is the context key of a redirected connection's original destination.
type originalDstKey struct{}

// withOriginalDst returns ctx carrying orig, the original destination of the connection its requests
// come on.
func withOriginalDst(ctx context.Context, orig string) context.Context {
	return context.WithValue(ctx, originalDstKey{}, orig)
}

// originalDst returns the original destination that ctx carries, empty for a connection not redirected.
func originalDst(ctx context.Context) string {
	orig, _ := ctx.Value(originalDstKey{}).(string)
	return orig
}

// withPort adds http's default port to an authority without one.
func withPort(authority string) string {
	if _, _, err := net.SplitHostPort(authority); err == nil {
		return authority
	}
	return net.JoinHostPort(strings.Trim(authority, "[]"), "80")
}

// clientBody is a request body on its way upstream. It records whether it was read, so that a request
// refused at dial time can be retried on another endpoint (the transport closes a body even when the dial
// fails: that Close is ignored for a body nobody read; the server closes it when the handler returns), and
// whether reading it failed, so that a malformed body is answered 400, not blamed on the upstream.
type clientBody struct {
	rc   io.ReadCloser
	read atomic.Bool
	err  atomic.Pointer[error]
}

func (b *clientBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

func (b *clientBody) Close() error {
	if !b.read.Load() {
		return nil
	}
	return b.rc.Close()
}

func (b *clientBody) failed() bool { return b.err.Load() != nil }

// newTransports returns the upstream clients: HTTP/1.1 (h1Upstream, over a Transport with keep-alive pools
// sized for a busy sidecar), and HTTP/2 prior knowledge (h2c, newH2Upstream).
func newTransports(dial func(ctx context.Context, network, addr string) (net.Conn, error)) (h1 *h1Upstream, h2 *http2.Transport) {
	t1 := &http.Transport{
		DialContext:         dial,
		MaxIdleConnsPerHost: 1024, // net/http's default of 2 closes and redials under any concurrency
		IdleConnTimeout:     upstreamIdleTimeout,
		// The proxy passes bodies through as they are: never ask for gzip and decode it on the way.
		DisableCompression:     true,
		MaxResponseHeaderBytes: upstreamMaxHeaderBytes,
		Protocols:              new(http.Protocols),
	}
	t1.Protocols.SetHTTP1(true)
	return &h1Upstream{dial: dial, fallback: t1, idle: make(map[string][]*h1Conn)}, newH2Upstream(dial)
}
