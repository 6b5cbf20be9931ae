package balance_test

import (
	"fmt"
	"testing"

	"github.com/meshscope/meshscope/proxy/balance"
)

func benchDestination(b *testing.B, n int) *balance.Destination {
	b.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
	}
	r, err := balance.Load(writeFile(b, b.TempDir(), serviceFile(addrs...)), nil)
	if err != nil {
		b.Fatal(err)
	}
	return r.Lookup("web.shop:80")
}

// BenchmarkPick measures the hot path of every outbound request: Pick, Begin and done, from parallel
// goroutines sharing one destination.
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{1, 3, 20} {
		b.Run(fmt.Sprintf("%d endpoints", n), func(b *testing.B) {
			d := benchDestination(b, n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					ep, err := d.Pick()
					if err != nil {
						b.Error(err)
						return
					}
					ep.Begin()(nil)
				}
			})
		})
	}
}

// BenchmarkPickOnly is Pick alone: the balancer's choice, which must not allocate.
func BenchmarkPickOnly(b *testing.B) {
	d := benchDestination(b, 3)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Pick(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	r, err := balance.Load(writeFile(b, b.TempDir(), serviceFile("10.0.0.1:80")), nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, authority := range []string{"web.shop:80", "web.shop", "other.shop:8080"} {
		b.Run(authority, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.Lookup(authority)
			}
		})
	}
}
