package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/proxy/detect"
	"github.com/meshscope/meshscope/proxy/taphub"
)

// adminRoutes mounts every admin endpoint: metrics, readiness, liveness, log level and tap, behind the
// Host check.
func (p *proxy) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if !p.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if p.mtls != nil && !p.mtls.id.Ready() {
			// Linkerd's proxy is not ready before it has an identity either: traffic sent to it now could
			// not be secured.
			http.Error(w, "not ready: no identity certificate yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /tap", &taphub.Handler{Hub: p.tap, Token: p.cfg.TapToken, TLSClient: p.cfg.TapClientIdentity, Log: p.log,
		Refused: func(reason string, r *http.Request, why string) { p.refuseTap(reason, r.RemoteAddr, why) }})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "live\n")
	})
	mux.HandleFunc("GET /log-level", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.ToLower(p.level.Level().String())+"\n")
	})
	mux.HandleFunc("PUT /log-level", func(w http.ResponseWriter, r *http.Request) {
		// The one mutation: from the pod itself (kubectl port-forward arrives on loopback), with the tap
		// token, or from the tap client over mutual TLS (the only client the TLS side accepts); never from
		// whoever reaches the admin port.
		if r.TLS == nil && !taphub.Loopback(r.RemoteAddr) && (p.cfg.TapToken == "" || !taphub.BearerIs(r, p.cfg.TapToken)) {
			http.Error(w, "log level: only loopback clients, or clients sending the --tap-token as a bearer token, may change it", http.StatusForbidden)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64))
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		var level slog.Level
		if err := level.UnmarshalText([]byte(strings.TrimSpace(string(body)))); err != nil {
			http.Error(w, fmt.Sprintf("bad level %q: want debug, info, warn or error", strings.TrimSpace(string(body))), http.StatusBadRequest)
			return
		}
		old := p.level.Level()
		p.level.Set(level)
		p.log.Info("log level changed", "from", old, "to", level, "peer", r.RemoteAddr)
		io.WriteString(w, strings.ToLower(level.String())+"\n")
	})
	return p.adminHostCheck(mux)
}

// adminHostCheck refuses requests whose Host is not localhost or an IP address and does not match
// --admin-enforced-host: a web page whose name its attacker points at 127.0.0.1 (DNS rebinding, through
// kubectl port-forward) would otherwise read /metrics and loopback-only /tap, and set the log level. The
// probes stay open: they say nothing, and the kubelet must reach them.
func (p *proxy) adminHostCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/live" || r.URL.Path == "/ready" || p.adminHostAllowed(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		http.Error(w, fmt.Sprintf("admin: Host %q is not localhost or an IP address; start the proxy with --admin-enforced-host set to a regex matching it to allow it", r.Host), http.StatusForbidden)
	})
}

func (p *proxy) adminHostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(host); err == nil || strings.EqualFold(host, "localhost") {
		return true
	}
	return p.cfg.AdminHost != nil && p.cfg.AdminHost.MatchString(host)
}

// refuseTap counts a refused tap client in tap_refused_total and logs it, once per reason and peer host.
func (p *proxy) refuseTap(reason, peer, why string) {
	p.tapRefused.WithLabelValues(reason).Inc()
	if p.tapRefusedLogged.first("tap", reason, peer) {
		p.log.Warn("tap refused (logged once per peer and reason; tap_refused_total counts each)", "reason", reason, "peer", peer, "why", why)
	}
}

// refuseTapTLS is told of a client the admin port's TLS side refused in the handshake.
func (p *proxy) refuseTapTLS(peer net.Addr, err error) {
	p.refuseTap(meshid.RefusalReason(err), peer.String(), err.Error())
}

// adminSniffTimeout bounds how long a new admin connection may stay silent before its first byte says
// whether it is TLS (the admin server's header timeout).
const adminSniffTimeout = 5 * time.Second

// adminListener serves the admin port's two kinds of client on one port: plain HTTP (Prometheus' scrapes,
// the kubelet's probes, kubectl port-forward) and mutual TLS (the dashboard's tap), told apart by the first
// byte (22, a TLS handshake record; never the start of an HTTP request). One port keeps tap where
// discovery finds it (a scrape target's address, the pod's meshscope-admin port) and where proxy init
// already lets it through. Accept hands out TLS connections as *tls.Conn, whose handshake http.Server
// runs (under its own timeouts) and whose peer it puts in Request.TLS.
type adminListener struct {
	net.Listener               // the admin port
	conns        *connListener // the connections told apart, for Accept
}

func newAdminListener(ln net.Listener, cfg *tls.Config) *adminListener {
	l := &adminListener{Listener: ln, conns: newConnListener(ln.Addr())}
	go l.acceptLoop(cfg)
	return l
}

// acceptLoop accepts until the listener is closed, telling each connection apart in its own goroutine so
// that a silent client holds up nobody.
func (l *adminListener) acceptLoop(cfg *tls.Config) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.conns.Close()
			return
		}
		go l.sniff(c, cfg)
	}
}

// sniff reads c's first byte and hands c to Accept, as TLS when it starts a handshake.
func (l *adminListener) sniff(c net.Conn, cfg *tls.Config) {
	var first [1]byte
	c.SetReadDeadline(time.Now().Add(adminSniffTimeout))
	if _, err := io.ReadFull(c, first[:]); err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	conn := detect.Replay(c, first[:])
	if first[0] == tlsHandshakeRecord {
		conn = tls.Server(conn, cfg)
	}
	l.conns.push(conn, "")
}

// tlsHandshakeRecord is the content type of a TLS handshake record (RFC 8446 section 5.1).
const tlsHandshakeRecord = 22

func (l *adminListener) Accept() (net.Conn, error) { return l.conns.Accept() }

func (l *adminListener) Close() error {
	err := l.Listener.Close()
	l.conns.Close()
	return err
}
