package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// backendAnswering serves body as the answer to every Prometheus API call,
// standing for a backend that misbehaves in ways a healthy Prometheus won't.
func backendAnswering(t *testing.T, status int, body string, delay time.Duration) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // until the body is read, the server cannot see the client leave
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestQuerierGuardsEveryCall(t *testing.T) {
	vector := `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"namespace":"shop"},"value":[1,"2"]}]}}`
	for _, tc := range []struct {
		name       string
		status     int
		body       string
		delay      time.Duration
		max        int64
		wantErr    error
		wantInErr  string
		wantWarned string
	}{
		{name: "vector answer passes", status: 200, body: vector},
		{name: "warnings are kept", status: 200, wantWarned: "too many samples",
			body: `{"status":"success","warnings":["too many samples"],"data":{"resultType":"vector","result":[]}}`},
		{name: "error names the query", status: 400, wantInErr: `query "sum(up)"`,
			body: `{"status":"error","errorType":"bad_data","error":"parse error"}`},
		{name: "wrong result type is refused", status: 200, wantInErr: "want a vector, got scalar",
			body: `{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}`},
		{name: "oversized answer is cut off", status: 200, body: vector, max: 40, wantErr: ErrResponseTooLarge},
		{name: "slow backend times out", status: 200, body: vector, delay: time.Second, wantErr: context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := Dial(backendAnswering(t, tc.status, tc.body, tc.delay), Options{Timeout: 200 * time.Millisecond, MaxResponseBytes: tc.max})
			if err != nil {
				t.Fatal(err)
			}
			vec, warnings, err := q.Vector(context.Background(), "sum(up)")
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.wantInErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantInErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantInErr)
				}
			case err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.wantWarned != "":
				if len(warnings) != 1 || warnings[0] != tc.wantWarned {
					t.Fatalf("warnings = %q, want [%q]", warnings, tc.wantWarned)
				}
			default:
				if len(vec) != 1 || vec[0].Value != 2 {
					t.Fatalf("vector = %v, want one sample of 2", vec)
				}
			}
		})
	}
}

// A recorded p99 is one series per deployment: a table of deployments reads
// it over the windows it is recorded at, anything else (another window, a
// sum over deployments, a rules file without it) computes the quantile from
// the buckets.
func TestRecordedP99OnlyServesItsOwnGroupingAndWindows(t *testing.T) {
	deployments := Scope{Direction: "inbound", By: []string{"namespace", "deployment"}, Match: []Match{{Label: "namespace", Value: "shop"}}}
	summed := Scope{Direction: "inbound", Match: []Match{{Label: "namespace", Value: "shop"}, {Label: "deployment", Value: "web"}}}
	windows := []time.Duration{time.Minute, 5 * time.Minute, time.Hour}
	for _, tc := range []struct {
		name   string
		series []string // what the backend holds
		sc     Scope
		window time.Duration
		want   string // the start of the p99 query
	}{
		{"deployments over 1m", []string{"deployment:request_total:rate1m", "deployment:response_latency_ms:p99_rate1m"}, deployments, time.Minute,
			`deployment:response_latency_ms:p99_rate1m{direction="inbound",namespace="shop"}`},
		{"deployments over 1h", []string{"deployment:request_total:rate1m", "deployment:response_latency_ms:p99_rate1h"}, deployments, time.Hour,
			`deployment:response_latency_ms:p99_rate1h{direction="inbound",namespace="shop"}`},
		{"deployments over 5m", []string{"deployment:request_total:rate1m", "deployment:response_latency_ms:p99_rate1m"}, deployments, 5 * time.Minute,
			`histogram_quantile(0.99, sum by (le, namespace, deployment) (avg_over_time(deployment:response_latency_ms_bucket:rate1m`},
		{"a rules file without p99", []string{"deployment:request_total:rate1m"}, deployments, time.Minute,
			`histogram_quantile(0.99, sum by (le, namespace, deployment) (deployment:response_latency_ms_bucket:rate1m`},
		{"one deployment summed", []string{"deployment:request_total:rate1m", "deployment:response_latency_ms:p99_rate1m"}, summed, time.Minute,
			`histogram_quantile(0.99, sum by (le) (deployment:response_latency_ms_bucket:rate1m`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var result []string
			for _, name := range tc.series {
				result = append(result, `{"metric":{"__name__":"`+name+`"},"value":[1,"1"]}`)
			}
			body := `{"status":"success","data":{"resultType":"vector","result":[` + strings.Join(result, ",") + `]}}`
			q, err := Dial(backendAnswering(t, 200, body, 0), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := q.DetectRecorded(context.Background(), windows); err != nil {
				t.Fatal(err)
			}
			sc := tc.sc
			sc.Window = tc.window
			if got := LatencyQuery(q.plan(sc), 0.99); !strings.HasPrefix(got, tc.want) {
				t.Errorf("p99 query\n%s\nwant it to start\n%s", got, tc.want)
			}
			if got := LatencyQuery(q.plan(sc), 0.95); !strings.HasPrefix(got, "histogram_quantile(0.95, ") {
				t.Errorf("p95 query %s, want it from the buckets", got)
			}
		})
	}
}
