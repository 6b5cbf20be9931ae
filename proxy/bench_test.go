package main

import (
	"io"
	"log/slog"
	"net/http"
	"testing"
)

// BenchmarkRequest measures one small request, directly and through the proxy, over HTTP/1.1 keep-alive
// and h2c. Client, proxy and app share the process, so allocs/op counts all three: the proxy's own cost is
// the difference between a "proxied" and its "direct" line.
//
//	go test -run '^$' -bench Request -benchmem ./proxy
func BenchmarkRequest(b *testing.B) {
	app := h2cServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello, world\n")
	}))

	level := new(slog.LevelVar)
	level.Set(slog.LevelError)
	p, err := newProxy(testConfig(app.Listener.Addr().String()), slog.New(slog.DiscardHandler), level)
	if err != nil {
		b.Fatal(err)
	}
	serve(b, p)
	proxied := p.url("--inbound-listen") + "/bench"
	direct := app.URL + "/bench"

	for _, c := range []struct {
		name   string
		client *http.Client
		url    string
	}{
		{"http1/direct", h1Client(), direct},
		{"http1/proxied", h1Client(), proxied},
		{"h2c/direct", h2cClient(), direct},
		{"h2c/proxied", h2cClient(), proxied},
	} {
		b.Run(c.name, func(b *testing.B) {
			req, _ := http.NewRequest("GET", c.url, nil)
			buf := make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				benchDo(b, c.client, req, buf)
			}
		})
	}
}

// benchDo sends req, reads its body through buf without keeping it, and fails b unless the answer is 200.
func benchDo(b *testing.B, c *http.Client, req *http.Request, buf []byte) {
	res, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	for {
		if _, err := res.Body.Read(buf); err != nil {
			break
		}
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		b.Fatal(res.Status)
	}
}
