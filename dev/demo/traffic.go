package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// call is one kind of request the traffic generator sends, with its share.
type call struct {
	weight int
	method string
	path   func() string
	body   func() string
}

// shopperCalls is what shoppers do: mostly browse, sometimes fill a cart,
// now and then check out. The web success rate the dashboard shows follows
// from these shares (see the demo test).
func shopperCalls() []call {
	product := func() string { return fmt.Sprintf("/products/p%03d", 1+rand.IntN(10)) }
	return []call{
		{weight: 30, method: http.MethodGet, path: func() string { return fmt.Sprintf("/?page=%d", rand.IntN(2)) }},
		{weight: 40, method: http.MethodGet, path: product},
		{weight: 20, method: http.MethodPost, path: func() string { return "/cart/items" },
			body: func() string {
				return fmt.Sprintf(`{"product_id":"p%03d","quantity":%d}`, 1+rand.IntN(10), 1+rand.IntN(3))
			}},
		{weight: 10, method: http.MethodPost, path: func() string { return "/checkout" },
			body: func() string {
				return fmt.Sprintf(`{"cart_id":"c%d","total_cents":%d}`, rand.IntN(1_000_000), 500+rand.IntN(10_000))
			}},
	}
}

// maxInFlight caps concurrent requests so a stalled mesh cannot make the
// generator pile up goroutines.
const maxInFlight = 256

// runTraffic sends rps requests per second to web's pods (their proxies'
// inbound listeners, as an ingress would), round robin, until ctx ends.
func runTraffic(ctx context.Context, m Mesh, rps float64, log *slog.Logger) error {
	var targets []string
	for _, p := range m.PodsOf("web") {
		targets = append(targets, p.Inbound)
	}
	host := m.service("web").Authority
	calls := shopperCalls()
	total := 0
	for _, c := range calls {
		total += c.weight
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()

	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, maxInFlight)
	tick := time.NewTicker(time.Duration(float64(time.Second) / rps))
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			log.Warn("traffic: too many requests in flight, skipping one")
			continue
		}
		pick := rand.IntN(total)
		c := calls[0]
		for _, c = range calls {
			if pick < c.weight {
				break
			}
			pick -= c.weight
		}
		target := targets[n%len(targets)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			send(ctx, client, target, host, c, log)
		}()
	}
}

func send(ctx context.Context, client *http.Client, target, host string, c call, log *slog.Logger) {
	var body io.Reader
	if c.body != nil {
		body = strings.NewReader(c.body())
	}
	req, err := http.NewRequestWithContext(ctx, c.method, "http://"+target+c.path(), body)
	if err != nil {
		log.Error("traffic: build request", "err", err)
		return
	}
	req.Host = host
	req.Header.Set("User-Agent", "meshscope-demo-shopper/1.0")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			log.Debug("traffic: request failed", "err", err)
		}
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}
