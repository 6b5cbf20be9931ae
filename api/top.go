package api

import (
	"cmp"
	"net"
	"slices"
	"sync"

	"github.com/meshscope/meshscope/api/tap"
)

// TopKey is what Top aggregates by.
type TopKey struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Method      string `json:"method"`
	Path        string `json:"path"`
}

// TopRow is one line of the live top table: the requests of one TopKey that ended.
type TopRow struct {
	TopKey
	Count   uint64 `json:"count"`
	Success uint64 `json:"success"`
	// BestMS, WorstMS and LastMS are response latencies (request headers to response headers);
	// zero while no request of the row had a response.
	BestMS  float64 `json:"best_ms"`
	WorstMS float64 `json:"worst_ms"`
	LastMS  float64 `json:"last_ms"`
	// hasLatency tells a real 0 ms best from none yet.
	hasLatency bool
}

// SuccessRate is the share of the row's requests that succeeded, in [0,1].
func (r TopRow) SuccessRate() float64 {
	if r.Count == 0 {
		return 0
	}
	return float64(r.Success) / float64(r.Count)
}

// TopSnapshot is the state of a Top at one moment.
type TopSnapshot struct {
	// Rows, most requests first, at most the number asked for.
	Rows []TopRow `json:"rows"`
	// Keys is how many rows Top holds in all.
	Keys int `json:"keys"`
	// Requests is how many ended requests Top counted.
	Requests uint64 `json:"requests"`
	// Untracked counts requests not aggregated because Top already held its maximum of rows.
	Untracked uint64 `json:"untracked"`
	// ProxyDropped sums the events the proxies dropped for this reader.
	ProxyDropped uint64 `json:"proxy_dropped"`
}

// Top aggregates tap events into rows by source, destination, method and path,
// with bounded memory: at most MaxRows rows and a bounded set of requests waiting
// for their end. Its methods are safe for concurrent use.
type Top struct {
	// MaxRows caps the rows held (1000); requests of further keys are counted as untracked.
	MaxRows int
	// MaxPending caps requests waiting for their end (10000); the oldest are forgotten first.
	MaxPending int

	mu        sync.Mutex
	tapped    map[string]bool // pods whose proxies stream to this Top
	rows      map[TopKey]*TopRow
	pending   [2]map[pendingID]*pendingCall // [0] current generation, [1] previous
	requests  uint64
	untracked uint64
	dropped   uint64
}

type pendingID struct {
	proxy string
	id    uint64
}

type pendingCall struct {
	key        TopKey
	status     int
	latencyMS  float64
	hasLatency bool
}

func (t *Top) maxRows() int {
	if t.MaxRows > 0 {
		return t.MaxRows
	}
	return 1000
}

func (t *Top) maxPending() int {
	if t.MaxPending > 0 {
		return t.MaxPending
	}
	return 10000
}

// Add takes one item of a fan-in. Of the proxies' news it notes which pods
// it taps: a call from one tapped proxy to another is seen twice, outbound at
// the caller and inbound at the callee, and counted once, on the inbound side.
func (t *Top) Add(it TapItem) {
	ev := it.Event
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.rows == nil {
		t.rows = map[TopKey]*TopRow{}
		t.pending = [2]map[pendingID]*pendingCall{{}, {}}
		t.tapped = map[string]bool{}
	}
	if ev == nil {
		switch {
		case it.Proxy.Pod == "":
		case it.State == ProxyStreaming:
			t.tapped[it.Proxy.Pod] = true
		case it.State == ProxyGone:
			delete(t.tapped, it.Proxy.Pod)
		}
		return
	}
	id := pendingID{proxy: it.Proxy.Admin, id: ev.ID}
	switch ev.Type {
	case tap.TypeDropped:
		t.dropped += ev.Count
	case tap.TypeRequest:
		if ev.Direction == tap.DirectionOutbound && t.tapped[ev.Destination.Labels[tap.LabelPod]] {
			return // the callee's proxy reports it inbound
		}
		// Two generations bound memory: when the current one is full it becomes the
		// previous and the old previous (requests whose end never came) is forgotten.
		if len(t.pending[0]) >= t.maxPending()/2 {
			t.pending[1], t.pending[0] = t.pending[0], map[pendingID]*pendingCall{}
		}
		t.pending[0][id] = &pendingCall{key: TopKey{
			Source:      workloadName(ev.Source, true),
			Destination: workloadName(ev.Destination, false),
			Method:      ev.Method,
			Path:        ev.Path,
		}}
	case tap.TypeResponse:
		if c := t.lookup(id); c != nil {
			c.status, c.latencyMS, c.hasLatency = ev.Status, ev.LatencyMS, true
		}
	case tap.TypeEnd:
		c := t.lookup(id)
		if c == nil {
			return
		}
		delete(t.pending[0], id)
		delete(t.pending[1], id)
		t.end(c, ev)
	}
}

func (t *Top) lookup(id pendingID) *pendingCall {
	if c, ok := t.pending[0][id]; ok {
		return c
	}
	return t.pending[1][id]
}

func (t *Top) end(c *pendingCall, ev *tap.Event) {
	t.requests++
	row, ok := t.rows[c.key]
	if !ok {
		if len(t.rows) >= t.maxRows() {
			t.untracked++
			return
		}
		row = &TopRow{TopKey: c.key}
		t.rows[c.key] = row
	}
	row.Count++
	if Succeeded(c.status, ev) {
		row.Success++
	}
	if c.hasLatency {
		if !row.hasLatency || c.latencyMS < row.BestMS {
			row.BestMS = c.latencyMS
		}
		if !row.hasLatency || c.latencyMS > row.WorstMS {
			row.WorstMS = c.latencyMS
		}
		row.LastMS, row.hasLatency = c.latencyMS, true
	}
}

// Succeeded classifies a request the way the proxy's metrics do (see
// tap.Failed): the end event carries its gRPC status and stream error.
func Succeeded(status int, end *tap.Event) bool {
	return !tap.Failed(status, end.GRPCStatus, end.Error)
}

// Snapshot returns up to n rows, most requests first (ties by key, so the order is stable).
func (t *Top) Snapshot(n int) TopSnapshot {
	t.mu.Lock()
	rows := make([]TopRow, 0, len(t.rows))
	for _, r := range t.rows {
		rows = append(rows, *r)
	}
	s := TopSnapshot{Keys: len(t.rows), Requests: t.requests, Untracked: t.untracked, ProxyDropped: t.dropped}
	t.mu.Unlock()
	slices.SortFunc(rows, func(a, b TopRow) int {
		return cmp.Or(
			cmp.Compare(b.Count, a.Count),
			cmp.Compare(a.Source, b.Source),
			cmp.Compare(a.Destination, b.Destination),
			cmp.Compare(a.Method, b.Method),
			cmp.Compare(a.Path, b.Path),
		)
	})
	if n >= 0 && len(rows) > n {
		rows = rows[:n]
	}
	s.Rows = rows
	return s
}

// workloadName names one side of a request for humans: its pod, else its
// deployment, else the ServiceAccount its mutual TLS identity names (an
// inbound source), else its address (without the port for a source, whose
// port is a client's ephemeral one and would split one caller into many rows).
func workloadName(e tap.Endpoint, source bool) string {
	if v := e.Labels[tap.LabelPod]; v != "" {
		return v
	}
	if v := e.Labels[tap.LabelDeployment]; v != "" {
		return v
	}
	if v := e.Labels[tap.LabelServiceAccount]; v != "" {
		return e.Labels[tap.LabelNamespace] + "/" + v
	}
	if source {
		if host, _, err := net.SplitHostPort(e.Addr); err == nil {
			return host
		}
	}
	return e.Addr
}
