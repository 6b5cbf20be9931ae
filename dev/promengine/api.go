package promengine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/scrape"
)

// The error types of Prometheus' HTTP API, which client_golang maps to its
// own ErrorType values.
const (
	errorBadData  = "bad_data"
	errorExec     = "execution"
	errorTimeout  = "timeout"
	errorCanceled = "canceled"
	errorInternal = "internal"
)

// apiError keeps the Prometheus error type beside the cause.
type apiError struct {
	typ string
	err error
}

func (e *apiError) Error() string { return e.typ + ": " + e.err.Error() }

// response is Prometheus' JSON envelope.
type response struct {
	Status    string   `json:"status"`
	Data      any      `json:"data,omitempty"`
	ErrorType string   `json:"errorType,omitempty"`
	Error     string   `json:"error,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
	Infos     []string `json:"infos,omitempty"`
}

// queryData is the data of /query and /query_range; promql's values marshal
// themselves in Prometheus' format.
type queryData struct {
	ResultType string       `json:"resultType"`
	Result     parser.Value `json:"result"`
}

// target mirrors one active target of Prometheus' /api/v1/targets.
type target struct {
	DiscoveredLabels   labels.Labels       `json:"discoveredLabels"`
	Labels             labels.Labels       `json:"labels"`
	ScrapePool         string              `json:"scrapePool"`
	ScrapeURL          string              `json:"scrapeUrl"`
	GlobalURL          string              `json:"globalUrl"`
	LastError          string              `json:"lastError"`
	LastScrape         time.Time           `json:"lastScrape"`
	LastScrapeDuration float64             `json:"lastScrapeDuration"`
	Health             scrape.TargetHealth `json:"health"`
	ScrapeInterval     string              `json:"scrapeInterval"`
	ScrapeTimeout      string              `json:"scrapeTimeout"`
}

type targetDiscovery struct {
	ActiveTargets       []*target      `json:"activeTargets"`
	DroppedTargets      []struct{}     `json:"droppedTargets"`
	DroppedTargetCounts map[string]int `json:"droppedTargetCounts"`
}

type apiResult struct {
	data     any
	warnings []string
	infos    []string
	// finalizer releases what data borrows (a query's pooled points); it runs
	// after the response is written, as in Prometheus.
	finalizer func()
}

type apiFunc func(*http.Request) (apiResult, *apiError)

func (e *Engine) newHandler() http.Handler {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "Prometheus Server is Ready.")
	}
	mux.HandleFunc("GET /-/ready", ok)
	mux.HandleFunc("GET /-/healthy", ok)
	// client_golang POSTs queries and falls back to GET on 405.
	for _, m := range []string{"GET", "POST"} {
		mux.Handle(m+" /api/v1/query", e.wrap(e.query))
		mux.Handle(m+" /api/v1/query_range", e.wrap(e.queryRange))
	}
	mux.Handle("GET /api/v1/targets", e.wrap(e.targets))
	return mux
}

// wrap is the one place that writes API responses, as in Prometheus.
func (e *Engine) wrap(f apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, apiErr := f(r)
		if res.finalizer != nil {
			defer res.finalizer()
		}
		w.Header().Set("Content-Type", "application/json")
		body := response{Status: "success", Data: res.data, Warnings: res.warnings, Infos: res.infos}
		code := http.StatusOK
		if apiErr != nil {
			body = response{Status: "error", ErrorType: apiErr.typ, Error: apiErr.err.Error()}
			code = statusCode(apiErr.typ)
			if code == http.StatusInternalServerError {
				e.logger.Error("api", "path", r.URL.Path, "err", apiErr.err)
			}
		}
		b, err := json.Marshal(body)
		if err != nil {
			e.logger.Error("encode api response", "err", err)
			http.Error(w, `{"status":"error","errorType":"internal","error":"encode response"}`, http.StatusInternalServerError)
			return
		}
		w.WriteHeader(code)
		if _, err := w.Write(b); err != nil {
			e.logger.Debug("write api response", "err", err)
		}
	})
}

// statusCode follows Prometheus' getDefaultErrorCode.
func statusCode(typ string) int {
	switch typ {
	case errorBadData:
		return http.StatusBadRequest
	case errorExec:
		return http.StatusUnprocessableEntity
	case errorCanceled:
		return 499
	case errorTimeout:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

func (e *Engine) query(r *http.Request) (apiResult, *apiError) {
	ts := time.Now()
	if v := r.FormValue("time"); v != "" {
		var err error
		if ts, err = parseTime(v); err != nil {
			return apiResult{}, &apiError{errorBadData, fmt.Errorf("invalid parameter \"time\": %w", err)}
		}
	}
	ctx, cancel, apiErr := withTimeout(r)
	if apiErr != nil {
		return apiResult{}, apiErr
	}
	defer cancel()
	qs := r.FormValue("query")
	q, err := e.engine.NewInstantQuery(ctx, e.db, nil, qs, ts)
	if err != nil {
		return apiResult{}, &apiError{errorBadData, err}
	}
	return execute(ctx, q, qs)
}

func (e *Engine) queryRange(r *http.Request) (apiResult, *apiError) {
	start, err := parseTime(r.FormValue("start"))
	if err != nil {
		return apiResult{}, &apiError{errorBadData, fmt.Errorf("invalid parameter \"start\": %w", err)}
	}
	end, err := parseTime(r.FormValue("end"))
	if err != nil {
		return apiResult{}, &apiError{errorBadData, fmt.Errorf("invalid parameter \"end\": %w", err)}
	}
	if end.Before(start) {
		return apiResult{}, &apiError{errorBadData, errors.New("end timestamp must not be before start time")}
	}
	step, err := parseDuration(r.FormValue("step"))
	if err != nil {
		return apiResult{}, &apiError{errorBadData, fmt.Errorf("invalid parameter \"step\": %w", err)}
	}
	if step <= 0 {
		return apiResult{}, &apiError{errorBadData, errors.New("zero or negative query resolution step widths are not accepted. Try a positive integer")}
	}
	// Prometheus' own bound on points per series.
	if end.Sub(start)/step > 11000 {
		return apiResult{}, &apiError{errorBadData, errors.New("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")}
	}
	ctx, cancel, apiErr := withTimeout(r)
	if apiErr != nil {
		return apiResult{}, apiErr
	}
	defer cancel()
	qs := r.FormValue("query")
	q, err := e.engine.NewRangeQuery(ctx, e.db, nil, qs, start, end, step)
	if err != nil {
		return apiResult{}, &apiError{errorBadData, err}
	}
	return execute(ctx, q, qs)
}

func withTimeout(r *http.Request) (context.Context, context.CancelFunc, *apiError) {
	v := r.FormValue("timeout")
	if v == "" {
		ctx, cancel := context.WithCancel(r.Context())
		return ctx, cancel, nil
	}
	d, err := parseDuration(v)
	if err != nil {
		return nil, nil, &apiError{errorBadData, fmt.Errorf("invalid parameter \"timeout\": %w", err)}
	}
	ctx, cancel := context.WithTimeout(r.Context(), d)
	return ctx, cancel, nil
}

func execute(ctx context.Context, q promql.Query, qs string) (apiResult, *apiError) {
	res := q.Exec(ctx)
	if res.Err != nil {
		q.Close()
		var (
			timeout promql.ErrQueryTimeout
			cancel  promql.ErrQueryCanceled
			storage promql.ErrStorage
		)
		switch {
		case errors.As(res.Err, &timeout):
			return apiResult{}, &apiError{errorTimeout, res.Err}
		case errors.As(res.Err, &cancel):
			return apiResult{}, &apiError{errorCanceled, res.Err}
		case errors.As(res.Err, &storage):
			return apiResult{}, &apiError{errorInternal, res.Err}
		default:
			return apiResult{}, &apiError{errorExec, res.Err}
		}
	}
	warnings, infos := res.Warnings.AsStrings(qs, 10, 10)
	return apiResult{
		data:      queryData{ResultType: string(res.Value.Type()), Result: res.Value},
		warnings:  warnings,
		infos:     infos,
		finalizer: q.Close,
	}, nil
}

func (e *Engine) targets(*http.Request) (apiResult, *apiError) {
	active := e.scrape.TargetsActive()
	pools := make([]string, 0, len(active))
	for p := range active {
		pools = append(pools, p)
	}
	sort.Strings(pools)
	res := targetDiscovery{ActiveTargets: []*target{}, DroppedTargets: []struct{}{}, DroppedTargetCounts: e.scrape.TargetsDroppedCounts()}
	builder := labels.NewBuilder(labels.EmptyLabels())
	for _, pool := range pools {
		for _, t := range active[pool] {
			lastErr := ""
			if err := t.LastError(); err != nil {
				lastErr = err.Error()
			}
			u := t.URL().String()
			res.ActiveTargets = append(res.ActiveTargets, &target{
				DiscoveredLabels:   t.DiscoveredLabels(builder),
				Labels:             t.Labels(builder),
				ScrapePool:         pool,
				ScrapeURL:          u,
				GlobalURL:          u,
				LastError:          lastErr,
				LastScrape:         t.LastScrape(),
				LastScrapeDuration: t.LastScrapeDuration().Seconds(),
				Health:             t.Health(),
				ScrapeInterval:     t.GetValue(model.ScrapeIntervalLabel),
				ScrapeTimeout:      t.GetValue(model.ScrapeTimeoutLabel),
			})
		}
	}
	return apiResult{data: res}, nil
}

// parseTime accepts what Prometheus accepts: Unix seconds or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if t, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(t)
		return time.Unix(int64(sec), int64(math.Round(frac*1000)*float64(time.Millisecond))).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", s)
}

// parseDuration accepts seconds as a float or a Prometheus duration (1m30s).
func parseDuration(s string) (time.Duration, error) {
	if d, err := strconv.ParseFloat(s, 64); err == nil {
		ts := d * float64(time.Second)
		if math.IsNaN(ts) || ts >= float64(math.MaxInt64) || ts < float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration. It overflows int64", s)
		}
		return time.Duration(ts), nil
	}
	if d, err := model.ParseDuration(s); err == nil {
		return time.Duration(d), nil
	}
	return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
}
