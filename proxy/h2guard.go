package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshscope/meshscope/proxy/metrics"
)

// HTTP/2 rapid reset (CVE-2023-44487): a client opens a stream and resets it at once, over and over. Each
// stream costs the client two small frames and the proxy a handler, a request upstream and its cleanup, so
// that one connection drives the app at line rate while the client never waits for an answer.
//
// net/http's server bounds the handlers running per connection (MaxConcurrentStreams): a handler still
// running holds its slot after its stream is reset, new streams past the bound wait for a slot, and when
// more than four times the bound wait it sends GOAWAY with ENHANCE_YOUR_CALM and closes the connection.
// A proxy whose handlers end as soon as their stream is reset seldom reaches that bound, so it does not
// bound the rate. The proxy therefore counts, per connection, the streams the client gave up on before
// their handler finished, against a budget that refills steadily (deadlines and hedged calls cancel too).
// A connection over its budget sends nothing more upstream: its new streams are answered 503 headers, with
// no end, and each of its handlers is held until the connection ends, so that the client's next streams
// fill the slots and the queue, and net/http's bound answers GOAWAY ENHANCE_YOUR_CALM (as Go's and
// nghttp2's servers do) after at most five times h2MaxStreams more streams, none of them upstream. Streams
// in flight then have the second net/http waits after a GOAWAY with an error, and end with the connection
// (their upstream requests cancelled), which releases what it held. A client that stops at its budget
// keeps at most h2MaxStreams handlers held, and nothing upstream, until its connection ends (idle
// timeout, shutdown). A stream reset before its handler began is never sent upstream at all.
const (
	// h2MaxStreams is the concurrent streams each client connection may open (RFC 9113 asks for at
	// least 100 to be allowed), and the handlers it may hold.
	h2MaxStreams = 100
	// h2ResetBurst and h2ResetsPerSecond are a connection's budget of cancelled streams.
	h2ResetBurst      = 200
	h2ResetsPerSecond = 50
)

// limitH2RapidReset is limit_reached_total's limit for HTTP/2 connections sent GOAWAY ENHANCE_YOUR_CALM
// for rapid reset: over their budget of cancelled streams, or with too many streams waiting for a handler.
const limitH2RapidReset = "h2-rapid-reset"

// h2EarlyResets is the error net/http's HTTP/2 server counts (CountError: kind, code, name) as it sends
// GOAWAY ENHANCE_YOUR_CALM for too many streams waiting for a handler.
const h2EarlyResets = "conn_ENHANCE_YOUR_CALM_too_many_early_resets"

// h2Config is the listeners' HTTP/2 server configuration; CountError counts the connections net/http's
// bound sends GOAWAY.
func h2Config(m *metrics.Metrics) *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams: h2MaxStreams,
		CountError: func(errType string) {
			if errType == h2EarlyResets {
				m.LimitReached(limitH2RapidReset)
			}
		},
	}
}

// h2Conn is a client connection found to speak HTTP/2, as the listener's server gets it: it carries the
// connection's budget of cancelled streams, and closing it releases the handlers held for it.
type h2Conn struct {
	net.Conn
	budget resetBudget
	once   sync.Once
}

func newH2Conn(c net.Conn) *h2Conn {
	return &h2Conn{Conn: c, budget: resetBudget{left: h2ResetBurst, last: time.Now(), gone: make(chan struct{})}}
}

// Close is called by the server when it is done with the connection, whatever ended it.
func (c *h2Conn) Close() error {
	c.once.Do(func() { close(c.budget.gone) })
	return c.Conn.Close()
}

// resetBudget is one client connection's budget of cancelled HTTP/2 streams.
type resetBudget struct {
	mu   sync.Mutex
	left float64
	last time.Time
	// over is set once the client has cancelled more streams than the budget allows.
	over atomic.Bool
	// gone is closed when the connection is.
	gone chan struct{}
}

type resetBudgetKey struct{}

// withResetBudget gives the requests of an HTTP/2 connection its budget (part of the server's
// ConnContext); other connections have none.
func withResetBudget(ctx context.Context, c net.Conn) context.Context {
	if hc, ok := c.(*h2Conn); ok {
		return context.WithValue(ctx, resetBudgetKey{}, &hc.budget)
	}
	return ctx
}

// spend takes one cancelled stream from the budget and reports whether it was the one too many.
func (b *resetBudget) spend(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.over.Load() {
		return false
	}
	b.left = min(h2ResetBurst, b.left+now.Sub(b.last).Seconds()*h2ResetsPerSecond)
	b.last = now
	if b.left >= 1 {
		b.left--
		return false
	}
	b.over.Store(true)
	return true
}

// hold keeps a handler of a connection over its budget, and with it the stream's slot, until the
// connection ends.
func (b *resetBudget) hold() { <-b.gone }

// h2Guard is a listener's handler: it proxies requests with next, and charges every HTTP/2 stream the
// client cancels to its connection's budget.
type h2Guard struct {
	next    http.Handler
	metrics *metrics.Metrics
	log     *slog.Logger
}

func (g *h2Guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := r.Context().Value(resetBudgetKey{}).(*resetBudget)
	if b == nil { // HTTP/1.1
		g.next.ServeHTTP(w, r)
		return
	}
	if b.over.Load() {
		// Nothing more of an abusive connection goes upstream. The client is told why at once, and the
		// handler stays, holding the stream's slot.
		w.Header().Set(ProxyErrorHeader, limitH2RapidReset)
		w.WriteHeader(http.StatusServiceUnavailable)
		http.NewResponseController(w).Flush()
		b.hold()
		return
	}
	ctx := r.Context()
	if ctx.Err() == nil {
		g.next.ServeHTTP(w, r)
		if ctx.Err() == nil {
			return
		}
	}
	// The client reset the stream (a stream of a connection that is closing ends the same way, and is
	// charged to a budget nobody will use again).
	if b.spend(time.Now()) {
		g.log.Warn("HTTP/2 client cancels streams faster than its budget allows (rapid reset): nothing more of its connection goes upstream, and it will get GOAWAY ENHANCE_YOUR_CALM",
			"peer", r.RemoteAddr, "burst", h2ResetBurst, "per_second", h2ResetsPerSecond)
	}
	if b.over.Load() {
		b.hold()
	}
}
