package taphub

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/tap"
)

// countingWriter is an http.ResponseWriter that reads the stream as a
// client would, line by line, counting the events delivered and the events
// that dropped events report lost.
type countingWriter struct {
	header             http.Header
	partial            []byte
	delivered, dropped atomic.Int64
}

func (w *countingWriter) Header() http.Header { return w.header }
func (w *countingWriter) WriteHeader(int)     {}
func (w *countingWriter) Flush()              {}
func (w *countingWriter) Write(p []byte) (int, error) {
	data := append(w.partial, p...)
	for {
		line, rest, ok := bytes.Cut(data, []byte{'\n'})
		if !ok {
			break
		}
		if bytes.Contains(line, []byte(`"type":"dropped"`)) {
			var ev tap.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return 0, err
			}
			w.dropped.Add(int64(ev.Count))
		} else {
			w.delivered.Add(1)
		}
		data = rest
	}
	w.partial = append(w.partial[:0], data...)
	return len(p), nil
}

// steppingClock advances 40µs at every reading: at three or more readings a
// request, the rate limit (max_rps=10000 on this clock) admits every request
// however fast the benchmark publishes in real time.
type steppingClock struct{ n atomic.Int64 }

func (c *steppingClock) Now() time.Time {
	return time.Unix(0, c.n.Add(int64(40*time.Microsecond)))
}

// BenchmarkTapPath measures the tap path alone: the data path publishing
// requests (request, response and end events) to one subscriber, which
// filters them, and the subscriber's stream encoding and writing them. It
// reports the events per second that reached the writer.
func BenchmarkTapPath(b *testing.B) {
	clock := &steppingClock{}
	hub := New(Options{Now: clock.Now, Identity: Identity{Namespace: "shop", Deployment: "web", Pod: "web-0"}})
	sub, err := hub.Subscribe(tap.Filter{Direction: tap.DirectionInbound, Path: "/api", MaxRPS: tap.MaxMaxRPS})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	w := &countingWriter{header: http.Header{}}
	st := &stream{sub: sub, enc: tap.NewEncoder(w), rc: http.NewResponseController(w), now: time.Now}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.run(ctx) }()

	reqHeader := http.Header{"Accept": {"application/json"}, "Authorization": {"Bearer x"}, "User-Agent": {"bench/1.0"}}
	rspHeader := http.Header{"Content-Type": {"application/json"}, "Content-Length": {"42"}}
	start := time.Now()
	for b.Loop() {
		span := hub.Request(&RequestInfo{
			Direction: tap.DirectionInbound, Method: "GET", Authority: "web.shop:8080", Path: "/api/vote",
			Header: reqHeader, Source: "10.0.0.7:40000", Destination: "127.0.0.1:8080",
		})
		span.Response(200, rspHeader)
		span.End(-1, 42, "")
	}
	published := 3 * int64(b.N)
	for w.delivered.Load()+w.dropped.Load() < published {
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	delivered, dropped := w.delivered.Load(), w.dropped.Load()
	b.ReportMetric(float64(delivered)/elapsed.Seconds(), "delivered-events/s")
	b.ReportMetric(float64(published)/elapsed.Seconds(), "published-events/s")
	b.ReportMetric(float64(dropped)/float64(published), "dropped-fraction")
}
