package routes

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxRetryBody is the largest request body a retry can resend: the proxy keeps a copy of up to this much
// while the body streams upstream. A longer body is sent once, never retried.
const MaxRetryBody = 64 << 10

// Retry is a route's retry policy.
type Retry struct {
	// HTTP are the response statuses to retry, as inclusive ranges; empty: none.
	HTTP []StatusRange
	// GRPC is the set of gRPC status codes to retry, bit c for code c; 0: none.
	GRPC uint32
	// Limit is the most retries of one request (linkerd's retry.linkerd.io/limit); 0 means 1.
	Limit int
	// Timeout bounds each try until its response headers; 0: none. An expired try is retried.
	Timeout time.Duration
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Lo, Hi int }

// MaxRetries is the most retries of one request.
func (r *Retry) MaxRetries() int {
	if r.Limit <= 0 {
		return 1
	}
	return r.Limit
}

// RetryHTTP reports whether a response with status is to be retried.
func (r *Retry) RetryHTTP(status int) bool {
	for _, s := range r.HTTP {
		if status >= s.Lo && status <= s.Hi {
			return true
		}
	}
	return false
}

// RetryGRPC reports whether a response with gRPC status code is to be retried.
func (r *Retry) RetryGRPC(code int) bool {
	return code > 0 && code < 32 && r.GRPC&(1<<code) != 0
}

// GRPCCodes are the gRPC status codes by the names retry policies use (Linkerd's, kebab-case), the
// index being the code.
var GRPCCodes = [...]string{"ok", "cancelled", "unknown", "invalid-argument", "deadline-exceeded",
	"not-found", "already-exists", "permission-denied", "resource-exhausted", "failed-precondition",
	"aborted", "out-of-range", "unimplemented", "internal", "unavailable", "data-loss", "unauthenticated"}

// parseHTTPStatuses reads a comma-separated list of statuses to retry: "5xx", "gateway-error" (502, 503,
// 504), a code ("429") or a range ("500-504").
func parseHTTPStatuses(s string) ([]StatusRange, error) {
	var out []StatusRange
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ToLower(f))
		switch {
		case f == "":
			continue
		case f == "gateway-error":
			out = append(out, StatusRange{502, 504})
			continue
		case len(f) == 3 && strings.HasSuffix(f, "xx") && f[0] >= '1' && f[0] <= '5':
			lo := int(f[0]-'0') * 100
			out = append(out, StatusRange{lo, lo + 99})
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 100 || b > 599 || a > b {
			return nil, fmt.Errorf("bad status %q: want 5xx, gateway-error, a code or a range such as 500-504", f)
		}
		out = append(out, StatusRange{a, b})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no status in %q", s)
	}
	return out, nil
}

// parseGRPCCodes reads a comma-separated list of gRPC status names ("unavailable, internal") or numbers.
func parseGRPCCodes(s string) (uint32, error) {
	var set uint32
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ToLower(strings.ReplaceAll(f, "_", "-")))
		if f == "" {
			continue
		}
		code := -1
		for i, name := range GRPCCodes {
			if name == f {
				code = i
			}
		}
		if n, err := strconv.Atoi(f); err == nil && n > 0 && n < len(GRPCCodes) {
			code = n
		}
		if code <= 0 {
			return 0, fmt.Errorf("bad gRPC status %q: want a name such as unavailable, internal, deadline-exceeded, or 1..16", f)
		}
		set |= 1 << code
	}
	if set == 0 {
		return 0, fmt.Errorf("no gRPC status in %q", s)
	}
	return set, nil
}

// The retry budget's constants, Finagle's RetryBudget defaults, which Linkerd 1 and linkerd2-proxy kept.
const (
	// BudgetRatio is the share of a route's requests that retries may add.
	BudgetRatio = 0.2
	// BudgetMinPerSecond is the retries allowed per second whatever the traffic, so that a route with
	// few requests can still retry.
	BudgetMinPerSecond = 10
	// BudgetTTL is the window over which requests earn and retries spend.
	BudgetTTL = 10 * time.Second
)

// budgetSlots divides BudgetTTL: deposits and withdrawals expire a slot at a time.
const budgetSlots = 10

// Budget bounds a route's retries: over the last BudgetTTL, retries may number at most BudgetRatio of
// the requests plus BudgetMinPerSecond per second of the window (a reserve of 100 retries per 10 s). So a
// failing backend sees at most 1.2x its requests plus the reserve, never a retry storm.
type Budget struct {
	now   func() time.Time
	mu    sync.Mutex
	slots [budgetSlots]budgetSlot
}

type budgetSlot struct {
	epoch                 int64 // which slot-long interval since the Unix epoch it counts
	requests, withdrawals int64
}

// NewBudget returns an empty budget reading time from now (nil: time.Now).
func NewBudget(now func() time.Time) *Budget {
	if now == nil {
		now = time.Now
	}
	return &Budget{now: now}
}

// slot returns the current slot, reset when it was last used a window ago or more, and the current epoch.
func (b *Budget) slot() (*budgetSlot, int64) {
	e := b.now().UnixNano() / int64(BudgetTTL/budgetSlots)
	s := &b.slots[e%budgetSlots]
	if s.epoch != e {
		*s = budgetSlot{epoch: e}
	}
	return s, e
}

// Deposit counts one original request (not a retry) of the route.
func (b *Budget) Deposit() {
	b.mu.Lock()
	s, _ := b.slot()
	s.requests++
	b.mu.Unlock()
}

// Withdraw reports whether one more retry fits the budget, and spends it when it does.
func (b *Budget) Withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur, e := b.slot()
	var requests, retries int64
	for i := range b.slots {
		if s := &b.slots[i]; e-s.epoch < budgetSlots {
			requests += s.requests
			retries += s.withdrawals
		}
	}
	allowed := BudgetRatio*float64(requests) + BudgetMinPerSecond*BudgetTTL.Seconds()
	if float64(retries+1) > allowed {
		return false
	}
	cur.withdrawals++
	return true
}
