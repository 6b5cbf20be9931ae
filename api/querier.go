// Package api is the dashboard's data layer: the one querier through which
// PromQL leaves the process, the PromQL builders of the golden metrics, and
// their results as plain Go structs. It renders nothing.
package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// PromAPI is the part of client_golang's v1.API the dashboard uses.
type PromAPI interface {
	Query(ctx context.Context, query string, ts time.Time, opts ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error)
	QueryRange(ctx context.Context, query string, r v1.Range, opts ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error)
	Targets(ctx context.Context) (v1.TargetsResult, error)
}

// ErrResponseTooLarge is returned when the backend's answer exceeds the cap.
var ErrResponseTooLarge = errors.New("response too large")

// Querier runs PromQL against one backend. Every call has a timeout, errors
// carry the query text, and warnings are kept for the caller to show.
type Querier struct {
	api PromAPI
	// Backend names the backend in messages, e.g. its URL.
	Backend string
	// Timeout bounds each call; zero means 10s.
	Timeout time.Duration
	// Log receives the backend's warnings; nil discards them.
	Log *slog.Logger
	// Observe, when set, is told the outcome of every call ("ok" or "error").
	Observe func(call string, d time.Duration, err error)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// rec is what DetectRecorded found; zero: raw series only.
	rec recorded
}

// Options configure a Querier made by Dial.
type Options struct {
	// Timeout bounds each call; zero means 10s.
	Timeout time.Duration
	// MaxResponseBytes caps each response body; zero means 32 MiB.
	MaxResponseBytes int64
	// Transport carries the requests; nil means client_golang's default. `web check` reaches an
	// in-cluster Prometheus through the API server's service proxy with the kubeconfig's credentials.
	Transport http.RoundTripper
}

// Dial returns a Querier for the Prometheus HTTP API at url.
func Dial(url string, o Options) (*Querier, error) {
	max := o.MaxResponseBytes
	if max <= 0 {
		max = 32 << 20
	}
	c, err := promapi.NewClient(promapi.Config{
		Address:      url,
		RoundTripper: limitTransport{next: cmp.Or(o.Transport, promapi.DefaultRoundTripper), max: max},
	})
	if err != nil {
		return nil, fmt.Errorf("prometheus url %q: %w", url, err)
	}
	return &Querier{api: v1.NewAPI(c), Backend: url, Timeout: o.Timeout}, nil
}

// New returns a Querier over api, e.g. an in-memory one in benchmarks.
func New(api PromAPI, backend string) *Querier {
	return &Querier{api: api, Backend: backend}
}

func (q *Querier) timeout() time.Duration {
	if q.Timeout <= 0 {
		return 10 * time.Second
	}
	return q.Timeout
}

func (q *Querier) now() time.Time {
	if q.Now == nil {
		return time.Now()
	}
	return q.Now()
}

func (q *Querier) done(call string, start time.Time, err error) {
	if q.Observe != nil {
		q.Observe(call, time.Since(start), err)
	}
}

func (q *Querier) warn(query string, ws v1.Warnings) []string {
	for _, w := range ws {
		if q.Log != nil {
			q.Log.Warn("prometheus warning", "query", query, "warning", w)
		}
	}
	return ws
}

// Vector runs an instant query that must return a vector.
func (q *Querier) Vector(ctx context.Context, query string) (model.Vector, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, q.timeout())
	defer cancel()
	start := time.Now()
	v, ws, _, err := q.api.Query(ctx, query, q.now(), v1.WithTimeout(q.timeout()))
	if err == nil {
		if _, ok := v.(model.Vector); !ok {
			err = fmt.Errorf("want a vector, got %s", typeName(v))
		}
	}
	q.done("query", start, err)
	if err != nil {
		return nil, q.warn(query, ws), fmt.Errorf("query %q: %w", query, err)
	}
	return v.(model.Vector), q.warn(query, ws), nil
}

// Matrix runs a range query over [end-span, end] at step and must return a matrix.
func (q *Querier) Matrix(ctx context.Context, query string, end time.Time, span, step time.Duration) (model.Matrix, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, q.timeout())
	defer cancel()
	start := time.Now()
	v, ws, _, err := q.api.QueryRange(ctx, query, v1.Range{Start: end.Add(-span), End: end, Step: step}, v1.WithTimeout(q.timeout()))
	if err == nil {
		if _, ok := v.(model.Matrix); !ok {
			err = fmt.Errorf("want a matrix, got %s", typeName(v))
		}
	}
	q.done("query_range", start, err)
	if err != nil {
		return nil, q.warn(query, ws), fmt.Errorf("range query %q: %w", query, err)
	}
	return v.(model.Matrix), q.warn(query, ws), nil
}

// Targets returns the backend's active scrape targets of job.
func (q *Querier) Targets(ctx context.Context, job string) ([]v1.ActiveTarget, error) {
	ctx, cancel := context.WithTimeout(ctx, q.timeout())
	defer cancel()
	start := time.Now()
	res, err := q.api.Targets(ctx)
	q.done("targets", start, err)
	if err != nil {
		return nil, fmt.Errorf("targets: %w", err)
	}
	var out []v1.ActiveTarget
	for _, t := range res.Active {
		if string(t.Labels[model.JobLabel]) == job {
			out = append(out, t)
		}
	}
	return out, nil
}

// Ping checks that the backend answers a trivial query.
func (q *Querier) Ping(ctx context.Context) error {
	_, _, err := q.Vector(ctx, "vector(1)")
	return err
}

func typeName(v model.Value) string {
	if v == nil {
		return "nothing"
	}
	return v.Type().String()
}

// limitTransport fails responses whose body exceeds max bytes, so a huge
// answer cannot exhaust the dashboard's memory.
type limitTransport struct {
	next http.RoundTripper
	max  int64
}

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.max {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrResponseTooLarge, resp.ContentLength, t.max)
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte tells a body of exactly max bytes from a longer one.
		var one [1]byte
		if n, _ := b.rc.Read(one[:]); n > 0 {
			return 0, ErrResponseTooLarge
		}
		return b.rc.Read(p)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
