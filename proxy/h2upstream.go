package main

import (
	"context"
	"crypto/tls"
	"net"

	"golang.org/x/net/http2"
)

// newH2Upstream returns the h2c (HTTP/2 prior knowledge) upstream client, multiplexing every request to
// an endpoint over few connections. It is x/net's http2.Transport rather than net/http's Transport with
// UnencryptedHTTP2: the latter finds each request's connection through its HTTP/1 pool (a wanted
// connection queued and delivered per request), which cost about a sixth of the proxy's h2c throughput.
func newH2Upstream(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http2.Transport {
	return &http2.Transport{
		AllowHTTP: true, // the "TLS" dial below is a plain connection: h2c
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dial(ctx, network, addr)
		},
		// The proxy passes bodies through as they are: never ask for gzip and decode it on the way.
		DisableCompression: true,
		MaxHeaderListSize:  upstreamMaxHeaderBytes,
		IdleConnTimeout:    upstreamIdleTimeout,
	}
}
