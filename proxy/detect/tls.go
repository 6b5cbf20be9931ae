package detect

import (
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// MaxClientHello bounds what ServerName reads: a ClientHello fits in one record of at most 16 KiB (RFC 8446
// section 5.1), and post-quantum key shares make it a few KiB; more is not a ClientHello a proxy answers.
const MaxClientHello = 64 << 10

// errHelloRead stops crypto/tls once it has parsed the ClientHello.
var errHelloRead = errors.New("client hello read")

// ServerName reads c's TLS ClientHello, with crypto/tls's own parser, and returns the server name it
// asks for (SNI; empty when it names none) and every byte read, which the caller replays (Replay) to
// whoever answers the handshake: the proxy's TLS server, or the app when the name is not the proxy's.
// Nothing is written to c. ok is false when the bytes are not a ClientHello that crypto/tls accepts in a
// record Classify calls TLS, the client went quiet for timeout, or it sent more than MaxClientHello.
func ServerName(c net.Conn, timeout time.Duration) (name string, read []byte, ok bool) {
	rc := &recordingConn{Conn: c}
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", nil, false
	}
	defer c.SetReadDeadline(time.Time{})
	srv := tls.Server(rc, &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			name, ok = hello.ServerName, true
			return nil, errHelloRead
		},
	})
	srv.Handshake()
	// crypto/tls takes any record version below 0x1000 in a client's first record; what the proxy calls
	// TLS is what Classify does (3.0 to 3.4), so that the two never disagree on the same bytes.
	return name, rc.read, ok && Classify(rc.read) == TLS
}

// recordingConn keeps what is read through it, and writes nothing: the alert crypto/tls sends when it is
// stopped must not reach the client, whose handshake someone else completes.
type recordingConn struct {
	net.Conn
	read []byte
}

func (r *recordingConn) Read(p []byte) (int, error) {
	if room := MaxClientHello - len(r.read); room <= 0 {
		return 0, errors.New("client hello too large")
	} else if len(p) > room {
		p = p[:room]
	}
	n, err := r.Conn.Read(p)
	r.read = append(r.read, p[:n]...)
	return n, err
}

func (r *recordingConn) Write(p []byte) (int, error) { return len(p), nil }

// SetDeadline and SetWriteDeadline are crypto/tls's, for its alert: the read deadline ServerName set stays.
func (r *recordingConn) SetDeadline(time.Time) error      { return nil }
func (r *recordingConn) SetWriteDeadline(time.Time) error { return nil }
