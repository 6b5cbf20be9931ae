package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Finding 5 of the hardening review: h2c rapid reset (HEADERS then RST_STREAM, in a loop) passed 215,000
// requests upstream in 10 s and took the proxy to 986 MiB. A connection that cancels streams faster than
// its budget is closed, so what reaches the app is bounded by the budget, not by the line rate.
func TestH2RapidResetClosesTheConnection(t *testing.T) {
	var upstream atomic.Int64
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstream.Add(1)
		<-r.Context().Done() // a slow app: every stream is still upstream when the client resets it
	}))
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // a hang guard only
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// Read everything the proxy sends until it closes the connection.
	closed := make(chan error, 1)
	go func() {
		for {
			if _, err := fr.ReadFrame(); err != nil {
				closed <- err
				return
			}
		}
	}()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	const attempts = 20000
	sent := 0
	for id := uint32(1); sent < attempts; id += 2 {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", "/"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			break // the proxy closed the connection
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
		sent++
	}
	if err := <-closed; errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection stayed open after %d reset streams", sent)
	}
	if sent == attempts {
		t.Errorf("the proxy took all %d reset streams on one connection", sent)
	}
	waitMetric(t, p.registry, "limit_reached_total", map[string]string{"limit": limitH2RapidReset}, 1)
	// The budget refills while the test runs: the bound allows for a slow machine, far below the attempts.
	if n := upstream.Load(); n > 10*h2ResetBurst {
		t.Errorf("%d reset streams reached the app, want at most %d", n, 10*h2ResetBurst)
	}
	t.Logf("%d streams sent and reset, %d reached the app", sent, upstream.Load())
}
