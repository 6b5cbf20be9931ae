package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestHTTP1UpstreamEdgeCases(t *testing.T) {
	var conns atomic.Int32
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/early-hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		case "/close":
			w.Header().Set("Connection", "close")
			io.WriteString(w, "closing")
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
		case "/huge-header":
			w.Header().Set("X-Huge", strings.Repeat("h", 2<<20))
		case "/big":
			io.WriteString(w, strings.Repeat("0123456789", 10000))
		default:
			fmt.Fprintf(w, "%s %s ua=%q cl=%q", r.Method, r.URL.RequestURI(), r.Header.Get("User-Agent"), r.Header.Get("Content-Length"))
		}
	}))
	app.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	app.Start()
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))

	tests := []struct {
		name       string
		method     string
		path       string
		ua         string
		wantStatus int
		wantBody   string
		wantHint   string // the Link of a 103 expected before the response
	}{
		{"path and query pass as sent", "GET", "/a%2Fb/c?x=1&y=%20", "curl/8", 200, `GET /a%2Fb/c?x=1&y=%20 ua="curl/8" cl=""`, ""},
		{"no user agent stays absent", "GET", "/plain", "", 200, `GET /plain ua="" cl=""`, ""},
		{"empty post says so", "POST", "/post", "x", 200, `POST /post ua="x" cl="0"`, ""},
		{"head has no body", "HEAD", "/head", "x", 200, ``, ""},
		{"informational responses are forwarded first", "GET", "/early-hints", "x", 200, "after hints", "</style.css>; rel=preload"},
		{"connection close is honoured", "GET", "/close", "x", 200, "closing", ""},
		{"no content", "GET", "/no-content", "x", 204, "", ""},
		{"large body", "GET", "/big", "x", 200, strings.Repeat("0123456789", 10000), ""},
		{"an endless response head is cut", "GET", "/huge-header", "x", 502, "upstream-error\n", ""},
		{"after all that the pool still works", "GET", "/again", "x", 200, `GET /again ua="x" cl=""`, ""},
	}
	// Raw requests: exactly what the client sends, nothing added by a client library.
	c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ua := ""
			if tt.ua != "" {
				ua = "User-Agent: " + tt.ua + "\r\n"
			}
			fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: app\r\n%s\r\n", tt.method, tt.path, ua)
			if tt.wantHint != "" {
				res, err := http.ReadResponse(br, &http.Request{Method: tt.method})
				if err != nil {
					t.Fatal(err)
				}
				if res.StatusCode != http.StatusEarlyHints || res.Header.Get("Link") != tt.wantHint {
					t.Fatalf("first response %d Link %q, want 103 %q", res.StatusCode, res.Header.Get("Link"), tt.wantHint)
				}
			}
			res, err := http.ReadResponse(br, &http.Request{Method: tt.method})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.wantStatus || string(b) != tt.wantBody {
				t.Fatalf("%d %.60q, want %d %.60q", res.StatusCode, b, tt.wantStatus, tt.wantBody)
			}
		})
	}
	// One connection for everything but the one the server closed and the one cut.
	if n := conns.Load(); n != 3 {
		t.Errorf("upstream connections: %d, want 3", n)
	}

}

func TestHTTP1UpstreamRetriesAConnectionTheServerClosedWhileIdle(t *testing.T) {
	var served atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.WriteString(w, "ok")
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c := h1Client()
	// Several pooled connections, all of which the app then drops: one retry must not take another.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if res, err := c.Get(p.url("--inbound-listen")); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
	wg.Wait()
	served.Store(0)
	app.CloseClientConnections()
	for i := range 3 {
		if res, body := get(t, c, p.url("--inbound-listen")); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
		// The app drops its idle connections, as servers do after their keep-alive timeout.
		app.CloseClientConnections()
	}
	if served.Load() != 3 {
		t.Errorf("app served %d requests, want 3", served.Load())
	}
}

func TestClientGoingAwayEndsTheUpstreamRequest(t *testing.T) {
	ended := make(chan struct{})
	started := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done() // a long poll: answers only when there is news
		close(ended)
	}))
	defer app.Close()
	p := startProxy(t, testConfig(app.Listener.Addr().String()))
	c, err := net.Dial("tcp", p.addr("--inbound-listen").String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /poll HTTP/1.1\r\nHost: app\r\n\r\n")
	<-started
	c.Close()
	<-ended
	waitMetric(t, p.registry, "response_total", map[string]string{"classification": "failure", "error": "cancelled"}, 1)
}
