package destination_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
	"github.com/meshscope/meshscope/proxy/destination"
)

// syncBuffer is a log destination safe for the client's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls f until it is true, failing after a generous hang guard.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !f(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

func pick(d *balance.Destination) string {
	if d == nil {
		return "<nil>"
	}
	ep, err := d.Pick()
	if err != nil {
		return err.Error()
	}
	return ep.Addr + " " + ep.DstLabels["dst_pod"]
}

func TestClientKeepsEndpointsWhileTheServiceRestarts(t *testing.T) {
	c := newCluster(t)
	addr, stop := startServer(t, "", destination.Options{})
	rs := c.replicaSet("api", "api-5c6")
	c.pod(podSpec{name: "api-5c6-a", ip: "10.20.0.1", owner: &rs})
	c.pod(podSpec{name: "api-5c6-b", ip: "10.20.0.2", owner: &rs})
	c.service("api", "", nil, httpPort...)
	c.slice("api", "api-1", httpPort, epSpec{ip: "10.20.0.1", pod: "api-5c6-a"})

	logs := &syncBuffer{}
	cl := destination.NewClient(destination.ClientOptions{Addr: addr, Namespace: c.ns, FirstAnswer: 30 * time.Second,
		Log: slog.New(slog.NewTextHandler(logs, nil))})
	t.Cleanup(cl.Close)

	// The first lookup waits for the answer; the short name resolves in the client's namespace.
	d := cl.Lookup("api")
	if got := pick(d); got != "10.20.0.1:8080 api-5c6-a" {
		t.Fatalf("first lookup: %s", got)
	}
	if d.Authority != "api:80" || d.DstLabels["dst_service"] != "api" || d.DstLabels["dst_namespace"] != c.ns {
		t.Fatalf("destination %q labels %v", d.Authority, d.DstLabels)
	}
	if cl.Lookup("nosuch."+c.ns+":80") != nil {
		t.Fatal("an unknown Service must be dialled as written (nil)")
	}

	// The service stops: the known authority keeps its endpoint, a new one is dialled as written at once.
	stop()
	eventually(t, "the outage logged", func() bool { return strings.Contains(logs.String(), "discovery service unreachable") })
	if got := pick(cl.Lookup("api")); got != "10.20.0.1:8080 api-5c6-a" {
		t.Fatalf("during the outage: %s", got)
	}
	if cl.Lookup("other."+c.ns+":80") != nil {
		t.Fatal("during the outage a new authority must be dialled as written")
	}
	// The cluster changes while the service is down; the restarted service (same address) tells the
	// client the whole new set.
	c.slice("api", "api-1", httpPort, epSpec{ip: "10.20.0.2", pod: "api-5c6-b"})
	startServer(t, addr, destination.Options{})
	eventually(t, "the new set after reconnecting", func() bool { return pick(cl.Lookup("api")) == "10.20.0.2:8080 api-5c6-b" })
	if n := strings.Count(logs.String(), "discovery service unreachable"); n != 1 {
		t.Fatalf("the outage was logged %d times, want once:\n%s", n, logs)
	}
	eventually(t, "recovery logged", func() bool { return strings.Contains(logs.String(), "reachable again") })
}

func TestClientWithoutServiceDialsAsWritten(t *testing.T) {
	cl := destination.NewClient(destination.ClientOptions{Addr: "127.0.0.1:1", FirstAnswer: 30 * time.Second})
	defer cl.Close()
	start := time.Now()
	if cl.Lookup("web.shop:80") != nil {
		t.Fatal("no service: want nil")
	}
	// Hang guard only: a refused connection answers long before FirstAnswer.
	if time.Since(start) > 25*time.Second {
		t.Fatal("lookup waited for FirstAnswer although the service refused the connection")
	}
}
