package balance

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshscope/meshscope/proxy/routes"
)

// The balancer's constants, those of linkerd2-proxy's peak-EWMA balancer (itself after Finagle's PeakEwma).
const (
	// decayTime is the EWMA's time constant: a latency observed decayTime ago weighs 1/e of a fresh one,
	// and an endpoint that saw no request for decayTime looks 1/e as costly as when it last answered.
	decayTime = 10 * time.Second
	// defaultRTT is the latency assumed for an endpoint that has answered nothing yet: a penalty that
	// keeps a new endpoint from drawing every request before it has proved itself, yet small enough that
	// it is tried soon (and it decays like any estimate when the endpoint stays idle).
	defaultRTT = 30 * time.Millisecond
	// minBackoff and maxBackoff bound how long an unreachable endpoint is left out: minBackoff after the
	// first failure, doubling with each failed probe up to maxBackoff, plus up to a quarter of jitter so
	// that many proxies do not probe a recovering endpoint in step.
	minBackoff = 250 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// Endpoint is one address of a destination, with the load and health state the balancer keeps for it.
// Its exported fields are read-only. The state lives as long as the address stays in the destinations
// file, across reloads, even when its labels change.
type Endpoint struct {
	// Addr is host:port, as written in the destinations file, to dial.
	Addr string
	// DstLabels are the service's labels merged with the endpoint's (the endpoint's win), each name
	// prefixed with dst_: dst_namespace, dst_deployment, dst_pod... Never nil; do not modify.
	DstLabels map[string]string
	// Hints say how to talk to the endpoint, when discovery knows (zero from the destinations file).
	Hints Hints

	st      *endpointState
	accrual *routes.Accrual // the service's failure accrual; nil: none
}

// Hints are what discovery knows about how to talk to an endpoint.
type Hints struct {
	// Opaque: forward its connections as TCP, without protocol detection.
	Opaque bool
	// Meshed: a Meshscope proxy runs beside it.
	Meshed bool
	// Identity is the identity its proxy presents; empty when unknown or not meshed.
	Identity string
}

// endpointState is an endpoint's balancer state, shared by the Endpoint values of successive reloads.
//
// It is read and updated with atomics only; mu serialises the rare changes of backoff. A Pick may read an
// estimate from one update and a stamp from another; the result is a cost between the two, harmless for a
// balancer.
type endpointState struct {
	clk *clock

	outstanding atomic.Int64
	estimate    atomic.Uint64 // peak-EWMA latency, float64 nanoseconds (math.Float64bits)
	stamp       atomic.Int64  // clock nanos of the last latency observed
	downUntil   atomic.Int64  // clock nanos until which the endpoint is left out; 0 when up
	failures    atomic.Int32  // consecutive dial failures, sets the backoff
	// Failure accrual (Observe): consecutive failed responses, whether they took the endpoint out (then
	// its probe's response decides), and how many probes failed since, which sets the penalty.
	consecutive atomic.Int32
	tripped     atomic.Bool
	level       atomic.Int32
	penalty     atomic.Int64 // the current penalty, nanoseconds: a claimed probe re-arms downUntil with it
	probing     atomic.Bool  // a Pick claimed the tripped endpoint for its probe

	mu sync.Mutex // serialises writers of downUntil and failures
}

func newEndpointState(clk *clock) *endpointState {
	s := &endpointState{clk: clk}
	s.estimate.Store(math.Float64bits(float64(defaultRTT)))
	s.stamp.Store(clk.nanos())
	return s
}

// load is the balancer's cost of sending one more request to the endpoint at time now: the peak-EWMA
// latency, decayed towards zero for the time since it was last observed (Finagle's "observe 0 when
// read", done here without writing), weighted by outstanding requests + 1.
func (s *endpointState) load(now int64) float64 {
	est := math.Float64frombits(s.estimate.Load())
	if age := now - s.stamp.Load(); age > 0 {
		est *= math.Exp(-float64(age) / float64(decayTime))
	}
	return est * float64(s.outstanding.Load()+1)
}

// lighter reports whether s should win a Pick against o. With as many requests outstanding, only a
// latency estimate lower by more than loadTolerance counts (the rest is the noise of whichever saw the
// last slow response); with fewer outstanding, a strictly lower load wins, so a request never queues
// behind another while an equally fast endpoint is idle.
func (s *endpointState) lighter(o *endpointState, now int64) bool {
	ls, lo := s.load(now), o.load(now)
	if s.outstanding.Load() == o.outstanding.Load() {
		return ls*loadTolerance < lo
	}
	return ls < lo
}

// observe folds one latency into the estimate as Finagle's PeakEwma does. Finagle decays the estimate on
// every read of the cost (it observes 0 then) and stamps it; Pick reads without writing, so the decay for
// the time since the last update is applied here first, exactly what those reads would have done. Then a
// latency above the decayed estimate replaces it at once (the "peak": react fast to an endpoint turning
// slow); a lower one adds its share for the time it took (Finagle's weight of a sample observed rtt after
// the Pick read the cost). Comparing and blending with the undecayed estimate instead would let an old
// peak of an idle endpoint leak back the moment it is picked again, so that identical endpoints drift
// apart at low concurrency. Lock-free: concurrent observers retry the compare-and-swap.
func (s *endpointState) observe(rtt time.Duration, now int64) {
	r := float64(rtt)
	for {
		old, stamp := s.estimate.Load(), s.stamp.Load()
		age := float64(max(now-stamp, 0))
		est := math.Float64frombits(old) * math.Exp(-age/float64(decayTime))
		if r > est {
			est = r
		} else {
			est += r * (1 - math.Exp(-min(float64(rtt), age)/float64(decayTime)))
		}
		if s.estimate.CompareAndSwap(old, math.Float64bits(est)) {
			s.stamp.Store(now)
			return
		}
	}
}

// available reports whether the endpoint may be picked at now: up, or its backoff expired (a probe).
func (s *endpointState) available(now int64) bool {
	d := s.downUntil.Load()
	return d == 0 || now >= d
}

// claim is called on the endpoint a Pick chose. An endpoint that is up is always claimed. One whose
// backoff expired is claimed by one Pick only, which re-arms the backoff so that concurrent Picks leave
// it alone while that request probes it; the probe's outcome then resets or lengthens the backoff.
func (s *endpointState) claim(now int64) bool {
	d := s.downUntil.Load()
	if d == 0 {
		return true
	}
	if now < d {
		return false
	}
	hold := int64(backoff(s.failures.Load()))
	tripped := s.tripped.Load()
	if tripped {
		hold = s.penalty.Load()
	}
	if !s.downUntil.CompareAndSwap(d, now+hold) {
		return false
	}
	if tripped {
		s.probing.Store(true)
	}
	return true
}

func (s *endpointState) fail(now int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.failures.Add(1)
	s.downUntil.Store(now + int64(backoff(f)))
}

func (s *endpointState) succeed() {
	if s.failures.Load() == 0 && s.downUntil.Load() == 0 {
		return // the hot path: nothing to reset, no lock
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures.Store(0)
	if !s.tripped.Load() { // a failure accrual probe: its response decides (Observe)
		s.downUntil.Store(0)
	}
}

// Observe feeds the service's failure accrual with one response from the endpoint: failure when it was
// classified a failure (a 5xx, a gRPC status other than OK, a broken stream). After the accrual's
// MaxFailures failures in a row the endpoint is taken out for its penalty; then one request probes it: a
// success brings it back, a failure takes it out again for twice as long (up to MaxPenalty). Without
// failure accrual configured, Observe does nothing. Safe for concurrent use; the hot path (a success
// after a success) is one atomic load.
func (e *Endpoint) Observe(failure bool) {
	a, s := e.accrual, e.st
	if a == nil {
		return
	}
	if !failure {
		if s.consecutive.Load() == 0 && !s.tripped.Load() {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.consecutive.Store(0)
		if s.tripped.Load() {
			s.tripped.Store(false)
			s.probing.Store(false)
			s.level.Store(0)
			s.downUntil.Store(0)
		}
		return
	}
	now := s.clk.nanos()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.tripped.Load():
		if !s.probing.CompareAndSwap(true, false) {
			return // a request in flight when the endpoint was taken out: its probe is yet to come
		}
		// The probe failed: out again, for longer.
		lvl := s.level.Add(1)
		s.penalty.Store(int64(a.Penalty(int(lvl))))
		s.downUntil.Store(now + s.penalty.Load())
	case s.consecutive.Add(1) >= int32(a.MaxFailures):
		s.consecutive.Store(0)
		s.tripped.Store(true)
		s.level.Store(0)
		s.penalty.Store(int64(a.Penalty(0)))
		s.downUntil.Store(now + s.penalty.Load())
	}
}

// Out reports whether the endpoint is out of service now (taken out by failure accrual or after failing
// to connect), not counting a probe in flight.
func (e *Endpoint) Out() bool { return !e.st.available(e.st.clk.nanos()) }

// backoff is how long to leave an endpoint out after its failures-th consecutive failure.
func backoff(failures int32) time.Duration {
	d := maxBackoff
	if failures < 20 {
		d = min(minBackoff<<max(failures-1, 0), maxBackoff)
	}
	return d + rand.N(d/4+1)
}

// Begin marks the start of a request (or TCP connection) to the endpoint and returns the function to
// call exactly once when it ends. Outstanding requests weigh the endpoint's load until then.
//
// done(err) with err nil records the latency since Begin into the peak-EWMA estimate and clears any
// backoff. With an error that says the endpoint could not be reached (Unreachable: a dial error such as
// connection refused), the endpoint is left out with exponential backoff (250ms doubling up to 30s) and
// probed back in by one request after it expires; no latency is recorded. context.Canceled (the client
// went away) records nothing. Any other error (a timeout, a reset, a broken stream) records the latency
// and leaves the backoff alone.
func (e *Endpoint) Begin() (done func(err error)) {
	s := e.st
	s.outstanding.Add(1)
	start := s.clk.nanos()
	return func(err error) {
		now := s.clk.nanos()
		s.outstanding.Add(-1)
		switch {
		case Unreachable(err):
			s.fail(now)
			return
		case errors.Is(err, context.Canceled):
			return // the client gave up: the time so far says nothing of the endpoint's latency
		}
		s.observe(time.Duration(now-start), now)
		if err == nil {
			s.succeed()
		}
	}
}

// Unreachable reports whether err says a request never reached its endpoint: a failed dial (a
// *net.OpError with Op "dial", however wrapped, e.g. by net/http) or a refused connection. Such a
// request is safe to retry on another endpoint, and Begin's done takes the endpoint out for it.
func Unreachable(err error) bool {
	if err == nil {
		return false
	}
	var op *net.OpError
	return (errors.As(err, &op) && op.Op == "dial") || errors.Is(err, syscall.ECONNREFUSED)
}

// Outstanding is the number of requests begun on the endpoint and not yet done.
func (e *Endpoint) Outstanding() int64 { return e.st.outstanding.Load() }

// mergeLabels merges service and endpoint labels (endpoint wins) under the dst_ prefix.
func mergeLabels(service, endpoint map[string]string) map[string]string {
	m := make(map[string]string, len(service)+len(endpoint))
	for k, v := range service {
		m["dst_"+k] = v
	}
	for k, v := range endpoint {
		m["dst_"+k] = v
	}
	return m
}

// clock reads the injectable time source as nanoseconds since the Resolver was made (monotonic with the
// real clock).
type clock struct {
	now   func() time.Time
	epoch time.Time
}

func newClock(now func() time.Time) *clock {
	if now == nil {
		now = time.Now
	}
	return &clock{now: now, epoch: now()}
}

func (c *clock) nanos() int64 { return int64(c.now().Sub(c.epoch)) }
