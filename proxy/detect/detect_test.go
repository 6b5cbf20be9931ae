package detect

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Protocol
	}{
		{"empty needs more", "", Unknown},
		{"full preface is h2", Preface, HTTP2},
		{"preface with frames is h2", Preface + "\x00\x00\x00\x04", HTTP2},
		{"partial preface needs more", Preface[:10], Unknown},
		{"get request line is http1", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1},
		{"http/1.0 is http1", "POST /x?y=1 HTTP/1.0\r\n", HTTP1},
		{"bare LF line end is http1", "GET / HTTP/1.1\n", HTTP1},
		{"partial method needs more", "GE", Unknown},
		{"partial target needs more", "GET /index", Unknown},
		{"partial version needs more", "GET / HTTP/1", Unknown},
		{"version without CRLF needs more", "GET / HTTP/1.1", Unknown},
		{"CR without LF needs more", "GET / HTTP/1.1\r", Unknown},
		{"http/2 request line is malformed", "GET / HTTP/2.0\r\n", Malformed},
		{"http/1.2 is malformed", "GET / HTTP/1.2\r\n", Malformed},
		{"junk after version is malformed", "GET / HTTP/1.1x\r\n", Malformed},
		{"CR then junk is malformed", "GET / HTTP/1.1\rx", Malformed},
		{"non-ASCII target is malformed at once", "GET /caf\xc3\xa9", Malformed},
		{"known method and space is malformed at the first bad byte", "DELETE \x01", Malformed},
		{"lower-case known method is not a method", "get key\r\n", Opaque},
		{"unknown method naming an HTTP version is malformed", "FOO /caf\xc3\xa9 HTTP/1.1\r\n", Malformed},
		{"unknown method, version in any case", "FOO /x\thttp/1.1\n", Malformed},
		{"unknown method needs the line end", "FOO /caf\xc3\xa9 HTT", Unknown},
		{"leading empty lines are malformed", "\r\nGET / HTTP/1.1\r\n", Malformed},
		{"leading space is malformed", " GET / HTTP/1.1\r\n", Malformed},
		{"empty target is malformed", "GET  HTTP/1.1\r\n", Malformed},
		{"control byte in target is malformed", "GET /\x01 HTTP/1.1\r\n", Malformed},
		{"overlong request line is malformed", "GET /" + strings.Repeat("a", MaxPeek), Malformed},
		{"overlong unknown-method line is malformed", "FOO /" + strings.Repeat("a", MaxPeek), Malformed},
		{"PRI that diverges from preface is malformed", "PRI * HTTP/2.1\r\n", Malformed},
		{"mysql-like binary is opaque", "\x4a\x00\x00\x00\x0a8.0", Opaque},
		{"tls client hello is tls", "\x16\x03\x01\x02\x00", TLS},
		{"tls record header needs three bytes", "\x16\x03", Unknown},
		{"handshake type with another major version is opaque", "\x16\x02\x01", Opaque},
		{"handshake type with an unknown minor version is opaque", "\x16\x03\x09", Opaque},
		{"redis protocol is opaque", "*1\r\n$4\r\nPING\r\n", Opaque},
		{"memcached text is opaque", "set k 0 0 5\r\nhello\r\n", Opaque},
		{"smtp-like line is opaque", "EHLO example.com\r\n", Opaque},
		{"stomp frame is opaque", "CONNECT\naccept-version:1.2\n\n", Opaque},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify([]byte(tt.in)); got != tt.want {
				t.Errorf("Classify(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzClassify checks that detection never panics, never asks for more than MaxPeek bytes, and never changes
// its mind when more bytes arrive.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{Preface, "GET / HTTP/1.1\r\n", "\x16\x03\x01", "EHLO x\r\n", "PUT /a HTTP/1.0\n", "FOO /\xff HTTP/1.1\n", "\r\nGE"} {
		f.Add([]byte(s), []byte("more"))
	}
	f.Fuzz(func(t *testing.T, b, more []byte) {
		p := Classify(b)
		if p == Unknown && len(b) >= MaxPeek {
			t.Fatalf("undecided after %d bytes", len(b))
		}
		if p == Unknown {
			return
		}
		if q := Classify(append(b[:len(b):len(b)], more...)); q != p {
			t.Fatalf("Classify(%q) = %v but with %q appended = %v", b, p, more, q)
		}
	})
}

func TestPeekReplaysEveryByteInOrder(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string // written by the client, one write each
		close  bool     // client half-closes after writing
		want   Protocol
		reason Reason
		quiet  bool // the client stays silent past the detection timeouts, which are then short
	}{
		{"http1 split across writes", []string{"GE", "T / HT", "TP/1.1\r\nHost: x\r\n\r\nbody"}, false, HTTP1, "", false},
		{"h2 preface byte by byte then frames", append(strings.Split(Preface, ""), "frames"), false, HTTP2, "", false},
		{"binary protocol", []string{"\x00\x01\x02 binary"}, false, Opaque, NotHTTP, false},
		{"http/1.2", []string{"GET / HTTP/1.2\r\n\r\n"}, false, Malformed, BadRequest, false},
		{"silent client is opaque after timeout", nil, false, Opaque, Silent, true},
		{"partial line then silence is held, then malformed", []string{"GET /slow"}, false, Malformed, RequestLineTimeout, true},
		{"half-close before deciding is opaque", []string{"GET"}, true, Opaque, ClientClosed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			sent := strings.Join(tt.chunks, "")
			written := make(chan struct{})
			go func() {
				defer close(written)
				for _, c := range tt.chunks {
					client.Write([]byte(c))
				}
				if tt.close {
					client.(*net.TCPConn).CloseWrite()
				}
			}()
			silence, head := time.Minute, 2*time.Minute
			if tt.quiet {
				silence, head = 50*time.Millisecond, 100*time.Millisecond
			}
			p, reason, conn, err := Peek(server, silence, head)
			if err != nil {
				t.Fatal(err)
			}
			if p != tt.want || reason != tt.reason {
				t.Fatalf("protocol = %v (%q), want %v (%q)", p, reason, tt.want, tt.reason)
			}
			// Everything the client sent, then a marker written after detection, arrives in order.
			<-written
			client.Write([]byte("|after"))
			client.(*net.TCPConn).CloseWrite()
			got, _ := io.ReadAll(conn)
			want := sent + "|after"
			if tt.close {
				want = sent
			}
			if !bytes.Equal(got, []byte(want)) {
				t.Fatalf("read %q, want %q", got, want)
			}
		})
	}
}

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// helloBytes returns the first bytes a crypto/tls client sends to ask for name.
func helloBytes(t testing.TB, name string) []byte {
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
		client.Close()
	}()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, MaxClientHello)
	n, _ := server.Read(buf)
	return buf[:n]
}

func TestServerName(t *testing.T) {
	hello := helloBytes(t, "web.shop.serviceaccount.identity.meshscope.cluster.local")
	if Classify(hello) != TLS {
		t.Fatalf("a ClientHello classifies as %v", Classify(hello))
	}
	for _, tc := range []struct {
		name     string
		in       []byte
		wantName string
		wantOK   bool
	}{
		{"a ClientHello's name", hello, "web.shop.serviceaccount.identity.meshscope.cluster.local", true},
		{"a ClientHello without a name", helloBytes(t, ""), "", true},
		{"a record that is not a ClientHello", []byte("\x16\x03\x01\x00\x05hello"), "", false},
		{"a truncated ClientHello", hello[:len(hello)/2], "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			go func() {
				client.Write(tc.in)
				client.Close()
			}()
			name, read, ok := ServerName(server, 5*time.Second)
			if name != tc.wantName || ok != tc.wantOK {
				t.Errorf("got %q, %v; want %q, %v", name, ok, tc.wantName, tc.wantOK)
			}
			if !bytes.HasPrefix(tc.in, read) {
				t.Errorf("read %d bytes that are not the input's", len(read))
			}
			if tc.wantOK && !bytes.Equal(read, tc.in) {
				t.Errorf("read %d of the %d bytes of the hello: the rest would be lost", len(read), len(tc.in))
			}
		})
	}
}

// FuzzServerName feeds arbitrary first bytes to the inbound TLS detection: it never panics, never reads
// past MaxClientHello, returns only bytes the client sent (so a replay loses none), and a name only for
// input that classifies as TLS.
func FuzzServerName(f *testing.F) {
	f.Add(helloBytes(f, "web.shop.serviceaccount.identity.meshscope.cluster.local"))
	f.Add([]byte("\x16\x03\x01\x00\x05hello"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, read, ok := ServerName(&bytesConn{r: bytes.NewReader(in)}, time.Second)
		if len(read) > MaxClientHello || !bytes.HasPrefix(in, read) {
			t.Fatalf("read %d bytes, not a prefix of the %d sent", len(read), len(in))
		}
		if ok && Classify(in) != TLS {
			t.Fatalf("a name read from input that classifies as %v", Classify(in))
		}
	})
}

// bytesConn is a client that sent its bytes and closed: reads yield them, then io.EOF.
type bytesConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)      { return c.r.Read(p) }
func (c *bytesConn) SetReadDeadline(time.Time) error { return nil }
