package routes

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Policy is what a service's annotations set: its default route's timeouts and retries (inherited by its
// routes that set none) and the failure accrual of its endpoints.
type Policy struct {
	Timeouts Timeouts
	Retry    *Retry
	Accrual  *Accrual // nil: no failure accrual
}

// Accrual is consecutive-failures failure accrual (Linkerd's balancer.linkerd.io/failure-accrual:
// consecutive): after MaxFailures failed responses in a row an endpoint is taken out for a penalty that
// starts at MinPenalty and doubles with every failed probe up to MaxPenalty, plus up to Jitter of itself
// at random; then one request probes it, and a success brings it back.
type Accrual struct {
	MaxFailures int
	MinPenalty  time.Duration
	MaxPenalty  time.Duration
	Jitter      float64
}

// DefaultAccrual is Linkerd's: 7 failures, 1 s to 1 min, jitter 0.5.
var DefaultAccrual = Accrual{MaxFailures: 7, MinPenalty: time.Second, MaxPenalty: time.Minute, Jitter: 0.5}

// Penalty is how long to leave an endpoint out after its level-th consecutive trip (0 for the first).
func (a *Accrual) Penalty(level int) time.Duration {
	d := a.MaxPenalty
	if level < 30 {
		d = min(a.MinPenalty<<level, a.MaxPenalty)
	}
	if j := int64(float64(d) * a.Jitter); j > 0 {
		d += time.Duration(rand.Int64N(j + 1))
	}
	return d
}

// The annotations, as Linkerd's (retry.linkerd.io/..., timeout.linkerd.io/...,
// balancer.linkerd.io/failure-accrual...) under meshscope's prefix.
const (
	AnnotationRetryHTTP    = "retry.meshscope.io/http"
	AnnotationRetryGRPC    = "retry.meshscope.io/grpc"
	AnnotationRetryLimit   = "retry.meshscope.io/limit"
	AnnotationRetryTimeout = "retry.meshscope.io/timeout"

	AnnotationTimeoutRequest  = "timeout.meshscope.io/request"
	AnnotationTimeoutResponse = "timeout.meshscope.io/response"
	AnnotationTimeoutIdle     = "timeout.meshscope.io/idle"

	AnnotationAccrual            = "balancer.meshscope.io/failure-accrual"
	AnnotationAccrualMaxFailures = "balancer.meshscope.io/failure-accrual-consecutive-max-failures"
	AnnotationAccrualMinPenalty  = "balancer.meshscope.io/failure-accrual-consecutive-min-penalty"
	AnnotationAccrualMaxPenalty  = "balancer.meshscope.io/failure-accrual-consecutive-max-penalty"
	AnnotationAccrualJitter      = "balancer.meshscope.io/failure-accrual-consecutive-jitter-ratio"
)

var prefixes = []string{"retry.meshscope.io/", "timeout.meshscope.io/", "balancer.meshscope.io/"}

// FromAnnotations reads a Service's (or a route object's) annotations into a Policy. Annotations outside
// meshscope's retry, timeout and balancer prefixes are ignored; an unknown one under them, or a value that
// does not parse, is an error naming the annotation.
func FromAnnotations(a map[string]string) (Policy, error) {
	var p Policy
	keys := make([]string, 0, len(a))
	for k := range a {
		for _, pre := range prefixes {
			if strings.HasPrefix(k, pre) {
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys) // the same file always reports the same first error
	for _, k := range keys {
		v := a[k]
		var err error
		switch k {
		case AnnotationRetryHTTP, AnnotationRetryGRPC, AnnotationRetryLimit, AnnotationRetryTimeout:
			// read together below
		case AnnotationTimeoutRequest:
			p.Timeouts.Request, err = parseDuration(v)
		case AnnotationTimeoutResponse:
			p.Timeouts.ResponseHeaders, err = parseDuration(v)
		case AnnotationTimeoutIdle:
			err = fmt.Errorf("not supported: the proxy has request and response timeouts only")
		case AnnotationAccrual:
			if v != "consecutive" {
				err = fmt.Errorf("want consecutive, got %q", v)
			}
		case AnnotationAccrualMaxFailures, AnnotationAccrualMinPenalty, AnnotationAccrualMaxPenalty, AnnotationAccrualJitter:
			if a[AnnotationAccrual] != "consecutive" {
				err = fmt.Errorf("set without %s: consecutive", AnnotationAccrual)
			}
		default:
			err = fmt.Errorf("unknown annotation")
		}
		if err != nil {
			return Policy{}, fmt.Errorf("annotation %s: %w", k, err)
		}
	}
	r, field, err := retryFrom(a[AnnotationRetryHTTP], a[AnnotationRetryGRPC], a[AnnotationRetryLimit], a[AnnotationRetryTimeout])
	if err != nil {
		return Policy{}, fmt.Errorf("annotation retry.meshscope.io/%s: %w", field, err)
	}
	p.Retry = r
	if a[AnnotationAccrual] == "consecutive" {
		acc, err := accrualFrom(a)
		if err != nil {
			return Policy{}, err
		}
		p.Accrual = acc
	}
	return p, nil
}

func accrualFrom(a map[string]string) (*Accrual, error) {
	acc := DefaultAccrual
	if v, ok := a[AnnotationAccrualMaxFailures]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("annotation %s: want a whole number of at least 1, got %q", AnnotationAccrualMaxFailures, v)
		}
		acc.MaxFailures = n
	}
	for _, d := range []struct {
		key string
		to  *time.Duration
	}{{AnnotationAccrualMinPenalty, &acc.MinPenalty}, {AnnotationAccrualMaxPenalty, &acc.MaxPenalty}} {
		if v, ok := a[d.key]; ok {
			x, err := parseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("annotation %s: %w", d.key, err)
			}
			*d.to = x
		}
	}
	if acc.MinPenalty > acc.MaxPenalty {
		return nil, fmt.Errorf("annotation %s: %s is more than the max penalty %s", AnnotationAccrualMinPenalty, acc.MinPenalty, acc.MaxPenalty)
	}
	if v, ok := a[AnnotationAccrualJitter]; ok {
		j, err := strconv.ParseFloat(v, 64)
		if err != nil || j < 0 || j > 100 {
			return nil, fmt.Errorf("annotation %s: want a ratio such as 0.5, got %q", AnnotationAccrualJitter, v)
		}
		acc.Jitter = j
	}
	return &acc, nil
}
