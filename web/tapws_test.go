package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
)

// dialLive opens a live socket on srv with the given Host and Origin headers.
func dialLive(t *testing.T, srv *httptest.Server, path, host, origin string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	opts := &websocket.DialOptions{HTTPHeader: h, Host: host}
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path, opts)
}

// closeStatus reads from c until the server closes it, and returns the close code and reason.
func closeStatus(t *testing.T, c *websocket.Conn) (websocket.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Reason
		}
		t.Fatalf("socket ended without a close frame: %v", err)
	}
}

func TestLiveSocketRefusals(t *testing.T) {
	_, h := newTestServer(t, config{})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://") // 127.0.0.1:port, allowed by default
	cases := []struct {
		name       string
		path       string
		host       string
		origin     string
		send       []byte
		wantHTTP   int // refused before the upgrade
		wantCode   websocket.StatusCode
		wantReason string
	}{
		{name: "foreign host is refused before the upgrade", path: "/api/v1/tap/ws?namespace=shop",
			host: "evil.example:80", origin: "http://evil.example:80", wantHTTP: http.StatusForbidden},
		{name: "foreign origin closes with policy violation", path: "/api/v1/tap/ws?namespace=shop",
			host: host, origin: "http://evil.example", wantCode: websocket.StatusPolicyViolation, wantReason: "does not match host"},
		{name: "foreign origin on top too", path: "/api/v1/top/ws?namespace=shop",
			host: host, origin: "http://evil.example", wantCode: websocket.StatusPolicyViolation, wantReason: "does not match host"},
		{name: "bad filter in the query closes with policy violation", path: "/api/v1/tap/ws?max_rps=0",
			host: host, origin: "http://" + host, wantCode: websocket.StatusPolicyViolation, wantReason: "max_rps"},
		{name: "unknown parameter is named", path: "/api/v1/tap/ws?colour=red",
			host: host, origin: "http://" + host, wantCode: websocket.StatusPolicyViolation, wantReason: "colour"},
		{name: "bad filter message closes with policy violation", path: "/api/v1/tap/ws",
			host: host, origin: "http://" + host, send: []byte(`{"namespace":"Not_A_Name"}`),
			wantCode: websocket.StatusPolicyViolation, wantReason: "namespace"},
		{name: "oversized first message closes the socket", path: "/api/v1/tap/ws",
			host: host, origin: "http://" + host, send: []byte(`{"path":"/` + strings.Repeat("a", 64<<10) + `"}`),
			wantCode: websocket.StatusMessageTooBig},
		{name: "unreachable metrics backend is an internal error naming it", path: "/api/v1/tap/ws?namespace=shop",
			host: host, origin: "http://" + host, wantCode: websocket.StatusInternalError, wantReason: "127.0.0.1:1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := dialLive(t, srv, tc.path, tc.host, tc.origin)
			if tc.wantHTTP != 0 {
				if err == nil {
					c.CloseNow()
					t.Fatal("handshake succeeded")
				}
				if resp == nil || resp.StatusCode != tc.wantHTTP {
					t.Fatalf("handshake: %v (response %v), want HTTP %d", err, resp, tc.wantHTTP)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			if tc.send != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				// The server may close while a large message is still being written.
				_ = c.Write(ctx, websocket.MessageText, tc.send)
			}
			code, reason := closeStatus(t, c)
			if code != tc.wantCode || !strings.Contains(reason, tc.wantReason) {
				t.Errorf("closed with %d %q, want %d containing %q", code, reason, tc.wantCode, tc.wantReason)
			}
		})
	}
}

func FuzzParseFilterMessage(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"namespace":"shop","deployment":"web","max_rps":"50"}`, `{"path":"/api","status":"5xx","method":"get"}`,
		`{"namespace":"Bad"}`, `{"hide_path":"/x"}`, `[]`, `{"max_rps":1}`, `null`, `{"colour":"red"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		lr, err := parseFilterMessage(b)
		if err != nil {
			if !errors.Is(err, errBadFilter) {
				t.Fatalf("error %v is not a bad filter", err)
			}
			return
		}
		// What was accepted survives its own encoding: the page links and the
		// socket URL built from it mean the same filter.
		again, err := parseLiveQuery(liveQuery(lr))
		if err != nil {
			t.Fatalf("accepted %q but not its encoding %q: %v", b, liveQuery(lr).Encode(), err)
		}
		if again != lr {
			t.Fatalf("round trip changed %+v into %+v", lr, again)
		}
		if rps := lr.filter.RPS(); rps < 1 || rps > 10000 {
			t.Fatalf("accepted max_rps %d", rps)
		}
	})
}

func TestLiveSinkHoldsAtMostItsBoundAndCountsTheRest(t *testing.T) {
	s := newLiveSink(3, false)
	p := api.Proxy{Pod: "web-0", Admin: "127.0.0.1:4191"}
	for i := range 5 {
		s.add(api.TapItem{Proxy: p, Event: &tap.Event{V: tap.Version, Type: tap.TypeRequest, ID: uint64(i + 1), Path: "/x"}})
	}
	s.add(api.TapItem{Proxy: p, Event: &tap.Event{V: tap.Version, Type: tap.TypeDropped, Count: 40}})
	s.add(api.TapItem{Proxy: p, State: api.ProxyFailed, Err: "connection refused"})
	b, ok := s.frame(nil, 10)
	if !ok {
		t.Fatal("no frame")
	}
	var f struct {
		Events []struct {
			Proxy string    `json:"proxy"`
			Event tap.Event `json:"event"`
		} `json:"events"`
		Status       []proxyStatus `json:"status"`
		Dropped      uint64        `json:"dropped"`
		ProxyDropped uint64        `json:"proxy_dropped"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	if len(f.Events) != 3 || f.Events[0].Proxy != "web-0" || f.Events[2].Event.ID != 3 {
		t.Errorf("events = %+v, want the first 3 of web-0", f.Events)
	}
	if f.Dropped != 2 || f.ProxyDropped != 40 {
		t.Errorf("dropped = %d by the dashboard, %d by proxies; want 2 and 40", f.Dropped, f.ProxyDropped)
	}
	if len(f.Status) != 1 || f.Status[0].State != api.ProxyFailed || f.Status[0].Error != "connection refused" {
		t.Errorf("status = %+v, want web-0 failed", f.Status)
	}
	if _, ok := s.frame(nil, 10); ok {
		t.Error("a second frame with nothing new was sent")
	}
	s.add(api.TapItem{Proxy: p, Event: &tap.Event{V: tap.Version, Type: tap.TypeRequest, ID: 9}})
	if b, _ := s.frame(nil, 10); !strings.Contains(string(b), `"dropped":2,`) {
		t.Errorf("next frame %s lost the running drop count", b)
	}
}

func TestLiveSocketsBeyondTheLimitAreAskedToRetryLater(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ls := &liveSockets{fanin: &api.FanIn{Targets: fixedTargets{}}, log: log, maxSockets: 1}
	srv := httptest.NewServer(http.HandlerFunc(ls.serveTap))
	t.Cleanup(srv.Close)
	first, _, err := dialLive(t, srv, "/?namespace=shop", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer first.CloseNow()
	// The first socket is counted once it says that no proxy matches.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, msg, err := first.Read(ctx); err != nil || !strings.Contains(string(msg), `"state":"none"`) {
		t.Fatalf("first socket: %s, %v; want the no-proxies status", msg, err)
	}
	second, _, err := dialLive(t, srv, "/?namespace=shop", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer second.CloseNow()
	if code, _ := closeStatus(t, second); code != websocket.StatusTryAgainLater {
		t.Errorf("second socket closed with %d, want %d (try again later)", code, websocket.StatusTryAgainLater)
	}
}

// Finding 6 of the hardening review: 64 websockets without an Origin locked every further live view out.
// Sockets without an Origin share an eighth of the total, and each client address a quarter: neither a
// script nor one client can take every live view.
func TestLiveSocketQuotasKeepViewsForOthers(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ls := &liveSockets{fanin: &api.FanIn{Targets: fixedTargets{}}, log: log, maxSockets: 8}
	srv := httptest.NewServer(http.HandlerFunc(ls.serveTap))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	// open dials from the loopback address from (all of 127/8 is this machine's), with origin when set,
	// and reports how the socket fared: 0 when it is serving.
	open := func(from, origin string) websocket.StatusCode {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
		c, _, err := websocket.Dial(ctx, "ws://"+host+"/?namespace=shop", &websocket.DialOptions{HTTPHeader: h, HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		// A serving socket says first that no proxy matches; a refused one is closed.
		_, msg, err := c.Read(ctx)
		if err == nil && strings.Contains(string(msg), `"state":"none"`) {
			return 0
		}
		return websocket.CloseStatus(err)
	}
	if got := open("127.0.0.1", ""); got != 0 {
		t.Fatalf("first socket without an Origin: %d", got)
	}
	for i := range 10 {
		if got := open("127.0.0.1", ""); got != websocket.StatusTryAgainLater {
			t.Fatalf("socket %d without an Origin: %d, want %d", i+2, got, websocket.StatusTryAgainLater)
		}
	}
	origin := "http://" + host
	for i := range 2 {
		if got := open("127.0.0.1", origin); got != 0 {
			t.Fatalf("page socket %d: %d, want serving", i+1, got)
		}
	}
	if got := open("127.0.0.1", origin); got != websocket.StatusTryAgainLater {
		t.Fatalf("a client's third page socket: %d, want %d", got, websocket.StatusTryAgainLater)
	}
	if got := open("127.0.0.2", origin); got != 0 {
		t.Fatalf("another client's page socket: %d, want serving", got)
	}
}
