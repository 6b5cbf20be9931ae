package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Finding 5 of the hardening review: h2c rapid reset (HEADERS then RST_STREAM, in a loop) passed 215,000
// requests upstream in 10 s and took the proxy to 986 MiB. A connection that cancels streams faster than
// its budget gets GOAWAY ENHANCE_YOUR_CALM and is closed, so what reaches the app is bounded by the budget,
// not by the line rate; the stream it had in flight ends upstream too, nothing of it stays behind, and
// other clients are served as before.
func TestH2RapidResetGetsGoAwayEnhanceYourCalm(t *testing.T) {
	var reached atomic.Int64
	inflight, inflightEnded := make(chan struct{}), make(chan struct{})
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "ok")
		case "/inflight":
			close(inflight)
			<-r.Context().Done()
			close(inflightEnded)
		default:
			reached.Add(1)
			<-r.Context().Done() // a slow app: every stream is still upstream when the client resets it
		}
	}))
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	goroutines, sockets := runtime.NumGoroutine(), openSockets(t)
	wellBehaved := h2cClient()
	okURL := p.url("--inbound-listen") + "/ok"
	if res, body := get(t, wellBehaved, okURL); res.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("well-behaved client before the attack: %d %q", res.StatusCode, body)
	}

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
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	open := func(id uint32, path string) error {
		hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", path}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	}
	// Read everything the proxy sends until it closes the connection.
	type goAway struct {
		code http2.ErrCode
		last uint32
	}
	goAways := make(chan goAway, 1)
	closed := make(chan error, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				closed <- err
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				select {
				case goAways <- goAway{g.ErrCode, g.LastStreamID}:
				default:
				}
			}
		}
	}()
	// A stream in flight on the connection before it misbehaves.
	if err := open(1, "/inflight"); err != nil {
		t.Fatal(err)
	}
	<-inflight

	const attempts = 20000
	start := time.Now()
	sent := 0
	var got *goAway
attack:
	for id := uint32(3); sent < attempts; id += 2 {
		select {
		case g := <-goAways:
			got = &g
			break attack
		default:
		}
		if err := open(id, "/"); err != nil {
			break // the proxy closed the connection
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
		sent++
	}
	elapsed := time.Since(start)
	readErr := <-closed
	c.Close()
	if got == nil {
		select {
		case g := <-goAways:
			got = &g
		default:
			t.Fatalf("after %d reset streams the connection ended (%v) without GOAWAY", sent, readErr)
		}
	}
	if got.code != http2.ErrCodeEnhanceYourCalm || got.last < 1 {
		t.Errorf("GOAWAY %v, last stream %d; want ENHANCE_YOUR_CALM, at least stream 1", got.code, got.last)
	}
	// Every stream that reached the app was charged to the budget, which refills while the test runs,
	// or was one of those running when the budget ran out.
	bound := int64(h2ResetBurst + h2ResetsPerSecond*elapsed.Seconds() + h2MaxStreams)
	if n := reached.Load(); n > bound {
		t.Errorf("%d reset streams reached the app in %v, want at most %d", n, elapsed, bound)
	}
	t.Logf("%d streams sent and reset in %v; GOAWAY %v after stream %d; %d reached the app", sent, elapsed.Round(time.Millisecond), got.code, got.last, reached.Load())
	select {
	case <-inflightEnded:
	case <-time.After(30 * time.Second): // a hang guard only
		t.Error("the stream in flight on the connection is still upstream after the connection ended")
	}
	waitMetric(t, p.registry, "limit_reached_total", map[string]string{"limit": limitH2RapidReset}, 1)

	if res, body := get(t, wellBehaved, okURL); res.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("well-behaved client after the attack: %d %q", res.StatusCode, body)
	}
	// Nothing of the abusive connection stays behind: the handlers held for it are released.
	wellBehaved.CloseIdleConnections()
	for _, u := range p.upstreams {
		u.CloseIdleConnections()
	}
	eventually(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= goroutines })
	eventually(t, "open sockets back to the baseline", func() bool { return openSockets(t) <= sockets })
}

// openSockets counts the process's open sockets.
func openSockets(t *testing.T) int {
	t.Helper()
	des, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range des {
		if l, err := os.Readlink("/proc/self/fd/" + d.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}
