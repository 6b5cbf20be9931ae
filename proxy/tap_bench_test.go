package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/tap"
)

// benchProxy runs an inbound proxy in front of a small HTTP/1.1 app until the
// benchmark ends. withHub false takes the tap hub out of the data path
// altogether, for comparison with a hub nobody subscribes to.
func benchProxy(b *testing.B, withHub bool) *proxy {
	b.Helper()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	b.Cleanup(app.Close)
	cfg := testConfig(app.Listener.Addr().String())
	cfg.OutboundListen = ""
	level := new(slog.LevelVar)
	level.Set(slog.LevelError)
	p, err := newProxy(cfg, slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: level})), level)
	if err != nil {
		b.Fatal(err)
	}
	if !withHub {
		for _, l := range p.listeners {
			l.server.Handler.(*httpProxy).tap = nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	for !p.ready.Load() {
		time.Sleep(time.Millisecond)
	}
	return p
}

// tapCounter reads one /tap stream as fast as it can, counting the events
// delivered and the events dropped events report.
type tapCounter struct {
	delivered, dropped atomic.Int64
	stop               func()
	done               chan struct{}
}

func startTapCounter(b *testing.B, p *proxy, query string) *tapCounter {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", p.url("--admin-listen")+"/tap?"+query, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil || res.StatusCode != 200 {
		b.Fatalf("tap: %v %v", res, err)
	}
	c := &tapCounter{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer res.Body.Close()
		r := bufio.NewReaderSize(res.Body, 64<<10)
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			if !bytes.Contains(line, []byte(`"type":"dropped"`)) {
				c.delivered.Add(1)
				continue
			}
			var ev tap.Event
			if json.Unmarshal(line, &ev) == nil {
				c.dropped.Add(int64(ev.Count))
			}
		}
	}()
	b.Cleanup(func() {
		cancel()
		<-c.done
	})
	return c
}

// waitFor polls until the counter has accounted for n events, or a generous deadline.
func (c *tapCounter) waitFor(n int64) {
	deadline := time.Now().Add(30 * time.Second)
	for c.delivered.Load()+c.dropped.Load() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

func benchClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}, Timeout: 30 * time.Second}
}

// BenchmarkProxyRequest is closed-loop proxy throughput (ns/op is the inverse)
// and allocations per request, without the tap hub, with a hub nobody taps,
// and with one subscriber tapping every request at max_rps=10000.
func BenchmarkProxyRequest(b *testing.B) {
	for _, mode := range []string{"tap=off", "tap=idle", "tap=subscribed"} {
		b.Run(mode, func(b *testing.B) {
			p := benchProxy(b, mode != "tap=off")
			var counter *tapCounter
			if mode == "tap=subscribed" {
				counter = startTapCounter(b, p, "max_rps=10000")
			}
			url := p.url("--inbound-listen") + "/bench"
			c := benchClient()
			var failed atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(4)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := c.Get(url)
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d requests failed", n)
			}
			if counter != nil {
				counter.waitFor(3 * int64(b.N))
				b.ReportMetric(float64(counter.delivered.Load()), "events")
				b.ReportMetric(float64(counter.dropped.Load()), "dropped")
			}
		})
	}
}

// BenchmarkTapAtFixedRate sends 2,000 requests per second for three seconds
// through the proxy, untapped and then tapped by one subscriber at full
// detail (three events per request), and reports the latency percentiles of
// both runs and how many of the tapped run's events were delivered. Run it
// with -benchtime=1x.
func BenchmarkTapAtFixedRate(b *testing.B) {
	const rate, seconds = 2000, 3
	p := benchProxy(b, true)
	url := p.url("--inbound-listen") + "/fixed"
	c := benchClient()
	run := func() (p50, p99 float64) {
		const n = rate * seconds
		latencies := make([]time.Duration, n)
		const workers = 32
		start := time.Now().Add(10 * time.Millisecond)
		var wg sync.WaitGroup
		var failed atomic.Int64
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
					t0 := time.Now()
					res, err := c.Get(url)
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					latencies[i] = time.Since(t0)
				}
			})
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			b.Fatalf("%d requests failed", f)
		}
		slices.Sort(latencies)
		ms := func(q float64) float64 { return float64(latencies[int(q*float64(n-1))]) / 1e6 }
		return ms(0.50), ms(0.99)
	}
	for range b.N {
		run() // warm up connections
		p50, p99 := run()
		counter := startTapCounter(b, p, "max_rps=10000")
		tp50, tp99 := run()
		counter.waitFor(3 * rate * seconds)
		counter.stop()
		b.ReportMetric(p50, "p50-untapped-ms")
		b.ReportMetric(p99, "p99-untapped-ms")
		b.ReportMetric(tp50, "p50-tapped-ms")
		b.ReportMetric(tp99, "p99-tapped-ms")
		b.ReportMetric(float64(counter.delivered.Load()), "events-delivered")
		b.ReportMetric(float64(counter.dropped.Load()), "events-dropped")
		b.Logf("expected %d events", 3*rate*seconds)
	}
}

// BenchmarkTapThroughputRatio compares closed-loop throughput of a proxy
// tapped by one subscriber at max_rps=10000 with an untapped proxy. The two
// take turns in short rounds, so a noisy machine slows both alike; it
// reports each one's requests per second and the tapped/untapped ratio. Run
// it with -benchtime=1x.
func BenchmarkTapThroughputRatio(b *testing.B) {
	const rounds, round, workers = 20, 250 * time.Millisecond, 8
	untapped, tapped := benchProxy(b, true), benchProxy(b, true)
	counter := startTapCounter(b, tapped, "max_rps=10000")
	load := func(p *proxy) int64 {
		url := p.url("--inbound-listen") + "/ratio"
		c := benchClient()
		var n, failed atomic.Int64
		end := time.Now().Add(round)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for time.Now().Before(end) {
					res, err := c.Get(url)
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			b.Fatalf("%d requests failed", f)
		}
		return n.Load()
	}
	for range b.N {
		load(untapped) // warm up
		load(tapped)
		var nu, nt int64
		sent := counter.delivered.Load() + counter.dropped.Load()
		for i := range rounds {
			// Alternate who goes first, so neither gains from its turn.
			if i%2 == 0 {
				nu += load(untapped)
				nt += load(tapped)
			} else {
				nt += load(tapped)
				nu += load(untapped)
			}
		}
		counter.waitFor(sent + 3*nt)
		secs := (rounds * round).Seconds()
		b.ReportMetric(float64(nu)/secs, "untapped-req/s")
		b.ReportMetric(float64(nt)/secs, "tapped-req/s")
		b.ReportMetric(float64(nt)/float64(nu), "ratio")
		b.ReportMetric(float64(counter.dropped.Load()), "events-dropped")
	}
}
