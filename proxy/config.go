package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/proxy/flagenv"
	"github.com/meshscope/meshscope/proxy/metrics"
)

// Config is the proxy's configuration, from flags and their MESHSCOPE_PROXY_* environment twins.
type Config struct {
	// InboundListen is where the inbound listener accepts; empty disables it.
	InboundListen string
	// InboundForward is the local app every inbound connection goes to; empty sends each to its original
	// destination, where it was going before proxy init's rules redirected it to InboundListen.
	InboundForward string
	// OutboundListen is where the outbound listener accepts, routing each request by its authority;
	// empty disables it.
	OutboundListen string
	// OutboundRoutes are fixed-destination outbound listeners.
	OutboundRoutes []Route
	// AdminListen serves /metrics, /ready, /live, /log-level and /tap; required.
	AdminListen string

	// Namespace, Deployment and Pod name this workload (tap events and logs); Namespace is also where the
	// discovery service looks up short authorities (svc:port).
	Namespace, Deployment, Pod string

	// Destinations is the destinations file; empty means every authority is dialled as written.
	Destinations string
	// DestinationAddr is the discovery service (proxy destination), host:port; empty means none.
	DestinationAddr string
	// OpaquePorts are ports whose connections skip protocol detection (opaque TCP): a listener's, its
	// destination's, or a redirected connection's original destination's.
	OpaquePorts []int
	// DetectTimeout is how long a client may stay silent before its connection is proxied as opaque TCP.
	DetectTimeout time.Duration
	// HeaderTimeout bounds how long a client may take to send a request's head (slowloris), its request line
	// included: a connection that began one and is still on it then is refused, not proxied as TCP.
	HeaderTimeout time.Duration
	// AdminHost, when set, matches (anchored) the host names, besides localhost and IP addresses, that a
	// request's Host may name to reach the admin server's data (DNS rebinding); nil allows none.
	AdminHost *regexp.Regexp
	// MaxConnections bounds each listener's open accepted connections; past it, new ones are closed at once.
	// 0: no bound.
	MaxConnections int
	// MaxMetricsBytes bounds, roughly, the bytes of the HTTP series on /metrics, and of the TCP series;
	// past it new authorities count as overflow. 0: MaxSeries alone.
	MaxMetricsBytes int
	// OpaqueIdleTimeout closes an opaque connection once no byte went either way for it; 0: never.
	OpaqueIdleTimeout time.Duration
	// TapToken authorizes /tap clients; empty lets only loopback peers tap.
	TapToken string
	// LogLevel is the initial log level; /log-level changes it at run time.
	LogLevel slog.Level
	// ShutdownGrace is how long in-flight requests and connections may take to finish on shutdown.
	ShutdownGrace time.Duration

	// IdentityAddr is the issuer service (proxy identity); empty turns identity and mutual TLS off.
	IdentityAddr string
	// IdentityTrustAnchors is the PEM bundle of the mesh's roots; required with IdentityAddr.
	IdentityTrustAnchors string
	// IdentityTokenFile holds the ServiceAccount token the issuer reviews.
	IdentityTokenFile string
	// IdentityServerName is the issuer service's identity; empty means meshid.IssuerName.
	IdentityServerName string
	// TapClientIdentity is the one identity that may tap over mutual TLS on the admin port (with
	// IdentityAddr): the dashboard's.
	TapClientIdentity string
}

// Route is one --outbound-route: a listener whose every connection goes to Authority.
type Route struct {
	Listen    string
	Authority string
}

const envPrefix = "MESHSCOPE_PROXY_"

// DefaultOpaquePorts are Linkerd's default opaque ports: server-speaks-first protocols (SMTP, MySQL) would
// wait out --detect-timeout, and the others gain nothing from detection.
var DefaultOpaquePorts = []int{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}

// parseConfig reads the command line, with environment twins for flags not given (flags win). The error
// is one line naming the problem; flag.ErrHelp after printing usage for -h/--help.
func parseConfig(args []string, getenv func(string) string, usageOut io.Writer) (Config, error) {
	cfg := Config{}
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.InboundListen, "inbound-listen", "0.0.0.0:4143", "`address` of the inbound listener: traffic from other pods to this one (empty disables it)")
	fs.StringVar(&cfg.InboundForward, "inbound-forward", "", "`address` of the local app that inbound traffic goes to, e.g. 127.0.0.1:8080; without it, each inbound connection goes to its original destination (redirected by proxy init)")
	fs.StringVar(&cfg.OutboundListen, "outbound-listen", "127.0.0.1:4140", "`address` of the outbound listener: the app's calls to other services, routed by Host/:authority (empty disables it)")
	fs.Func("outbound-route", "an extra outbound `LISTEN=AUTHORITY` listener sending every connection to AUTHORITY, for clients that cannot set an authority and for TCP (repeatable; in the environment, comma-separated)", func(s string) error {
		for _, one := range strings.Split(s, ",") {
			r, err := parseRoute(strings.TrimSpace(one))
			if err != nil {
				return err
			}
			cfg.OutboundRoutes = append(cfg.OutboundRoutes, r)
		}
		return nil
	})
	fs.StringVar(&cfg.AdminListen, "admin-listen", "0.0.0.0:4191", "`address` of the admin server: /metrics /ready /live /log-level /tap")
	fs.StringVar(&cfg.Namespace, "namespace", "", "this workload's `namespace` (tap events and logs; short authorities svc:port resolve in it through --destination-addr)")
	fs.StringVar(&cfg.Deployment, "deployment", "", "this workload's `deployment` (tap events and logs)")
	fs.StringVar(&cfg.Pod, "pod", "", "this workload's `pod` name (tap events and logs)")
	fs.StringVar(&cfg.Destinations, "destinations", "", "service discovery YAML `file`, re-read when it changes; without it every authority is dialled as written")
	fs.StringVar(&cfg.DestinationAddr, "destination-addr", "", "`host:port` of the discovery service (proxy destination): outbound authorities and original destinations it knows are balanced over their pods, with dst_* labels from the cluster (asked after --destinations); when unreachable, known ones keep their endpoints and new ones are dialled as written")
	cfg.OpaquePorts = DefaultOpaquePorts
	fs.Func("opaque-ports", "comma-separated `ports` proxied as TCP without protocol detection: a listener on one of them, or whose destination (--inbound-forward, a route's AUTHORITY, a redirected connection's original destination) has one; empty for none (default 25,587,3306,4444,5432,6379,9300,11211: SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch, Memcached)", func(s string) error {
		ports, err := parsePorts(s)
		cfg.OpaquePorts = ports
		return err
	})
	cfg.DetectTimeout, cfg.HeaderTimeout, cfg.ShutdownGrace = 10*time.Second, 30*time.Second, 10*time.Second
	fs.Var(durationValue{&cfg.DetectTimeout}, "detect-timeout", "how long (a `duration`) a client may stay silent before its connection is proxied as opaque TCP (server-speaks-first protocols)")
	fs.Var(durationValue{&cfg.HeaderTimeout}, "header-timeout", "how long (a `duration`) a client may take to send a request's head; a connection whose first line starts as HTTP and is unfinished then is answered 408, never proxied as TCP")
	fs.Func("admin-enforced-host", "`regex` matching in full (without the port) the host names, besides localhost and IP addresses, that admin requests but /live and /ready may carry in Host; by default none, so that no web page reaches /metrics, /tap or /log-level through DNS rebinding", func(s string) error {
		re, err := regexp.Compile("^(?:" + s + ")$")
		cfg.AdminHost = re
		return err
	})
	fs.IntVar(&cfg.MaxConnections, "max-connections", defaultMaxConnections(), "how many accepted connections (a `number`) each listener holds open at most; past it, new ones are closed at once and counted in tcp_refused_total{reason=\"max-connections\"}; 0 for no bound (default: a quarter of the open-file limit, at most 10000, so that a listener's connections and their upstream connections fit)")
	fs.IntVar(&cfg.MaxMetricsBytes, "max-metrics-bytes", metrics.DefaultExpositionBytes, "about how many `bytes` the HTTP series may take on /metrics, and again the TCP series; past it, new authorities are counted as authority=\"overflow\" (as past 2,000 series), so that clients sending many or long Host values cannot make /metrics huge; 0 for no bound but the series count")
	cfg.OpaqueIdleTimeout = time.Hour
	fs.Var(durationValue{&cfg.OpaqueIdleTimeout}, "opaque-idle-timeout", "an opaque TCP connection over which no byte went either way for this `duration` is closed; 0 for never")
	fs.StringVar(&cfg.TapToken, "tap-token", "", "bearer `token` that /tap clients must present; without one, only loopback clients may tap")
	fs.TextVar(&cfg.LogLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error (changeable at run time with PUT /log-level)")
	fs.StringVar(&cfg.IdentityAddr, "identity-addr", "", "`address` (host:port) of the mesh's certificate issuer (proxy identity); set, the proxy gets an identity and speaks mutual TLS with meshed peers")
	fs.StringVar(&cfg.IdentityTrustAnchors, "identity-trust-anchors", "", "PEM `file` of the mesh's trust anchors (one or two roots), which verify the issuer and every peer; required with --identity-addr")
	fs.StringVar(&cfg.IdentityTokenFile, "identity-token-file", "/var/run/secrets/tokens/meshscope-identity-token", "`file` holding the ServiceAccount token (audience identity.meshscope.io) the issuer reviews; read again at each renewal")
	fs.StringVar(&cfg.IdentityServerName, "identity-server-name", "", "the issuer's `identity`, checked when connecting to it (default meshscope-identity.meshscope.serviceaccount.identity.meshscope.cluster.local)")
	fs.StringVar(&cfg.TapClientIdentity, "tap-client-identity", meshid.Name(kube.Namespace, kube.Dashboard), "with --identity-addr, the `identity` that may tap over mutual TLS on the admin port (the dashboard's ServiceAccount; web install sets it for its namespace); a TLS client proving any other is refused and counted in tap_refused_total")
	fs.Var(durationValue{&cfg.ShutdownGrace}, "shutdown-grace", "on SIGTERM, how long (a `duration`) in-flight requests and connections may take to finish")
	// Only --help prints the usage; a mistake gets one line naming it.
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, usageOut)
			return cfg, err
		}
		return cfg, oneLine(err)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (all settings are --flags; see --help)", fs.Arg(0))
	}
	if err := flagenv.Apply(fs, envPrefix, getenv); err != nil {
		return cfg, err
	}
	return cfg, cfg.validate()
}

// defaultMaxConnections is --max-connections' default: a quarter of the open-file limit (which Go raises
// to its hard limit at start), at most 10,000. Each connection may hold two descriptors, its own and its
// upstream's, so one listener at its bound uses at most half of them.
func defaultMaxConnections() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur/4 >= 10000 {
		return 10000
	}
	return int(max(lim.Cur/4, 1))
}

// durationValue is a duration flag whose error says what is wrong with the value (flag's own says only
// "parse error").
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "time: "))
	}
	*v.d = d
	return nil
}

func (c Config) validate() error {
	type addr struct{ flag, value string }
	addrs := []addr{{"--inbound-listen", c.InboundListen}, {"--outbound-listen", c.OutboundListen}, {"--admin-listen", c.AdminListen}}
	for _, r := range c.OutboundRoutes {
		addrs = append(addrs, addr{"--outbound-route", r.Listen})
	}
	seen := map[string]string{}
	for _, a := range addrs {
		if a.value == "" && a.flag != "--admin-listen" {
			continue
		}
		if err := checkListenAddr(a.value); err != nil {
			return fmt.Errorf("%s %q: %v", a.flag, a.value, err)
		}
		if other, dup := seen[a.value]; dup && !strings.HasSuffix(a.value, ":0") {
			return fmt.Errorf("%s %q: same address as %s", a.flag, a.value, other)
		}
		seen[a.value] = a.flag
	}
	if c.InboundListen != "" && c.InboundForward != "" {
		if err := checkDialAddr(c.InboundForward); err != nil {
			return fmt.Errorf("--inbound-forward %q: %v", c.InboundForward, err)
		}
	}
	if c.IdentityAddr != "" {
		if err := checkDialAddr(c.IdentityAddr); err != nil {
			return fmt.Errorf("--identity-addr %q: %v", c.IdentityAddr, err)
		}
		if c.IdentityTrustAnchors == "" {
			return errors.New("--identity-trust-anchors is required with --identity-addr: the PEM file of the mesh's roots")
		}
		if _, _, err := meshid.ParseName(c.TapClientIdentity); err != nil {
			return fmt.Errorf("--tap-client-identity: %v", err)
		}
	}
	if c.DestinationAddr != "" {
		if err := checkDialAddr(c.DestinationAddr); err != nil {
			return fmt.Errorf("--destination-addr %q: %v", c.DestinationAddr, err)
		}
	}
	if c.DetectTimeout <= 0 {
		return fmt.Errorf("--detect-timeout %v: must be positive", c.DetectTimeout)
	}
	if c.HeaderTimeout <= 0 {
		return fmt.Errorf("--header-timeout %v: must be positive", c.HeaderTimeout)
	}
	if c.MaxMetricsBytes < 0 {
		return fmt.Errorf("--max-metrics-bytes %d: must not be negative", c.MaxMetricsBytes)
	}
	if c.MaxConnections < 0 {
		return fmt.Errorf("--max-connections %d: must not be negative", c.MaxConnections)
	}
	if c.OpaqueIdleTimeout < 0 {
		return fmt.Errorf("--opaque-idle-timeout %v: must not be negative", c.OpaqueIdleTimeout)
	}
	if c.ShutdownGrace < 0 {
		return fmt.Errorf("--shutdown-grace %v: must not be negative", c.ShutdownGrace)
	}
	return nil
}

func parseRoute(s string) (Route, error) {
	listen, authority, ok := strings.Cut(s, "=")
	if !ok {
		return Route{}, fmt.Errorf("%q: want LISTEN=AUTHORITY, e.g. 127.0.0.1:4150=voting.shop:8080", s)
	}
	if err := checkListenAddr(listen); err != nil {
		return Route{}, fmt.Errorf("%q: listen address: %v", s, err)
	}
	if err := checkDialAddr(authority); err != nil {
		return Route{}, fmt.Errorf("%q: authority: %v", s, err)
	}
	return Route{Listen: listen, Authority: authority}, nil
}

func parsePorts(s string) ([]int, error) {
	var ports []int
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %q is not a number in 1..65535", p)
		}
		ports = append(ports, n)
	}
	return ports, nil
}

// checkListenAddr accepts host:port with an optional host (all interfaces) and a port in 0..65535.
func checkListenAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("want host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number in 0..65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("host %q is not an IP address", host)
	}
	return nil
}

// checkDialAddr accepts host:port with a host and a port in 1..65535.
func checkDialAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("want host:port")
	}
	if host == "" {
		return errors.New("missing host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number in 1..65535", port)
	}
	return nil
}

func oneLine(err error) error {
	return errors.New(strings.Join(strings.Fields(err.Error()), " "))
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage: proxy [flags]

Meshscope's sidecar proxy. It carries HTTP/1.1, HTTP/2 (h2c), gRPC and opaque TCP for one workload, counts
every request with linkerd2-proxy's metric names, and streams live requests on /tap.

  inbound  --inbound-listen  -> --inbound-forward (the local app), or without it each connection's
           original destination (where it was going before proxy init's rules redirected it)
  outbound --outbound-listen -> the service named by each request's Host/:authority, balanced over the
           endpoints in --destinations, else those the discovery service (--destination-addr, proxy
           destination) knows for it; a redirected connection whose authority neither knows (and every
           opaque one) goes to its original destination, another is dialled as written
  routes   --outbound-route LISTEN=AUTHORITY -> AUTHORITY, for every connection
  admin    --admin-listen: /metrics /ready /live /log-level (GET shows, PUT changes: from loopback or with
           the tap token) /tap; Host must be localhost, an IP address or match --admin-enforced-host.
           With --identity-addr the same port also speaks mutual TLS, to --tap-client-identity only
           (the dashboard's tap); plain-text clients are served as without identity

A connection whose destination is the proxy's own listener is refused (proxy-loop, tcp_refused_total).
In a pod, run "proxy init" first (see "proxy init --help") and the proxy as its --proxy-uid (2102).

Every connection's protocol is detected from its first bytes (HTTP/2 preface, HTTP/1 request line, else
opaque TCP); a client silent for --detect-timeout is proxied as TCP. Bytes that start as an HTTP request but
are not a valid one (an HTTP/1.2 or non-ASCII request line, or one unfinished after --header-timeout) are
answered 400 or 408 and counted, never proxied as TCP, unless the port is in --opaque-ports.

With --identity-addr the proxy makes a key in memory, gets a certificate for its ServiceAccount from the
issuer (renewed at 70% of its life) and is ready only once it has one. Outbound connections to endpoints
with an identity (the destinations file's identity:) are mutual TLS 1.3, the server's identity checked;
inbound TLS for the proxy's own identity is terminated, the client's certificate checked, and its protocol
detected inside. Unmeshed peers stay plain text, labelled with the reason (no_tls_reason).

Every flag has an environment twin, MESHSCOPE_PROXY_<FLAG IN UPPER SNAKE CASE> (e.g.
MESHSCOPE_PROXY_INBOUND_FORWARD); a flag on the command line wins over its twin.

The proxy runs on one CPU while that is enough and uses every CPU it may (or its cgroup's limit) while
it is busy; GOMAXPROCS in the environment fixes the count instead (go_sched_gomaxprocs_threads on
/metrics shows it).

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprint(w, `
Example:
  proxy --inbound-forward 127.0.0.1:8080 --destinations dest.yaml --namespace shop --deployment web --pod web-0
`)
}
