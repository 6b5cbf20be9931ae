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
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/proxy/metrics"
	"github.com/meshscope/meshscope/proxy/taphub"
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
	serve(b, p)
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

// BenchmarkTapAtFixedRate sends 2,000 requests per second through two
// proxies in turns of a quarter second, three seconds each: one untapped, one
// tapped by a subscriber at full detail (three events per request). Taking
// turns, both see the same noise of a shared machine. It reports both
// latency distributions and how many of the tapped proxy's events were
// delivered. Run it with -benchtime=1x.
func BenchmarkTapAtFixedRate(b *testing.B) {
	const rate, turns, perTurn = 2000, 12, 500 // 6,000 requests each
	untapped, tapped := benchProxy(b, true), benchProxy(b, true)
	c := benchClient()
	// turn sends perTurn requests at rate to p, appending their latencies.
	turn := func(p *proxy, latencies []time.Duration) []time.Duration {
		url := p.url("--inbound-listen") + "/fixed"
		got := make([]time.Duration, perTurn)
		const workers = 32
		start := time.Now().Add(5 * time.Millisecond)
		var wg sync.WaitGroup
		var failed atomic.Int64
		for w := range workers {
			wg.Go(func() {
				for i := w; i < perTurn; i += workers {
					time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
					t0 := time.Now()
					res, err := c.Get(url)
					if err != nil {
						failed.Add(1)
						continue
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					got[i] = time.Since(t0)
				}
			})
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			b.Fatalf("%d requests failed", f)
		}
		return append(latencies, got...)
	}
	quantile := func(l []time.Duration, q float64) float64 {
		l = slices.Clone(l)
		slices.Sort(l)
		return float64(l[int(q*float64(len(l)-1))]) / 1e6
	}
	for range b.N {
		turn(untapped, nil) // warm up connections
		turn(tapped, nil)
		counter := startTapCounter(b, tapped, "max_rps=10000")
		var lu, lt []time.Duration
		for i := range turns {
			if i%2 == 0 {
				lu = turn(untapped, lu)
				lt = turn(tapped, lt)
			} else {
				lt = turn(tapped, lt)
				lu = turn(untapped, lu)
			}
		}
		want := int64(3 * turns * perTurn)
		counter.waitFor(want)
		counter.stop()
		b.ReportMetric(quantile(lu, 0.50), "p50-untapped-ms")
		b.ReportMetric(quantile(lu, 0.99), "p99-untapped-ms")
		b.ReportMetric(quantile(lt, 0.50), "p50-tapped-ms")
		b.ReportMetric(quantile(lt, 0.99), "p99-tapped-ms")
		b.ReportMetric(float64(counter.delivered.Load()), "events-delivered")
		b.ReportMetric(float64(want), "events-sent")
		b.ReportMetric(float64(counter.dropped.Load()), "events-dropped")
	}
}

// BenchmarkTapThroughputRatio compares closed-loop throughput of a proxy
// tapped by one subscriber at max_rps=10000 with an untapped proxy. The two
// take turns in short rounds, so a noisy machine slows both alike; it
// reports each one's requests per second, the tapped/untapped ratio, and the
// CPU time per request of each (the client, app and tap reader, all in this
// process, included). Run it with -benchtime=1x.
func BenchmarkTapThroughputRatio(b *testing.B) {
	const rounds, round, workers = 20, 250 * time.Millisecond, 8
	untapped, tapped := benchProxy(b, true), benchProxy(b, true)
	counter := startTapCounter(b, tapped, "max_rps=10000")
	// CPU time of this process per request: unlike throughput, hardly moved
	// by other processes competing for the machine.
	var cpuUntapped, cpuTapped time.Duration
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	load := func(p *proxy) int64 {
		c0 := cpu()
		defer func() {
			if p == tapped {
				cpuTapped += cpu() - c0
			} else {
				cpuUntapped += cpu() - c0
			}
		}()
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
		cpuUntapped, cpuTapped = 0, 0
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
		perReq := func(d time.Duration, n int64) float64 { return float64(d.Microseconds()) / float64(n) }
		b.ReportMetric(perReq(cpuUntapped, nu), "untapped-cpu-µs/req")
		b.ReportMetric(perReq(cpuTapped, nt), "tapped-cpu-µs/req")
		b.ReportMetric(float64(counter.dropped.Load()), "events-dropped")
	}
}

// BenchmarkExchangeLifecycle is the data path's per-request observation
// (metrics and tap) without a hub, with a hub nobody taps, and with one
// subscriber: -benchmem shows what tap adds.
func BenchmarkExchangeLifecycle(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry())
	header := http.Header{"Accept": {"*/*"}, "User-Agent": {"bench"}}
	idle := taphub.New(taphub.Options{})
	subscribed := taphub.New(taphub.Options{})
	sub, err := subscribed.Subscribe(tap.Filter{MaxRPS: tap.MaxMaxRPS})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	for _, c := range []struct {
		name string
		hub  *taphub.Hub
	}{{"tap=off", nil}, {"tap=idle", idle}, {"tap=subscribed", subscribed}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				exchangeLifecycle(m, c.hub, header)
				if c.hub == subscribed {
					// Keep the buffer from filling: this measures publishing.
					for len(sub.Events()) > 0 {
						sub.Took(<-sub.Events())
					}
				}
			}
		})
	}
}
