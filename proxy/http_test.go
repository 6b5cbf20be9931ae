package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestHTTPRequestsReachTheAppWithTheirContent(t *testing.T) {
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Proto", r.Proto)
		w.Header().Set("X-Seen-Connection-Option", r.Header.Get("X-Hop"))
		w.Header().Set("X-Seen-Keep-Alive", r.Header.Get("Keep-Alive"))
		w.Header().Set("X-Seen-End-To-End", r.Header.Get("X-End-To-End"))
		w.Header().Set("Trailer", "X-Checksum")
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "X-Resp-Hop")
			w.Header().Set("X-Resp-Hop", "must not pass")
		}
		fmt.Fprintf(w, "%s %s %s body=%q", r.Method, r.Host, r.URL.RequestURI(), body)
		w.Header().Set("X-Checksum", "abc123")
	}))
	p := startProxy(t, testConfig(app.Listener.Addr().String()))

	tests := []struct {
		name      string
		client    *http.Client
		method    string
		body      io.Reader
		wantProto string
		wantBody  string
	}{
		{"http/1.1 get", h1Client(), "GET", nil, "HTTP/1.1", `GET %s /a/b?c=d body=""`},
		{"http/1.1 chunked upload", h1Client(), "POST", io.MultiReader(strings.NewReader("chunk1-"), strings.NewReader("chunk2")), "HTTP/1.1", `POST %s /a/b?c=d body="chunk1-chunk2"`},
		{"h2c get", h2cClient(), "GET", nil, "HTTP/2.0", `GET %s /a/b?c=d body=""`},
		{"h2c post", h2cClient(), "POST", strings.NewReader("hello"), "HTTP/2.0", `POST %s /a/b?c=d body="hello"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, p.url("--inbound-listen")+"/a/b?c=d", tt.body)
			if req.ProtoMajor == 1 && tt.wantProto == "HTTP/1.1" {
				// HTTP/2 has no connection-specific fields (RFC 9113 section 8.2.2): clients refuse to send them.
				req.Header.Set("Connection", "X-Hop")
				req.Header.Set("X-Hop", "must not pass")
				req.Header.Set("Keep-Alive", "timeout=5")
			}
			req.Header.Set("X-End-To-End", "passes")
			res, err := tt.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if want := fmt.Sprintf(tt.wantBody, p.addr("--inbound-listen")); string(b) != want {
				t.Errorf("body = %q, want %q", b, want)
			}
			checks := map[string]string{
				"X-Proto":                  tt.wantProto,
				"X-Seen-Connection-Option": "",
				"X-Seen-Keep-Alive":        "",
				"X-Seen-End-To-End":        "passes",
				"X-Resp-Hop":               "",
			}
			for k, want := range checks {
				if got := res.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if got := res.Trailer.Get("X-Checksum"); got != "abc123" {
				t.Errorf("trailer X-Checksum = %q, want abc123", got)
			}
		})
	}
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "status_code": "200", "classification": "success"}, 4)
	waitMetric(t, p.registry, "request_total", map[string]string{"direction": "inbound", "target_addr": app.Listener.Addr().String()}, 4)
	waitMetric(t, p.registry, "response_latency_ms", map[string]string{"direction": "inbound"}, 4)
}

func TestUpstreamConnectionsAreReused(t *testing.T) {
	var conns atomic.Int32
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	app.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	app.Start()
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c := h1Client()
	for range 20 {
		if res, body := get(t, c, p.url("--inbound-listen")); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("got %d %q", res.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("20 sequential requests opened %d upstream connections, want 1", n)
	}
}

// TestStreamingResponsesFlushEachEventAtOnce proves that the proxy does not buffer: the app only writes the
// next event after the client has received the previous one through the proxy.
func TestStreamingResponsesFlushEachEventAtOnce(t *testing.T) {
	ack := make(chan struct{})
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-ack:
			case <-r.Context().Done():
				return
			}
		}
	}))
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	for name, c := range map[string]*http.Client{"http/1.1": h1Client(), "h2c": h2cClient()} {
		t.Run(name, func(t *testing.T) {
			res, err := c.Get(p.url("--inbound-listen"))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			br := bufio.NewReader(res.Body)
			for i := range 3 {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("data: event %d\n", i); line != want {
					t.Fatalf("line = %q, want %q", line, want)
				}
				br.ReadString('\n')
				ack <- struct{}{}
			}
		})
	}
}

// TestStreamingRequestBodyReachesTheAppBeforeItEnds proves request bodies stream too.
func TestStreamingRequestBodyReachesTheAppBeforeItEnds(t *testing.T) {
	got := make(chan string)
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			got <- line
		}
		io.WriteString(w, "done")
	}))
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	for name, c := range map[string]*http.Client{"http/1.1": h1Client(), "h2c": h2cClient()} {
		t.Run(name, func(t *testing.T) {
			pr, pw := io.Pipe()
			done := make(chan string)
			go func() {
				res, err := c.Post(p.url("--inbound-listen"), "text/plain", pr)
				if err != nil {
					done <- err.Error()
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				done <- string(b)
			}()
			for i := range 3 {
				fmt.Fprintf(pw, "line %d\n", i)
				if line := <-got; line != fmt.Sprintf("line %d\n", i) {
					t.Fatalf("app read %q", line)
				}
			}
			pw.Close()
			if body := <-done; body != "done" {
				t.Fatalf("response %q", body)
			}
		})
	}
}

func TestWebsocketUpgradePassesThrough(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws://"+p.addr("--inbound-listen").String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"one", "two", strings.Repeat("x", 30000)} {
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo: "+msg {
			t.Fatalf("got %.40q, want echo of %.40q", got, msg)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "status_code": "101", "classification": "success"}, 1)
}

func TestProxyProducedErrorsNameTheirReason(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	dead := freeAddr(t)
	dest := writeDestinations(t, fmt.Sprintf(`services:
  - authority: empty.shop:80
    labels: {namespace: shop, deployment: empty}
  - authority: dead.shop:80
    labels: {namespace: shop, deployment: dead}
    endpoints:
      - addr: %s
        labels: {pod: dead-0}
`, dead))
	cfg := testConfig(app.Listener.Addr().String())
	cfg.Destinations = dest
	// Each protocol has its own upstream client: both must name the same reasons. A proxy each, since a
	// refusing endpoint is set aside by the balancer after its first refusal.
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"HTTP/1.1", h1Client()}, {"h2c", h2cClient()}} {
		p := startProxy(t, cfg)
		self := p.addr("--outbound-listen").String()
		tests := []struct {
			name       string
			host       string
			wantStatus int
			wantReason string
			labels     map[string]string
		}{
			{"service without endpoints is 503", "empty.shop", 503, "no-endpoints", map[string]string{"dst_deployment": "empty", "authority": "empty.shop:80"}},
			{"refusing endpoint is 502", "dead.shop", 502, "connection-refused", map[string]string{"dst_deployment": "dead", "dst_pod": "dead-0", "target_addr": dead}},
			{"unknown authority refusing is 502", dead, 502, "connection-refused", map[string]string{"authority": dead, "target_addr": dead}},
			{"request to the proxy itself is refused", self, 502, "proxy-loop", map[string]string{"authority": self}},
		}
		for _, tt := range tests {
			t.Run(c.name+"/"+tt.name, func(t *testing.T) {
				req, _ := http.NewRequest("GET", p.url("--outbound-listen")+"/x", nil)
				req.Host = tt.host
				res, err := c.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != tt.wantStatus || res.Header.Get("meshscope-proxy-error") != tt.wantReason {
					t.Fatalf("got %d %q, want %d %q", res.StatusCode, res.Header.Get("meshscope-proxy-error"), tt.wantStatus, tt.wantReason)
				}
				labels := map[string]string{"direction": "outbound", "classification": "failure", "error": tt.wantReason, "status_code": fmt.Sprint(tt.wantStatus)}
				for k, v := range tt.labels {
					labels[k] = v
				}
				waitMetric(t, p.registry, "response_total", labels, 1)
			})
		}
	}
}

func TestMalformedHTTPGets400AndTheProxyKeepsServing(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fine") }))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	tests := []struct {
		name       string
		raw        string
		wantStatus int // 400 unless set
	}{
		{"header without colon", "GET / HTTP/1.1\r\nHost: a\r\nnot a header\r\n\r\n", 0},
		{"http/1.1 without host", "GET / HTTP/1.1\r\n\r\n", 0},
		{"header too large", "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"bad content length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 0},
		{"conflicting content lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 0},
		{"bad chunked encoding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0},
		{"two host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0},
		{"host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 0},
		{"control character in a field", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 0},
		{"bad request line", "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 0},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n", http.StatusExpectationFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tt.raw)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			want := cmp.Or(tt.wantStatus, http.StatusBadRequest)
			if res.StatusCode != want {
				t.Fatalf("status %d, want %d", res.StatusCode, want)
			}
			if res, body := get(t, h1Client(), p.url("--inbound-listen")); res.StatusCode != 200 || body != "fine" {
				t.Fatalf("after the bad request: %d %q", res.StatusCode, body)
			}
		})
	}
}

// TestInformationalResponsesReachTheClient: an upstream's 103 Early Hints reaches the client with its own
// fields, before the final response and without leaking into it, on every path a request can take; only
// the final response is counted.
func TestInformationalResponsesReachTheClient(t *testing.T) {
	const link = "</style.css>; rel=preload; as=style"
	app := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		w.Header().Set("Link", link)
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "must not pass")
		}
		w.WriteHeader(http.StatusEarlyHints)
		// The final response has fields of its own, not the hint's (net/http keeps the map, RFC 8297).
		clear(w.Header())
		w.Header().Set("X-Final", "yes")
		fmt.Fprintf(w, "final %s %s", r.Method, r.Proto)
	}))
	p := startProxy(t, testConfig(app.Listener.Addr().String()))

	tests := []struct {
		name     string
		client   *http.Client
		method   string
		body     string
		wantBody string
	}{
		{"http/1.1 get on the fast path", h1Client(), "GET", "", "final GET HTTP/1.1"},
		{"http/1.1 post through net/http's server", h1Client(), "POST", "payload", "final POST HTTP/1.1"},
		{"h2c get", h2cClient(), "GET", "", "final GET HTTP/2.0"},
		{"h2c post", h2cClient(), "POST", "payload", "final POST HTTP/2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string // status and fields of each 1xx, in order
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				got = append(got, fmt.Sprintf("%d link=%q hop=%q", code, h.Get("Link"), h.Get("X-Hop")))
				return nil
			}}
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), tt.method, p.url("--inbound-listen")+"/page", body)
			res, b := doBody(t, tt.client, req)
			if want := []string{fmt.Sprintf("103 link=%q hop=\"\"", link)}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("informational responses = %q, want %q", got, want)
			}
			if res.StatusCode != 200 || b != tt.wantBody || res.Header.Get("X-Final") != "yes" {
				t.Errorf("final response %d %q X-Final=%q, want 200 %q yes", res.StatusCode, b, res.Header.Get("X-Final"), tt.wantBody)
			}
			if v, ok := res.Header["Link"]; ok {
				t.Errorf("final response carries the hint's Link %q", v)
			}
		})
	}
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "status_code": "200", "classification": "success"}, float64(len(tests)))
	if n := metricValue(t, p.registry, "response_total", map[string]string{"direction": "inbound"}); n != float64(len(tests)) {
		t.Errorf("response_total = %v, want %d: one per request, the final response only", n, len(tests))
	}
	if n := metricValue(t, p.registry, "response_latency_ms", map[string]string{"direction": "inbound"}); n != float64(len(tests)) {
		t.Errorf("response_latency_ms count = %v, want %d", n, len(tests))
	}
}

// TestExpectContinueGetsOneContinue: the proxy's server answers Expect: 100-continue itself; the upstream's
// own 100 is not forwarded as a second one, while its other 1xx still are.
func TestExpectContinueGetsOneContinue(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The hint goes before the body is read, while the proxy's Transport is still sending it.
		w.Header().Set("Link", "</a.js>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		b, _ := io.ReadAll(r.Body) // net/http's server sends its 100 Continue to the proxy here
		fmt.Fprintf(w, "got %s expect=%q", b, r.Header.Get("Expect"))
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))

	var got []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, code)
		return nil
	}}
	c := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 10 * time.Second}, Timeout: 30 * time.Second}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "PUT", p.url("--inbound-listen"), strings.NewReader("payload"))
	req.Header.Set("Expect", "100-continue")
	res, body := doBody(t, c, req)
	if res.StatusCode != 200 || body != `got payload expect="100-continue"` {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	if fmt.Sprint(got) != "[100 103]" {
		t.Errorf("informational responses %v, want [100 103]: one 100 Continue, then the upstream's 103", got)
	}
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "status_code": "200"}, 1)
}

// TestHTTP10ClientGetsNoInformationalResponse: a server must not send a 1xx to an HTTP/1.0 client (RFC
// 9110 section 15.2).
func TestHTTP10ClientGetsNoInformationalResponse(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "final")
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c, br := dialProxy(t, p)
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: app\r\n\r\n")
	if res, body := readBody(t, br, "GET"); res.StatusCode != 200 || body != "final" {
		t.Fatalf("first response %d %q, want 200 \"final\"", res.StatusCode, body)
	}
}

// blockingWriter is a client whose connection does not take a write until released.
type blockingWriter struct {
	header  http.Header
	release chan struct{}
	mu      sync.Mutex
	codes   []int
	links   []string
}

func (w *blockingWriter) Header() http.Header         { return w.header }
func (w *blockingWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *blockingWriter) WriteHeader(code int) {
	<-w.release
	w.mu.Lock()
	w.codes = append(w.codes, code)
	w.links = append(w.links, w.header.Get("Link"))
	w.mu.Unlock()
}

// An upstream connection's read loop reports 1xx responses; a client that does not read must not stall it
// (the other requests on that connection wait on it), yet every 1xx still reaches the client, in order,
// before the request's round trip is done.
func TestInformerNeverBlocksTheUpstreamReadLoop(t *testing.T) {
	w := &blockingWriter{header: make(http.Header), release: make(chan struct{})}
	in := newInformer(w)
	reported := make(chan struct{})
	go func() {
		in.trace.Got1xxResponse(http.StatusEarlyHints, textproto.MIMEHeader{"Link": {"</a.css>; rel=preload"}})
		in.trace.Got1xxResponse(http.StatusEarlyHints, textproto.MIMEHeader{"Link": {"</b.js>; rel=preload"}})
		close(reported)
	}()
	select {
	case <-reported:
	case <-time.After(30 * time.Second):
		t.Fatal("Got1xxResponse waited for the client to take the 1xx")
	}

	done := make(chan struct{})
	go func() {
		in.done(true)
		close(done)
	}()
	close(w.release)
	<-done
	w.mu.Lock()
	defer w.mu.Unlock()
	if !slices.Equal(w.codes, []int{103, 103}) || !slices.Equal(w.links, []string{"</a.css>; rel=preload", "</b.js>; rel=preload"}) {
		t.Fatalf("client got %v with Link %q, want two 103s in order", w.codes, w.links)
	}
	if len(w.header) != 0 {
		t.Fatalf("header left for the final response: %v", w.header)
	}
}
