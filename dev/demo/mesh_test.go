package demo

import (
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
)

// ephemeralRange is the kernel's range of ports it picks itself.
func ephemeralRange(t *testing.T) (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral port range to read: %v", err)
	}
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		t.Fatalf("ip_local_port_range %q: %v", b, err)
	}
	return lo, hi
}

// A closed probe's port is free again at once; over thousands of draws (a
// demo test run asks for a few dozen, many times over) a repeat is near
// certain, so this fails for an allocator that forgets what it handed out.
// Every port is outside the kernel's ephemeral range, where no other
// process's connection can take it before the demo binds it.
func TestFreePortsNeverHandsOutAPortTwice(t *testing.T) {
	lo, hi := ephemeralRange(t)
	free := FreePorts("127.0.0.1")
	seen := map[int]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 500 {
				p, err := free()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[p] {
					t.Errorf("port %d handed out twice", p)
				}
				if p >= lo && p <= hi {
					t.Errorf("port %d is in the ephemeral range %d-%d", p, lo, hi)
				}
				seen[p] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestLayoutOnFreePortsUsesEveryPortOnce(t *testing.T) {
	free := FreePorts("127.0.0.1")
	owner := map[string]string{}
	for range 20 {
		m, err := Layout("127.0.0.1", free)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range m.Pods {
			addrs := map[string]string{"app": p.App, "inbound": p.Inbound, "outbound": p.Outbound, "admin": p.Admin}
			for auth, r := range p.Routes {
				addrs["route "+auth] = r
			}
			for what, a := range addrs {
				if _, _, err := net.SplitHostPort(a); err != nil {
					t.Fatalf("%s %s: %v", p.Name, what, err)
				}
				if o, ok := owner[a]; ok {
					t.Errorf("%s is both %s and %s %s", a, o, p.Name, what)
				}
				owner[a] = p.Name + " " + what
			}
		}
	}
}
