// Command reverseproxy is the benchmark's baseline: net/http/httputil.ReverseProxy in front of one
// upstream, with nothing added (no metrics, no balancing, no protocol detection). It serves HTTP/1.1 and
// HTTP/2 cleartext (prior knowledge) and reaches the upstream over HTTP/1.1 keep-alive. The only setting
// changed from the defaults is the idle connection pool, sized for the benchmark's concurrency, so that
// the baseline is not slowed by reconnecting (the default keeps 2 idle connections per host).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshscope/meshscope/dev/bench/benchserver"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "`address` to serve on")
	upstream := flag.String("upstream", "127.0.0.1:8080", "upstream `address` (host:port)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *upstream); err != nil {
		fmt.Fprintln(os.Stderr, "reverseproxy:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, listen, upstream string) error {
	rp, err := newProxy(upstream)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	return benchserver.Serve(ctx, ln, rp)
}

func newProxy(upstream string) (*httputil.ReverseProxy, error) {
	target, err := url.Parse("http://" + upstream)
	if err != nil || target.Host == "" || target.Path != "" {
		return nil, fmt.Errorf("--upstream %q: want host:port", upstream)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 1024
	transport.MaxIdleConns = 1024
	return &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: transport,
	}, nil
}
