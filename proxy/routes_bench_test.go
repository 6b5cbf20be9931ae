package main

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// routesBenchProxy runs a proxy, outbound only, whose destinations file is content.
func routesBenchProxy(b *testing.B, content string) *proxy {
	path := filepath.Join(b.TempDir(), "destinations.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := testConfig("127.0.0.1:1")
	cfg.InboundListen = ""
	cfg.Destinations = path
	level := new(slog.LevelVar)
	level.Set(slog.LevelError)
	p, err := newProxy(cfg, slog.New(slog.DiscardHandler), level)
	if err != nil {
		b.Fatal(err)
	}
	serve(b, p)
	return p
}

// tenRoutes are ten routes of every match kind, none of which a GET / matches: the request walks them
// all to the default route, the worst case of a match.
const tenRoutes = `
    routes:
      - {name: r0, matches: [{path: {exact: /login}}]}
      - {name: r1, matches: [{path: {exact: /logout}}]}
      - {name: r2, matches: [{path: {prefix: /api}}]}
      - {name: r3, matches: [{path: {prefix: /static}}]}
      - {name: r4, matches: [{path: {regex: "/items/[0-9]+"}}]}
      - {name: r5, matches: [{path: {regex: "/users/[a-z]+/cart"}}]}
      - {name: r6, matches: [{method: POST, path: {prefix: /}}]}
      - {name: r7, matches: [{method: DELETE, path: {prefix: /}}]}
      - {name: r8, matches: [{headers: [{name: x-canary, value: "true"}]}]}
      - {name: r9, matches: [{headers: [{name: x-user, regex: "beta-.*"}]}]}
`

// BenchmarkRoutes measures an outbound HTTP/1.1 request to a service of the destinations file without
// routes and with ten (walked to the default route), side by side:
//
//	go test -run '^$' -bench Routes -benchmem -count 6 ./proxy
func BenchmarkRoutes(b *testing.B) {
	app := h2cServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello, world\n")
	}))
	service := fmt.Sprintf("services:\n  - authority: web.shop:80\n    labels: {namespace: shop, deployment: web}\n    endpoints: [{addr: %q}]\n", app.Listener.Addr())
	for _, c := range []struct{ name, file string }{
		{"none", service},
		{"ten", service + tenRoutes},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := routesBenchProxy(b, c.file)
			client := h1Client()
			req, _ := http.NewRequest("GET", p.url("--outbound-listen")+"/", nil)
			req.Host = "web.shop"
			buf := make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				benchDo(b, client, req, buf)
			}
		})
	}
}

// BenchmarkRetriesHalfFailing sends requests to a backend failing half of them at random (503), with a
// retry policy of up to three retries on 5xx and two endpoints, and reports what the client sees and
// what the backend carries: success (share of client requests answered 200), load (backend requests per
// client request) and budget (load the budget allows: 1.2 plus its reserve of 100 retries spread over
// the run's requests).
//
//	go test -run '^$' -bench RetriesHalfFailing -benchtime 5000x ./proxy
func BenchmarkRetriesHalfFailing(b *testing.B) {
	var served atomic.Int64
	flaky := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if rand.IntN(2) == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	a, c := h2cServer(b, flaky), h2cServer(b, flaky)
	for _, policy := range []string{"", "\n    annotations: {retry.meshscope.io/http: 5xx, retry.meshscope.io/limit: \"3\"}"} {
		name := "without retries"
		if policy != "" {
			name = "with retries"
		}
		b.Run(name, func(b *testing.B) {
			p := routesBenchProxy(b, fmt.Sprintf("services:\n  - authority: web.shop:80\n    labels: {namespace: shop, deployment: web}%s\n    endpoints: [{addr: %q}, {addr: %q}]\n",
				policy, a.Listener.Addr(), c.Listener.Addr()))
			client := h1Client()
			req, _ := http.NewRequest("GET", p.url("--outbound-listen")+"/", nil)
			req.Host = "web.shop"
			served.Store(0)
			ok, n := 0, 0
			for b.Loop() {
				res, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				n++
				if res.StatusCode == 200 {
					ok++
				}
			}
			b.ReportMetric(float64(ok)/float64(n), "success")
			b.ReportMetric(float64(served.Load())/float64(n), "load")
			if strings.Contains(policy, "retry") {
				b.ReportMetric(1.2+100/float64(n), "budget")
			}
		})
	}
}
