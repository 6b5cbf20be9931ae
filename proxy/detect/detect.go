// Package detect tells which protocol a freshly accepted connection speaks by peeking at its first bytes:
// the HTTP/2 prior-knowledge preface, an HTTP/1.x request line, or anything else (opaque TCP).
// The peeked bytes are never lost: Peek returns a connection that replays them before reading on.
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
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http/1"
	case HTTP2:
		return "h2"
	case Opaque:
		return "opaque"
	}
	return "unknown"
}

// Preface is the HTTP/2 client connection preface.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxPeek is the most bytes Classify needs to decide: an HTTP/1 request line longer than this is treated as
// opaque (net/http itself would refuse a request target this long).
const MaxPeek = 8192

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
	return classifyRequestLine(b)
}

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

// Peek reads from c until Classify decides, the client goes quiet for timeout (a server-speaks-first
// protocol: Opaque), or the client closes (Opaque). It returns the protocol and a connection that yields every
// peeked byte before the rest of c's stream. err is set only when c failed in a way that leaves nothing to proxy.
func Peek(c net.Conn, timeout time.Duration) (Protocol, net.Conn, error) {
	buf := make([]byte, 0, 1024)
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Opaque, c, err
	}
	defer c.SetReadDeadline(time.Time{})
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if p := Classify(buf); p != Unknown {
			return p, Replay(c, buf), nil
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return Opaque, Replay(c, buf), nil
			}
			if len(buf) > 0 || errors.Is(err, io.EOF) {
				// The client half-closed before we could tell: whatever it sent (perhaps nothing, for a
				// server-speaks-first protocol) is still proxied as TCP.
				return Opaque, Replay(c, buf), nil
			}
			return Opaque, c, err
		}
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
