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
	app := newResetApp(t)
	p := startProxy(t, testConfig(app.addr))
	goroutines, sockets := runtime.NumGoroutine(), openSockets(t)
	wellBehaved := h2cClient()
	okURL := p.url("--inbound-listen") + "/ok"
	if res, body := get(t, wellBehaved, okURL); res.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("well-behaved client before the attack: %d %q", res.StatusCode, body)
	}

	c := dialRawH2(t, p.addr("--inbound-listen").String())
	// A stream in flight on the connection before it misbehaves.
	if err := c.open(1, "/inflight"); err != nil {
		t.Fatal(err)
	}
	<-app.inflight
	start := time.Now()
	sent, got := c.rapidReset(3)
	elapsed := time.Since(start)
	if got.code != http2.ErrCodeEnhanceYourCalm || got.last < 1 {
		t.Errorf("GOAWAY %v, last stream %d; want ENHANCE_YOUR_CALM, at least stream 1", got.code, got.last)
	}
	// Every stream that reached the app was charged to the budget, which refills while the test runs,
	// or was one of those running when the budget ran out.
	bound := int64(h2ResetBurst + h2ResetsPerSecond*elapsed.Seconds() + h2MaxStreams)
	if n := app.reached.Load(); n > bound {
		t.Errorf("%d reset streams reached the app in %v, want at most %d", n, elapsed, bound)
	}
	t.Logf("%d streams sent and reset, connection closed after %v; GOAWAY %v after stream %d; %d reached the app", sent, elapsed.Round(time.Millisecond), got.code, got.last, app.reached.Load())
	select {
	case <-app.inflightEnded:
	case <-time.After(30 * time.Second): // a hang guard only
		t.Error("the stream in flight on the connection is still upstream after the connection ended")
	}
	waitMetric(t, p.registry, "limit_reached_total", map[string]string{"limit": limitH2RapidReset}, 1)

	if res, body := get(t, wellBehaved, okURL); res.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("well-behaved client after the attack: %d %q", res.StatusCode, body)
	}
	wellBehaved.CloseIdleConnections()
	leavesNothingBehind(t, p, goroutines, sockets)
}

// On a busy machine net/http's own bound may answer a flood before the budget runs out. A client that
// cancels streams slowly enough that it never does, each once the app has it, still gets no more than its
// budget upstream: past it, its streams are answered 503 and held, its rapid resets then get GOAWAY
// ENHANCE_YOUR_CALM, and what was held for it is released when the connection ends.
func TestH2ResetBudgetHoldsStreamsUntilGoAway(t *testing.T) {
	app := newResetApp(t)
	p := startProxy(t, testConfig(app.addr))
	goroutines, sockets := runtime.NumGoroutine(), openSockets(t)
	c := dialRawH2(t, p.addr("--inbound-listen").String())

	start := time.Now()
	id := uint32(1)
	for ; ; id += 2 {
		if err := c.open(id, "/"); err != nil {
			t.Fatal(err)
		}
		var refused *rawResponse
		select {
		case <-app.seen:
		case r := <-c.responses:
			refused = &r
		case err := <-c.closed:
			t.Fatalf("connection closed after %d streams: %v", id/2, err)
		}
		if err := c.reset(id); err != nil {
			t.Fatal(err)
		}
		if refused != nil {
			if refused.id != id || refused.status != "503" || refused.reason != limitH2RapidReset {
				t.Fatalf("stream %d answered %+v, want 503 %s", id, *refused, limitH2RapidReset)
			}
			break
		}
	}
	elapsed := time.Since(start)
	// A stream is charged once its handler has seen the reset, so a few more may be upstream by then.
	if n := app.reached.Load(); n < h2ResetBurst || float64(n) > h2ResetBurst+h2ResetsPerSecond*elapsed.Seconds()+h2MaxStreams {
		t.Errorf("%d streams reached the app in %v before the budget ran out; the budget is %d, and %d a second", n, elapsed, h2ResetBurst, h2ResetsPerSecond)
	}
	sent, got := c.rapidReset(id + 2)
	if got.code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", got.code)
	}
	if n, over := app.reached.Load(), int64(id/2); n != over {
		t.Errorf("%d streams reached the app, want the %d sent before the budget ran out", n, over)
	}
	t.Logf("%d streams upstream before the budget ran out; then %d sent and reset, GOAWAY after stream %d", id/2, sent, got.last)
	waitMetric(t, p.registry, "limit_reached_total", map[string]string{"limit": limitH2RapidReset}, 1)
	leavesNothingBehind(t, p, goroutines, sockets)
}

// resetApp is the app behind the proxy in the rapid reset tests: /ok answers "ok"; /inflight and every
// other path wait until the request is cancelled, counting the latter.
type resetApp struct {
	addr    string
	reached atomic.Int64
	// seen has a value for each request of the other paths.
	seen                    chan struct{}
	inflight, inflightEnded chan struct{}
}

func newResetApp(t *testing.T) *resetApp {
	a := &resetApp{seen: make(chan struct{}, 100000), inflight: make(chan struct{}), inflightEnded: make(chan struct{})}
	s := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "ok")
		case "/inflight":
			close(a.inflight)
			<-r.Context().Done()
			close(a.inflightEnded)
		default:
			a.reached.Add(1)
			a.seen <- struct{}{}
			<-r.Context().Done() // a slow app: every stream is still upstream when the client resets it
		}
	}))
	a.addr = s.Listener.Addr().String()
	return a
}

// rawH2 is an HTTP/2 client connection driven frame by frame with the real framer.
type rawH2 struct {
	t   *testing.T
	c   net.Conn
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
	// responses has the response headers of the streams the proxy answered; goAways the first GOAWAY;
	// closed the read error that ended the connection.
	responses chan rawResponse
	goAways   chan goAway
	closed    chan error
}

type rawResponse struct {
	id             uint32
	status, reason string
}

type goAway struct {
	code http2.ErrCode
	last uint32
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute)) // a hang guard only
	r := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c), responses: make(chan rawResponse, 1000), goAways: make(chan goAway, 1), closed: make(chan error, 1)}
	r.enc = hpack.NewEncoder(&r.hb)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	io.WriteString(c, http2.ClientPreface)
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			f, err := r.fr.ReadFrame()
			if err != nil {
				r.closed <- err
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				select {
				case r.responses <- rawResponse{f.StreamID, f.PseudoValue("status"), headerValue(f, ProxyErrorHeader)}:
				default:
				}
			case *http2.GoAwayFrame:
				select {
				case r.goAways <- goAway{f.ErrCode, f.LastStreamID}:
				default:
				}
			}
		}
	}()
	return r
}

// headerValue is the value of f's field name, "" when it has none.
func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if strings.EqualFold(hf.Name, name) {
			return hf.Value
		}
	}
	return ""
}

// open sends HEADERS opening stream id, a GET of path with no body.
func (r *rawH2) open(id uint32, path string) error {
	r.hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", path}} {
		r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hb.Bytes(), EndStream: true, EndHeaders: true})
}

func (r *rawH2) reset(id uint32) error { return r.fr.WriteRSTStream(id, http2.ErrCodeCancel) }

// rapidReset opens streams from id on and resets each at once until the connection gets GOAWAY or
// ends, waits until the proxy closes it, and returns the streams sent and the GOAWAY. It fails the test
// when the connection ended without GOAWAY.
func (r *rawH2) rapidReset(id uint32) (sent int, got goAway) {
	r.t.Helper()
	const attempts = 20000
	var ok bool
	for ; sent < attempts; id += 2 {
		select {
		case got, ok = <-r.goAways:
		default:
		}
		if ok || r.open(id, "/") != nil || r.reset(id) != nil {
			break // the proxy sent GOAWAY, or closed the connection
		}
		sent++
	}
	err := <-r.closed
	r.c.Close()
	if !ok {
		select {
		case got = <-r.goAways:
		default:
			r.t.Fatalf("after %d reset streams the connection ended (%v) without GOAWAY", sent, err)
		}
	}
	return sent, got
}

// leavesNothingBehind waits until the goroutines and sockets are back to what they were before the
// test's connections, the handlers held for an abusive one included.
func leavesNothingBehind(t *testing.T, p *proxy, goroutines, sockets int) {
	t.Helper()
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
