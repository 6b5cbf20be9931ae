package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/meshscope/meshscope/proxy/detect"
)

// The HTTP/1.1 fast path. net/http's server costs a sidecar more than the proxying itself: per request it
// starts a goroutine to watch the connection, allocates a response, a chunk writer, a context and their
// buffers. A connection detected as HTTP/1.1 is served here instead, by one goroutine that reads a request,
// proxies it and writes its response, in order (pipelined requests are answered in turn). A request still
// upstream after h1WatchDelay gets a watcher reading ahead on its connection, so that a client going away
// cancels it (net/http watches every request from its start; a request answered sooner needs no watcher).
// Only plain HTTP/1.1 requests without a body are served here; the first request that is anything else (a
// body, Expect, Upgrade, HTTP/1.0, CONNECT, a head larger than the read buffer, anything net/http would
// refuse) is handed, with every byte of the connection not yet answered, to net/http's server, which then
// serves the connection to its end.

const (
	// h1BufferSize is the size of a client connection's read and write buffers: a request head that does
	// not fit goes to net/http's server, which accepts heads up to http.DefaultMaxHeaderBytes.
	h1BufferSize = 4096
	// h1HoldBack is how much of a response body without Content-Length is held back, as net/http does,
	// hoping it is all: then it gets a Content-Length rather than chunked encoding.
	h1HoldBack = 2048
	// h1WatchDelay is how long a request may be in flight before its client's connection is watched for
	// the client going away (long polls, slow upstreams).
	h1WatchDelay = 20 * time.Millisecond
)

var (
	h1ReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1BufferSize) }}
	h1WriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1BufferSize) }}
	errHandOff   = errors.New("request for net/http's server")
)

// h1Conns are the client connections the fast path serves, so that shutdown closes the idle ones at once
// and the busy ones after their response.
type h1Conns struct {
	mu       sync.Mutex
	conns    map[*clientConn]struct{}
	draining atomic.Bool
}

// add registers c; it reports false once shutdown began.
func (s *h1Conns) add(c *clientConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining.Load() {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*clientConn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *h1Conns) remove(c *clientConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// drain begins shutdown: idle connections are closed now, busy ones once their response is written.
func (s *h1Conns) drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining.Store(true)
	for c := range s.conns {
		if !c.busy.Load() {
			c.conn.Close()
		}
	}
}

// clientConn is one HTTP/1.1 client connection on the fast path.
type clientConn struct {
	conn   net.Conn
	remote string
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context // ends when the client goes away
	cancel context.CancelFunc
	busy   atomic.Bool // a request is being read or answered
	// draining is the proxy's h1Conns.draining: set, responses say "Connection: close" and end the connection.
	draining    *atomic.Bool
	headTimeout time.Duration // --header-timeout
	hr          bytes.Reader  // the head being parsed
	res         h1Response    // the response being written
	held        []byte        // response body held back (h1HoldBack)

	// The watcher of a request in flight: started by watchTimer, it reads ahead on the connection.
	watchTimer *time.Timer
	watchDone  chan struct{} // the watcher ended
	mu         sync.Mutex
	armed      bool // a request is in flight: the watcher may start
	watching   bool // the watcher started; the connection is its to read until it ends
	aborting   bool // the watcher is being stopped: its read's timeout is ours
}

// serveHTTP1 serves conn, detected as HTTP/1.1, on the fast path until it closes or is handed to l's server.
// orig is its original destination, empty when it was not redirected.
func (p *proxy) serveHTTP1(l *listener, conn net.Conn, orig string) {
	c := &clientConn{conn: conn, remote: conn.RemoteAddr().String(), draining: &p.h1conns.draining, headTimeout: p.cfg.HeaderTimeout, watchDone: make(chan struct{}, 1)}
	if !p.h1conns.add(c) {
		conn.Close()
		return
	}
	release := p.conns.add(conn) // shutdown waits for it, then closes it
	ctx := connContext(context.Background(), conn)
	if orig != "" {
		ctx = withOriginalDst(ctx, orig)
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.watchTimer = time.AfterFunc(time.Hour, c.watch)
	c.watchTimer.Stop()
	c.br = h1ReaderPool.Get().(*bufio.Reader)
	c.br.Reset(conn)
	c.bw = h1WriterPool.Get().(*bufio.Writer)
	c.bw.Reset(conn)

	handOff := c.serve(l.hp)

	c.cancel()
	p.h1conns.remove(c)
	release()
	c.br.Reset(nil)
	h1ReaderPool.Put(c.br)
	c.bw.Reset(nil)
	h1WriterPool.Put(c.bw)
	if handOff != nil {
		l.conns.push(handOff, orig)
		return
	}
	conn.Close()
}

// serve answers the connection's requests until it ends (nil) or one is for net/http's server: then it
// returns the connection, replaying the bytes read but not answered.
func (c *clientConn) serve(hp *httpProxy) net.Conn {
	c.conn.SetReadDeadline(time.Now().Add(c.headTimeout))
	for {
		if _, err := c.br.Peek(1); err != nil {
			return nil
		}
		c.busy.Store(true)
		if c.draining.Load() {
			return nil
		}
		req, n, err := c.readRequest()
		if errors.Is(err, errHandOff) {
			c.conn.SetReadDeadline(time.Time{})
			rest, _ := c.br.Peek(c.br.Buffered())
			return detect.Replay(c.conn, bytes.Clone(rest))
		}
		if err != nil {
			return nil
		}
		c.br.Discard(n)
		if !c.serveRequest(hp, req) || c.ctx.Err() != nil || c.draining.Load() {
			return nil
		}
		// Idle: the next request may take idleTimeout to begin.
		c.conn.SetReadDeadline(time.Now().Add(idleTimeout))
		c.busy.Store(false)
		if c.draining.Load() {
			return nil
		}
	}
}

// readRequest parses the request head at the front of c.br without consuming it, and returns the request
// and the head's length, or errHandOff when net/http's server must serve it.
func (c *clientConn) readRequest() (*http.Request, int, error) {
	head, err := c.peekHead()
	if err != nil {
		return nil, 0, err
	}
	c.hr.Reset(head)
	pr := h1ReaderPool.Get().(*bufio.Reader)
	pr.Reset(&c.hr)
	req, err := http.ReadRequest(pr)
	pr.Reset(nil)
	h1ReaderPool.Put(pr)
	if err != nil || !fastPathRequest(req) {
		return nil, 0, errHandOff
	}
	req.RemoteAddr = c.remote
	return req, len(head), nil
}

// peekHead returns the buffered request head up to and including its empty line, reading more as needed
// within headTimeout; errHandOff when it does not fit the buffer.
func (c *clientConn) peekHead() ([]byte, error) {
	from := 0
	for {
		buf, _ := c.br.Peek(c.br.Buffered())
		for i := from; i < len(buf); i++ {
			if buf[i] != '\n' {
				continue
			}
			// A line ends at LF (RFC 9112 section 2.2 lets a recipient accept a bare LF); an empty one ends the head.
			if i+1 < len(buf) && buf[i+1] == '\n' {
				return buf[:i+2], nil
			}
			if i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n' {
				return buf[:i+3], nil
			}
		}
		if len(buf) >= c.br.Size() {
			return nil, errHandOff
		}
		if from == 0 {
			// The head came in pieces: the rest of it has headTimeout (slowloris).
			c.conn.SetReadDeadline(time.Now().Add(c.headTimeout))
		}
		from = max(len(buf)-2, 1)
		if _, err := c.br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// fastPathRequest reports whether req is one the fast path serves exactly as net/http's server would:
// HTTP/1.1 without a body, without Expect or Upgrade, with a valid Host (http.ReadRequest already refused
// more than one) and valid fields throughout (net/http answers 400 to the rest, and that answer is left to it).
func fastPathRequest(req *http.Request) bool {
	if req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Body != http.NoBody || req.Method == "CONNECT" ||
		req.RequestURI == "*" || req.URL.Host != "" || req.Host == "" || !httpguts.ValidHostHeader(req.Host) {
		return false
	}
	if req.Header["Expect"] != nil || req.Header["Upgrade"] != nil {
		return false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// serveRequest proxies req and writes its response; it reports whether the connection may serve another.
func (c *clientConn) serveRequest(hp *httpProxy, req *http.Request) (keep bool) {
	// The header map is the connection's: nothing keeps it past the response (tap copies what it reports).
	h := c.res.header
	if h == nil {
		h = make(http.Header)
	}
	clear(h)
	c.res = h1Response{c: c, req: req, header: h, contentLength: -1, closeAfter: req.Close}
	w := &c.res
	// The head, read in full, has no more deadline: the watcher may read ahead as long as the request lasts.
	c.conn.SetReadDeadline(time.Time{})
	c.mu.Lock()
	c.armed = true
	c.mu.Unlock()
	c.watchTimer.Reset(h1WatchDelay)
	defer func() {
		c.stopWatch()
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				hp.log.Error("panic serving a request", "peer", c.remote, "panic", v)
			}
			keep = false
		}
	}()
	hp.serve(c.ctx, w, req)
	return w.finish() == nil && !w.closeAfter
}

// watch, run by watchTimer for a request still in flight, reads ahead on the connection until the next
// request begins (the client is still there) or the client goes away: then the request is cancelled.
func (c *clientConn) watch() {
	// Every run says it ended, even one that finds its request over: stopWatch waits for each run its
	// timer started, so none outlives its request and watches the next one beside that one's own.
	defer func() { c.watchDone <- struct{}{} }()
	c.mu.Lock()
	if !c.armed {
		c.mu.Unlock()
		return
	}
	c.watching = true
	c.mu.Unlock()
	if _, err := c.br.Peek(1); err != nil {
		c.mu.Lock()
		aborted := c.aborting && errors.Is(err, os.ErrDeadlineExceeded)
		c.mu.Unlock()
		if !aborted {
			c.cancel()
		}
	}
}

// stopWatch ends the watcher, if it started, before the connection is read again.
func (c *clientConn) stopWatch() {
	// The timer was reset for this request: if Stop finds it fired, watch runs (or ran) once for it.
	fired := !c.watchTimer.Stop()
	c.mu.Lock()
	c.armed = false
	if c.watching {
		c.aborting = true
		c.conn.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
	if fired {
		<-c.watchDone
		c.mu.Lock()
		c.watching, c.aborting = false, false
		c.mu.Unlock()
	}
}

type h1Response struct {
	c             *clientConn
	req           *http.Request
	header        http.Header
	status        int
	contentLength int64 // declared by the handler; -1 for none
	written       int64
	wroteHeader   bool // WriteHeader was called
	committed     bool // the head is in the write buffer
	chunked       bool
	closeAfter    bool
}

func (w *h1Response) Header() http.Header { return w.header }

func (w *h1Response) WriteHeader(code int) {
	if w.wroteHeader || code < 100 || code > 999 {
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// An informational response goes to the client now, with the fields set so far, and the final
		// response is still to come, as with net/http's server (the fast path serves HTTP/1.1 only: an
		// HTTP/1.0 client, which must get no 1xx, is net/http's).
		w.writeInformational(code)
		return
	}
	w.wroteHeader, w.status = true, code
	if cl := w.header["Content-Length"]; len(cl) > 0 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 && len(cl) == 1 {
			w.contentLength = n
		} else {
			delete(w.header, "Content-Length")
		}
	}
}

func (w *h1Response) bodyAllowed() bool {
	return w.status >= 200 && w.status != http.StatusNoContent && w.status != http.StatusNotModified
}

func (w *h1Response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.req.Method == "HEAD" {
		return len(p), nil
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.committed {
		if w.contentLength < 0 && len(w.c.held)+len(p) <= h1HoldBack {
			w.c.held = append(w.c.held, p...)
			return len(p), nil
		}
		w.commit(false)
	}
	return len(p), w.writeBody(p)
}

// Flush sends the head and the body so far to the client.
func (w *h1Response) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(false)
	}
	w.c.bw.Flush()
}

func (w *h1Response) writeBody(p []byte) error {
	bw := w.c.bw
	if w.chunked && len(p) > 0 {
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		_, err := bw.WriteString("\r\n")
		return err
	}
	_, err := bw.Write(p)
	return err
}

// finish ends the response: the head if not yet sent, the held-back body, the last chunk and trailers.
func (w *h1Response) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(true)
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	}
	if w.contentLength >= 0 && w.written < w.contentLength && w.req.Method != "HEAD" && w.bodyAllowed() {
		// The body is shorter than announced: the client must not read the next response into it.
		w.closeAfter = true
	}
	return bw.Flush()
}

// commit writes the head and the held-back body; done tells whether the handler has returned, so that the
// held-back body is all of it.
func (w *h1Response) commit(done bool) {
	w.committed = true
	h, bw := w.header, w.c.bw
	held := w.c.held
	w.c.held = w.c.held[:0]
	_, trailers := h["Trailer"]
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			trailers = true
		}
	}
	switch {
	case !w.bodyAllowed():
		delete(h, "Transfer-Encoding")
		delete(h, "Content-Length")
		if w.status == http.StatusNotModified {
			delete(h, "Content-Type")
		}
	case w.req.Method == "HEAD":
		delete(h, "Transfer-Encoding")
	case w.contentLength >= 0:
		delete(h, "Transfer-Encoding")
	case done && !trailers:
		w.contentLength = int64(len(held))
		h["Content-Length"] = []string{strconv.Itoa(len(held))}
	default:
		w.chunked = true
		h["Transfer-Encoding"] = chunkedValue
		delete(h, "Content-Length")
	}
	if w.bodyAllowed() && len(held) > 0 && h["Content-Type"] == nil && h.Get("Content-Encoding") == "" {
		h["Content-Type"] = []string{http.DetectContentType(held)}
	}
	if w.closeAfter || w.c.draining.Load() || headerHasToken(h, "Connection", "close") {
		w.closeAfter = true
		h["Connection"] = closeValue
	}

	writeStatusLine(bw, w.status)
	if h["Date"] == nil {
		bw.WriteString("Date: ")
		bw.Write(time.Now().UTC().AppendFormat(bw.AvailableBuffer(), http.TimeFormat))
		bw.WriteString("\r\n")
	}
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		writeField(bw, k, vv)
	}
	bw.WriteString("\r\n")
	if len(held) > 0 && w.req.Method != "HEAD" {
		w.writeBody(held)
	}
}

// writeInformational writes a 1xx head with the header's fields, but those of a body and trailers (as
// net/http's server), and flushes it.
func (w *h1Response) writeInformational(code int) {
	bw := w.c.bw
	writeStatusLine(bw, code)
	for k, vv := range w.header {
		if k == "Content-Length" || k == "Transfer-Encoding" || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		writeField(bw, k, vv)
	}
	bw.WriteString("\r\n")
	bw.Flush()
}

// writeStatusLine writes an HTTP/1.1 status line.
func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	}
	bw.WriteString("\r\n")
}

// writeTrailers writes the trailers: the fields the head announced in Trailer and those set with
// http.TrailerPrefix, as net/http's server does.
func (w *h1Response) writeTrailers() {
	h, bw := w.header, w.c.bw
	for k, vv := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			writeField(bw, http.CanonicalHeaderKey(name), vv)
		}
	}
	for _, v := range h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			if _, dup := h[http.TrailerPrefix+name]; !dup && name != "" {
				writeField(bw, name, h[name])
			}
		}
	}
}

// writeField writes one field line per value; a value holding CR or LF (only the proxy's own could) has
// them replaced by spaces, as net/http does.
func writeField(bw *bufio.Writer, k string, vv []string) {
	for _, v := range vv {
		if strings.ContainsAny(v, "\r\n") {
			v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
		}
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(strings.TrimSpace(v))
		bw.WriteString("\r\n")
	}
}

var (
	chunkedValue = []string{"chunked"}
	closeValue   = []string{"close"}
)
