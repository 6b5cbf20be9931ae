package main

import (
	"bufio"
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"time"
)

// h1Upstream is the upstream HTTP/1.1 client of the hot path. A request without a body (most of them: GET,
// HEAD, DELETE ...) is written and its response read on a pooled connection by the handler's own goroutine,
// with net/http's own parser (http.ReadResponse). http.Transport would hand each request to two more
// goroutines per connection (its read and write loops) and allocate a dozen objects to coordinate them;
// on a sidecar that doubles the cost of a small request. Requests with a body, whose upload may need to
// stream while the response already flows back, and upgrades go to the full Transport (fallback).
type h1Upstream struct {
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback http.RoundTripper

	mu   sync.Mutex
	idle map[string][]*h1Conn // by address, the most recently used last; must be made
}

const (
	// h1MaxIdlePerAddr bounds the idle connections kept per upstream address.
	h1MaxIdlePerAddr = 1024
	// upstreamMaxHeaderBytes bounds a response head from any upstream client (HTTP/1.1 or h2c), so that an
	// upstream cannot exhaust the proxy's memory.
	upstreamMaxHeaderBytes = 1 << 20
	// upstreamIdleTimeout closes upstream connections (HTTP/1.1 or h2c) unused for that long (net/http's
	// default too).
	upstreamIdleTimeout = 90 * time.Second
)

// aLongTimeAgo is a deadline in the past: setting it interrupts a blocked read or write.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip sends req, as prepared by httpProxy (URL.Host is the address to dial, Host the authority),
// forwarding the 1xx responses it reads to inform, when set (forwardInformational). A request for the
// fallback Transport gets its 1xx reported through the ClientTrace of its context.
func (c *h1Upstream) roundTrip(req *http.Request, inform http.ResponseWriter) (*http.Response, error) {
	if req.Body != nil || req.Header["Upgrade"] != nil {
		return c.fallback.RoundTrip(req)
	}
	addr := req.URL.Host
	for attempt := 0; ; attempt++ {
		// The retry dials afresh: when an upstream restarts, every pooled connection to it is stale.
		pc, reused, err := c.get(req.Context(), addr, attempt == 0)
		if err != nil {
			return nil, err
		}
		res, wrote, err := pc.roundTrip(req, inform)
		if err == nil {
			return res, nil
		}
		pc.Conn.Close()
		// A pooled connection may have been closed by the server while idle (no byte of an answer came
		// back): try once more on a new one when the request is safe to repeat or never left (RFC 9110
		// section 9.2.2).
		if reused && attempt == 0 && !pc.received && req.Context().Err() == nil && (!wrote || idempotent(req.Method)) {
			continue
		}
		return nil, err
	}
}

func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// get returns an idle connection to addr when pooled is set and there is one, or dials one.
func (c *h1Upstream) get(ctx context.Context, addr string, pooled bool) (pc *h1Conn, reused bool, err error) {
	now := time.Now()
	c.mu.Lock()
	list := c.idle[addr]
	for pooled && len(list) > 0 {
		pc = list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		if now.Sub(pc.idleSince) < upstreamIdleTimeout {
			break
		}
		pc.Conn.Close()
		pc = nil
	}
	c.idle[addr] = list
	c.mu.Unlock()
	if pc != nil {
		return pc, true, nil
	}
	conn, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	pc = &h1Conn{Conn: conn, addr: addr, client: c}
	pc.lr = io.LimitedReader{R: conn, N: math.MaxInt64}
	pc.br = bufio.NewReaderSize(&pc.lr, 4096)
	pc.bw = bufio.NewWriterSize(conn, 4096)
	return pc, false, nil
}

// put makes pc available to the next request, closing it when the pool is full, and closes the oldest
// idle connection when it has expired.
func (c *h1Upstream) put(pc *h1Conn) {
	pc.idleSince = time.Now()
	c.mu.Lock()
	list := c.idle[pc.addr]
	var expired *h1Conn
	if len(list) > 0 && pc.idleSince.Sub(list[0].idleSince) >= upstreamIdleTimeout {
		expired = list[0]
		list = append(list[:0], list[1:]...)
	}
	full := len(list) >= h1MaxIdlePerAddr
	if !full {
		list = append(list, pc)
	}
	c.idle[pc.addr] = list
	c.mu.Unlock()
	if expired != nil {
		expired.Conn.Close()
	}
	if full {
		pc.Conn.Close()
	}
}

// CloseIdleConnections closes every idle upstream connection.
func (c *h1Upstream) CloseIdleConnections() {
	c.mu.Lock()
	idle := c.idle
	c.idle = make(map[string][]*h1Conn)
	c.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.Conn.Close()
		}
	}
	if f, ok := c.fallback.(idleCloser); ok {
		f.CloseIdleConnections()
	}
}

// h1Conn is one upstream connection; it carries one request at a time.
type h1Conn struct {
	net.Conn
	addr      string
	client    *h1Upstream
	lr        io.LimitedReader // bounds a response head, as net/http's own clients do
	received  bool             // whether the last response head read got any byte
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	body      h1Body // the body of the response in flight: part of the connection, never allocated
}

// roundTrip writes req and reads its response head, forwarding the 1xx before it to inform when set. wrote
// tells whether any of the request was sent.
func (pc *h1Conn) roundTrip(req *http.Request, inform http.ResponseWriter) (res *http.Response, wrote bool, err error) {
	pc.received = false
	// The request's context ends it: a client that goes away must not leave the upstream request behind.
	stop := context.AfterFunc(req.Context(), func() { pc.Conn.SetDeadline(aLongTimeAgo) })
	if err := pc.writeRequest(req); err != nil {
		stop()
		return nil, pc.bw.Buffered() == 0, err
	}
	for {
		pc.lr.N = upstreamMaxHeaderBytes
		res, err = http.ReadResponse(pc.br, req)
		// Sticky: a connection that answered a 1xx was not stale, and a retry would repeat the 1xx.
		pc.received = pc.received || pc.lr.N < upstreamMaxHeaderBytes || pc.br.Buffered() > 0
		pc.lr.N = math.MaxInt64
		if err != nil {
			stop()
			return nil, true, err
		}
		// Informational responses other than 101 precede the real one (RFC 9110 section 15.2).
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if inform != nil {
			forwardInformational(inform, res.StatusCode, res.Header)
		}
	}
	pc.body = h1Body{pc: pc, rc: res.Body, stop: stop, reuse: !res.Close}
	res.Body = &pc.body
	return res, true, nil
}

// writeRequest writes a body-less request head. Header values come from net/http's parser, which refuses
// CR and LF, so they are written as they are.
func (pc *h1Conn) writeRequest(req *http.Request) error {
	w := pc.bw
	w.WriteString(req.Method)
	w.WriteByte(' ')
	if req.URL.RawQuery == "" && req.URL.RawPath == "" && req.URL.Opaque == "" && req.URL.Path != "" {
		w.WriteString(req.URL.Path)
	} else {
		w.WriteString(req.URL.RequestURI())
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(req.Host)
	w.WriteString("\r\n")
	for k, vv := range req.Header {
		if k == "Content-Length" || k == "Host" {
			continue
		}
		for _, v := range vv {
			if v == "" && k == "User-Agent" {
				continue
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	switch req.Method {
	case "POST", "PUT", "PATCH":
		w.WriteString("Content-Length: 0\r\n")
	}
	w.WriteString("\r\n")
	return w.Flush()
}

// h1Body is a response body on a pooled connection. Its Close returns the connection to the pool when the
// body was read to its end and the connection may be reused; otherwise it closes the connection.
type h1Body struct {
	pc    *h1Conn
	rc    io.ReadCloser
	stop  func() bool
	eof   bool
	reuse bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	pc, reuse := b.pc, b.eof && b.reuse
	// stop reports false once the context's end already interrupted the connection.
	if !b.stop() {
		reuse = false
	}
	b.rc.Close()
	*b = h1Body{pc: pc}
	if reuse {
		pc.client.put(pc)
		return nil
	}
	return pc.Conn.Close()
}
