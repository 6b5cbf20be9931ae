package main

import (
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
)

// Upstream 1xx informational responses (103 Early Hints, 102 Processing ...) reach the client before the
// final response (RFC 9110 section 15.2), on every path:
//   - h1Upstream's own round trip reads them itself and hands them to forwardInformational;
//   - a request sent through a Transport (h2c, or HTTP/1.1 with a body or an upgrade) reports them through
//     httptrace's Got1xxResponse, the hook both net/http's and x/net's clients call. The trace and its
//     closure are pooled: such a request costs one context more.
//
// Informational responses are not responses for the metrics or tap: only the final one is counted.

// informer forwards the 1xx responses of one request sent through a Transport to that request's client.
// Pooled: its trace and the closure in it are made once. The Transport calls Got1xxResponse from its
// connection's read loop, before RoundTrip returns. Writing to the client there could stall every request
// sharing that upstream connection (an h2c one is shared by many clients) behind one client that does not
// read, so got1xx only queues the response and a goroutine of the request's own writes it; done waits for
// that goroutine, so that every 1xx precedes the final response. A 1xx reported after done (a RoundTrip
// cut short by the client leaving) finds w cleared and is dropped, and such an informer is not pooled again.
type informer struct {
	trace   httptrace.ClientTrace
	mu      sync.Mutex
	written sync.Cond           // broadcast when the writing goroutine has emptied queue; L is &mu
	w       http.ResponseWriter // nil once the round trip returned
	queue   []informational     // reported, not yet written
	writing bool                // a goroutine is writing queue to w
}

// informational is one upstream 1xx response.
type informational struct {
	code   int
	header http.Header
}

var informerPool = sync.Pool{New: func() any {
	in := new(informer)
	in.written.L = &in.mu
	in.trace.Got1xxResponse = in.got1xx
	return in
}}

// newInformer returns a pooled informer forwarding to w.
func newInformer(w http.ResponseWriter) *informer {
	in := informerPool.Get().(*informer)
	in.mu.Lock()
	in.w = w
	in.mu.Unlock()
	return in
}

// done ends the informer's round trip, before w is written or given up, once the 1xx reported so far are
// written; ok tells whether it returned a response, after which the Transport has no more 1xx to report for
// it and the informer may serve another request. A nil informer (a request not traced) has nothing to end.
func (in *informer) done(ok bool) {
	if in == nil {
		return
	}
	in.mu.Lock()
	for in.writing {
		in.written.Wait()
	}
	in.w, in.queue = nil, nil
	in.mu.Unlock()
	if ok {
		informerPool.Put(in)
	}
}

// got1xx queues a 1xx for the client and returns at once.
func (in *informer) got1xx(code int, h textproto.MIMEHeader) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.w == nil {
		return nil
	}
	in.queue = append(in.queue, informational{code: code, header: http.Header(h).Clone()})
	if !in.writing {
		in.writing = true
		go in.write()
	}
	return nil
}

// write writes the queued 1xx to the client, in order, until the queue is empty.
func (in *informer) write() {
	in.mu.Lock()
	defer in.mu.Unlock()
	for len(in.queue) > 0 {
		r, w := in.queue[0], in.w
		in.queue = in.queue[1:]
		in.mu.Unlock()
		forwardInformational(w, r.code, r.header)
		in.mu.Lock()
	}
	in.writing = false
	in.written.Broadcast()
}

// forwardInformational sends an upstream's 1xx response, code with its fields h, to the client through w,
// whose header must not hold the final response's fields yet. 100 Continue is left out: the proxy's own
// server answers Expect: 100-continue itself, and forwarding the upstream's would send the client a second
// one; 101 is protocol switching, a final response. Hop-by-hop fields are removed from h as from any
// response. The fields go with the 1xx only: they are removed from w's header once it is written, so that
// none leaks into the final response (net/http's server sends the current header with a 1xx, RFC 8297).
func forwardInformational(w http.ResponseWriter, code int, h http.Header) {
	if code <= http.StatusSwitchingProtocols || code > 199 {
		return
	}
	removeHopByHop(h)
	wh := w.Header()
	for k, vv := range h {
		wh[k] = vv
	}
	w.WriteHeader(code)
	for k := range h {
		delete(wh, k)
	}
}
