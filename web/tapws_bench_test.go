package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
)

// fixedTargets lists the same targets every time: the benchmark's proxies are
// synthetic streams, not scraped by a Prometheus.
type fixedTargets []v1.ActiveTarget

func (f fixedTargets) Targets(context.Context, string) ([]v1.ActiveTarget, error) { return f, nil }

// ndjsonStream serves /tap as a proxy would, writing perTick pre-encoded
// events every tick until the client leaves.
func ndjsonStream(perTick int, tick time.Duration) http.Handler {
	var block []byte
	status := 200
	for i := range perTick {
		ev := tap.Event{V: tap.Version, Type: tap.TypeResponse, ID: uint64(i + 1), TS: time.Now(), Direction: tap.DirectionInbound,
			Source:      tap.Endpoint{Addr: "10.0.0.1:40000", Labels: map[string]string{"pod": "load-0"}},
			Destination: tap.Endpoint{Addr: "10.0.0.2:8080", Labels: map[string]string{"pod": "web-0"}},
			Status:      status, LatencyMS: 1.5, Headers: map[string][]string{"content-type": {"text/plain"}}}
		block, _ = tap.AppendJSON(block, &ev)
		block = append(block, '\n')
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", tap.ContentType)
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
				if _, err := w.Write(block); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
	})
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLiveTap10Proxies20kEventsPerSecond pushes 10 proxies' tap streams
// of 2,000 events/s each through the fan-in and the websocket to one client;
// each iteration is one second. It reports what the client received, what was
// dropped (and counted), the heap after the first second and at the end, and
// the CPU of the whole test process (dashboard, generators and client). The
// slow client reads one frame every 500ms: the dashboard must drop and count,
// its memory bounded.
//
//	go test -run XXX -bench LiveTap10Proxies -benchtime 10x ./web/
func BenchmarkLiveTap10Proxies20kEventsPerSecond(b *testing.B) {
	b.Run("client=fast", func(b *testing.B) { benchLiveTap(b, 0) })
	b.Run("client=slow", func(b *testing.B) { benchLiveTap(b, 500*time.Millisecond) })
}

func benchLiveTap(b *testing.B, readPause time.Duration) {
	const proxies, perTick, tick = 10, 20, 10 * time.Millisecond // 2,000 events/s per proxy
	var ts fixedTargets
	for i := range proxies {
		srv := httptest.NewServer(ndjsonStream(perTick, tick))
		b.Cleanup(srv.Close)
		ts = append(ts, v1.ActiveTarget{Labels: model.LabelSet{"job": api.Job, "namespace": "bench",
			"pod": model.LabelValue("web-" + string(rune('a'+i)))}, ScrapeURL: srv.URL + "/metrics"})
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ls := &liveSockets{fanin: &api.FanIn{Targets: ts, Logger: log}, log: log}
	dash := httptest.NewServer(http.HandlerFunc(ls.serveTap))
	b.Cleanup(dash.Close)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(dash.URL, "http")+"/?namespace=bench&max_rps=10000", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(64 << 20)

	// One reader for the socket's life: a Read whose context ends closes the socket.
	var received, frames, dropped atomic.Uint64
	go func() {
		for {
			_, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			time.Sleep(readPause)
			frames.Add(1)
			received.Add(uint64(bytes.Count(msg, []byte(`{"proxy":`))))
			var d, pd uint64
			if i := bytes.LastIndex(msg, []byte(`"dropped":`)); i >= 0 {
				fmt.Sscanf(string(msg[i:]), `"dropped":%d,"proxy_dropped":%d`, &d, &pd)
				dropped.Store(d + pd)
			}
		}
	}()
	time.Sleep(time.Second) // warm up: every stream connected
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapStart := ms.HeapInuse
	received0, frames0, dropped0 := received.Load(), frames.Load(), dropped.Load()
	cpuStart, start := cpuTime(), time.Now()
	b.ResetTimer()
	for range b.N {
		time.Sleep(time.Second)
	}
	b.StopTimer()
	elapsed, cpu := time.Since(start), cpuTime()-cpuStart
	got, gotFrames, lost := received.Load()-received0, frames.Load()-frames0, dropped.Load()-dropped0
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(got)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(gotFrames)/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(lost), "dropped")
	b.ReportMetric(float64(heapStart)/(1<<20), "heap-start-MiB")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-end-MiB")
	b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds(), "cpu-%")
}
