package balance_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
)

// logBuffer collects a Resolver's log lines; Run logs from its own goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// eventually polls cond until it holds, failing the test after a generous deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runResolver starts r.Run and stops it at the end of the test, checking that it returns nil.
func runResolver(t *testing.T, r *balance.Resolver) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run returned %v after its context ended", err)
		}
	})
}

// replaceFile writes content to a temporary file beside path and renames it over path, as editors and
// Kubernetes' ConfigMap volumes do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".destinations.yaml.swp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestRunPicksUpChangesAndKeepsTheLastGoodFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, serviceFile("127.0.0.1:1001"))
	var logs logBuffer
	r, err := balance.Load(path, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	runResolver(t, r)

	steps := []struct {
		name    string
		edit    func()
		waitLog string // a log line the edit must cause, "" for none
		want    map[string]bool
	}{
		{
			name:    "an invalid edit in place keeps the last good table",
			edit:    func() { writeFile(t, dir, serviceFile("127.0.0.1:1001")+"    retries: 3\n") },
			waitLog: `unknown field \"retries\"`,
			want:    map[string]bool{"web.shop": true, "api.shop:8080": false},
		},
		{
			name: "a good file renamed over it is picked up",
			edit: func() {
				replaceFile(t, path, serviceFile("127.0.0.1:1001")+"  - authority: api.shop:8080\n    endpoints: []\n")
			},
			want: map[string]bool{"web.shop": true, "api.shop:8080": true},
		},
		{
			name:    "a deleted file keeps the last good table",
			edit:    func() { os.Remove(path) },
			waitLog: "destinations file unreadable",
			want:    map[string]bool{"web.shop": true, "api.shop:8080": true},
		},
		{
			name: "a recreated file is picked up",
			edit: func() { writeFile(t, dir, "services:\n  - authority: api.shop:8080\n") },
			want: map[string]bool{"web.shop": false, "api.shop:8080": true},
		},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.edit()
			if s.waitLog != "" {
				eventually(t, "log line "+s.waitLog, func() bool { return strings.Contains(logs.String(), s.waitLog) })
			}
			eventually(t, "the table of the edit", func() bool {
				for authority, present := range s.want {
					if (r.Lookup(authority) != nil) != present {
						return false
					}
				}
				return true
			})
		})
	}
	if !strings.Contains(logs.String(), "destinations file reloaded") {
		t.Errorf("no reload logged:\n%s", logs.String())
	}
}

func TestReloadKeepsEndpointStateForAddressesThatStay(t *testing.T) {
	clk := newFakeClock()
	dir := t.TempDir()
	path := writeFile(t, dir, serviceFile("10.0.0.1:80", "10.0.0.2:80"))
	r, err := balance.Load(path, nil, balance.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	before := r.Lookup("web.shop")
	refused := refusedError(t)
	var doneA func(error)
	for failed := false; doneA == nil || !failed; {
		ep, err := before.Pick()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ep.Addr == "10.0.0.2:80":
			ep.Begin()(refused) // 10.0.0.2 is now left out with backoff
			failed = true
		case doneA == nil:
			doneA = ep.Begin() // 10.0.0.1 has a request outstanding
		}
	}

	runResolver(t, r)
	replaceFile(t, path, `services:
  - authority: web.shop:80
    endpoints:
      - addr: 10.0.0.1:80
        labels: {pod: web-moved}
      - addr: 10.0.0.2:80
      - addr: 10.0.0.3:80
`)
	eventually(t, "the reload", func() bool { return r.Lookup("web.shop") != before })
	after := r.Lookup("web.shop")

	// 10.0.0.3 is new and idle, 10.0.0.1 is busy, 10.0.0.2 is still backing off: the new one wins.
	c, err := after.Pick()
	if err != nil || c.Addr != "10.0.0.3:80" {
		t.Fatalf("Pick = %v, %v; want the new idle endpoint 10.0.0.3:80", c, err)
	}
	for range 50 {
		a, err := after.Pick(c)
		if err != nil || a.Addr != "10.0.0.1:80" {
			t.Fatalf("Pick excluding 10.0.0.3 = %v, %v; want 10.0.0.1 (10.0.0.2 still backing off)", a, err)
		}
		if a.Outstanding() != 1 {
			t.Fatalf("10.0.0.1 has %d outstanding requests after the reload, want the 1 begun before", a.Outstanding())
		}
		if got := a.DstLabels["dst_pod"]; got != "web-moved" {
			t.Fatalf("10.0.0.1 labels %v, want the reloaded ones", a.DstLabels)
		}
	}
	doneA(nil)
	a, _ := after.Pick(c)
	if a.Outstanding() != 0 {
		t.Errorf("the request begun before the reload did not end on the reloaded endpoint: %d outstanding", a.Outstanding())
	}
}

func TestConcurrentPicksAndReloadsLoseNoOutstandingCount(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, serviceFile("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
	clk := newFakeClock()
	r, err := balance.Load(path, nil, balance.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	runResolver(t, r)
	refused := refusedError(t)

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				ep, err := r.Lookup("web.shop").Pick()
				if errors.Is(err, balance.ErrNoEndpoints) {
					clk.Advance(time.Second) // all backing off: let them be probed
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				done := ep.Begin()
				clk.Advance(time.Microsecond)
				if i%100 == g {
					done(refused) // now and then an endpoint backs off
					continue
				}
				done(nil)
			}
		})
	}
	// Reload while they run: the same addresses, labels changing.
	for i := range 5 {
		replaceFile(t, path, serviceFile("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")+fmt.Sprintf("  # edit %d\n", i))
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()

	eventually(t, "the last reload", func() bool {
		data, _ := os.ReadFile(path)
		return strings.Contains(string(data), "edit 4") && r.Lookup("web.shop") != nil
	})
	clk.Advance(time.Hour) // every backoff over: each endpoint can be picked (once, as a probe)
	d := r.Lookup("web.shop")
	var picked []*balance.Endpoint
	for range 3 {
		ep, err := d.Pick(picked...)
		if err != nil {
			t.Fatalf("after %v: %v", picked, err)
		}
		picked = append(picked, ep)
		if n := ep.Outstanding(); n != 0 {
			t.Errorf("%s has %d outstanding requests after all ended", ep.Addr, n)
		}
	}
}
