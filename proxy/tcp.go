package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/metrics"
)

// countingConn counts a connection's bytes and its close into a TCP series, as linkerd's tcp_* metrics.
type countingConn struct {
	net.Conn
	series *metrics.TCPSeries
	raw    *rawIO
	opened time.Time
	closed atomic.Bool
	// release, when set, is called once when the connection closes (the listener's connection count).
	release func()
	// tls is how the connection is secured, for the requests that come in on it (connContext).
	tls metrics.TLS

	mu  sync.Mutex
	err error // the first error that made the connection fail
}

func newCountingConn(c net.Conn, s *metrics.TCPSeries) *countingConn {
	s.Opened()
	return &countingConn{Conn: c, series: s, raw: newRawIO(c), opened: time.Now()}
}

func (c *countingConn) Read(b []byte) (n int, err error) {
	if c.raw != nil {
		n, err = c.raw.read(b)
	} else {
		n, err = c.Conn.Read(b)
	}
	if n > 0 {
		c.series.Read.Add(float64(n))
	}
	if err != nil {
		c.noteErr(err)
	}
	return n, err
}

func (c *countingConn) Write(b []byte) (n int, err error) {
	if c.raw != nil {
		n, err = c.raw.write(b)
	} else {
		n, err = c.Conn.Write(b)
	}
	if n > 0 {
		c.series.Write.Add(float64(n))
	}
	if err != nil {
		c.noteErr(err)
	}
	return n, err
}

// noteErr keeps the first error that says the connection failed; end of stream, our own deadlines (protocol
// detection) and our own closing are not failures.
func (c *countingConn) noteErr(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
		return
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

func (c *countingConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		c.series.Closed(time.Since(c.opened), err)
		if c.release != nil {
			c.release()
		}
	}
	return c.Conn.Close()
}

// CloseWrite half-closes a TCP connection: the peer reads end of stream, and can still answer.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// dialer opens upstream connections for one direction, counted as peer="dst".
type dialer struct {
	direction string
	net       net.Dialer
	metrics   *metrics.Metrics
	// own records the connections dialled, so that one redirected back to the proxy is refused.
	own *ownConns
	// mtls originates mutual TLS to endpoints with an identity (outbound); nil when identity is off.
	mtls *meshTLS
	// loopback labels every connection NoTLSLoopback: the inbound dialer's, to the local app.
	loopback bool
	// peers holds the dst_* labels and identity last seen for each endpoint address, for the connections
	// the HTTP transports open (they dial by address alone).
	peers sync.Map // string -> peerInfo
}

// peerInfo is what the dialer knows of an endpoint address.
type peerInfo struct {
	dst      metrics.Dst
	identity string // the identity it must prove; empty when it is not meshed
}

// dial is the transports' DialContext.
func (d *dialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var peer peerInfo
	if v, ok := d.peers.Load(addr); ok {
		peer = v.(peerInfo)
	}
	return d.dialWith(ctx, network, addr, peer)
}

func (d *dialer) dialWith(ctx context.Context, network, addr string, peer peerInfo) (net.Conn, error) {
	c, err := d.net.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	// Recorded before any byte is sent (the TLS handshake included): a connection redirected back to this
	// proxy is refused from its first byte.
	var release func()
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && d.own != nil {
		release = d.own.add(la.AddrPort())
	}
	t := d.tlsTo(peer.identity)
	if t.PeerID != "" {
		if c, err = d.mtls.dialTLS(ctx, c, t.PeerID); err != nil {
			if release != nil {
				release()
			}
			return nil, err
		}
	}
	cc := newCountingConn(c, d.metrics.TCP(metrics.TCPKey{Direction: d.direction, Peer: "dst", TargetAddr: addr, TLS: t, Dst: peer.dst}))
	cc.tls, cc.release = t, release
	return cc, nil
}

// tlsTo is how a connection to a peer that must prove identity (empty: none) is secured.
func (d *dialer) tlsTo(identity string) metrics.TLS {
	if d.loopback && d.mtls != nil {
		return metrics.TLS{NoTLSReason: metrics.NoTLSLoopback}
	}
	return d.mtls.outboundTLS(identity)
}

// noteEndpoint remembers an endpoint's labels and identity for the connections the transports will dial to it.
func (d *dialer) noteEndpoint(ep *balance.Endpoint) {
	peer := peerInfo{dst: dstOf(ep.DstLabels), identity: ep.Hints.Identity}
	if v, ok := d.peers.Load(ep.Addr); ok && v.(peerInfo) == peer {
		return
	}
	d.peers.Store(ep.Addr, peer)
}

// maxReroutes bounds how many unreachable endpoints one request (HTTP) or
// connection (TCP) is moved away from before the proxy gives up and answers
// with the error: a few retries ride out a dying pod, more would only delay
// the error when a whole destination is down.
const maxReroutes = 4

// proxyTCP carries an opaque connection to target (an authority, balanced when it is in the destinations
// file) until both sides have closed.
func (p *proxy) proxyTCP(ctx context.Context, l *listener, client net.Conn, target string) {
	defer client.Close()
	log := p.log.With("listener", l.name, "peer", client.RemoteAddr().String())
	if target == "" {
		log.Warn("opaque connection has no destination: the outbound listener routes HTTP by authority only; use --outbound-route for TCP, or proxy init to redirect connections")
		return
	}
	release := p.conns.add(client)
	defer release()

	var dest *balance.Destination
	if l.hp.direction == Outbound && p.resolver != nil {
		dest = p.resolver.Lookup(target)
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var server net.Conn
	var tried []*balance.Endpoint
	for {
		addr, peer := target, peerInfo{}
		var ep *balance.Endpoint
		if dest != nil {
			var err error
			if ep, err = dest.Pick(tried...); err != nil {
				log.Warn("opaque connection dropped", "target", target, "err", err)
				return
			}
			addr, peer = ep.Addr, peerInfo{dst: dstOf(ep.DstLabels), identity: ep.Hints.Identity}
		}
		var done func(error)
		if ep != nil {
			done = ep.Begin()
		}
		var err error
		server, err = l.hp.dialer.dialWith(dctx, "tcp", addr, peer)
		if done != nil {
			done(err)
		}
		if err == nil {
			break
		}
		if ep != nil && balance.Unreachable(err) && dctx.Err() == nil && len(tried) < maxReroutes {
			tried = append(tried, ep)
			continue
		}
		log.Warn("opaque connection dropped", "target", addr, "err", err)
		return
	}
	defer server.Close()
	release2 := p.conns.add(server)
	defer release2()
	log.Debug("opaque connection", "target", server.RemoteAddr().String())
	if pipe(client, server, p.cfg.OpaqueIdleTimeout) {
		p.metrics.LimitReached(limitOpaqueIdle)
		log.Debug("opaque connection closed: idle for --opaque-idle-timeout", "idle", p.cfg.OpaqueIdleTimeout)
	}
}

// limitOpaqueIdle is limit_reached_total's limit for opaque connections closed by --opaque-idle-timeout.
const limitOpaqueIdle = "opaque-idle-timeout"

// pipe copies both ways; an end of stream is passed on as a half-close, an error closes both. With idle
// set, both close once no byte has gone either way for idle (a one-way stream stays open while it flows);
// pipe reports whether that happened.
func pipe(a, b net.Conn, idle time.Duration) (idled bool) {
	var last atomic.Int64 // when a byte last went either way, in UnixNano
	last.Store(time.Now().UnixNano())
	done := make(chan bool, 1)
	go func() { done <- copyHalf(b, a, idle, &last) }()
	idled = copyHalf(a, b, idle, &last)
	return <-done || idled
}

// copyHalf copies src to dst until src ends (dst is then half-closed), either fails, or, with idle set,
// neither direction carried a byte for idle (both are closed; it reports true).
func copyHalf(dst, src net.Conn, idle time.Duration, last *atomic.Int64) (idled bool) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var err error
	if idle <= 0 {
		_, err = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	} else {
		err = copyIdle(dst, src, *bp, idle, last)
		idled = errors.Is(err, errIdle)
	}
	if err != nil {
		dst.Close()
		src.Close()
		return idled
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return false
	}
	dst.Close()
	return false
}

var errIdle = errors.New("idle")

// copyIdle is io.CopyBuffer with reads and writes bounded by idle, extended while the other direction moves
// (its bytes are noted in last); it returns errIdle once neither moved for idle.
func copyIdle(dst, src net.Conn, buf []byte, idle time.Duration, last *atomic.Int64) error {
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			dst.SetWriteDeadline(time.Now().Add(idle))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				if errors.Is(werr, os.ErrDeadlineExceeded) {
					return errIdle
				}
				return werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			if time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction is moving
			}
			return errIdle
		default:
			return err
		}
	}
}

// tracker keeps the connections the HTTP servers do not (opaque TCP, upgraded HTTP), so that shutdown can
// wait for them and then close what is left.
type tracker struct {
	mu    sync.Mutex
	conns map[io.Closer]struct{}
	idle  chan struct{} // closed when conns becomes empty; nil while it is
}

func (t *tracker) add(c io.Closer) (release func()) {
	t.mu.Lock()
	if t.conns == nil {
		t.conns = make(map[io.Closer]struct{})
	}
	t.conns[c] = struct{}{}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		delete(t.conns, c)
		if len(t.conns) == 0 && t.idle != nil {
			close(t.idle)
			t.idle = nil
		}
	}
}

// wait returns once no connection is tracked, or ctx is done.
func (t *tracker) wait(ctx context.Context) {
	t.mu.Lock()
	idle := t.idle
	t.mu.Unlock()
	if idle == nil {
		return
	}
	select {
	case <-idle:
	case <-ctx.Done():
	}
}

func (t *tracker) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.conns {
		c.Close()
	}
}
