package destination

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"

	"github.com/meshscope/meshscope/api/kube"
)

// Config is `proxy destination`'s command line.
type Config struct {
	// Listen is where the service accepts proxies' streams.
	Listen string
	// Kubeconfig is the kubeconfig file; empty means the in-cluster configuration.
	Kubeconfig string
	// ClusterDomain, TrustDomain: see Options.
	ClusterDomain, TrustDomain string
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
}

const usage = `Usage: proxy destination [flags]

The discovery service: it watches the Kubernetes API (EndpointSlices, Services, Pods, ReplicaSets) once
for the whole cluster and streams to every proxy started with --destination-addr the endpoints of the
authorities it asks about: svc.ns.svc.cluster.local:port, svc.ns:port, svc:port (the proxy's own
namespace), pod-hostname.svc.ns.svc.cluster.local:port (one pod of a headless Service), a Service's
cluster IP:port or a pod IP:port. Each endpoint carries its namespace, pod, serviceaccount and workload
(deployment, statefulset or daemonset) and hints: opaque port, meshed, expected identity.

Its RBAC needs only get, list and watch on services, endpointslices, pods and replicasets.

Endpoints:
  GET /v1/endpoints?authority=A&namespace=N   newline-delimited JSON, one whole set per change (HTTP/2 cleartext)
  GET /ready                                  200 once the first lists from the API server are in
  GET /live                                   200 while the process runs

Flags:
`

// ParseFlags reads `proxy destination`'s command line. Its error is flag.ErrHelp after printing usage
// to out, or one line naming the problem.
func ParseFlags(args []string, out io.Writer) (Config, error) {
	cfg := Config{}
	fs := flag.NewFlagSet("proxy destination", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.Listen, "listen", "0.0.0.0:8086", "`address` proxies connect to")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig `file`; empty means the in-cluster configuration of the pod's ServiceAccount")
	fs.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS `domain`")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "the identities' trust `domain`: <sa>.<ns>.serviceaccount.identity.meshscope.<domain>")
	fs.TextVar(&cfg.LogLevel, "log-level", slog.LevelInfo, "minimum `level` logged: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, usage)
			fs.SetOutput(out)
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return cfg, fmt.Errorf("--listen %q: want host:port", cfg.Listen)
	}
	return cfg, nil
}

// Main runs the discovery service of cfg until ctx ends, logging to logOut.
func Main(ctx context.Context, cfg Config, logOut io.Writer) error {
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// client-go logs through klog: route it to the same place, at its own verbosity.
	klog.SetSlogLogger(log.With("from", "client-go"))
	client, restCfg, err := kube.Client(cfg.Kubeconfig, "meshscope-destination")
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	srv, err := NewServer(client, Options{ClusterDomain: cfg.ClusterDomain, TrustDomain: cfg.TrustDomain, Log: log, Dynamic: dyn})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	hs := NewHTTPServer(srv.Handler(), log)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() {
		runErr = srv.Run(runCtx)
		stop()
	})
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("destination listening", "addr", ln.Addr().String(), "kubeconfig", cfg.Kubeconfig)
	select {
	case <-runCtx.Done():
	case err := <-serveErr:
		stop()
		wg.Wait()
		return fmt.Errorf("serve: %w", err)
	}
	// Run's end closes the open streams; then Shutdown has only idle connections left to close.
	wg.Wait()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutCtx); err != nil {
		hs.Close()
	}
	log.Info("destination stopped")
	return runErr
}

// NewHTTPServer returns the http.Server of the service: HTTP/1.1 (for curl) and HTTP/2 cleartext (for
// proxies, many streams on one connection), with pings that find dead peers. It has no WriteTimeout,
// which would end every long-lived stream; each write has its own deadline instead. log may be nil.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 10_000,
			SendPingTimeout:      30 * time.Second,
			PingTimeout:          15 * time.Second,
		},
	}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	return hs
}
