package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunRateSendsTheScheduledRequestsAndCountsErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		want   string
	}{
		{"all succeed", http.StatusOK, "requests=200 errors=0 "},
		{"server errors are errors", http.StatusInternalServerError, "requests=200 errors=200 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var served atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				served.Add(1)
				w.WriteHeader(tt.status)
			}))
			defer srv.Close()
			var out strings.Builder
			// 1000 req/s for 100ms of warm-up and 200ms measured: 300 sent, 200 of them measured.
			cfg := config{url: srv.URL, rate: 1000, duration: 200 * time.Millisecond, warmup: 100 * time.Millisecond, conns: 4}
			if err := runRate(context.Background(), cfg, &out); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(out.String(), tt.want) {
				t.Errorf("output %q, want it to start with %q", out.String(), tt.want)
			}
			if served.Load() != 300 {
				t.Errorf("server saw %d requests, want 300", served.Load())
			}
		})
	}
}

func TestHoldIdleKeepsTheConnectionsOpenUntilCancelled(t *testing.T) {
	var open atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	r, w := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- holdIdle(ctx, config{url: srv.URL + "/", idle: 50, hold: time.Minute}, w)
		w.Close()
	}()
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || line != "ready conns=50\n" {
		t.Fatalf("read %q, %v; want the ready line", line, err)
	}
	if n := open.Load(); n != 50 {
		t.Errorf("server has %d connections open, want 50", n)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("holdIdle: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for open.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := open.Load(); n != 0 {
		t.Errorf("%d connections still open after holdIdle returned", n)
	}
}

func TestPercentile(t *testing.T) {
	sorted := make([]time.Duration, 100)
	for i := range sorted {
		sorted[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(sorted, tt.q); got != tt.want {
			t.Errorf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v", got)
	}
}
