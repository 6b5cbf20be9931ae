package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
)

// liveSockets serves the websockets of the live views: /api/v1/tap/ws streams
// tap events in batched frames, /api/v1/top/ws pushes the live top table. Both
// take the tap filters (DESIGN "Tap") plus namespace, deployment and pod to pick
// the proxies, from the query string or, when the query string is empty, from
// the first message: a JSON object of the same parameters. Zero durations and
// sizes take the defaults named on each field.
type liveSockets struct {
	fanin *api.FanIn
	log   *slog.Logger
	// stop ends with the process: open sockets close with "going away" (the
	// HTTP server's shutdown does not wait for hijacked connections).
	stop context.Context
	// flushEvery is how often batched tap events are sent (100ms).
	flushEvery time.Duration
	// topEvery is how often the top table is sent (1s).
	topEvery time.Duration
	// pingEvery is how often the client is pinged (20s); a ping unanswered for as long closes the socket.
	pingEvery time.Duration
	// maxBatch caps the events held for one frame (4096); more are dropped and counted.
	maxBatch int
	// topRows is how many rows of top are sent (100).
	topRows int
	// readLimit caps one message from the client (4 KiB).
	readLimit int
	// maxSockets caps the live sockets open at once (64): each taps every proxy it selects. quota shares
	// them among clients; refused, when set, counts the sockets it refuses by reason.
	maxSockets int
	quota      liveQuota
	refused    *prometheus.CounterVec

	// open, when set, counts the sockets being served (the server waits for it on shutdown).
	open *sync.WaitGroup
}

// orDefault is v, or def when v is zero (or negative).
func orDefault[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// firstMessageTimeout bounds the wait for the filter message when the query string is empty.
const firstMessageTimeout = 10 * time.Second

// writeTimeout bounds one frame's write; a client slower than this is disconnected.
const writeTimeout = 10 * time.Second

// uiParams are query parameters of the live pages that only the browser uses.
var uiParams = []string{"hide_authority", "hide_path"}

// errBadFilter marks a request whose filters cannot be used: the client's fault.
var errBadFilter = errors.New("bad filter")

// liveRequest is what a live socket taps: which proxies and with which filter.
type liveRequest struct {
	sel    api.Selector
	filter tap.Filter
}

// parseLiveQuery splits q into the proxy selector, the page's own parameters
// (ignored here) and the tap filter, and validates them all.
func parseLiveQuery(q url.Values) (liveRequest, error) {
	q = cloneValues(q)
	var lr liveRequest
	for _, f := range []struct {
		name  string
		dst   *string
		valid func(string) error
	}{
		{"namespace", &lr.sel.Namespace, api.ValidNamespace},
		{"deployment", &lr.sel.Deployment, func(v string) error { return api.ValidName("deployment", v) }},
		{"pod", &lr.sel.Pod, func(v string) error { return api.ValidName("pod", v) }},
	} {
		v := q.Get(f.name)
		q.Del(f.name)
		if v == "" {
			continue
		}
		if err := f.valid(v); err != nil {
			return liveRequest{}, fmt.Errorf("%w: %w", errBadFilter, err)
		}
		*f.dst = v
	}
	for _, p := range uiParams {
		q.Del(p)
	}
	filter, err := tap.ParseFilter(q)
	if err != nil {
		return liveRequest{}, fmt.Errorf("%w: %w", errBadFilter, err)
	}
	lr.filter = filter
	return lr, nil
}

// parseFilterMessage reads a first message: a JSON object whose members are the
// query parameters, each a string.
func parseFilterMessage(b []byte) (liveRequest, error) {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return liveRequest{}, fmt.Errorf("%w: message is not a JSON object of strings: %w", errBadFilter, err)
	}
	q := url.Values{}
	for k, v := range m {
		q.Set(k, v)
	}
	return parseLiveQuery(q)
}

func cloneValues(q url.Values) url.Values {
	out := make(url.Values, len(q))
	for k, v := range q {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// sameOrigin reports whether the Origin header names the host the request was
// sent to. Browsers always send Origin on a websocket handshake; a client that
// sends none is not a browser page and cannot be a cross-site one.
func sameOrigin(r *http.Request) (bool, string) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true, ""
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false, origin
	}
	return strings.EqualFold(u.Host, r.Host), origin
}

// closeReason fits a reason into a close frame (RFC 6455 5.5: 125 bytes of
// control payload, 2 of them the code).
func closeReason(s string) string {
	const max = 123
	if len(s) <= max {
		return s
	}
	return s[:max-3] + "..."
}

// serveTap streams tap events.
func (ls *liveSockets) serveTap(w http.ResponseWriter, r *http.Request) { ls.serve(w, r, false) }

// serveTop pushes the live top table.
func (ls *liveSockets) serveTop(w http.ResponseWriter, r *http.Request) { ls.serve(w, r, true) }

func (ls *liveSockets) serve(w http.ResponseWriter, r *http.Request, top bool) {
	// The Host allowlist ran before routing; the Origin check is ours. A foreign
	// Origin is refused with a close code the page can show (policy violation)
	// rather than a bare 403 it cannot read: the socket is closed before anything
	// is read from or sent to it, so a cross-site page learns nothing.
	ok, origin := sameOrigin(r)
	if ls.open != nil {
		// Before Accept: until the connection is hijacked, Shutdown still
		// waits for this handler, so this Add happens before the server's Wait.
		ls.open.Add(1)
		defer ls.open.Done()
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		ls.log.Info("live socket: handshake failed", "err", err)
		return
	}
	defer c.CloseNow()
	if !ok {
		ls.log.Warn("live socket: foreign origin refused", "origin", origin, "host", r.Host)
		c.Close(websocket.StatusPolicyViolation, closeReason("origin "+origin+" does not match host "+r.Host))
		return
	}
	client, _, _ := net.SplitHostPort(r.RemoteAddr)
	browser := origin != ""
	if reason, msg := ls.quota.take(client, browser, orDefault(ls.maxSockets, 64)); reason != "" {
		if ls.refused != nil {
			ls.refused.WithLabelValues(reason).Inc()
		}
		ls.log.Info("live socket refused", "reason", reason, "client", client)
		c.Close(websocket.StatusTryAgainLater, closeReason(msg))
		return
	}
	defer ls.quota.give(client, browser)
	c.SetReadLimit(int64(orDefault(ls.readLimit, 4<<10)))

	lr, err := ls.request(r, c)
	if err != nil {
		var ce websocket.CloseError
		switch {
		case errors.As(err, &ce), errors.Is(err, context.Canceled):
			// The client closed, or the library closed for it (message too big).
		case errors.Is(err, errBadFilter):
			c.Close(websocket.StatusPolicyViolation, closeReason(err.Error()))
		default:
			c.Close(websocket.StatusPolicyViolation, closeReason("no filter message: "+err.Error()))
		}
		return
	}

	// CloseRead answers pings and close frames and ends ctx when the socket
	// closes; a further data message closes it with policy violation.
	ctx := c.CloseRead(r.Context())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if ls.stop != nil {
		defer context.AfterFunc(ls.stop, cancel)()
	}

	sink := newLiveSink(orDefault(ls.maxBatch, 4096), top)
	var runErr error
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		runErr = ls.fanin.Run(ctx, lr.sel, lr.filter, sink.add)
	}()
	err = ls.writeLoop(ctx, c, sink, top, runDone)
	cancel()
	<-runDone
	if errors.Is(err, errRunEnded) {
		err = runErr
	}
	switch {
	case ls.stop != nil && ls.stop.Err() != nil:
		c.Close(websocket.StatusGoingAway, "dashboard shutting down")
	case err == nil, errors.Is(err, errClientGone):
		c.Close(websocket.StatusNormalClosure, "")
	default:
		ls.log.Warn("live socket: closing", "err", err)
		c.Close(websocket.StatusInternalError, closeReason(err.Error()))
	}
}

// errClientGone: the socket ended from the client's side; nothing left to tell it.
var errClientGone = errors.New("client gone")

// errRunEnded: the fan-in returned before the socket ended (its first listing failed).
var errRunEnded = errors.New("fan-in ended")

// request reads the selector and filter from the query string, or from the first message.
func (ls *liveSockets) request(r *http.Request, c *websocket.Conn) (liveRequest, error) {
	if r.URL.RawQuery != "" {
		return parseLiveQuery(r.URL.Query())
	}
	ctx, cancel := context.WithTimeout(r.Context(), firstMessageTimeout)
	defer cancel()
	_, msg, err := c.Read(ctx)
	if err != nil {
		return liveRequest{}, err
	}
	return parseFilterMessage(msg)
}

// writeLoop is the socket's one writer: it sends a frame every flush interval
// (tap) or top interval (top) and pings the client. A write or ping is bounded
// by its own timeout, not by ctx: the library closes the connection outright
// when a call's context ends mid-call, which would cut a shutting-down socket
// before its "going away" close frame. It returns errClientGone
// when ctx ends or a write or ping fails, errRunEnded when runDone closes.
func (ls *liveSockets) writeLoop(ctx context.Context, c *websocket.Conn, sink *liveSink, top bool, runDone <-chan struct{}) error {
	every := orDefault(ls.flushEvery, 100*time.Millisecond)
	if top {
		every = orDefault(ls.topEvery, time.Second)
	}
	flush := time.NewTicker(every)
	defer flush.Stop()
	pingEvery := orDefault(ls.pingEvery, 20*time.Second)
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return errClientGone
		case <-runDone:
			return errRunEnded
		case <-ping.C:
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pingEvery)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				return errClientGone
			}
		case <-flush.C:
			var ok bool
			buf, ok = sink.frame(buf[:0], orDefault(ls.topRows, 100))
			if !ok {
				continue
			}
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
			err := c.Write(wctx, websocket.MessageText, buf)
			cancel()
			if err != nil {
				return errClientGone
			}
		}
	}
}

// liveSink collects what the fan-in delivers between two frames, with bounded
// memory: at most max events wait; more are dropped and counted.
type liveSink struct {
	max int
	top *api.Top // nil for tap

	mu           sync.Mutex
	events       []api.TapItem
	status       []api.TapItem
	dropped      uint64 // events this dashboard dropped for the client, since the socket opened
	proxyDropped uint64 // events the proxies dropped, as their dropped events said
	changed      bool   // top: something arrived since the last frame
}

func newLiveSink(max int, top bool) *liveSink {
	s := &liveSink{max: max}
	if top {
		s.top = &api.Top{}
	}
	return s
}

// add is the fan-in's emit: it never blocks for long.
func (s *liveSink) add(it api.TapItem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case it.Event == nil:
		if len(s.status) < s.max {
			s.status = append(s.status, it)
		}
		if s.top != nil {
			s.top.Add(it) // which proxies stream: a call seen by two counts once
		}
	case s.top != nil:
		s.top.Add(it)
	case it.Event.Type == tap.TypeDropped:
		s.proxyDropped += it.Event.Count
	case len(s.events) >= s.max:
		s.dropped++
	default:
		s.events = append(s.events, it)
	}
	s.changed = true
}

// frame appends the next frame to b and reports whether there is one to send.
// A tap frame is {"events":[{"proxy":…,"event":{…}}…],"status":[…],"dropped":n,
// "proxy_dropped":n}; a top frame has "top" (api.TopSnapshot) instead of events.
func (s *liveSink) frame(b []byte, topRows int) ([]byte, bool) {
	s.mu.Lock()
	if !s.changed {
		s.mu.Unlock()
		return b, false
	}
	events, status := s.events, s.status
	s.events, s.status = make([]api.TapItem, 0, min(cap(events), s.max)), nil
	dropped, proxyDropped := s.dropped, s.proxyDropped
	s.changed = false
	s.mu.Unlock()

	b = append(b, '{')
	if s.top != nil {
		snap := s.top.Snapshot(topRows)
		proxyDropped = snap.ProxyDropped
		js, _ := json.Marshal(snap) // plain strings and numbers: cannot fail
		b = append(b, `"top":`...)
		b = append(b, js...)
	} else {
		b = append(b, `"events":[`...)
		n := 0
		for _, it := range events {
			var err error
			start := len(b)
			if n > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"proxy":`...)
			b = strconv.AppendQuote(b, it.Proxy.Name())
			b = append(b, `,"event":`...)
			if b, err = tap.AppendJSON(b, it.Event); err != nil {
				b = b[:start] // an event that cannot be encoded is left out
				continue
			}
			b = append(b, '}')
			n++
		}
		b = append(b, ']')
	}
	b = append(b, `,"status":`...)
	js, _ := json.Marshal(statusJSON(status))
	b = append(b, js...)
	b = append(b, `,"dropped":`...)
	b = strconv.AppendUint(b, dropped, 10)
	b = append(b, `,"proxy_dropped":`...)
	b = strconv.AppendUint(b, proxyDropped, 10)
	b = append(b, '}')
	return b, true
}

// proxyStatus is a change of one proxy's tap stream, as the browser receives it.
type proxyStatus struct {
	Proxy string         `json:"proxy,omitempty"`
	State api.ProxyState `json:"state"`
	Error string         `json:"error,omitempty"`
	// ObservedRPS and MaxRPS come with the sampling state.
	ObservedRPS float64 `json:"observed_rps,omitempty"`
	MaxRPS      int     `json:"max_rps,omitempty"`
}

func statusJSON(items []api.TapItem) []proxyStatus {
	out := make([]proxyStatus, 0, len(items))
	for _, it := range items {
		ps := proxyStatus{State: it.State, Error: it.Err, ObservedRPS: it.ObservedRPS, MaxRPS: it.MaxRPS}
		if it.Proxy != (api.Proxy{}) {
			ps.Proxy = it.Proxy.Name()
		}
		out = append(out, ps)
	}
	return out
}
