// Package taphub publishes the requests a proxy carries to its tap
// subscribers (GET /tap on the admin port; see [Handler]).
//
// The data path asks the [Hub] for a [Span] per request and reports the
// request's three moments to it. With no subscriber that costs one atomic
// load and allocates nothing; with subscribers, events go to each
// subscriber's bounded buffer without ever waiting: a full buffer drops the
// event and counts it, and the subscriber's stream says how many it lost.
package taphub

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
)

// DefaultBuffer is how many events a subscriber's buffer holds when
// Options.Buffer is zero: over a second of a busy stream (2,000 requests per
// second, three events each), enough to ride out a reader's hiccup, and at
// most a few megabytes held for a reader that stalls.
const DefaultBuffer = 4096

// DefaultBufferBytes bounds the bytes of the events a subscriber's buffer
// holds (their paths, authorities and headers, roughly) when
// Options.BufferBytes is zero: 4,096 ordinary events fit, while a reader that
// stalls behind requests with large headers holds a few megabytes, not
// gigabytes. Past it, events are dropped and counted like a full buffer.
const DefaultBufferBytes = 4 << 20

// Limits reported to Options.LimitReached: an event's fields cut to size
// (tap.Event.Trim), an event dropped because its subscriber holds
// DefaultBufferBytes already, a stream refused past MaxSubscribers.
const (
	LimitEventTruncated  = "tap-event-truncated"
	LimitSubscriberBytes = "tap-subscriber-bytes"
	LimitSubscribers     = "tap-subscribers"
)

// DefaultMaxSubscribers is how many tap streams a hub serves at once when
// Options.MaxSubscribers is zero: each may hold DefaultBufferBytes.
const DefaultMaxSubscribers = 64

// ErrTooManySubscribers is Subscribe's error when the hub already serves
// its most subscribers.
var ErrTooManySubscribers = errors.New("too many tap streams open")

// ErrClosed is Subscribe's error once the hub is closed (the proxy is
// shutting down).
var ErrClosed = errors.New("tap hub closed")

// Identity is the workload this proxy serves (flags --namespace,
// --deployment, --pod); empty fields are unknown.
type Identity struct {
	Namespace, Deployment, Pod string
}

// Options configure a Hub. The zero Options work.
type Options struct {
	// Identity labels this proxy's side of every event: the source of
	// outbound requests, the destination of inbound ones.
	Identity Identity
	// Buffer is each subscriber's buffer, in events; 0 means DefaultBuffer.
	Buffer int
	// BufferBytes bounds the bytes of each subscriber's buffered events; 0
	// means DefaultBufferBytes.
	BufferBytes int64
	// MaxSubscribers bounds the subscriptions open at once; 0 means
	// DefaultMaxSubscribers.
	MaxSubscribers int
	// LimitReached, when set, is called each time a bound stops something,
	// with LimitEventTruncated or LimitSubscriberBytes (a metric).
	LimitReached func(limit string)
	// Now is the clock for event times, latencies and rate limits; nil
	// means time.Now.
	Now func() time.Time
}

// Hub fans the proxy's requests out to tap subscribers. It is safe for
// concurrent use; its zero value is not usable, use New.
type Hub struct {
	// subs is the current subscribers, nil when there are none: the one
	// atomic load Active does.
	subs atomic.Pointer[[]*subscriber]

	mu     sync.Mutex // serializes changes to subs and closing
	closed bool
	done   chan struct{} // closed by Close

	nextID   atomic.Uint64
	identity map[string]string // read-only, shared by events
	buffer   int
	bytes    int64 // Options.BufferBytes
	maxSubs  int
	limitHit func(string)
	now      func() time.Time
	epoch    time.Time // origin of the rate limiters' monotonic nanoseconds
}

// New returns a Hub with no subscribers.
func New(opts Options) *Hub {
	h := &Hub{
		done:     make(chan struct{}),
		buffer:   opts.Buffer,
		bytes:    opts.BufferBytes,
		maxSubs:  opts.MaxSubscribers,
		limitHit: opts.LimitReached,
		now:      opts.Now,
	}
	if h.buffer <= 0 {
		h.buffer = DefaultBuffer
	}
	if h.bytes <= 0 {
		h.bytes = DefaultBufferBytes
	}
	if h.maxSubs <= 0 {
		h.maxSubs = DefaultMaxSubscribers
	}
	if h.limitHit == nil {
		h.limitHit = func(string) {}
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.epoch = h.now()
	id := map[string]string{}
	for k, v := range map[string]string{
		tap.LabelNamespace: opts.Identity.Namespace, tap.LabelDeployment: opts.Identity.Deployment, tap.LabelPod: opts.Identity.Pod,
	} {
		if v != "" {
			id[k] = v
		}
	}
	if len(id) > 0 {
		h.identity = id
	}
	return h
}

// Active reports whether anyone is tapping. Callers on the data path check
// it before gathering a RequestInfo, so an untapped proxy pays one atomic
// load per request. A nil *Hub is never active.
func (h *Hub) Active() bool { return h != nil && h.subs.Load() != nil }

// Close ends every subscription (their streams flush what they hold and
// end) and refuses new ones. The proxy calls it when it starts shutting
// down, so that open tap streams do not hold up the admin server.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// subscriber is one tap stream's end of the hub.
type subscriber struct {
	filter  tap.Filter
	events  chan *tap.Event
	dropped atomic.Uint64
	limit   limiter
	// held is the size (eventSize) of the events in the buffer, at most
	// maxHeld.
	held     atomic.Int64
	maxHeld  int64
	limitHit func(string)
}

// Subscription is a tap client's stream of events, from Subscribe to
// Unsubscribe.
type Subscription struct {
	hub *Hub
	sub *subscriber
}

// Subscribe starts delivering the events of requests that pass f, at most
// f.RPS() requests per second. It fails with ErrClosed, or with
// ErrTooManySubscribers when MaxSubscribers are open.
func (h *Hub) Subscribe(f tap.Filter) (*Subscription, error) {
	s := &subscriber{filter: f, events: make(chan *tap.Event, h.buffer), maxHeld: h.bytes, limitHit: h.limitHit}
	s.limit.init(f.RPS())
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	var next []*subscriber
	if old := h.subs.Load(); old != nil {
		if len(*old) >= h.maxSubs {
			h.limitHit(LimitSubscribers)
			return nil, ErrTooManySubscribers
		}
		next = append(next, *old...)
	}
	next = append(next, s)
	h.subs.Store(&next)
	return &Subscription{hub: h, sub: s}, nil
}

// Unsubscribe stops delivery at once; events in flight to the subscription
// are garbage once the requests that hold them end. Calling it again does
// nothing.
func (s *Subscription) Unsubscribe() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.subs.Load()
	if old == nil {
		return
	}
	var next []*subscriber
	for _, x := range *old {
		if x != s.sub {
			next = append(next, x)
		}
	}
	switch {
	case len(next) == len(*old):
	case len(next) == 0:
		h.subs.Store(nil)
	default:
		h.subs.Store(&next)
	}
}

// Events is the subscription's buffer. Nothing closes it: read until Done,
// and call Took with each event taken.
func (s *Subscription) Events() <-chan *tap.Event { return s.sub.events }

// Took tells the subscription that ev, taken from Events, is no longer in
// its buffer: its bytes no longer count against the buffer's byte bound.
func (s *Subscription) Took(ev *tap.Event) { s.sub.held.Add(-eventSize(ev)) }

// Done is closed when the hub closes.
func (s *Subscription) Done() <-chan struct{} { return s.hub.done }

// TakeDropped returns how many events were dropped since the last call
// because the buffer was full, and resets the count.
func (s *Subscription) TakeDropped() uint64 { return s.sub.dropped.Swap(0) }

// deliver hands ev to s without waiting; a full buffer, in events or in
// bytes, drops it.
func (s *subscriber) deliver(ev *tap.Event) {
	size := eventSize(ev)
	if s.held.Add(size) > s.maxHeld {
		s.held.Add(-size)
		s.dropped.Add(1)
		s.limitHit(LimitSubscriberBytes)
		return
	}
	select {
	case s.events <- ev:
	default:
		s.held.Add(-size)
		s.dropped.Add(1)
	}
}

// eventSize is roughly how many bytes ev holds: its strings, headers and a
// fixed part. Events are read-only once delivered, so it is the same when
// the event is delivered and when it is taken.
func eventSize(ev *tap.Event) int64 {
	n := 256 + len(ev.Path) + len(ev.Query) + len(ev.Authority) + len(ev.Error)
	for name, values := range ev.Headers {
		for _, v := range values {
			n += len(name) + len(v) + 16
		}
	}
	return int64(n)
}

// limiter admits at most rps requests per second, with bursts up to one
// second's worth: the generic cell rate algorithm, lock-free, on the hub's
// monotonic nanoseconds.
type limiter struct {
	tat       atomic.Int64 // theoretical arrival time of the next request
	interval  int64        // nanoseconds per admitted request
	tolerance int64        // how far tat may run ahead of now
}

func (l *limiter) init(rps int) {
	l.interval = int64(time.Second) / int64(rps)
	l.tolerance = int64(time.Second) - l.interval
}

func (l *limiter) allow(now int64) bool {
	for {
		tat := l.tat.Load()
		t := max(tat, now)
		if t-now > l.tolerance {
			return false
		}
		if l.tat.CompareAndSwap(tat, t+l.interval) {
			return true
		}
	}
}

// RequestInfo describes a request whose headers were read and whose
// destination is known.
type RequestInfo struct {
	// Direction is tap.DirectionInbound or tap.DirectionOutbound.
	Direction string
	Method    string
	Authority string
	Path      string
	// Query is the raw query string, redacted by Request.
	Query string
	// Header is copied (and redacted) by Request; the caller may change it
	// afterwards.
	Header http.Header
	// Source is the client's address; Destination the address the request
	// goes to (the local app inbound, the endpoint outbound).
	Source, Destination string
	// DstLabels are the destination's labels with their dst_ prefix, as in
	// the destinations file (outbound only; nil when unknown).
	DstLabels map[string]string
	// PeerIdentity is the identity the other side proved over mutual TLS:
	// the client's inbound, the endpoint's outbound; empty without mutual
	// TLS. LocalIdentity is this proxy's own, reported with it.
	PeerIdentity, LocalIdentity string
	// Route is the name of the outbound route the request took; empty for none.
	Route string
	// Start is when the request headers were read; zero means now.
	Start time.Time
}

// Span reports one request's events to the subscribers that want it. A nil
// *Span is valid and does nothing, so the data path calls its methods
// unconditionally. Its methods must be called in order (Reroute any time
// before Response), from one goroutine at a time.
type Span struct {
	hub   *Hub
	start time.Time
	dir   string
	src   tap.Endpoint
	dst   tap.Endpoint
	// events are the request, response and end events, built in place so a
	// tapped request costs one allocation for all three; each is read-only
	// once delivered. grpcStatus is what the end event's GRPCStatus points to.
	events     [3]tap.Event
	grpcStatus int
	// sending are the subscribers this request is reported to; waiting
	// those whose status filter the response decides; ending those whose
	// filter (failed, grpc_status) only the end decides, which get all three
	// events then. buf backs sending and waiting for the usual few
	// subscribers.
	sending []*subscriber
	waiting []*subscriber
	ending  []*subscriber
	buf     [4]*subscriber
	// status is the response's status code, 0 until it is written.
	status int
}

// Request starts the span of one request and reports its request event to
// the subscribers whose filters it passes (holding it back for those that
// filter by status until the response decides). It returns nil when no
// subscriber wants the request (or h is nil), so the rest of the request
// costs nothing.
func (h *Hub) Request(info *RequestInfo) *Span {
	if h == nil {
		return nil
	}
	subs := h.subs.Load()
	if subs == nil {
		return nil
	}
	now := h.now()
	start := info.Start
	if start.IsZero() {
		start = now
	}
	s := &Span{hub: h, start: start, dir: info.Direction}
	s.sending, s.waiting = s.buf[:0:2], s.buf[2:2:4]
	s.src, s.dst = h.endpoints(info.Direction, info.Source, info.Destination, info.DstLabels)
	if info.PeerIdentity != "" {
		s.identify(info.PeerIdentity, info.LocalIdentity)
	}
	ev := &s.events[0]
	*ev = tap.Event{
		V: tap.Version, Type: tap.TypeRequest, TS: start,
		Direction: s.dir, Source: s.src, Destination: s.dst,
		Method: info.Method, Authority: info.Authority, Path: info.Path, Route: info.Route,
	}
	mono := h.mono(now)
	for _, sub := range *subs {
		switch {
		case !sub.filter.MatchRequest(ev):
		case sub.filter.NeedsEnd():
			s.ending = append(s.ending, sub)
		case sub.filter.NeedsResponse():
			s.waiting = append(s.waiting, sub)
		case sub.limit.allow(mono):
			s.sending = append(s.sending, sub)
		}
	}
	if len(s.sending) == 0 && len(s.waiting) == 0 && len(s.ending) == 0 {
		return nil
	}
	ev.ID = h.nextID.Add(1)
	ev.Headers = tap.Headers(info.Header)
	ev.Query = tap.RedactQuery(info.Query)
	h.trim(ev)
	for _, sub := range s.sending {
		sub.deliver(ev)
	}
	return s
}

// Reroute records that the request went to another endpoint (a retry after
// a failed connection); the response and end events name that one.
func (s *Span) Reroute(destination string, dstLabels map[string]string, peerIdentity string) {
	if s == nil {
		return
	}
	local := s.src.Identity
	_, s.dst = s.hub.endpoints(s.dir, "", destination, dstLabels)
	s.src.Identity = ""
	if peerIdentity != "" {
		s.identify(peerIdentity, local)
	}
}

// identify sets the identities of a request that travelled over mutual TLS. An inbound client is
// also labelled with the namespace and ServiceAccount its identity names: the caller's workload, where
// its address says nothing.
func (s *Span) identify(peer, local string) {
	if s.dir == tap.DirectionOutbound {
		s.src.Identity, s.dst.Identity = local, peer
		return
	}
	s.src.Identity, s.dst.Identity = peer, local
	if ns, sa, err := meshid.ParseName(peer); err == nil {
		s.src.Labels = map[string]string{tap.LabelNamespace: ns, tap.LabelServiceAccount: sa}
	}
}

// Response reports that the response headers, with status code status, were
// written.
func (s *Span) Response(status int, header http.Header) {
	if s == nil {
		return
	}
	if len(s.waiting) > 0 {
		mono := s.hub.mono(s.hub.now())
		for _, sub := range s.waiting {
			if sub.filter.MatchStatus(status) && sub.limit.allow(mono) {
				sub.deliver(&s.events[0])
				s.sending = append(s.sending, sub)
			}
		}
		s.waiting = nil
	}
	s.status = status
	if len(s.sending) == 0 && len(s.ending) == 0 {
		return
	}
	ev := s.event(tap.TypeResponse)
	ev.Status = status
	ev.LatencyMS = millis(ev.TS.Sub(s.start))
	ev.Headers = tap.Headers(header)
	s.hub.trim(ev)
	for _, sub := range s.sending {
		sub.deliver(ev)
	}
}

// End reports that the response stream ended. grpcStatus is the gRPC status
// code, negative when the request was not gRPC; bytes the response body
// length sent; errText the stream error, empty when the response completed.
// A request that ends without a response is not reported to subscribers
// filtering by status.
func (s *Span) End(grpcStatus int, bytes int64, errText string) {
	if s == nil || (len(s.sending) == 0 && len(s.ending) == 0) {
		return
	}
	ev := s.event(tap.TypeEnd)
	if grpcStatus >= 0 {
		s.grpcStatus = grpcStatus
		ev.GRPCStatus = &s.grpcStatus
	}
	ev.DurationMS = millis(ev.TS.Sub(s.start))
	ev.Bytes = bytes
	ev.Error = errText
	if len(s.ending) > 0 {
		mono := s.hub.mono(s.hub.now())
		for _, sub := range s.ending {
			if sub.filter.MatchEnd(s.status, ev.GRPCStatus, errText) && sub.limit.allow(mono) {
				sub.deliver(&s.events[0])
				if s.status != 0 {
					sub.deliver(&s.events[1])
				}
				s.sending = append(s.sending, sub)
			}
		}
		s.ending = nil
	}
	for _, sub := range s.sending {
		sub.deliver(ev)
	}
	s.sending = nil
}

// event builds the span's event of type t (response or end) in place.
func (s *Span) event(t tap.Type) *tap.Event {
	ev := &s.events[1]
	if t == tap.TypeEnd {
		ev = &s.events[2]
	}
	*ev = tap.Event{
		V: tap.Version, Type: t, ID: s.events[0].ID, TS: s.hub.now(),
		Direction: s.dir, Source: s.src, Destination: s.dst,
	}
	return ev
}

// trim bounds ev's size (tap.Event.Trim) and counts when it had to cut.
func (h *Hub) trim(ev *tap.Event) {
	if ev.Trim(); ev.Truncated {
		h.limitHit(LimitEventTruncated)
	}
}

// endpoints returns a request's source and destination: this workload's
// identity labels its own side, the destination's dst_ labels (prefix
// removed) the other side of an outbound request.
func (h *Hub) endpoints(direction, source, destination string, dstLabels map[string]string) (src, dst tap.Endpoint) {
	src.Addr, dst.Addr = source, destination
	if direction == tap.DirectionInbound {
		dst.Labels = h.identity
		return src, dst
	}
	src.Labels = h.identity
	if len(dstLabels) > 0 {
		dst.Labels = make(map[string]string, len(dstLabels))
		for k, v := range dstLabels {
			dst.Labels[strings.TrimPrefix(k, "dst_")] = v
		}
	}
	return src, dst
}

// mono returns t as nanoseconds since the hub started, monotonic when the
// clock is.
func (h *Hub) mono(t time.Time) int64 { return int64(t.Sub(h.epoch)) }

// millis converts d to milliseconds with microsecond precision.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
