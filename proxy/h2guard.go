package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/meshscope/meshscope/proxy/metrics"
)

// HTTP/2 rapid reset (CVE-2023-44487): a client opens a stream and resets it at once, over and over. Each
// stream costs the client two small frames and the proxy a handler, a request upstream and its cleanup, so
// that one connection drives the app at line rate while the client never waits for an answer. net/http's
// server already bounds the handlers running per connection (MaxConcurrentStreams) and sends GOAWAY
// (ENHANCE_YOUR_CALM) when too many streams wait for one; it does not bound the rate. The proxy therefore
// counts, per connection, the streams the client gave up on before their handler finished, against a
// budget that refills steadily: a client that cancels more than that (deadlines, hedged calls) gets its
// connection closed, and a stream reset before its handler began is not sent upstream at all.
const (
	// h2MaxStreams is the concurrent streams each client connection may open (RFC 9113 asks for at
	// least 100 to be allowed).
	h2MaxStreams = 100
	// h2ResetBurst and h2ResetsPerSecond are a connection's budget of cancelled streams.
	h2ResetBurst      = 200
	h2ResetsPerSecond = 50
)

// limitH2RapidReset is limit_reached_total's limit for HTTP/2 connections closed for cancelling streams
// faster than their budget allows, or sent GOAWAY by net/http for too many streams waiting.
const limitH2RapidReset = "h2-rapid-reset"

// h2Config is the listeners' HTTP/2 server configuration; countError counts the connections net/http's
// own bound ends.
func h2Config(m *metrics.Metrics) *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams: h2MaxStreams,
		CountError: func(errType string) {
			if errType == "too_many_early_resets" {
				m.LimitReached(limitH2RapidReset)
			}
		},
	}
}

// resetBudget is one client connection's budget of cancelled HTTP/2 streams.
type resetBudget struct {
	conn net.Conn
	mu   sync.Mutex
	left float64
	last time.Time
	shut bool
}

type resetBudgetKey struct{}

// withResetBudget gives the requests of connection c a budget of cancelled streams (the server's
// ConnContext).
func withResetBudget(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, resetBudgetKey{}, &resetBudget{conn: c, left: h2ResetBurst, last: time.Now()})
}

// spend takes one cancelled stream from the budget and reports whether it was the one too many.
func (b *resetBudget) spend(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shut {
		return false
	}
	b.left = min(h2ResetBurst, b.left+now.Sub(b.last).Seconds()*h2ResetsPerSecond)
	b.last = now
	if b.left >= 1 {
		b.left--
		return false
	}
	b.shut = true
	return true
}

// h2Guard is a listener's handler: it proxies requests with next, and charges every HTTP/2 stream the
// client cancels to its connection's budget.
type h2Guard struct {
	next    http.Handler
	metrics *metrics.Metrics
	log     *slog.Logger
}

func (g *h2Guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 {
		g.next.ServeHTTP(w, r)
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
	b, _ := ctx.Value(resetBudgetKey{}).(*resetBudget)
	if b != nil && b.spend(time.Now()) {
		g.metrics.LimitReached(limitH2RapidReset)
		g.log.Warn("HTTP/2 connection closed: it cancels streams faster than its budget allows (rapid reset)",
			"peer", r.RemoteAddr, "burst", h2ResetBurst, "per_second", h2ResetsPerSecond)
		b.conn.Close()
	}
}
