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
}

// Pick chooses an endpoint for one request (or TCP connection) by the power of two random choices: it
// draws two distinct usable endpoints at random and returns the one with the lower load, load being the
// peak-EWMA latency (see Begin) times outstanding requests + 1. Endpoints in exclude (compared by address,
// so an Endpoint from before a reload still matches) are not considered: pass the endpoints a request
// already failed to reach when retrying it. Endpoints left out after a failed dial are not considered
// until their backoff expires; then one Pick at a time chooses one as a probe.
//
// Pick is safe for concurrent use, takes no lock and does not allocate.
func (d *Destination) Pick(exclude ...*Endpoint) (*Endpoint, error) {
	n := len(d.endpoints)
	if n == 0 {
		return nil, ErrNoEndpoints
	}
	now := d.clk.nanos()
	// A bounded loop: the only way round again is losing a probe to a concurrent Pick.
	for range 3 {
		a := d.scan(rand.IntN(n), nil, now, exclude)
		if a == nil {
			if len(exclude) == 0 {
				return nil, ErrFailFast
			}
			return nil, ErrNoEndpoints
		}
		b := d.scan(rand.IntN(n), a, now, exclude)
		if b != nil && b.st.load(now) < a.st.load(now) {
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
