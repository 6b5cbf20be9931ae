package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/proxy/detect"
	"github.com/meshscope/meshscope/proxy/metrics"
)

// opaqueTLSDetectTimeout is how long an inbound connection to an opaque port may stay silent before it is
// taken for plain text: a meshed client's proxy sends its ClientHello at once, and an unmeshed client of
// a server-speaks-first protocol (a database greeting its client) waits this long for its server.
const opaqueTLSDetectTimeout = time.Second

// meshTLS is the proxy's side of mutual TLS, nil when identity is off: its identity, and the refusals it
// counts and logs.
type meshTLS struct {
	id      *meshid.Client
	log     *slog.Logger
	refused *prometheus.CounterVec
	logged  refusals // each logged once, the counter counts them all
}

// refusal is what a refusal is logged once for.
type refusal struct{ direction, reason, peer string }

// maxLoggedRefusals bounds the refusals remembered; past it the memory starts again (and logs again).
const maxLoggedRefusals = 1024

// refusals remembers the refusals already logged, so that a peer refused in a loop is one log line.
type refusals struct {
	mu   sync.Mutex
	seen map[refusal]struct{}
}

// first reports whether the refusal of peer (host:port, or a host) for reason is new, remembering it.
func (r *refusals) first(direction, reason, peer string) bool {
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		host = peer
	}
	key := refusal{direction, reason, host}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, seen := r.seen[key]; seen {
		return false
	}
	if r.seen == nil || len(r.seen) >= maxLoggedRefusals {
		r.seen = make(map[refusal]struct{})
	}
	r.seen[key] = struct{}{}
	return true
}

func newMeshTLS(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*meshTLS, error) {
	pool, _, err := meshid.LoadTrustAnchors(cfg.IdentityTrustAnchors)
	if err != nil {
		return nil, fmt.Errorf("--identity-trust-anchors: %w", err)
	}
	id, err := meshid.NewClient(meshid.ClientConfig{
		Addr: cfg.IdentityAddr, ServerName: cfg.IdentityServerName, Anchors: pool, TokenFile: cfg.IdentityTokenFile, Log: log,
	})
	if err != nil {
		return nil, err
	}
	m := &meshTLS{
		id:  id,
		log: log,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "identity_tls_refused_total",
			Help: "Connections refused in the mutual TLS handshake, by direction and reason.",
		}, []string{"direction", "reason"}),
	}
	reg.MustRegister(id.Collector(), m.refused)
	return m, nil
}

// refuse counts a refused handshake and logs it, once per direction, reason and peer host.
func (m *meshTLS) refuse(direction, reason, peer string, err error) {
	m.refused.WithLabelValues(direction, reason).Inc()
	if m.logged.first(direction, reason, peer) {
		m.log.Warn("mutual TLS refused (logged once per peer and reason; identity_tls_refused_total counts each)",
			"direction", direction, "reason", reason, "peer", peer, "err", err)
	}
}

// accept detects and, when it is for this proxy, terminates mutual TLS on an inbound connection, and
// detects the protocol inside (opaque: none, the connection is TCP). TLS for another name is returned as
// detect.TLS, to pass through to the app as TCP (the app's own TLS). src is the counted connection, nil
// when the connection was refused (and closed); conn is what to serve.
func (m *meshTLS) accept(p *proxy, c net.Conn, srcTarget string, opaque bool) (src *countingConn, proto detect.Protocol, reason detect.Reason, conn net.Conn) {
	silence := p.cfg.DetectTimeout
	if opaque {
		silence = min(silence, opaqueTLSDetectTimeout)
	}
	counted := func(conn net.Conn, t metrics.TLS) *countingConn {
		src := newCountingConn(conn, p.metrics.TCP(metrics.TCPKey{Direction: Inbound, Peer: "src", TargetAddr: srcTarget, TLS: t}))
		src.tls = t
		return src
	}
	proto, reason, conn, err := detect.Peek(c, silence, p.cfg.HeaderTimeout)
	if err != nil {
		c.Close()
		return nil, proto, reason, nil
	}
	var name string
	var ok bool
	if proto == detect.TLS {
		var hello []byte
		name, hello, ok = detect.ServerName(conn, silence)
		conn = detect.Replay(conn, hello)
	}
	// A server name in the mesh's trust domain is meant for a proxy: this one answers with its own
	// certificate, even for another workload's name, so that a client expecting someone else sees the
	// mismatch (and refuses) rather than reach the app. Any other TLS is the app's own, passed through.
	if !ok || !strings.HasSuffix(name, "."+meshid.TrustDomain) {
		src := counted(conn, metrics.TLS{NoTLSReason: metrics.NoTLSFromRemote})
		if opaque && proto != detect.TLS {
			return src, detect.Opaque, reasonOpaquePort, src
		}
		return src, proto, reason, src
	}
	if !m.id.Ready() {
		m.refuse(Inbound, meshid.RefusedNoLocalIdentity, c.RemoteAddr().String(), meshid.ErrNoIdentity)
		c.Close()
		return nil, proto, reason, nil
	}
	tc := tls.Server(conn, m.id.ServerConfig())
	ctx, cancel := context.WithTimeout(context.Background(), silence)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		m.refuse(Inbound, meshid.RefusalReason(err), c.RemoteAddr().String(), err)
		c.Close()
		return nil, proto, reason, nil
	}
	peer, err := meshid.PeerName(tc.ConnectionState())
	if err != nil { // VerifyConnection refused it already: defence in depth
		m.refuse(Inbound, meshid.RefusedHandshake, c.RemoteAddr().String(), err)
		c.Close()
		return nil, proto, reason, nil
	}
	src = counted(tc, metrics.TLS{PeerID: peer})
	if opaque {
		return src, detect.Opaque, reasonOpaquePort, src
	}
	if proto, reason, conn, err = detect.Peek(src, p.cfg.DetectTimeout, p.cfg.HeaderTimeout); err != nil {
		src.Close()
		return nil, proto, reason, nil
	}
	return src, proto, reason, conn
}

// dialTLS originates mutual TLS on c to a peer that must prove name.
func (m *meshTLS) dialTLS(ctx context.Context, c net.Conn, name string) (net.Conn, error) {
	tc := tls.Client(c, m.id.ClientConfig(name))
	// The handshake has the dial's bound: a peer that accepts and never answers is an unreachable one.
	hctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		m.refuse(Outbound, meshid.RefusalReason(err), c.RemoteAddr().String(), err)
		return nil, &tlsError{name: name, err: err}
	}
	return tc, nil
}

// outboundTLS is how a connection to an endpoint whose expected identity is name will be secured.
func (m *meshTLS) outboundTLS(name string) metrics.TLS {
	switch {
	case m == nil:
		return metrics.TLS{NoTLSReason: metrics.NoTLSDisabled}
	case name == "":
		return metrics.TLS{NoTLSReason: metrics.NoTLSNotProvided}
	case !m.id.Ready():
		// Plain text rather than no traffic: the peer's inbound accepts unmeshed clients, and the metrics
		// say why this connection is not secured.
		return metrics.TLS{NoTLSReason: metrics.NoTLSNoLocalIdentity}
	}
	return metrics.TLS{PeerID: name}
}

// tlsError is a failed outbound handshake: the request is answered 502 with its own reason.
type tlsError struct {
	name string
	err  error
}

func (e *tlsError) Error() string {
	return fmt.Sprintf("mutual TLS with %s: %v", e.name, e.err)
}

func (e *tlsError) Unwrap() error { return e.err }

// peerTLSKey is the context key of the TLS state of an inbound request's connection.
type peerTLSKey struct{}

// connContext puts the TLS state of an accepted connection into the context of its requests.
func connContext(ctx context.Context, c net.Conn) context.Context {
	for {
		switch x := c.(type) {
		case *detect.Conn:
			c = x.Conn
			continue
		case *h2Conn:
			c = x.Conn
			continue
		case *countingConn:
			return context.WithValue(ctx, peerTLSKey{}, x.tls)
		}
		return ctx
	}
}

// peerTLS is the TLS state connContext stored; zero (identity disabled) when there is none.
func peerTLS(ctx context.Context) metrics.TLS {
	t, _ := ctx.Value(peerTLSKey{}).(metrics.TLS)
	return t
}
