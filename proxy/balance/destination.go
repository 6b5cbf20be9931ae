package balance

import (
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/meshscope/meshscope/proxy/routes"
)

// ErrNoEndpoints is Pick's error when a destination has no endpoint to offer: none listed, all excluded
// by the caller, or all left out after failing to connect (their backoff not yet expired).
var ErrNoEndpoints = errors.New("no endpoints available")

// ErrFailFast is Pick's error when every endpoint of a destination is out, taken out by failure accrual
// or after failing to connect, and none is due for a probe: the caller fails the request at once rather
// than queue it.
// It wraps ErrNoEndpoints, for callers that need not tell the two apart.
var ErrFailFast = fmt.Errorf("every endpoint is out of service: %w", ErrNoEndpoints)

// Destination is one service of the destinations file. It is immutable: a reload makes new Destinations
// (sharing the endpoints' state), so a caller may keep one for the life of a request or connection.
type Destination struct {
	// Authority is the service's authority as the lookup key: host in lower case, port always present.
	Authority string
	// DstLabels are the service's labels prefixed with dst_, for failures that have no endpoint
	// (ErrNoEndpoints). Never nil; do not modify.
	DstLabels map[string]string
	// Routes are the service's routes, with the default route for requests none matches. Never nil.
	Routes *routes.Table

	endpoints []*Endpoint
	clk       *clock
	intN      func(n int) int // a test's seeded source (WithRandom); nil: math/rand/v2
}

// EndpointSpec is one endpoint to balance over: an address, its labels (without the dst_ prefix) and hints.
type EndpointSpec struct {
	Addr   string
	Labels map[string]string
	Hints  Hints
}

// Builder makes the successive Destinations of one discovered authority, each endpoint keeping its
// balancer state (latency, load, backoff) while its address stays in the set. Not safe for concurrent
// use: one goroutine follows one authority.
type Builder struct {
	clk    *clock
	states map[string]*endpointState
}

// NewBuilder returns a Builder with no endpoint known yet.
func NewBuilder() *Builder {
	return &Builder{clk: newClock(nil), states: map[string]*endpointState{}}
}

// Build returns the Destination of authority (normalized, see NormalizeAuthority) for its current
// labels, endpoints, routes and policy (its default route's timeouts and retries, its failure accrual).
// Endpoints dropped since the previous Build lose their state.
func (b *Builder) Build(authority string, labels map[string]string, endpoints []EndpointSpec, rs []*routes.Route, policy routes.Policy) *Destination {
	states := make(map[string]*endpointState, len(endpoints))
	d := newDestination(b.clk, authority, labels, endpoints, policy.Accrual, states, b.states)
	d.Routes = routes.NewTable(rs, &routes.Route{Timeouts: policy.Timeouts, Retry: policy.Retry})
	b.states = states
	return d
}

// newDestination builds a Destination (without Routes), its endpoints under accrual (nil: none), taking each endpoint's state from prev when its address had one,
// and recording the states it uses in states.
func newDestination(clk *clock, authority string, labels map[string]string, endpoints []EndpointSpec, accrual *routes.Accrual, states, prev map[string]*endpointState) *Destination {
	d := &Destination{Authority: authority, clk: clk, endpoints: make([]*Endpoint, 0, len(endpoints))}
	d.DstLabels = mergeLabels(labels, nil)
	for _, es := range endpoints {
		st := states[es.Addr]
		if st == nil {
			if st = prev[es.Addr]; st == nil {
				st = newEndpointState(clk)
			}
			states[es.Addr] = st
		}
		e := &Endpoint{Addr: es.Addr, Hints: es.Hints, st: st, accrual: accrual}
		e.DstLabels = mergeLabels(labels, es.Labels)
		d.endpoints = append(d.endpoints, e)
	}
	return d
}

// Source answers which Destination an outbound authority names: a destinations file (Resolver), the
// discovery service's client, or both (Sources). nil means the authority is dialled as written.
type Source interface {
	Lookup(authority string) *Destination
}

// Sources asks each Source in turn; the first to know the authority answers.
type Sources []Source

// Lookup returns the first Source's Destination for authority, or nil when none knows it.
func (ss Sources) Lookup(authority string) *Destination {
	for _, s := range ss {
		if d := s.Lookup(authority); d != nil {
			return d
		}
	}
	return nil
}

// Pick chooses an endpoint for one request (or TCP connection) by the power of two random choices: it
// draws two distinct usable endpoints at random and returns the one with the lower load, load being the
// peak-EWMA latency (see Begin) times outstanding requests + 1; loads within loadTolerance of each other
// count as equal, and then the first drawn, at random, wins. Endpoints in exclude (compared by address,
// so an Endpoint from before a reload still matches) are not considered: pass the endpoints a request
// already failed to reach when retrying it. Endpoints left out after a failed dial are not considered
// until their backoff expires; then one Pick at a time chooses one as a probe.
//
// Pick is safe for concurrent use, takes no lock and does not allocate.
// loadTolerance is how much lower a load must be to win a Pick. A peak-EWMA estimate is the recent peak
// latency, decaying: two identical endpoints at low concurrency differ by whichever saw the last slow
// response, and choosing strictly the lower sends every request to one of them for seconds at a time
// while the other's peak decays (minutes split 74/26 at 20 requests/s in TestTwoIdenticalEndpoints...).
// Loads within 2x are noise while both carry as many requests; an endpoint slower than that, or one with
// more requests outstanding, still loses every time (see lighter).
const loadTolerance = 2

func (d *Destination) Pick(exclude ...*Endpoint) (*Endpoint, error) {
	n := len(d.endpoints)
	if n == 0 {
		return nil, ErrNoEndpoints
	}
	now := d.clk.nanos()
	// A bounded loop: the only way round again is losing a probe to a concurrent Pick.
	for range 3 {
		a := d.scan(d.draw(n), nil, now, exclude)
		if a == nil {
			if len(exclude) == 0 {
				return nil, ErrFailFast
			}
			return nil, ErrNoEndpoints
		}
		b := d.scan(d.draw(n), a, now, exclude)
		if b != nil && b.st.lighter(a.st, now) {
			a, b = b, a
		}
		if a.st.claim(now) {
			return a, nil
		}
		if b != nil && b.st.claim(now) {
			return b, nil
		}
	}
	return nil, ErrNoEndpoints
}

// draw returns a random index in [0, n).
func (d *Destination) draw(n int) int {
	if d.intN != nil {
		return d.intN(n)
	}
	return rand.IntN(n)
}

// scan returns the first usable endpoint from index start on, wrapping around, other than skip.
func (d *Destination) scan(start int, skip *Endpoint, now int64, exclude []*Endpoint) *Endpoint {
	n := len(d.endpoints)
	for k := range n {
		e := d.endpoints[(start+k)%n]
		if e == skip || !e.st.available(now) || excluded(e, exclude) {
			continue
		}
		return e
	}
	return nil
}

func excluded(e *Endpoint, exclude []*Endpoint) bool {
	for _, x := range exclude {
		if x != nil && x.st == e.st {
			return true
		}
	}
	return false
}
