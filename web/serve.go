package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
)

// config is the dashboard's configuration, parsed from flags and their
// MESHSCOPE_WEB_* environment twins (flags win).
type config struct {
	// Listen is the dashboard's address; empty means 127.0.0.1:8084.
	Listen string
	// PrometheusURL is the metrics backend (Prometheus HTTP API); empty means
	// http://127.0.0.1:9090.
	PrometheusURL string
	// GrafanaURL, when set, adds a Grafana link to every resource.
	GrafanaURL string
	// EnforcedHost is the regex the Host header must match; nil means
	// localhost, 127.0.0.1 and [::1] with any port.
	EnforcedHost *regexp.Regexp
	// BasePath serves the dashboard under a prefix, e.g. "/meshscope"; empty
	// means the root.
	BasePath string
	// TapToken is sent as a bearer token to the proxies' tap endpoints in TapTokenNetworks.
	TapToken string
	// TapTokenNetworks are where TapToken may be sent; nil means loopback only (api.DefaultTokenNetworks).
	TapTokenNetworks []netip.Prefix
	// Window is the default rate window of the golden metrics; zero means 1m.
	Window time.Duration
	// QueryTimeout bounds every Prometheus call; zero means 10s.
	QueryTimeout time.Duration
	// Refresh is how often pages refresh their data; zero means 5s.
	Refresh time.Duration
	// SLO is the success rate under which a workload is unhealthy (its
	// "since when" starts); zero means 0.99.
	SLO float64
	// ShutdownGrace bounds how long open requests may finish on shutdown;
	// zero means 10s.
	ShutdownGrace time.Duration
	// TapTargets is how the live tap finds proxies: "kubernetes" (the API
	// server's meshed pods), "prometheus" (the metrics backend's targets) or
	// "auto" (zero: kubernetes with Kubeconfig or inside a pod).
	TapTargets string
	// Kubeconfig is the API server's kubeconfig file for TapTargets
	// kubernetes; empty means the pod's in-cluster configuration.
	Kubeconfig string

	// IdentityAddr is the mesh's certificate issuer (proxy identity); set,
	// the dashboard gets its workload identity and taps every proxy over
	// mutual TLS, checking the proxy's identity, instead of sending TapToken.
	IdentityAddr string
	// IdentityTrustAnchors is the PEM file of the mesh's roots; required
	// with IdentityAddr.
	IdentityTrustAnchors string
	// IdentityTokenFile holds the dashboard's ServiceAccount token for the
	// issuer.
	IdentityTokenFile string
	// IdentityServerName is the issuer's identity; empty means
	// meshid.IssuerName.
	IdentityServerName string
}

// defaultHost allows loopback names only: a page served to a browser must not
// answer to a name an attacker controls (DNS rebinding).
var defaultHost = regexp.MustCompile(`^(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$`)

func (c config) listen() string {
	if c.Listen == "" {
		return "127.0.0.1:8084"
	}
	return c.Listen
}

func (c config) prometheusURL() string {
	if c.PrometheusURL == "" {
		return "http://127.0.0.1:9090"
	}
	return c.PrometheusURL
}

func (c config) enforcedHost() *regexp.Regexp {
	if c.EnforcedHost == nil {
		return defaultHost
	}
	return c.EnforcedHost
}

func (c config) window() time.Duration {
	if c.Window <= 0 {
		return time.Minute
	}
	return c.Window
}

func (c config) slo() float64 {
	if c.SLO <= 0 {
		return 0.99
	}
	return c.SLO
}

func (c config) queryTimeout() time.Duration {
	if c.QueryTimeout <= 0 {
		return 10 * time.Second
	}
	return c.QueryTimeout
}

func (c config) refresh() time.Duration {
	if c.Refresh <= 0 {
		return 5 * time.Second
	}
	return c.Refresh
}

func (c config) shutdownGrace() time.Duration {
	if c.ShutdownGrace <= 0 {
		return 10 * time.Second
	}
	return c.ShutdownGrace
}

// parseNetworks reads a comma-separated list of CIDRs.
func parseNetworks(v string) ([]netip.Prefix, error) {
	nets := []netip.Prefix{}
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		n, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", part)
		}
		nets = append(nets, n.Masked())
	}
	return nets, nil
}

// backendFlags registers the flags the server and the terminal twins share.
func backendFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.PrometheusURL, "prometheus-url", "http://127.0.0.1:9090", "Prometheus HTTP API `URL` the golden metrics come from")
	fs.StringVar(&c.TapToken, "tap-token", "", "bearer `token` for the proxies' tap endpoints")
	fs.Func("tap-token-networks", "comma-separated `CIDRs` of the proxy addresses the tap token may be sent to, in clear (a proxy elsewhere is not tapped); default 127.0.0.0/8,::1/128; in a cluster, the pod network, e.g. 10.0.0.0/8", func(v string) error {
		nets, err := parseNetworks(v)
		c.TapTokenNetworks = nets
		return err
	})
	c.Window = time.Minute
	fs.Var(windowFlag{&c.Window}, "window", "default rate `window` of the golden metrics: 10s, 1m, 5m, 15m or 1h")
	fs.DurationVar(&c.QueryTimeout, "query-timeout", 10*time.Second, "timeout of every Prometheus call")
}

// tapFlags registers how the dashboard's live tap and the terminal's tap and
// top find the proxies.
func tapFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.TapTargets, "tap-targets", "auto", "how tap finds the proxies: `kubernetes` (pods with a meshscope-proxy container, from the API server; needs list on pods), prometheus (the backend's scrape targets, which Mimir, Cortex or Thanos Receive do not serve) or auto (kubernetes with --kubeconfig or inside a pod, else prometheus)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig `file` of the API server tap asks (default: the pod's in-cluster configuration)")
}

// identityFlags registers the dashboard's workload identity, which taps the
// proxies over mutual TLS.
func identityFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.IdentityAddr, "identity-addr", "", "`address` (host:port) of the mesh's certificate issuer (proxy identity); set, the dashboard gets its ServiceAccount's identity and taps every proxy over mutual TLS, checking that the proxy proves its pod's ServiceAccount, and never sends --tap-token (web install sets it)")
	fs.StringVar(&c.IdentityTrustAnchors, "identity-trust-anchors", "", "PEM `file` of the mesh's trust anchors, which verify the issuer and the proxies; required with --identity-addr")
	fs.StringVar(&c.IdentityTokenFile, "identity-token-file", "/var/run/secrets/tokens/meshscope-identity-token", "`file` holding the dashboard's ServiceAccount token (audience identity.meshscope.io) the issuer reviews; read again at each renewal")
	fs.StringVar(&c.IdentityServerName, "identity-server-name", "", "the issuer's `identity`, checked when connecting to it (default "+meshid.IssuerName+")")
}

func checkTapTargets(s string) error {
	switch s {
	case "", "auto", "kubernetes", "prometheus":
		return nil
	}
	return fmt.Errorf("--tap-targets %q: want kubernetes, prometheus or auto", s)
}

// proxyFinder returns how the live tap finds proxies: a KubeProxies, or nil
// for the metrics backend's targets. getenv tells whether the dashboard runs in
// a pod (KUBERNETES_SERVICE_HOST, set in every container).
func (c config) proxyFinder(getenv func(string) string) (api.ProxyFinder, error) {
	if err := checkTapTargets(c.TapTargets); err != nil {
		return nil, usageError{err}
	}
	switch c.TapTargets {
	case "prometheus":
		return nil, nil
	case "", "auto":
		if c.Kubeconfig == "" && getenv("KUBERNETES_SERVICE_HOST") == "" {
			return nil, nil
		}
	}
	client, _, err := kube.Client(c.Kubeconfig, "meshscope-web")
	if err != nil {
		return nil, fmt.Errorf("--tap-targets kubernetes: %w", err)
	}
	return api.KubeProxies{Client: client, Timeout: c.queryTimeout()}, nil
}

// parseFlags fills fs from args, then from MESHSCOPE_WEB_<FLAG> environment
// variables for the flags not given on the command line.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return applyEnv(fs, getenv)
}

// parseInterspersed parses flags before and after the positional arguments
// (`web top deploy/web -n shop`), returning the positional ones, then fills
// the flags not given from their MESHSCOPE_WEB_* environment twins.
func parseInterspersed(fs *flag.FlagSet, args []string, getenv func(string) string) ([]string, error) {
	var pos []string
	for {
		if err := parseArgs(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, applyEnv(fs, getenv)
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// parseArgs parses the command line; its errors are usage errors, said once
// by the caller in one line: the flag package's own copy of the error and
// the usage after it are kept for --help.
func parseArgs(fs *flag.FlagSet, args []string) error {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return err
	case err != nil:
		return usageError{fmt.Errorf("%w (see --help)", err)}
	}
	return nil
}

// windowFlag is a rate window, one of those the pages offer.
type windowFlag struct{ d *time.Duration }

func (f windowFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f windowFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if _, ok := windowNames[d]; err != nil || !ok {
		return errors.New("want one of 10s, 1m, 5m, 15m, 1h")
	}
	*f.d = d
	return nil
}

// applyEnv sets the flags of fs not given on the command line from their
// MESHSCOPE_WEB_<FLAG> environment twins.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "MESHSCOPE_WEB_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" {
			if e := f.Value.Set(v); e != nil {
				err = usageError{fmt.Errorf("%s=%q: %w", env, v, e)}
			}
		}
	})
	return err
}

// regexpFlag is a flag.Value holding a compiled, whole-string-anchored regex.
type regexpFlag struct{ re **regexp.Regexp }

func (f regexpFlag) String() string {
	if f.re == nil || *f.re == nil {
		return ""
	}
	return (*f.re).String()
}

func (f regexpFlag) Set(s string) error {
	if _, err := regexp.Compile(s); err != nil {
		return err
	}
	// Anchor so that "example.com" cannot be satisfied by "example.com.evil.net".
	re, err := regexp.Compile("^(?:" + s + ")$")
	if err != nil {
		return err
	}
	*f.re = re
	return nil
}

func serveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: web [serve] [flags]

Serves the Meshscope dashboard: golden metrics (success rate, requests per
second, latency percentiles) per namespace, deployment, pod and edge, read
from Prometheus, and the live tap. Every flag has an environment twin
MESHSCOPE_WEB_<FLAG> (e.g. MESHSCOPE_WEB_PROMETHEUS_URL); flags win.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8084", "`address` to serve the dashboard on")
	fs.StringVar(&cfg.GrafanaURL, "grafana-url", "", "Grafana base `URL`; when set every resource links to its Grafana dashboard")
	fs.Var(regexpFlag{&cfg.EnforcedHost}, "enforced-host", "`regex` the request's Host header must match in full (default: localhost, 127.0.0.1, [::1], any port)")
	fs.StringVar(&cfg.BasePath, "base-path", "", "URL `prefix` to serve under, e.g. /meshscope behind a reverse proxy")
	fs.DurationVar(&cfg.Refresh, "refresh", 5*time.Second, "how often pages refresh their data")
	fs.Float64Var(&cfg.SLO, "slo", 0.99, "success `rate` (0 to 1) under which a workload is unhealthy: the first screen says since when it has been under it")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 10*time.Second, "how long open requests may finish on shutdown")
	backendFlags(fs, &cfg)
	tapFlags(fs, &cfg)
	identityFlags(fs, &cfg)
	if err := parseFlags(fs, args, os.Getenv); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return usageError{err}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	return run(ctx, cfg, log, func(addr net.Addr) {
		fmt.Fprintf(stdout, "meshscope dashboard on http://%s%s/\n", addr, cfg.BasePath)
	})
}

// validate reports the first configuration error in user terms.
func (c *config) validate() error {
	if c.BasePath != "" {
		if !strings.HasPrefix(c.BasePath, "/") || strings.HasSuffix(c.BasePath, "/") || strings.ContainsAny(c.BasePath, "?#%") {
			return fmt.Errorf("--base-path %q: want a path like /meshscope (leading slash, no trailing slash)", c.BasePath)
		}
	}
	for name, raw := range map[string]string{"--prometheus-url": c.PrometheusURL, "--grafana-url": c.GrafanaURL} {
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s %q: want an http(s) URL", name, raw)
		}
	}
	if c.SLO < 0 || c.SLO >= 1 {
		return fmt.Errorf("--slo %v: want a success rate above 0 and below 1, e.g. 0.99", c.SLO)
	}
	if err := checkTapTargets(c.TapTargets); err != nil {
		return err
	}
	if c.IdentityAddr != "" {
		if _, _, err := net.SplitHostPort(c.IdentityAddr); err != nil {
			return fmt.Errorf("--identity-addr %q: want host:port", c.IdentityAddr)
		}
		if c.IdentityTrustAnchors == "" {
			return errors.New("--identity-trust-anchors is required with --identity-addr: the PEM file of the mesh's roots")
		}
	}
	if _, ok := windowNames[c.window()]; !ok {
		return fmt.Errorf("--window %v: want one of 10s, 1m, 5m, 15m, 1h", c.Window)
	}
	return nil
}

// recordedCheckEvery is how often the dashboard asks the backend which
// recorded series of the recording rules it has: a few tiny queries, so that
// pages switch to them soon after the rules' first evaluations.
const recordedCheckEvery = 30 * time.Second

// run serves the dashboard until ctx ends, then shuts down gracefully.
// ready, when not nil, is called with the bound address once listening.
func run(ctx context.Context, cfg config, log *slog.Logger, ready func(net.Addr)) error {
	s, err := newServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen())
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// Pages answer within the query timeout; the websocket of the live tap
		// clears its own deadlines.
		WriteTimeout: cfg.queryTimeout() + 20*time.Second,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if ready != nil {
		ready(ln.Addr())
	}
	log.Info("serving dashboard", "addr", ln.Addr().String(), "prometheus", cfg.prometheusURL(), "base_path", cfg.BasePath)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go s.prom.WatchRecorded(watchCtx, slices.Sorted(maps.Keys(windowNames)), recordedCheckEvery, log)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace())
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	// The live websockets saw ctx end too and are closing with "going away";
	// let their handshakes finish within the same grace.
	socketsClosed := make(chan struct{})
	go func() { s.hijacked.Wait(); close(socketsClosed) }()
	select {
	case <-socketsClosed:
	case <-shutdownCtx.Done():
		log.Warn("live sockets still open after the shutdown grace")
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
