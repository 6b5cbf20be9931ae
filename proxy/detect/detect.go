// Package detect tells which protocol a freshly accepted connection speaks by peeking at its first bytes:
// the HTTP/2 prior-knowledge preface, an HTTP/1.x request line, a TLS ClientHello, something that starts as
// an HTTP request but is not a valid one (Malformed: the proxy refuses it rather than pass it on
// unobserved), or anything else (opaque TCP). The peeked bytes are never lost: Peek returns a connection
// that replays them before reading on.
package detect

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// Protocol is what a connection was found to speak.
type Protocol int

const (
	// Unknown means more bytes are needed to decide.
	Unknown Protocol = iota
	// HTTP1 is an HTTP/1.0 or HTTP/1.1 request line.
	HTTP1
	// HTTP2 is the HTTP/2 prior-knowledge connection preface (RFC 9113 section 3.4).
	HTTP2
	// Opaque is anything else: proxied as TCP.
	Opaque
	// Malformed starts as an HTTP/1 request (a known method and a space, or a first line naming an HTTP/
	// version) but is not one the proxy can parse, or its request line did not arrive in time. Passed on as
	// TCP, an app lenient enough to answer it would be talking HTTP that no metric or tap sees: it is
	// refused instead.
	Malformed
	// TLS is a TLS handshake record (RFC 8446 section 5.1): a ClientHello, which ServerName reads.
	TLS
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http/1"
	case HTTP2:
		return "h2"
	case Opaque:
		return "opaque"
	case Malformed:
		return "malformed"
	case TLS:
		return "tls"
	}
	return "unknown"
}

// Preface is the HTTP/2 client connection preface.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxPeek is the most bytes Classify needs to decide: a request line longer than this is Malformed (refused
// as too long; net/http's servers accept heads up to 1 MiB, but a 64 KiB request target is an attack or a
// bug).
const MaxPeek = 64 << 10

// Classify decides from the first bytes of a connection. It returns Unknown while b is a prefix of
// something it could still recognise and shorter than MaxPeek. Once it decides for b, it decides the same for
// every extension of b.
func Classify(b []byte) Protocol {
	if n := min(len(b), len(Preface)); bytes.Equal(b[:n], []byte(Preface[:n])) {
		if len(b) >= len(Preface) {
			return HTTP2
		}
		return Unknown
	}
	if len(b) > 0 && b[0] == recordTypeHandshake {
		return classifyTLS(b)
	}
	if p := classifyRequestLine(b); p != Opaque {
		return p
	}
	return classifyHTTPLike(b)
}

// recordTypeHandshake begins a TLS handshake record; it is not an HTTP token character nor a space, so
// no request line, valid or not, begins with it.
const recordTypeHandshake = 0x16

// classifyTLS recognises a handshake record's header: type 22, then a legacy record version 3.x (3.1 in
// every ClientHello that RFC 8446 section 5.1 describes; 3.0 to 3.4 accepted).
func classifyTLS(b []byte) Protocol {
	switch {
	case len(b) < 2:
		return Unknown
	case b[1] != 3:
		return Opaque
	case len(b) < 3:
		return Unknown
	case b[2] > 4:
		return Opaque
	}
	return TLS
}

// methods are the request methods of RFC 9110 section 9 and PATCH (RFC 5789): a connection that begins with
// one of them and a space is an HTTP request, valid or not. Case matters, as in HTTP: memcached's "get k"
// stays opaque.
var methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// classifyHTTPLike tells, for bytes that are not a valid HTTP/1 request line, whether they start as an HTTP
// request anyway (Malformed), might still (Unknown), or are something else (Opaque). Lenient servers skip
// leading empty lines and accept extra spaces, other versions, any token as method and raw non-ASCII bytes
// in the target, so the test is loose: after any leading whitespace, a token and a space or tab, then either
// the token is a known method or the first line names an "HTTP/" version. Text protocols whose first line is
// like that (RTSP, SIP, Redis inline commands) need --opaque-ports.
func classifyHTTPLike(b []byte) Protocol {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	start := i
	for i < len(b) && isTokenChar(b[i]) {
		i++
	}
	if i == len(b) {
		return needMoreLike(b)
	}
	if i == start || (b[i] != ' ' && b[i] != '\t') {
		return Opaque
	}
	for _, m := range methods {
		if string(b[start:i]) == m {
			return Malformed
		}
	}
	line := b[i:]
	end := bytes.IndexByte(line, '\n')
	if end < 0 {
		return needMoreLike(b)
	}
	line = line[:end]
	for j := 0; j+6 <= len(line); j++ {
		if (line[j] == ' ' || line[j] == '\t') && bytes.EqualFold(line[j+1:j+6], []byte("HTTP/")) {
			return Malformed
		}
	}
	return Opaque
}

// needMoreLike is needMore for bytes that may yet start as an HTTP request: past MaxPeek without an end of
// line they are refused as too long, not passed on.
func needMoreLike(b []byte) Protocol {
	if len(b) >= MaxPeek {
		return Malformed
	}
	return Unknown
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// classifyRequestLine recognises `method SP request-target SP HTTP/1.x CRLF` (RFC 9112 section 3).
func classifyRequestLine(b []byte) Protocol {
	i := 0
	// method = token
	for i < len(b) && isTokenChar(b[i]) {
		i++
	}
	if i == len(b) {
		return needMore(b)
	}
	if i == 0 || b[i] != ' ' {
		return Opaque
	}
	i++
	// request-target: visible characters, at least one
	start := i
	for i < len(b) && b[i] > ' ' && b[i] < 0x7f {
		i++
	}
	if i == len(b) {
		return needMore(b)
	}
	if i == start || b[i] != ' ' {
		return Opaque
	}
	i++
	const version = "HTTP/1."
	rest := b[i:]
	if n := min(len(rest), len(version)); !bytes.Equal(rest[:n], []byte(version[:n])) {
		return Opaque
	}
	if len(rest) <= len(version) {
		return needMore(b)
	}
	if d := rest[len(version)]; d != '0' && d != '1' {
		return Opaque
	}
	rest = rest[len(version)+1:]
	switch {
	case len(rest) == 0:
		return needMore(b)
	case rest[0] == '\n':
		return HTTP1
	case rest[0] != '\r':
		return Opaque
	case len(rest) == 1:
		return needMore(b)
	case rest[1] == '\n':
		return HTTP1
	}
	return Opaque
}

func needMore(b []byte) Protocol {
	if len(b) >= MaxPeek {
		return Opaque
	}
	return Unknown
}

func isTokenChar(c byte) bool {
	// tchar, RFC 9110 section 5.6.2
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// Reason says why a connection was found not to speak HTTP, or was refused: the reason label of the
// proxy's protocol_detect_total. Empty for a connection detected as HTTP.
type Reason string

const (
	// NotHTTP: the first bytes are not HTTP (a binary or other text protocol).
	NotHTTP Reason = "not-http"
	// Silent: the client sent nothing for the silence timeout (a server-speaks-first protocol).
	Silent Reason = "silent"
	// ClientClosed: the client ended its stream before its bytes could be told apart.
	ClientClosed Reason = "client-closed"
	// BadRequest: the bytes start as an HTTP request but are not a valid one (Malformed).
	BadRequest Reason = "bad-request"
	// RequestLineTimeout: bytes that may yet be an HTTP request did not end their first line within the
	// head timeout (Malformed).
	RequestLineTimeout Reason = "request-line-timeout"
	// TLSHandshake: the client started TLS: the mesh's mutual TLS when it names the proxy's identity (then
	// the protocol inside is detected), else the app's own, passed through.
	TLSHandshake Reason = "tls"
)

// Peek reads from c until Classify decides. A client silent for silence is Opaque (a server-speaks-first
// protocol); one that has sent the start of what may be an HTTP request has until head, from the start, to
// finish its first line, else it is Malformed: a slow request line is not a way to be proxied unobserved.
// A client that closes before Classify decides is Opaque. Peek returns the protocol, the reason when it is
// not HTTP, and a connection that yields every peeked byte before the rest of c's stream. err is set only
// when c failed in a way that leaves nothing to proxy.
func Peek(c net.Conn, silence, head time.Duration) (Protocol, Reason, net.Conn, error) {
	buf := make([]byte, 0, 1024)
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(silence)); err != nil {
		return Opaque, ClientClosed, c, err
	}
	defer c.SetReadDeadline(time.Time{})
	extended := false
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch p := Classify(buf); p {
		case Unknown:
		case Opaque:
			return p, NotHTTP, Replay(c, buf), nil
		case Malformed:
			return p, BadRequest, Replay(c, buf), nil
		case TLS:
			return p, TLSHandshake, Replay(c, buf), nil
		default:
			return p, "", Replay(c, buf), nil
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if len(buf) == 0 {
				return Opaque, Silent, c, nil
			}
			if !extended && head > silence {
				extended = true
				if err := c.SetReadDeadline(start.Add(head)); err != nil {
					return Opaque, ClientClosed, c, err
				}
				continue
			}
			return Malformed, RequestLineTimeout, Replay(c, buf), nil
		}
		if len(buf) > 0 || errors.Is(err, io.EOF) {
			// The client half-closed before we could tell: whatever it sent (perhaps nothing, for a
			// server-speaks-first protocol) is still proxied as TCP. No server answers a request line
			// that never ended, so this hides no HTTP.
			return Opaque, ClientClosed, Replay(c, buf), nil
		}
		return Opaque, ClientClosed, c, err
	}
}

// Replay returns a connection that yields peeked before the rest of c's stream: the bytes a reader took
// from c and is handing back, with the connection, to another reader.
func Replay(c net.Conn, peeked []byte) net.Conn {
	if len(peeked) == 0 {
		return c
	}
	return &Conn{Conn: c, peeked: peeked}
}

// Conn is a connection whose first bytes were already read by Peek; Read returns them first.
type Conn struct {
	net.Conn
	peeked []byte
}

// Read returns the peeked bytes, then reads from the connection.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.peeked = c.peeked[n:]
		if len(c.peeked) == 0 {
			c.peeked = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection when the underlying one can (TCP), so that opaque TCP proxying
// can pass a client's end of stream on while still reading the server's reply.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
