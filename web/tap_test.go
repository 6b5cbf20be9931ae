package main

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
	// The real tap endpoint of the proxy, so the client is tested against what
	// it will talk to (a test-only dependency: the web binary does not link it).
	"github.com/meshscope/meshscope/proxy/taphub"
)

func intp(n int) *int { return &n }

func TestEventLines(t *testing.T) {
	src := tap.Endpoint{Addr: "127.0.0.1:50000", Labels: map[string]string{"namespace": "shop", "deployment": "web", "pod": "web-0"}}
	dst := tap.Endpoint{Addr: "127.0.0.1:14143", Labels: map[string]string{"namespace": "shop", "deployment": "voting"}}
	tests := []struct {
		name string
		ev   tap.Event
		wide bool
		want string
	}{
		{
			name: "request",
			ev:   tap.Event{Type: tap.TypeRequest, ID: 7, Direction: "outbound", Source: src, Destination: dst, Method: "GET", Authority: "voting.shop:8080", Path: "/api/vote"},
			want: "req id=7 proxy=out src=127.0.0.1:50000 dst=127.0.0.1:14143 :method=GET :authority=voting.shop:8080 :path=/api/vote",
		},
		{
			name: "request, wide",
			ev:   tap.Event{Type: tap.TypeRequest, ID: 7, Direction: "outbound", Source: src, Destination: dst, Method: "GET", Authority: "voting.shop:8080", Path: "/"},
			wide: true,
			want: "req id=7 proxy=out src=127.0.0.1:50000 dst=127.0.0.1:14143 src_namespace=shop src_deployment=web src_pod=web-0 dst_namespace=shop dst_deployment=voting :method=GET :authority=voting.shop:8080 :path=/",
		},
		{
			name: "response",
			ev:   tap.Event{Type: tap.TypeResponse, ID: 7, Direction: "inbound", Source: src, Destination: dst, Status: 503, LatencyMS: 1.234},
			want: "rsp id=7 proxy=in src=127.0.0.1:50000 dst=127.0.0.1:14143 :status=503 latency=1234µs",
		},
		{
			name: "end of HTTP request",
			ev:   tap.Event{Type: tap.TypeEnd, ID: 7, Direction: "inbound", Source: src, Destination: dst, DurationMS: 12.5, Bytes: 52},
			want: "end id=7 proxy=in src=127.0.0.1:50000 dst=127.0.0.1:14143 duration=12500µs response-length=52B",
		},
		{
			name: "end of gRPC request",
			ev:   tap.Event{Type: tap.TypeEnd, ID: 8, Direction: "inbound", Source: src, Destination: dst, GRPCStatus: intp(14), DurationMS: 0.05},
			want: "end id=8 proxy=in src=127.0.0.1:50000 dst=127.0.0.1:14143 grpc-status=Unavailable duration=50µs response-length=0B",
		},
		{
			name: "end with stream error",
			ev:   tap.Event{Type: tap.TypeEnd, ID: 9, Direction: "outbound", GRPCStatus: intp(0), DurationMS: 1, Error: "stream-error"},
			want: `end id=9 proxy=out src=- dst=- grpc-status=OK duration=1000µs response-length=0B error="stream-error"`,
		},
		{
			name: "dropped",
			ev:   tap.Event{Type: tap.TypeDropped, Count: 26},
			want: "dropped count=26 (this terminal read too slowly; narrow the filters or lower --max-rps)",
		},
		{
			name: "hostile path is quoted, escapes and all",
			ev:   tap.Event{Type: tap.TypeRequest, ID: 1, Direction: "inbound", Method: "GET", Authority: "a b", Path: "/\x1b[2Jx\n"},
			want: `req id=1 proxy=in src=- dst=- :method=GET :authority="a b" :path="/\x1b[2Jx\n"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(appendEventLine(nil, &tt.ev, tt.wide))
			if got != tt.want+"\n" {
				t.Errorf("got  %q\nwant %q", got, tt.want+"\n")
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe to write from the command while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tapProxy is a proxy's real tap endpoint with its hub, for the client to tap.
func tapProxy(t *testing.T, token string) (*taphub.Hub, string) {
	t.Helper()
	hub := taphub.New(taphub.Options{Identity: taphub.Identity{Namespace: "shop", Deployment: "web", Pod: "web-0"}})
	srv := httptest.NewServer(&taphub.Handler{Hub: hub, Token: token})
	t.Cleanup(srv.Close)
	t.Cleanup(hub.Close)
	return hub, strings.TrimPrefix(srv.URL, "http://")
}

// serveOne pushes one request through hub as the proxy's data path does.
func serveOne(hub *taphub.Hub, path string, status, grpcStatus int) {
	span := hub.Request(&taphub.RequestInfo{
		Direction: "inbound", Method: "POST", Authority: "web.shop:8080", Path: path,
		Source: "10.0.0.7:40000", Destination: "127.0.0.1:8080",
	})
	span.Response(status, nil)
	span.End(grpcStatus, 11, "")
}

func TestTapCommandStreamsOneProxy(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, out string)
	}{
		{
			name: "lines",
			args: []string{"--status", "2xx"},
			check: func(t *testing.T, out string) {
				lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
				want := []string{
					"req id=2 proxy=in src=10.0.0.7:40000 dst=127.0.0.1:8080 :method=POST :authority=web.shop:8080 :path=/emoji.Svc/List",
					"rsp id=2 proxy=in src=10.0.0.7:40000 dst=127.0.0.1:8080 :status=200 latency=",
					"end id=2 proxy=in src=10.0.0.7:40000 dst=127.0.0.1:8080 grpc-status=OK duration=",
				}
				if len(lines) != 3 {
					t.Fatalf("%d lines, want 3 (the 503 filtered out):\n%s", len(lines), out)
				}
				for i := range want {
					if !strings.HasPrefix(lines[i], want[i]) {
						t.Errorf("line %d: %q, want prefix %q", i, lines[i], want[i])
					}
				}
				if !strings.HasSuffix(lines[2], "response-length=11B") {
					t.Errorf("end line %q", lines[2])
				}
			},
		},
		{
			name: "json",
			args: []string{"-o", "json", "--path", "/emoji"},
			check: func(t *testing.T, out string) {
				dec := tap.NewDecoder(strings.NewReader(out), 0)
				var types []tap.Type
				for {
					var ev tap.Event
					if dec.Decode(&ev) != nil {
						break
					}
					types = append(types, ev.Type)
					if ev.Destination.Labels["deployment"] != "web" {
						t.Errorf("destination %+v, want this workload", ev.Destination)
					}
				}
				if len(types) != 3 || types[0] != tap.TypeRequest || types[2] != tap.TypeEnd {
					t.Errorf("events %v in\n%s", types, out)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hub, addr := tapProxy(t, "s3cret")
			t.Setenv("MESHSCOPE_WEB_TAP_TOKEN", "s3cret") // the environment twin of --tap-token
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var out syncBuffer
			done := make(chan error, 1)
			go func() { done <- tapCmd(ctx, append([]string{"--proxy", addr}, tt.args...), &out, &out) }()
			waitFor(t, "tap subscribed", hub.Active)
			serveOne(hub, "/fail", 503, -1)
			serveOne(hub, "/emoji.Svc/List", 200, 0)
			waitFor(t, "three events printed", func() bool { return strings.Count(out.String(), "\n") >= 3 })
			cancel()
			if err := <-done; err != nil {
				t.Errorf("interrupted command returned %v", err)
			}
			tt.check(t, out.String())
		})
	}
}

func TestTapCommandErrors(t *testing.T) {
	_, addr := tapProxy(t, "s3cret")
	tests := []struct {
		name      string
		args      []string
		wantUsage bool
		want      string
	}{
		{"wrong token", []string{"--proxy", addr, "--tap-token", "nope"}, false, "tap token rejected"},
		{"no token", []string{"--proxy", addr}, false, "tap token rejected"},
		{"bad filter named by its flag", []string{"--proxy", addr, "--max-rps", "0"}, true, "--max-rps: must be an integer from 1 to 10000"},
		{"unknown status class", []string{"--proxy", addr, "--status", "7xx"}, true, "--status"},
		{"no proxy", []string{}, true, "--proxy is required"},
		{"proxy without port", []string{"--proxy", "localhost"}, true, "want host:port"},
		{"bad output", []string{"--proxy", addr, "-o", "yaml"}, true, `-o "yaml"`},
		{"not a proxy", []string{"--proxy", "127.0.0.1:1", "--timeout", "2s"}, false, "tap 127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := tapCmd(t.Context(), tt.args, &out, &out)
			var ue usageError
			if err == nil || !strings.Contains(err.Error(), tt.want) || errors.As(err, &ue) != tt.wantUsage {
				t.Errorf("error %v (usage error: %v), want one containing %q (usage error: %v)", err, errors.As(err, &ue), tt.want, tt.wantUsage)
			}
		})
	}
}

func TestProxyRefusalShowsTheProxysMessage(t *testing.T) {
	_, addr := tapProxy(t, "")
	// A filter this client would never send, as from a newer client: the
	// proxy's 400 explains it.
	events := proxyEvents(t.Context(), api.NewTapClient(5*time.Second, 5*time.Second), addr, "", tap.Filter{MaxRPS: 20000})
	err := printEvents(&bytes.Buffer{}, "", events)
	if err == nil || !strings.Contains(err.Error(), `400 Bad Request: tap filter "max_rps"`) {
		t.Errorf("error %v, want the proxy's 400 message", err)
	}
}

func TestTapStreamEndingIsAnError(t *testing.T) {
	hub, addr := tapProxy(t, "")
	done := make(chan error, 1)
	go func() { done <- tapCmd(t.Context(), []string{"--proxy", addr}, &syncBuffer{}, &syncBuffer{}) }()
	waitFor(t, "tap subscribed", hub.Active)
	hub.Close()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "stream ended") {
		t.Errorf("error %v, want the stream's end", err)
	}
}
