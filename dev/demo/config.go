// Package demo is Meshscope's demo shop: the services (HTTP/1.1, gRPC, HTTP/2
// cleartext and a server-speaks-first TCP store), the traffic generator, and
// the mesh layout that puts each service instance behind its own proxy.
package demo

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Behaviour is how one service misbehaves: a share of failed requests and a
// log-normal latency distribution given by its median and 99th percentile.
type Behaviour struct {
	// FailureRate is the share of requests the service fails itself, 0..1.
	FailureRate float64
	// P50 and P99 shape the service's own latency; zero P50 means no delay,
	// P99 below P50 means a constant P50.
	P50, P99 time.Duration
}

// Latency draws one delay from the log-normal distribution whose median is
// P50 and whose 99th percentile is P99.
func (b Behaviour) Latency() time.Duration {
	if b.P50 <= 0 {
		return 0
	}
	if b.P99 <= b.P50 {
		return b.P50
	}
	const z99 = 2.326 // the standard normal's 99th percentile
	sigma := math.Log(float64(b.P99)/float64(b.P50)) / z99
	return time.Duration(float64(b.P50) * math.Exp(sigma*rand.NormFloat64()))
}

// Fails rolls the dice for one request.
func (b Behaviour) Fails() bool { return rand.Float64() < b.FailureRate }

func (b Behaviour) validate(name string) error {
	if b.FailureRate < 0 || b.FailureRate > 1 {
		return fmt.Errorf("%s failure rate %v: want a share between 0 and 1", name, b.FailureRate)
	}
	if b.P50 < 0 || b.P99 < 0 {
		return fmt.Errorf("%s latency: must not be negative", name)
	}
	return nil
}

// Config is the demo's story: each service's behaviour and the load.
type Config struct {
	Web, Catalog, Checkout, Payments, Ledger Behaviour
	// RPS is the traffic generator's steady request rate to web.
	RPS float64
}

// DefaultConfig tells the story the dashboard should show: catalog healthy
// and fast, checkout flaky (gRPC errors on HTTP 200), payments slow, web
// mostly fine but hurt by checkout.
func DefaultConfig() Config {
	return Config{
		Web:      Behaviour{FailureRate: 0.01, P50: 3 * time.Millisecond, P99: 15 * time.Millisecond},
		Catalog:  Behaviour{FailureRate: 0, P50: 8 * time.Millisecond, P99: 30 * time.Millisecond},
		Checkout: Behaviour{FailureRate: 0.15, P50: 25 * time.Millisecond, P99: 120 * time.Millisecond},
		Payments: Behaviour{FailureRate: 0.02, P50: 250 * time.Millisecond, P99: 900 * time.Millisecond},
		Ledger:   Behaviour{P50: 2 * time.Millisecond, P99: 10 * time.Millisecond},
		RPS:      20,
	}
}

// RegisterFlags adds one flag per knob, defaulting to c's values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	for _, s := range []struct {
		name string
		b    *Behaviour
		what string
	}{
		{"web", &c.Web, "HTTP/1.1 500"},
		{"catalog", &c.Catalog, "gRPC INTERNAL"},
		{"checkout", &c.Checkout, "gRPC UNAVAILABLE on HTTP 200"},
		{"payments", &c.Payments, "HTTP/2 503"},
		{"ledger", &c.Ledger, "an ERR reply over opaque TCP"},
	} {
		fs.Float64Var(&s.b.FailureRate, s.name+"-failure-rate", s.b.FailureRate, "share 0..1 of requests "+s.name+" fails on its own ("+s.what+")")
		fs.DurationVar(&s.b.P50, s.name+"-p50", s.b.P50, "median of "+s.name+"'s own latency")
		fs.DurationVar(&s.b.P99, s.name+"-p99", s.b.P99, "99th percentile of "+s.name+"'s own latency")
	}
	fs.Float64Var(&c.RPS, "rps", c.RPS, "requests per second the traffic generator sends to web")
}

// Validate reports the first knob out of range.
func (c Config) Validate() error {
	for _, s := range []struct {
		name string
		b    Behaviour
	}{{"web", c.Web}, {"catalog", c.Catalog}, {"checkout", c.Checkout}, {"payments", c.Payments}, {"ledger", c.Ledger}} {
		if err := s.b.validate(s.name); err != nil {
			return err
		}
	}
	if c.RPS <= 0 || c.RPS > 10000 {
		return fmt.Errorf("rps %v: want more than 0 and at most 10000", c.RPS)
	}
	return nil
}
