// Package balance is the proxy's service discovery and load balancer.
//
// A Resolver reads the destinations file of DESIGN.md (YAML: services, each with an authority, labels and
// endpoints), answers which Destination an outbound request's authority names, and re-reads the file when
// it changes. A Destination picks one of its Endpoints per request with the power of two random choices
// over peak-EWMA latency weighted by outstanding requests, the balancer of Finagle and linkerd2-proxy, and
// leaves out endpoints that refuse connections until a probe finds them back.
//
// Typical use by the outbound proxy:
//
//	d := resolver.Lookup(req.Host) // nil: not in the file, dial req.Host as written
//	ep, err := d.Pick()            // ErrNoEndpoints: answer 503
//	done := ep.Begin()
//	resp, err := roundTrip(ep.Addr)
//	done(err)                      // a dial error takes ep out; retry with d.Pick(ep)
package balance

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshscope/meshscope/proxy/routes"
)

// reloadDelay lets a burst of file events (an editor's write, rename and chmod) settle into one reload.
const reloadDelay = 100 * time.Millisecond

// Resolver maps authorities to Destinations from a destinations file. Lookup is safe for concurrent use
// with Run's reloads.
type Resolver struct {
	path  string
	log   *slog.Logger
	clk   *clock
	intN  func(n int) int
	table atomic.Pointer[table]

	// Owned by the goroutine that loads (Load, then Run).
	states   map[string]*endpointState // by endpoint addr: balancer state kept across reloads
	lastRead []byte                    // the file's content at the last reload attempt, good or bad
}

// table is one load of the file, published whole so that Lookup sees one version.
type table struct {
	byAuthority map[string]*Destination // by normalized authority, "web.shop:80"
	byHost      map[string]*Destination // services on port 80 by host alone, "web.shop": Host headers omit it
}

// Option configures a Resolver.
type Option func(*Resolver)

// WithClock makes the balancer read time from now instead of time.Now: latencies, EWMA decay and
// backoff all follow it. For tests.
func WithClock(now func() time.Time) Option {
	return func(r *Resolver) { r.clk = newClock(now) }
}

// WithRandom makes Pick draw its endpoints with intN (which returns a number in [0, n)) instead of
// math/rand/v2's IntN. For tests, whose seeded source must not be used concurrently.
func WithRandom(intN func(n int) int) Option {
	return func(r *Resolver) { r.intN = intN }
}

// Load reads and validates the destinations file at path. Its error is one line naming the file, the
// line, the entry and the problem. log may be nil (no logs).
func Load(path string, log *slog.Logger, opts ...Option) (*Resolver, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Resolver{path: path, log: log, states: map[string]*endpointState{}}
	for _, o := range opts {
		o(r)
	}
	if r.clk == nil {
		r.clk = newClock(nil)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read destinations file: %w", err)
	}
	r.lastRead = data
	services, err := parseFile(path, data)
	if err != nil {
		return nil, err
	}
	r.install(services)
	return r, nil
}

// Lookup returns the Destination for a request's authority (Host header, :authority, or an outbound
// route's AUTHORITY), or nil when the file does not list it: the caller then dials the authority as
// written. Matching ignores the host's case and a trailing dot, and an authority without a port matches
// the service listed with port 80 (http's default): "web.shop" finds "web.shop:80", never "web.shop:8080".
// Lookup on a nil Resolver (no destinations file) returns nil.
func (r *Resolver) Lookup(authority string) *Destination {
	if r == nil {
		return nil
	}
	t := r.table.Load()
	// The common cases first, without allocating: an authority in normal form, with its port or, for
	// port 80, without.
	if d, ok := t.byAuthority[authority]; ok {
		return d
	}
	if d, ok := t.byHost[authority]; ok {
		return d
	}
	if !needsNormalizing(authority) {
		return nil
	}
	return t.byAuthority[NormalizeAuthority(authority)]
}

// Run watches the destinations file and reloads it when it changes, until ctx ends (then it returns nil).
// It watches the file's directory, not the file, so that editors' and Kubernetes' rename-replace saves
// are seen. A file that turns unreadable or invalid keeps the last good table and is logged at error
// level with the reason. Call Run at most once.
func (r *Resolver) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch destinations file: %w", err)
	}
	defer w.Close()
	dir := filepath.Dir(r.path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch destinations file directory %s: %w", dir, err)
	}
	r.reload() // a change between Load and the watch would otherwise go unseen

	timer := time.NewTimer(reloadDelay)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			// Any event in the directory: Kubernetes swaps a ..data symlink, editors write temp files
			// and rename them. reload skips content it has already seen.
			timer.Reset(reloadDelay)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			r.log.Warn("watching destinations file", "path", r.path, "err", err)
			timer.Reset(reloadDelay) // events may have been lost (overflow): look again
		case <-timer.C:
			r.reload()
		}
	}
}

func (r *Resolver) reload() {
	data, err := os.ReadFile(r.path)
	if err != nil {
		r.lastRead = nil
		r.log.Error("destinations file unreadable, keeping the last good one", "path", r.path, "err", err)
		return
	}
	if bytes.Equal(data, r.lastRead) {
		return
	}
	r.lastRead = data
	services, err := parseFile(r.path, data)
	if err != nil {
		r.log.Error("destinations file invalid, keeping the last good one", "path", r.path, "err", err)
		return
	}
	n := r.install(services)
	r.log.Info("destinations file reloaded", "path", r.path, "services", len(services), "endpoints", n)
}

// install builds and publishes the table for services, keeping the state of endpoints whose address
// stays and dropping the rest. It returns the number of endpoints.
func (r *Resolver) install(services []serviceSpec) int {
	states := make(map[string]*endpointState, len(r.states))
	t := table{byAuthority: make(map[string]*Destination, len(services)), byHost: map[string]*Destination{}}
	n := 0
	for _, s := range services {
		d := newDestination(r.clk, s.authority, s.labels, s.endpoints, s.policy.Accrual, states, r.states)
		d.intN = r.intN
		d.Routes = routes.NewTable(s.routes, &routes.Route{Timeouts: s.policy.Timeouts, Retry: s.policy.Retry})
		n += len(d.endpoints)
		t.byAuthority[s.authority] = d
		if host, ok := strings.CutSuffix(s.authority, ":80"); ok {
			t.byHost[host] = d
		}
	}
	r.states = states
	r.table.Store(&t)
	return n
}
