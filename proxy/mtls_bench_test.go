package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkMeshTLS compares proxy-to-proxy traffic in plain text and over mutual TLS: a client calls an app
// through two proxies (the caller's outbound, the callee's inbound), the way every meshed call travels.
//
//   - reuse: requests on kept-alive connections (the handshake amortised): "sequential" is one HTTP/1.1
//     request at a time (ns/op and p50/p99 are the latency through both proxies), "parallel" keeps 16
//     h2c requests in flight (req/s is the throughput; h2c because the HTTP/1.1 fast path loses a request
//     now and then under this load, plain text or not: README, "Identity and mutual TLS").
//   - new-conn: one opaque TCP connection per operation through an --outbound-route (connect, one line
//     each way, close), so each operation opens a new proxy-to-proxy connection and, with mTLS, makes a
//     handshake (TLS 1.3 sessions are resumed, as between real proxies).
//
// Client, proxies and app share the process and the machine's cores: compare the plain and mtls lines of
// one run, not runs of different days.
//
//	go test -run '^$' -bench MeshTLS -benchtime 2s -count 3 ./proxy
func BenchmarkMeshTLS(b *testing.B) {
	rigs := newMeshRigs(b)
	for _, mode := range []string{"plain", "mtls"} {
		r := rigs[mode]
		b.Run("reuse/sequential/"+mode, func(b *testing.B) {
			c, buf := h1Client(), make([]byte, 64)
			lat := make([]time.Duration, 0, 1024)
			for b.Loop() {
				t0 := time.Now()
				r.get(b, c, buf)
				lat = append(lat, time.Since(t0))
			}
			reportLatency(b, lat)
		})
		b.Run("reuse/parallel/"+mode, func(b *testing.B) {
			b.SetParallelism(8) // 16 in flight on 2 cores
			c := h2cClient()
			t0 := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 64)
				for pb.Next() {
					r.get(b, c, buf)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "req/s")
		})
		b.Run("new-conn/"+mode, func(b *testing.B) {
			buf := make([]byte, 64)
			lat := make([]time.Duration, 0, 1024)
			for b.Loop() {
				t0 := time.Now()
				r.roundTrip(b, buf)
				lat = append(lat, time.Since(t0))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkMeshTLSRatio takes turns, a second each, between plain text and mutual TLS for each way of
// BenchmarkMeshTLS, so that both see the same load on a shared machine, and reports each one's rate and
// latency with the ratio mtls/plain. Run it once:
//
//	go test -run '^$' -bench MeshTLSRatio -benchtime 1x ./proxy
func BenchmarkMeshTLSRatio(b *testing.B) {
	rigs := newMeshRigs(b)
	const turns, turn = 6, time.Second
	for b.Loop() {
		type tally struct {
			n   int
			d   time.Duration
			cpu time.Duration // the process's CPU time (client, proxies and app together)
			lat []time.Duration
		}
		for _, way := range []string{"reuse-sequential", "reuse-parallel", "new-conn"} {
			tallies := map[string]*tally{"plain": {}, "mtls": {}}
			for i := range 2 * turns {
				mode := []string{"plain", "mtls"}[i%2]
				r, t := rigs[mode], tallies[mode]
				t0, cpu0 := time.Now(), processCPU()
				switch way {
				case "reuse-parallel":
					c := h2cClient()
					var wg sync.WaitGroup
					var mu sync.Mutex
					for range 16 {
						wg.Go(func() {
							buf, n := make([]byte, 64), 0
							for time.Since(t0) < turn {
								r.get(b, c, buf)
								n++
							}
							mu.Lock()
							t.n += n
							mu.Unlock()
						})
					}
					wg.Wait()
				default:
					c, buf := h1Client(), make([]byte, 64)
					for time.Since(t0) < turn {
						s := time.Now()
						if way == "new-conn" {
							r.roundTrip(b, buf)
						} else {
							r.get(b, c, buf)
						}
						t.lat = append(t.lat, time.Since(s))
						t.n++
					}
				}
				t.d += time.Since(t0)
				t.cpu += processCPU() - cpu0
			}
			rate := func(t *tally) float64 { return float64(t.n) / t.d.Seconds() }
			p, m := tallies["plain"], tallies["mtls"]
			b.ReportMetric(rate(p), way+"-plain-op/s")
			b.ReportMetric(rate(m), way+"-mtls-op/s")
			b.ReportMetric(rate(m)/rate(p), way+"-mtls/plain")
			// CPU per operation moves less with the machine's other load than the rates do.
			cpuPer := func(t *tally) float64 { return float64(t.cpu.Microseconds()) / float64(t.n) }
			b.ReportMetric(cpuPer(p), way+"-plain-cpu-µs/op")
			b.ReportMetric(cpuPer(m), way+"-mtls-cpu-µs/op")
			if len(p.lat) > 0 {
				for mode, t := range tallies {
					slices.Sort(t.lat)
					b.ReportMetric(float64(t.lat[len(t.lat)/2].Microseconds()), way+"-"+mode+"-p50-µs")
					b.ReportMetric(float64(t.lat[len(t.lat)*99/100].Microseconds()), way+"-"+mode+"-p99-µs")
				}
			}
		}
	}
}

// processCPU is the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// meshRig is a client proxy calling an HTTP app and a TCP echo server through server proxies, in plain
// text or over mutual TLS.
type meshRig struct {
	url   string // the client proxy's outbound listener, for catalog.shop:8080
	route string // its --outbound-route to the echo server
}

// newMeshRigs starts the plain and the mtls rig, over one app and one echo server.
func newMeshRigs(b *testing.B) map[string]*meshRig {
	app := h2cServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello, world\n")
	}))
	echo := tcpServer(b, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, line)
		}
	})
	m := newTestMesh(b, 24*time.Hour)
	rigs := map[string]*meshRig{}
	for _, mode := range []string{"plain", "mtls"} {
		start := func(sa string, cfg Config) *proxy {
			if mode == "plain" {
				level := new(slog.LevelVar)
				level.Set(slog.LevelError)
				p, err := newProxy(cfg, slog.New(slog.DiscardHandler), level)
				if err != nil {
					b.Fatal(err)
				}
				serve(b, p)
				return p
			}
			p, _ := m.meshedProxy(b, sa, cfg)
			return p
		}
		httpServer := start("catalog", testConfig(app.Listener.Addr().String()))
		tcpCfg := testConfig(echo)
		_, echoPort, _ := net.SplitHostPort(echo)
		port, _ := strconv.Atoi(echoPort)
		tcpCfg.OpaquePorts = []int{port}
		tcpServerProxy := start("ledger", tcpCfg)
		clientCfg := testConfig("127.0.0.1:1")
		clientCfg.Destinations = writeDestinations(b, fmt.Sprintf(`services:
  - authority: catalog.shop:8080
    identity: %s
    endpoints: [{addr: "%s"}]
  - authority: ledger.shop:7000
    identity: %s
    endpoints: [{addr: "%s"}]
`, name("catalog"), httpServer.addr("--inbound-listen"), name("ledger"), tcpServerProxy.addr("--inbound-listen")))
		clientCfg.OutboundRoutes = []Route{{Listen: "127.0.0.1:0", Authority: "ledger.shop:7000"}}
		clientCfg.OpaquePorts = []int{7000}
		client := start("web", clientCfg)
		rigs[mode] = &meshRig{url: client.url("--outbound-listen") + "/bench", route: client.addr("--outbound-route 127.0.0.1:0=ledger.shop:7000").String()}
	}
	return rigs
}

// get sends one request for catalog.shop:8080 through the rig.
func (r *meshRig) get(b *testing.B, c *http.Client, buf []byte) {
	req, _ := http.NewRequest("GET", r.url, nil)
	req.Host = "catalog.shop:8080"
	benchDo(b, c, req, buf)
}

// roundTrip opens a connection through the rig's route, sends a line, reads it back and closes.
func (r *meshRig) roundTrip(b *testing.B, buf []byte) {
	c, err := net.Dial("tcp", r.route)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "ping\n")
	if n, err := io.ReadAtLeast(c, buf, 5); err != nil || string(buf[:n]) != "ping\n" {
		b.Fatalf("echo %q, %v", buf[:n], err)
	}
}

// reportLatency adds the median and 99th percentile of lat to the benchmark's line.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
