package api

import (
	"fmt"
	"testing"

	"github.com/meshscope/meshscope/api/tap"
)

// call is one request as three tap events from one proxy.
type call struct {
	proxy      string
	id         uint64
	src, dst   string // pod labels
	method     string
	path       string
	status     int // 0: no response event
	latencyMS  float64
	grpcStatus *int
	err        string
}

func (c call) items() []TapItem {
	p := Proxy{Pod: c.proxy, Admin: c.proxy + ":4191"}
	req := &tap.Event{V: tap.Version, Type: tap.TypeRequest, ID: c.id, Method: c.method, Path: c.path,
		Source:      tap.Endpoint{Addr: "10.0.0.1:53211", Labels: map[string]string{tap.LabelPod: c.src}},
		Destination: tap.Endpoint{Addr: "10.0.0.2:8080", Labels: map[string]string{tap.LabelPod: c.dst}}}
	items := []TapItem{{Proxy: p, Event: req}}
	if c.status != 0 {
		items = append(items, TapItem{Proxy: p, Event: &tap.Event{V: tap.Version, Type: tap.TypeResponse, ID: c.id,
			Status: c.status, LatencyMS: c.latencyMS}})
	}
	return append(items, TapItem{Proxy: p, Event: &tap.Event{V: tap.Version, Type: tap.TypeEnd, ID: c.id,
		GRPCStatus: c.grpcStatus, Error: c.err}})
}

func code(n int) *int { return &n }

func TestTopAggregatesCallsIntoRows(t *testing.T) {
	calls := []call{
		{proxy: "web-0", id: 1, src: "load", dst: "web-0", method: "GET", path: "/a", status: 200, latencyMS: 5},
		{proxy: "web-0", id: 2, src: "load", dst: "web-0", method: "GET", path: "/a", status: 503, latencyMS: 2},
		{proxy: "web-0", id: 3, src: "load", dst: "web-0", method: "GET", path: "/a", status: 200, latencyMS: 9},
		{proxy: "web-0", id: 4, src: "load", dst: "web-0", method: "GET", path: "/a", status: 200, latencyMS: 4},
		// Same id on another proxy: a different request.
		{proxy: "web-1", id: 1, src: "load", dst: "web-1", method: "POST", path: "/b", status: 201, latencyMS: 1},
		// gRPC failures answer HTTP 200: the grpc-status decides.
		{proxy: "web-1", id: 2, src: "load", dst: "web-1", method: "POST", path: "/pkg.Svc/Get", status: 200, latencyMS: 3, grpcStatus: code(14)},
		{proxy: "web-1", id: 3, src: "load", dst: "web-1", method: "POST", path: "/pkg.Svc/Get", status: 200, latencyMS: 3, grpcStatus: code(0)},
		// A stream error and an end without any response are failures.
		{proxy: "web-1", id: 4, src: "load", dst: "web-1", method: "GET", path: "/c", status: 200, latencyMS: 1, err: "stream reset"},
		{proxy: "web-1", id: 5, src: "load", dst: "web-1", method: "GET", path: "/c", err: "upstream refused"},
	}
	var top Top
	for _, c := range calls {
		for _, it := range c.items() {
			top.Add(it)
		}
	}
	top.Add(TapItem{Event: &tap.Event{V: tap.Version, Type: tap.TypeDropped, Count: 7}})
	top.Add(TapItem{State: ProxyFailed, Err: "ignored"})

	snap := top.Snapshot(10)
	want := []struct {
		key               TopKey
		count, success    uint64
		best, worst, last float64
		successRate       float64
	}{
		{TopKey{"load", "web-0", "GET", "/a"}, 4, 3, 2, 9, 4, 0.75},
		{TopKey{"load", "web-1", "GET", "/c"}, 2, 0, 1, 1, 1, 0},
		{TopKey{"load", "web-1", "POST", "/pkg.Svc/Get"}, 2, 1, 3, 3, 3, 0.5},
		{TopKey{"load", "web-1", "POST", "/b"}, 1, 1, 1, 1, 1, 1},
	}
	if len(snap.Rows) != len(want) {
		t.Fatalf("got %d rows, want %d: %+v", len(snap.Rows), len(want), snap.Rows)
	}
	for i, w := range want {
		r := snap.Rows[i]
		if r.TopKey != w.key || r.Count != w.count || r.Success != w.success ||
			r.BestMS != w.best || r.WorstMS != w.worst || r.LastMS != w.last || r.SuccessRate() != w.successRate {
			t.Errorf("row %d = %+v (success rate %v), want %+v", i, r, r.SuccessRate(), w)
		}
	}
	if snap.Requests != 9 || snap.ProxyDropped != 7 || snap.Keys != 4 {
		t.Errorf("requests=%d proxy_dropped=%d keys=%d, want 9, 7, 4", snap.Requests, snap.ProxyDropped, snap.Keys)
	}
	if got := top.Snapshot(1).Rows; len(got) != 1 || got[0].Path != "/a" {
		t.Errorf("Snapshot(1) = %+v, want only the busiest row", got)
	}
}

func TestTopSourceWithoutLabelsIsItsHostNotItsEphemeralPort(t *testing.T) {
	var top Top
	for i, port := range []string{"50001", "50002", "50003"} {
		p := Proxy{Admin: "web-0:4191"}
		top.Add(TapItem{Proxy: p, Event: &tap.Event{Type: tap.TypeRequest, ID: uint64(i + 1), Method: "GET", Path: "/",
			Source: tap.Endpoint{Addr: "10.1.1.1:" + port}, Destination: tap.Endpoint{Addr: "10.0.0.2:8080"}}})
		top.Add(TapItem{Proxy: p, Event: &tap.Event{Type: tap.TypeResponse, ID: uint64(i + 1), Status: 200}})
		top.Add(TapItem{Proxy: p, Event: &tap.Event{Type: tap.TypeEnd, ID: uint64(i + 1)}})
	}
	rows := top.Snapshot(10).Rows
	if len(rows) != 1 || rows[0].Source != "10.1.1.1" || rows[0].Destination != "10.0.0.2:8080" || rows[0].Count != 3 {
		t.Errorf("rows = %+v, want one row from 10.1.1.1 to 10.0.0.2:8080 with 3 requests", rows)
	}
}

func TestTopMemoryIsBounded(t *testing.T) {
	top := Top{MaxRows: 5, MaxPending: 100}
	for i := range 50 {
		c := call{proxy: "p", id: uint64(i + 1), src: "s", dst: "d", method: "GET", path: fmt.Sprintf("/item/%d", i), status: 200}
		for _, it := range c.items() {
			top.Add(it)
		}
	}
	snap := top.Snapshot(100)
	if snap.Keys != 5 || len(snap.Rows) != 5 || snap.Untracked != 45 || snap.Requests != 50 {
		t.Errorf("keys=%d rows=%d untracked=%d requests=%d, want 5, 5, 45, 50", snap.Keys, len(snap.Rows), snap.Untracked, snap.Requests)
	}

	// Requests whose end never comes (dropped events) are forgotten, oldest first.
	for i := range 10000 {
		top.Add(TapItem{Proxy: Proxy{Admin: "p"}, Event: &tap.Event{Type: tap.TypeRequest, ID: uint64(1000 + i), Path: "/hang"}})
	}
	top.mu.Lock()
	pending := len(top.pending[0]) + len(top.pending[1])
	top.mu.Unlock()
	if pending > 100 {
		t.Errorf("%d requests waiting for their end, want at most MaxPending=100", pending)
	}
}

// TestTopCountsACallSeenByTwoTappedProxiesOnce: web-0's outbound call to
// catalog-0 is also catalog-0's inbound call; with both proxies tapped it is
// one call, counted where it is served. A callee not tapped keeps its calls
// counted at the caller.
func TestTopCountsACallSeenByTwoTappedProxiesOnce(t *testing.T) {
	var top Top
	for _, pod := range []string{"web-0", "catalog-0"} {
		top.Add(TapItem{Proxy: Proxy{Pod: pod, Admin: pod + ":4191"}, State: ProxyStreaming})
	}
	add := func(c call, direction string) {
		for _, it := range c.items() {
			if it.Event.Type == tap.TypeRequest {
				it.Event.Direction = direction
			}
			top.Add(it)
		}
	}
	add(call{proxy: "web-0", id: 1, src: "web-0", dst: "catalog-0", method: "GET", path: "/p", status: 200}, tap.DirectionOutbound)
	add(call{proxy: "catalog-0", id: 1, src: "web-0", dst: "catalog-0", method: "GET", path: "/p", status: 200}, tap.DirectionInbound)
	add(call{proxy: "web-0", id: 2, src: "web-0", dst: "payments-0", method: "POST", path: "/pay", status: 200}, tap.DirectionOutbound)
	s := top.Snapshot(10)
	if s.Requests != 2 || len(s.Rows) != 2 || s.Rows[0].Count != 1 || s.Rows[1].Count != 1 {
		t.Fatalf("snapshot %+v: want the catalog call once and the payments call once", s)
	}
}

func TestTopNamesAnInboundSourceByItsIdentity(t *testing.T) {
	e := tap.Endpoint{Addr: "10.0.0.7:40123", Labels: map[string]string{tap.LabelNamespace: "shop", tap.LabelServiceAccount: "web"}}
	if got := workloadName(e, true); got != "shop/web" {
		t.Errorf("source named %q, want shop/web", got)
	}
}
