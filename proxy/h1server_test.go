package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/detect"
)

// echoApp answers every request with its method, path and body.
func echoApp(t *testing.T) *httptest.Server {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
	}))
	t.Cleanup(app.Close)
	return app
}

func dialProxy(t *testing.T, p *proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

func readBody(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// expectClosed fails unless the proxy closes c (after the responses read through br).
func expectClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if n, err := br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("read %d bytes, err %v after the last response; want the connection closed", n, err)
	}
}

func TestHTTP1PipelinedRequestsAreAnsweredInOrder(t *testing.T) {
	p := startProxy(t, testConfig(echoApp(t).Listener.Addr().String()))
	c, br := dialProxy(t, p)
	// One write: body-less requests, a request with a body (net/http's server takes the connection over
	// from there), more after it, the last one closing.
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: app\r\n\r\n"+
		"DELETE /2 HTTP/1.1\r\nHost: app\r\n\r\n"+
		"HEAD /3 HTTP/1.1\r\nHost: app\r\n\r\n"+
		"POST /4 HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nbody"+
		"GET /5 HTTP/1.1\r\nHost: app\r\n\r\n"+
		"GET /6 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	for _, want := range []struct{ method, body string }{
		{"GET", "GET /1 "}, {"DELETE", "DELETE /2 "}, {"HEAD", ""}, {"POST", "POST /4 body"}, {"GET", "GET /5 "}, {"GET", "GET /6 "},
	} {
		res, body := readBody(t, br, want.method)
		if res.StatusCode != 200 || body != want.body {
			t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, want.body)
		}
	}
	expectClosed(t, br)
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "classification": "success"}, 6)
}

func TestHTTP1KeepAliveServesManyRequestsOnOneConnection(t *testing.T) {
	p := startProxy(t, testConfig(echoApp(t).Listener.Addr().String()))
	c := h1Client()
	for i := range 5 {
		if res, body := get(t, c, fmt.Sprintf("%s/%d", p.url("--inbound-listen"), i)); res.StatusCode != 200 || body != fmt.Sprintf("GET /%d ", i) {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	if n := metricValue(t, p.registry, "tcp_open_total", map[string]string{"direction": "inbound", "peer": "src"}); n != 1 {
		t.Errorf("client connections opened: %v, want 1", n)
	}
}

func TestHTTP1ConnectionCloseSemantics(t *testing.T) {
	p := startProxy(t, testConfig(echoApp(t).Listener.Addr().String()))
	tests := []struct {
		name      string
		raw       string
		wantClose bool
	}{
		{"http/1.1 keeps the connection", "GET /a HTTP/1.1\r\nHost: app\r\n\r\n", false},
		{"connection close closes it", "GET /a HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", true},
		{"connection close among other tokens closes it", "GET /a HTTP/1.1\r\nHost: app\r\nConnection: x-foo, close\r\n\r\n", true},
		{"http/1.0 closes it", "GET /a HTTP/1.0\r\nHost: app\r\n\r\n", true},
		{"http/1.0 keep-alive keeps it", "GET /a HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, br := dialProxy(t, p)
			io.WriteString(c, tt.raw)
			res, body := readBody(t, br, "GET")
			if res.StatusCode != 200 || body != "GET /a " {
				t.Fatalf("got %d %q", res.StatusCode, body)
			}
			if res.Close != tt.wantClose {
				t.Errorf("response says close=%v, want %v", res.Close, tt.wantClose)
			}
			if tt.wantClose {
				expectClosed(t, br)
				return
			}
			io.WriteString(c, "GET /b HTTP/1.1\r\nHost: app\r\n\r\n")
			if res, body := readBody(t, br, "GET"); res.StatusCode != 200 || body != "GET /b " {
				t.Fatalf("second request: %d %q", res.StatusCode, body)
			}
		})
	}
}

// TestHTTP1ResponsesAreFramedAsTheAppFramedThem sends each request to the app directly and through the
// proxy and expects the same status, framing (Content-Length or chunked), type and body.
func TestHTTP1ResponsesAreFramedAsTheAppFramedThem(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/small":
			io.WriteString(w, "small")
		case "/html":
			io.WriteString(w, "<html><body>sniffed</body></html>")
		case "/streamed":
			// More than either server holds back hoping for the end: chunked, however the reads fall.
			for i := range 3 {
				fmt.Fprintf(w, "part %d %s\n", i, strings.Repeat("x", 1000))
				w.(http.Flusher).Flush()
			}
		case "/large":
			io.WriteString(w, strings.Repeat("x", 100_000))
		case "/empty":
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
		case "/not-modified":
			w.Header().Set("Etag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
			io.WriteString(w, "short and stout")
		}
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	for _, tt := range []struct{ method, path string }{
		{"GET", "/small"}, {"GET", "/html"}, {"GET", "/streamed"}, {"GET", "/large"}, {"GET", "/empty"},
		{"GET", "/no-content"}, {"GET", "/not-modified"}, {"GET", "/teapot"}, {"HEAD", "/small"}, {"HEAD", "/large"},
		{"OPTIONS", "/small"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			var got [2]string
			for i, addr := range []string{app.Listener.Addr().String(), p.addr("--inbound-listen").String()} {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: app\r\n\r\n", tt.method, tt.path)
				res, body := readBody(t, bufio.NewReader(c), tt.method)
				got[i] = fmt.Sprintf("%d length=%d chunked=%v type=%q etag=%q date=%v body=%q", res.StatusCode, res.ContentLength,
					len(res.TransferEncoding) > 0, res.Header.Get("Content-Type"), res.Header.Get("Etag"), res.Header.Get("Date") != "", body)
			}
			if got[0] != got[1] {
				t.Errorf("through the proxy:\n%s\nwant as direct:\n%s", got[1], got[0])
			}
		})
	}
}

func TestShutdownClosesIdleKeepAliveConnections(t *testing.T) {
	app := echoApp(t)
	p, err := newProxy(testConfig(app.Listener.Addr().String()), slog.New(slog.NewTextHandler(testLog{t}, nil)), new(slog.LevelVar))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	eventually(t, "ready", func() bool { return p.ready.Load() })
	c, br := dialProxy(t, p)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: app\r\n\r\n")
	if res, body := readBody(t, br, "GET"); res.StatusCode != 200 || body != "GET /a " {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	cancel() // SIGTERM, with a 10 s grace the idle connection must not hold up
	expectClosed(t, br)
	if err := <-served; err != nil {
		t.Errorf("Serve returned %v, want nil", err)
	}
}

func TestHTTP1MalformedRequestAfterGoodOnesGets400(t *testing.T) {
	p := startProxy(t, testConfig(echoApp(t).Listener.Addr().String()))
	c, br := dialProxy(t, p)
	io.WriteString(c, "GET /1 HTTP/1.1\r\nHost: app\r\n\r\nGET /2 HTTP/1.1\r\nHost: app\r\n\r\nGET /3 HTTP/1.1\r\nnot a header\r\n\r\n")
	for _, want := range []int{200, 200, 400} {
		if res, body := readBody(t, br, "GET"); res.StatusCode != want {
			t.Fatalf("got %d %q, want %d", res.StatusCode, body, want)
		}
	}
	expectClosed(t, br)
}

func TestHTTP1RequestPipelinedBehindASlowOneIsAnsweredInTurn(t *testing.T) {
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, r.URL.Path)
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c, br := dialProxy(t, p)
	slow, fast := "GET /slow HTTP/1.1\r\nHost: app\r\n\r\n", "GET /fast HTTP/1.1\r\nHost: app\r\n\r\n"
	io.WriteString(c, slow)
	eventually(t, "slow request in flight", func() bool { return metricValue(t, p.registry, "request_total", nil) == 1 })
	io.WriteString(c, fast)
	// The slow request's watcher reads the next request ahead while the slow one is upstream.
	eventually(t, "pipelined request read", func() bool {
		return metricValue(t, p.registry, "tcp_read_bytes_total", map[string]string{"direction": "inbound", "peer": "src"}) == float64(len(slow+fast))
	})
	close(release)
	for _, want := range []string{"/slow", "/fast"} {
		if res, body := readBody(t, br, "GET"); res.StatusCode != 200 || body != want {
			t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, want)
		}
	}
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "inbound", "classification": "success"}, 2)
}

// FuzzHTTP1RequestAnsweredAsNetHTTPAnswersIt sends the same bytes to an app served by net/http and to the
// proxy in front of an upstream that answers 200 to anything: the proxy's first answer must have the app's
// status, so the proxy refuses exactly what net/http's server refuses (the fast path serves only what
// net/http would accept, and hands the rest to it).
//
//	go test -run '^$' -fuzz FuzzHTTP1RequestAnsweredAsNetHTTPAnswersIt -fuzztime 15s ./proxy
func FuzzHTTP1RequestAnsweredAsNetHTTPAnswersIt(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a?b=c HTTP/1.1\nHost: a\nX-Y: z\n\n",
		"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: a\r\nConnectiAon: close\r\n\r\n", // a HEAD reply has no body to wait for
		"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
		"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"DELETE /x HTTP/1.1\r\nhost: a\r\nx: a\x7fb\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer app.Close()
	lenient, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer lenient.Close()
	go answerAnyHead(lenient)
	level := new(slog.LevelVar)
	level.Set(slog.LevelError)
	p, err := newProxy(testConfig(lenient.Addr().String()), slog.New(slog.DiscardHandler), level)
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(f, "proxy ready", func() bool { return p.ready.Load() })

	// firstStatus sends raw to addr and returns the first response's status, or 0 when none came within wait.
	firstStatus := func(t *testing.T, addr string, raw []byte, wait time.Duration) int {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		c.Write(raw)
		// The response is framed by its request: the answer to HEAD has no body, whatever its Content-Length
		// says (read as the answer to a GET, it would wait for one). Unparsable bytes get a body-less 400.
		req, _ := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		res, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		raw = append(raw, "\r\n\r\n"...) // most inputs then end a head rather than wait for one
		switch detect.Classify(raw) {
		case detect.Malformed:
			// Starts as HTTP but is not: refused by the proxy whatever a lenient app would do.
			if got := firstStatus(t, p.addr("--inbound-listen").String(), raw, 30*time.Second); got != http.StatusBadRequest {
				t.Errorf("proxy answered %d to malformed %q, want 400", got, raw)
			}
			return
		case detect.HTTP1:
		default:
			return // proxied as opaque TCP or HTTP/2, not answered by the proxy
		}
		// An input net/http leaves waiting (a body announced but not sent, a head not ended) says nothing.
		want := firstStatus(t, app.Listener.Addr().String(), raw, 100*time.Millisecond)
		if want == 0 {
			return
		}
		if got := firstStatus(t, p.addr("--inbound-listen").String(), raw, 30*time.Second); got != want {
			t.Errorf("proxy answered %d, net/http %d to %q", got, want, raw)
		}
	})
}

// answerAnyHead serves ln until it closes: on each connection, once a line is empty (whatever came before
// it), it answers 200 and closes.
func answerAnyHead(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if strings.TrimRight(line, "\r\n") == "" {
					break
				}
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		}()
	}
}
