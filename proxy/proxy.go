package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/destination"
	"github.com/meshscope/meshscope/proxy/detect"
	"github.com/meshscope/meshscope/proxy/metrics"
	"github.com/meshscope/meshscope/proxy/origdst"
	"github.com/meshscope/meshscope/proxy/taphub"
)

const (
	// dialTimeout bounds connecting to an upstream; past it a request is answered 504.
	dialTimeout = 10 * time.Second
	// idleTimeout closes client connections idle between requests.
	idleTimeout = 5 * time.Minute
)

// proxy is one running sidecar: its listeners, admin server, metrics and discovery.
type proxy struct {
	cfg      Config
	log      *slog.Logger
	level    *slog.LevelVar
	registry *prometheus.Registry
	metrics  *metrics.Metrics
	tap      *taphub.Hub
	// resolver finds outbound destinations: the destinations file, then the discovery service; nil
	// when there is neither.
	resolver  balance.Source
	files     *balance.Resolver   // the destinations file; nil without --destinations
	discovery *destination.Client // the discovery service's client; nil without --destination-addr
	// mtls is the proxy's identity and mutual TLS; nil when identity is off.
	mtls *meshTLS

	listeners []*listener
	admin     *http.Server
	adminLn   net.Listener
	// tapRefused counts refused tap clients by reason; tapRefusedLogged logs each peer's once.
	tapRefused       *prometheus.CounterVec
	tapRefusedLogged refusals
	ready            atomic.Bool
	conns            tracker      // opaque, upgraded and fast-path HTTP/1.1 connections
	h1conns          h1Conns      // fast-path HTTP/1.1 connections, for closing the idle ones at shutdown
	upstreams        []idleCloser // the upstream clients, whose idle connections close on shutdown
	own              ownConns     // the upstream connections' local addresses, to refuse them when redirected back
}

type idleCloser interface{ CloseIdleConnections() }

// listener is one data-path listener and the HTTP server that its detected HTTP connections go to.
type listener struct {
	name string // names the flag it comes from, in logs
	ln   net.Listener
	// opaque skips protocol detection: every connection is TCP.
	opaque bool
	// tcpTarget is where opaque connections go; empty when there is nowhere (the outbound listener).
	tcpTarget string
	// srcTarget is the target_addr label of the accepted connections' tcp_* metrics.
	srcTarget string
	// origDst: each connection goes where it was going before proxy init's rules redirected it here
	// (SO_ORIGINAL_DST), when it was redirected (the outbound listener, the inbound one without
	// --inbound-forward).
	origDst bool
	conns   *connListener
	server  *http.Server
	// hp proxies the listener's HTTP requests; its direction and dialer serve its opaque connections too.
	hp *httpProxy
	// active counts the listener's accepted connections not yet closed, against --max-connections.
	active atomic.Int64
}

// release is called once when one of the listener's accepted connections closes.
func (l *listener) release() { l.active.Add(-1) }

// newProxy validates what can only be checked by trying (the destinations file, binding every address)
// and returns a proxy ready to Serve. On error nothing is left open.
func newProxy(cfg Config, log *slog.Logger, level *slog.LevelVar) (_ *proxy, err error) {
	p := &proxy{cfg: cfg, log: log, level: level, registry: prometheus.NewRegistry()}
	var sources balance.Sources
	if cfg.Destinations != "" {
		if p.files, err = balance.Load(cfg.Destinations, log); err != nil {
			return nil, fmt.Errorf("--destinations: %w", err)
		}
		sources = append(sources, p.files)
	}
	if cfg.DestinationAddr != "" {
		p.discovery = destination.NewClient(destination.ClientOptions{Addr: cfg.DestinationAddr, Namespace: cfg.Namespace, Log: log})
		d := p.discovery
		p.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "discovery_authorities_refused_total",
			Help: "Outbound authorities dialled as written because the proxy already follows as many as it may (10,000)."},
			func() float64 { return float64(d.Refused.Load()) }))
		sources = append(sources, p.discovery)
	}
	switch len(sources) {
	case 1:
		p.resolver = sources[0]
	case 2:
		p.resolver = sources
	}
	p.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p.metrics = metrics.New(p.registry)
	p.metrics.SetExpositionBytes(cfg.MaxMetricsBytes)
	if cfg.IdentityAddr != "" {
		if p.mtls, err = newMeshTLS(cfg, log, p.registry); err != nil {
			return nil, err
		}
	}
	p.tapRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tap_refused_total",
		Help: "Tap clients refused, by reason: token, not_loopback (plain text); no_client_certificate, unknown_authority, expired, identity_mismatch, handshake_failed (mutual TLS).",
	}, []string{"reason"})
	p.registry.MustRegister(p.tapRefused)
	p.tap = taphub.New(taphub.Options{
		Identity:     taphub.Identity{Namespace: cfg.Namespace, Deployment: cfg.Deployment, Pod: cfg.Pod},
		LimitReached: p.metrics.LimitReached,
	})

	defer func() {
		if err != nil {
			p.closeListeners()
		}
	}()
	if p.adminLn, err = listen("--admin-listen", cfg.AdminListen); err != nil {
		return nil, err
	}
	if p.mtls != nil {
		p.adminLn = newAdminListener(p.adminLn, p.mtls.id.ServerConfigFor(cfg.TapClientIdentity, p.refuseTapTLS))
	}
	inDialer := &dialer{direction: Inbound, net: net.Dialer{Timeout: dialTimeout}, metrics: p.metrics, own: &p.own, mtls: p.mtls, loopback: true}
	outDialer := &dialer{direction: Outbound, net: net.Dialer{Timeout: dialTimeout}, metrics: p.metrics, own: &p.own, mtls: p.mtls}
	inH1, inH2 := newTransports(inDialer.dial)
	outH1, outH2 := newTransports(outDialer.dial)
	p.upstreams = []idleCloser{inH1, inH2, outH1, outH2}

	if cfg.InboundListen != "" {
		hp := &httpProxy{direction: Inbound, forward: cfg.InboundForward, h1: inH1, h2: inH2, dialer: inDialer}
		if err = p.addListener("--inbound-listen", cfg.InboundListen, hp, cfg.InboundForward, cfg.InboundForward, cfg.InboundForward == ""); err != nil {
			return nil, err
		}
	}
	if cfg.OutboundListen != "" {
		hp := &httpProxy{direction: Outbound, resolver: p.resolver, h1: outH1, h2: outH2, dialer: outDialer}
		if err = p.addListener("--outbound-listen", cfg.OutboundListen, hp, "", "", true); err != nil {
			return nil, err
		}
	}
	for _, r := range cfg.OutboundRoutes {
		hp := &httpProxy{direction: Outbound, route: r.Authority, resolver: p.resolver, h1: outH1, h2: outH2, dialer: outDialer}
		if err = p.addListener("--outbound-route "+r.Listen+"="+r.Authority, r.Listen, hp, r.Authority, r.Authority, false); err != nil {
			return nil, err
		}
	}
	p.admin = &http.Server{
		Handler:           p.adminRoutes(),
		ReadTimeout:       10 * time.Second,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	// Open tap streams end when shutdown begins rather than hold the admin server up.
	p.admin.RegisterOnShutdown(p.tap.Close)
	return p, nil
}

func listen(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, errors.Unwrap(err))
	}
	return ln, nil
}

func (p *proxy) addListener(name, addr string, hp *httpProxy, tcpTarget, srcTarget string, origDst bool) error {
	ln, err := listen(name, addr)
	if err != nil {
		return err
	}
	hp.metrics, hp.log, hp.hijacks, hp.self = p.metrics, p.log.With("listener", name), &p.conns, p.isSelf
	hp.tap = p.tap
	l := &listener{
		name:      name,
		ln:        ln,
		opaque:    p.opaquePort(ln.Addr().String()) || (tcpTarget != "" && p.opaquePort(tcpTarget)),
		tcpTarget: tcpTarget,
		srcTarget: srcTarget,
		origDst:   origDst,
		conns:     newConnListener(ln.Addr()),
		hp:        hp,
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	l.server = &http.Server{
		Handler:           &h2Guard{next: hp, metrics: p.metrics, log: hp.log},
		Protocols:         protocols,
		HTTP2:             h2Config(p.metrics),
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		IdleTimeout:       idleTimeout,
		// No ReadTimeout or WriteTimeout: a proxied stream (long poll, server-sent events, a gRPC stream)
		// may rightly last as long as its client and server want.
		ErrorLog: slog.NewLogLogger(hp.log.Handler(), slog.LevelDebug),
		// The requests of a redirected connection go where the connection was going, and carry how their
		// connection is secured; HTTP/2 streams the client cancels are charged to their connection.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return withResetBudget(l.conns.connContext(ctx, c), c)
		},
	}
	p.listeners = append(p.listeners, l)
	return nil
}

func (p *proxy) opaquePort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && slices.Contains(p.cfg.OpaquePorts, n)
}

// isSelf reports whether an upstream address is one of this proxy's own listeners: a request sent there
// would loop until the proxy ran out of connections.
func (p *proxy) isSelf(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	n, perr := strconv.ParseUint(port, 10, 16)
	return err == nil && perr == nil && p.isSelfAddr(netip.AddrPortFrom(ip, uint16(n)))
}

// isSelfAddr is isSelf for an address: one of the proxy's data listeners' ports on a loopback or
// unspecified address, on the listener's own address, or on any address of this host (network namespace)
// when the listener listens on all of them.
func (p *proxy) isSelfAddr(a netip.AddrPort) bool {
	ip := a.Addr().Unmap()
	for _, l := range p.listeners {
		la := l.ln.Addr().(*net.TCPAddr).AddrPort()
		if la.Port() != a.Port() {
			continue
		}
		lip := la.Addr().Unmap()
		if ip == lip || ip.IsLoopback() || ip.IsUnspecified() || (lip.IsUnspecified() && hostAddr(ip)) {
			return true
		}
	}
	return false
}

// hostAddr reports whether ip is an address of one of this host's interfaces. It asks the kernel each
// time: it is only needed when a port is one of the proxy's, and addresses may come and go.
func hostAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if hip, ok := netip.AddrFromSlice(n.IP); ok && hip.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// ownConns are the local addresses of the upstream connections the proxy opened: one of them arriving
// at a listener is the proxy's own connection redirected back to it.
type ownConns struct {
	mu sync.Mutex
	m  map[netip.AddrPort]struct{}
}

// add records a; release forgets it.
func (o *ownConns) add(a netip.AddrPort) (release func()) {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	o.mu.Lock()
	if o.m == nil {
		o.m = make(map[netip.AddrPort]struct{})
	}
	o.m[a] = struct{}{}
	o.mu.Unlock()
	return func() {
		o.mu.Lock()
		delete(o.m, a)
		o.mu.Unlock()
	}
}

func (o *ownConns) has(a netip.AddrPort) bool {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	o.mu.Lock()
	_, ok := o.m[a]
	o.mu.Unlock()
	return ok
}

// originalDst returns where c, accepted by l, was going before proxy init's rules redirected it: "" when
// it was sent to l itself (on the outbound listener: the app uses the proxy explicitly and each request
// is routed by its authority). A non-empty loop says why the connection must be refused rather than
// followed round and round: it was sent straight to the inbound listener without --inbound-forward (it has
// nowhere else to go), its original destination is one of the proxy's listeners, or it is the proxy's own
// upstream connection redirected back (the proxy does not run as proxy init's --proxy-uid).
func (p *proxy) originalDst(l *listener, c net.Conn) (orig, loop string) {
	const notRedirected = "sent to the inbound listener itself, which without --inbound-forward takes only connections proxy init's rules redirected"
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		if l.hp.direction == Inbound {
			return "", notRedirected
		}
		return "", ""
	}
	dst, err := origdst.Get(c)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		// ENOENT: no connection tracking, so nothing was redirected.
		p.log.Debug("no original destination", "listener", l.name, "err", err)
	}
	if err != nil || dst.Addr().Unmap() == local.AddrPort().Addr().Unmap() && dst.Port() == local.AddrPort().Port() {
		if l.hp.direction == Inbound {
			return "", notRedirected
		}
		return "", ""
	}
	if p.isSelfAddr(dst) {
		return "", "its original destination is this proxy's listener"
	}
	// The dialling goroutine records its connection when connect returns, which may be after this accept:
	// a loop missed here is caught on its next round.
	if peer, ok := c.RemoteAddr().(*net.TCPAddr); ok && p.own.has(peer.AddrPort()) {
		return "", "it is the proxy's own upstream connection, redirected back: run the proxy as proxy init's --proxy-uid"
	}
	return netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()).String(), ""
}

func (p *proxy) closeListeners() {
	if p.adminLn != nil {
		p.adminLn.Close()
	}
	for _, l := range p.listeners {
		l.ln.Close()
	}
}

// addr returns the bound address of the listener named by its flag, or nil.
func (p *proxy) addr(name string) net.Addr {
	if name == "--admin-listen" {
		return p.adminLn.Addr()
	}
	for _, l := range p.listeners {
		if l.name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// Serve runs the proxy until ctx is done, then shuts down gracefully: it stops accepting, lets in-flight
// requests and connections finish within ShutdownGrace, and closes what is left.
func (p *proxy) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	if p.files != nil {
		wg.Go(func() {
			if err := p.files.Run(ctx); err != nil {
				p.log.Error("destinations file is no longer watched: changes need a restart", "err", err)
			}
		})
	}
	if p.mtls != nil {
		wg.Go(func() { p.mtls.id.Run(ctx) })
	}
	if p.discovery != nil {
		wg.Go(func() { p.discovery.Run(ctx) })
	}
	adminDone := make(chan error, 1)
	go func() { adminDone <- p.admin.Serve(p.adminLn) }()
	for _, l := range p.listeners {
		wg.Go(func() { l.server.Serve(l.conns) })
		wg.Go(func() { p.accept(ctx, l) })
		p.log.Info("listening", "listener", l.name, "addr", l.ln.Addr().String(), "opaque", l.opaque)
	}
	p.log.Info("admin listening", "addr", p.adminLn.Addr().String())
	p.ready.Store(true)

	select {
	case <-ctx.Done():
	case err := <-adminDone:
		p.closeListeners()
		for _, l := range p.listeners {
			l.server.Close()
		}
		p.conns.closeAll()
		wg.Wait()
		return fmt.Errorf("admin server: %w", err)
	}

	p.log.Info("shutting down", "grace", p.cfg.ShutdownGrace)
	p.ready.Store(false)
	for _, l := range p.listeners {
		l.ln.Close()
	}
	p.h1conns.drain()
	grace, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.ShutdownGrace)
	defer cancel()
	var sg sync.WaitGroup
	for _, l := range p.listeners {
		sg.Go(func() {
			if err := l.server.Shutdown(grace); err != nil {
				p.log.Warn("in-flight requests cut at the end of the shutdown grace", "listener", l.name)
				l.server.Close()
			}
		})
	}
	sg.Go(func() { p.conns.wait(grace) })
	sg.Wait()
	p.conns.closeAll()
	wg.Wait()
	for _, u := range p.upstreams {
		u.CloseIdleConnections()
	}

	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer acancel()
	p.admin.Shutdown(actx)
	p.log.Info("stopped")
	return nil
}

// accept hands each connection of l to its own goroutine: detection may wait up to DetectTimeout.
func (p *proxy) accept(ctx context.Context, l *listener) {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.conns.Close()
				return
			}
			// Out of file descriptors and the like: back off rather than spin (net/http does the same).
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", "listener", l.name, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if max := int64(p.cfg.MaxConnections); max > 0 && l.active.Load() >= max {
			// Refused at once, before a byte is read or an upstream dialled: every silent or slow
			// connection past the bound would otherwise hold a descriptor, a goroutine and, once opaque, an
			// upstream connection of its own.
			p.metrics.Refused(l.hp.direction, reasonMaxConnections)
			p.log.Debug("connection refused: --max-connections reached", "listener", l.name, "peer", c.RemoteAddr().String(), "max", max)
			c.Close()
			continue
		}
		l.active.Add(1)
		go p.serveConn(ctx, l, c)
	}
}

// serveConn detects c's protocol and passes it to the listener's HTTP server or proxies it as TCP.
func (p *proxy) serveConn(ctx context.Context, l *listener, c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	target, srcTarget, opaque := l.tcpTarget, l.srcTarget, l.opaque
	var orig string
	if l.origDst {
		var loop string
		if orig, loop = p.originalDst(l, c); loop != "" {
			p.metrics.Refused(l.hp.direction, errLoop)
			p.log.Warn("connection refused as proxy-loop: "+loop, "listener", l.name, "peer", c.RemoteAddr().String(), "to", c.LocalAddr().String())
			c.Close()
			l.release()
			return
		}
		if orig != "" {
			target, srcTarget = orig, orig
			opaque = opaque || p.opaquePort(orig)
		}
	}
	var src *countingConn
	var proto detect.Protocol
	var reason detect.Reason
	var conn net.Conn
	if p.mtls != nil && l.hp.direction == Inbound {
		// Mutual TLS first, then the protocol inside it.
		if src, proto, reason, conn = p.mtls.accept(p, c, srcTarget, opaque); src == nil {
			l.release()
			return
		}
		src.release = l.release
	} else {
		t := metrics.TLS{NoTLSReason: metrics.NoTLSDisabled}
		if p.mtls != nil {
			t.NoTLSReason = metrics.NoTLSLoopback // the app's own calls to its proxy
		}
		src = newCountingConn(c, p.metrics.TCP(metrics.TCPKey{Direction: l.hp.direction, Peer: "src", TargetAddr: srcTarget, TLS: t}))
		src.tls = t
		src.release = l.release
		if opaque {
			p.metrics.Detected(l.hp.direction, l.srcTarget, detect.Opaque.String(), reasonOpaquePort)
			p.proxyTCP(ctx, l, src, target)
			return
		}
		var err error
		if proto, reason, conn, err = detect.Peek(src, p.cfg.DetectTimeout, p.cfg.HeaderTimeout); err != nil {
			p.log.Debug("connection failed during protocol detection", "listener", l.name, "peer", c.RemoteAddr().String(), "err", err)
			src.Close()
			return
		}
	}
	// The listener's own target labels the count, not a redirected connection's original destination:
	// those are as many as the addresses the app calls.
	p.metrics.Detected(l.hp.direction, l.srcTarget, proto.String(), string(reason))
	p.log.Debug("connection accepted", "listener", l.name, "peer", c.RemoteAddr().String(), "target", target, "protocol", proto.String(), "reason", reason)
	switch proto {
	case detect.Opaque, detect.TLS: // TLS that is not the mesh's: the app's own, passed through
		p.proxyTCP(ctx, l, conn, target)
	case detect.Malformed:
		p.refuse(l, conn, srcTarget, reason)
	case detect.HTTP1:
		p.serveHTTP1(l, conn, orig)
	default: // HTTP/2
		l.conns.push(newH2Conn(conn), orig)
	}
}

// reasonMaxConnections is tcp_refused_total's reason for a connection past --max-connections.
const reasonMaxConnections = "max-connections"

// reasonOpaquePort is protocol_detect_total's reason for a connection of a listener that skips detection.
const reasonOpaquePort = "opaque-port"

// refuse answers a connection that starts as an HTTP request but is not a valid one (400), or did not finish
// its request line in time (408), and closes it. It is counted, and tapped, as an HTTP request of the
// listener without method or authority: what the app never saw is still visible.
func (p *proxy) refuse(l *listener, c net.Conn, target string, reason detect.Reason) {
	defer c.Close()
	status := http.StatusBadRequest
	if reason == detect.RequestLineTimeout {
		status = http.StatusRequestTimeout
	}
	ex := Exchange{
		Direction:   l.hp.direction,
		Source:      c.RemoteAddr().String(),
		Destination: target,
		Start:       time.Now(),
		GRPCStatus:  metrics.NoGRPCStatus,
		hub:         p.tap,
	}
	ex.requestHeaders(p.metrics)
	body := "meshscope proxy: " + string(reason) + ": not a valid HTTP/1.1 request line\n"
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n%s: %s\r\nContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), ProxyErrorHeader, reason, len(body), body)
	ex.responseHeaders(status, nil)
	ex.Bytes = int64(len(body))
	ex.end()
	lingerClose(c)
}

// lingerClose ends c's write side and reads what the client still sends, for a moment and up to a bound,
// before the deferred close: closing with unread input would reset the connection and could destroy the
// answer before the client reads it (net/http's server lingers the same way).
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// connListener is the net.Listener an http.Server serves: it yields the connections found to speak HTTP.
type connListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	// origs holds the original destination of each redirected connection pushed and not yet served.
	origs sync.Map // net.Conn -> string
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the server; orig is its original destination, empty when it was not redirected.
func (l *connListener) push(c net.Conn, orig string) {
	if orig != "" {
		l.origs.Store(c, orig)
	}
	select {
	case l.ch <- c:
	case <-l.done:
		l.origs.Delete(c)
		c.Close()
	}
}

// connContext is the server's ConnContext: a redirected connection's requests carry its original
// destination.
func (l *connListener) connContext(ctx context.Context, c net.Conn) context.Context {
	ctx = connContext(ctx, c)
	if orig, ok := l.origs.LoadAndDelete(c); ok {
		return withOriginalDst(ctx, orig.(string))
	}
	return ctx
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }
