// Command load is the benchmark's constant-rate load generator (wrk2 is not in Debian): it sends HTTP/1.1
// keep-alive requests at a fixed rate, open loop, and reports latency percentiles measured from each
// request's scheduled time, so that a stall delays the requests queued behind it in the figures too
// (no coordinated omission). With --idle it instead opens that many keep-alive connections, sends one
// request on each, and holds them idle until interrupted, for measuring a proxy's memory per connection.
//
// Its output is one line of key=value pairs for dev/bench/proxy.sh.
package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"
)

type config struct {
	url      string
	rate     int
	duration time.Duration
	warmup   time.Duration
	conns    int
	idle     int
	hold     time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.url, "url", "", "`URL` to request (http only)")
	flag.IntVar(&cfg.rate, "rate", 2000, "requests per `second`")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "measured `duration`")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "`duration` at the same rate before measuring")
	flag.IntVar(&cfg.conns, "conns", 32, "most keep-alive `connections` (and requests in flight)")
	flag.IntVar(&cfg.idle, "idle", 0, "instead of a rate, hold this many idle keep-alive `connections`")
	flag.DurationVar(&cfg.hold, "hold", time.Minute, "with --idle, the longest `duration` to hold them")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if cfg.idle > 0 {
		err = holdIdle(ctx, cfg, os.Stdout)
	} else {
		err = runRate(ctx, cfg, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func runRate(ctx context.Context, cfg config, out io.Writer) error {
	if cfg.url == "" || cfg.rate <= 0 || cfg.duration <= 0 || cfg.conns <= 0 {
		return errors.New("want --url, and --rate, --duration and --conns above zero")
	}
	interval := time.Second / time.Duration(cfg.rate)
	total := int((cfg.warmup + cfg.duration) / interval)
	client := &http.Client{
		Transport: &http.Transport{
			MaxConnsPerHost:     cfg.conns,
			MaxIdleConnsPerHost: cfg.conns,
			DisableCompression:  true,
		},
		Timeout: 5 * time.Second,
	}
	defer client.CloseIdleConnections()

	start := time.Now().Add(10 * time.Millisecond)
	measureFrom := start.Add(cfg.warmup)
	due := make(chan time.Time, total)
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, total)
		failures  int
		firstErr  error
		wg        sync.WaitGroup
	)
	for range cfg.conns {
		wg.Go(func() {
			for at := range due {
				err := get(ctx, client, cfg.url)
				lat := time.Since(at)
				if at.Before(measureFrom) {
					continue
				}
				mu.Lock()
				if err != nil {
					failures++
					firstErr = cmp.Or(firstErr, err)
				} else {
					latencies = append(latencies, lat)
				}
				mu.Unlock()
			}
		})
	}
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		due <- at
	}
	close(due)
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	elapsed := time.Since(measureFrom)
	slices.Sort(latencies)
	n := len(latencies) + failures
	fmt.Fprintf(out, "requests=%d errors=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
		n, failures, float64(n)/elapsed.Seconds(),
		ms(percentile(latencies, 0.50)), ms(percentile(latencies, 0.99)), ms(percentile(latencies, 1)))
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "load: first error:", firstErr)
	}
	return nil
}

func get(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	return drainOK(resp)
}

// holdIdle opens cfg.idle connections, completes one request on each, reports, and holds them open.
func holdIdle(ctx context.Context, cfg config, out io.Writer) error {
	u, err := url.Parse(cfg.url)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("--url %q: want http://host:port/path", cfg.url)
	}
	request := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host)
	conns := make([]net.Conn, 0, cfg.idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dialer := net.Dialer{Timeout: 5 * time.Second}
	for range cfg.idle {
		c, err := dialer.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return fmt.Errorf("connection %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
		if err := roundTrip(c, request); err != nil {
			return fmt.Errorf("connection %d: %w", len(conns), err)
		}
	}
	fmt.Fprintf(out, "ready conns=%d\n", len(conns))
	if f, ok := out.(*os.File); ok {
		f.Sync()
	}
	select {
	case <-ctx.Done():
	case <-time.After(cfg.hold):
	}
	return nil
}

func roundTrip(c net.Conn, request string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, request); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	return drainOK(resp)
}

// drainOK reads and closes resp's body, so its connection can carry the next
// request, and wants status 200.
func drainOK(resp *http.Response) error {
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
