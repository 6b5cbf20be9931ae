package balance_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
)

// TestTwoIdenticalEndpointsShareLowConcurrencyTraffic is the demo's catalog: two identical pods, one
// request at a time at 20 requests/s, latencies log-normal with a median of 8 ms and a 99th percentile of
// 40 ms. In every minute of 3, over 40 runs, the split stays within 35/65. Time is the fake clock's, the
// latencies and Pick's draws come from seeded sources: every run is the same every time.
func TestTwoIdenticalEndpointsShareLowConcurrencyTraffic(t *testing.T) {
	worst := 0.0
	for seed := range uint64(40) {
		clk := newFakeClock()
		picks := rand.New(rand.NewPCG(seed, 1))
		r, err := balance.Load(writeFile(t, t.TempDir(), serviceFile("10.0.0.1:80", "10.0.0.2:80")), nil,
			balance.WithClock(clk.Now), balance.WithRandom(picks.IntN))
		if err != nil {
			t.Fatal(err)
		}
		d := r.Lookup("web.shop")
		latencies := rand.New(rand.NewPCG(seed, 2))
		sigma := math.Log(40.0/8.0) / 2.326 // p99 over p50 of a log-normal: e^(2.326 sigma)
		const gap = 50 * time.Millisecond   // 20 requests/s
		for minute := range 3 {
			counts := map[string]int{}
			for range 60 * 20 {
				ep, err := d.Pick()
				if err != nil {
					t.Fatal(err)
				}
				counts[ep.Addr]++
				done := ep.Begin()
				l := time.Duration(8 * math.Exp(sigma*latencies.NormFloat64()) * float64(time.Millisecond))
				clk.Advance(l)
				done(nil)
				clk.Advance(max(gap-l, 0))
			}
			share := float64(counts["10.0.0.1:80"]) / (60 * 20)
			worst = max(worst, math.Abs(share-0.5))
			if share < 0.35 || share > 0.65 {
				t.Errorf("run %d, minute %d: split %v, want within 35/65", seed, minute, counts)
			}
		}
	}
	t.Logf("largest deviation from 50/50 in a minute: %.1f points", 100*worst)
}
