package routes_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meshscope/meshscope/proxy/routes"
)

func normalize(a string) (string, error) { return strings.ToLower(a), nil }

// table parses a routes: list.
func table(t testing.TB, src string, base routes.Policy) *routes.Table {
	t.Helper()
	rs, err := parse(src, base)
	if err != nil {
		t.Fatal(err)
	}
	return routes.NewTable(rs, &routes.Route{Timeouts: base.Timeouts, Retry: base.Retry})
}

func parse(src string, base routes.Policy) ([]*routes.Route, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		return nil, err
	}
	return routes.ParseYAML(doc.Content[0], base, normalize)
}

const matchRoutes = `
- name: any-api
  matches: [{path: {prefix: /api}}]
- name: api-v1
  matches: [{path: {prefix: /api/v1/}}]
- name: login
  matches: [{path: {exact: /api/login}}]
- name: versioned
  matches: [{path: {regex: "/api/v[0-9]+/items"}}]
- name: post-api
  matches: [{method: POST, path: {prefix: /api}}]
- name: canary
  matches: [{path: {prefix: /api}, headers: [{name: x-canary, value: "true"}]}]
- name: beta-users
  matches: [{headers: [{name: X-User, regex: "beta-.*"}]}]
`

func TestMatchFollowsGatewayAPIPrecedence(t *testing.T) {
	tb := table(t, matchRoutes, routes.Policy{})
	tests := []struct {
		name, method, path string
		header             http.Header
		want               string // "" for the default route
	}{
		{"an exact path wins over every prefix", "GET", "/api/login", nil, "login"},
		{"exact means the whole path", "GET", "/api/login/x", nil, "any-api"},
		{"a regex wins over prefixes", "GET", "/api/v2/items", nil, "versioned"},
		{"a regex matches the whole path only", "GET", "/api/v2/items/7", nil, "any-api"},
		{"the longest prefix wins", "GET", "/api/v1/users", nil, "api-v1"},
		{"a prefix matches on a segment boundary", "GET", "/apiary", nil, ""},
		{"the prefix itself matches", "GET", "/api", nil, "any-api"},
		{"a method match wins over none at the same path", "POST", "/api/x", nil, "post-api"},
		{"header matches win over fewer", "GET", "/api/x", http.Header{"X-Canary": {"true"}}, "canary"},
		{"a header value must be equal", "GET", "/api/x", http.Header{"X-Canary": {"True"}}, "any-api"},
		{"a header regex anywhere in the tree", "GET", "/other", http.Header{"X-User": {"beta-7"}}, "beta-users"},
		{"a header regex matches the whole value", "GET", "/other", http.Header{"X-User": {"xbeta-7"}}, ""},
		{"no match is the default route", "GET", "/", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tb.Match(tt.method, tt.path, tt.header)
			if r == nil {
				t.Fatal("Match returned nil")
			}
			if r.Name != tt.want {
				t.Errorf("%s %s %v: route %q, want %q", tt.method, tt.path, tt.header, r.Name, tt.want)
			}
			if tt.want == "" && r != tb.Default {
				t.Errorf("no match but not the Default route")
			}
		})
	}
}

func TestMatchTiesGoToTheRouteListedFirst(t *testing.T) {
	tb := table(t, "- name: first\n  matches: [{path: {prefix: /a}}]\n- name: second\n  matches: [{path: {prefix: /a}}]\n", routes.Policy{})
	if r := tb.Match("GET", "/a/b", nil); r.Name != "first" {
		t.Errorf("route %q, want first", r.Name)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	tb := table(t, matchRoutes, routes.Policy{})
	h := http.Header{"X-User": {"beta-1"}, "X-Canary": {"no"}}
	for _, path := range []string{"/api/login", "/api/v3/items", "/api/v1/x", "/other", "/"} {
		if n := testing.AllocsPerRun(100, func() { tb.Match("GET", path, h) }); n != 0 {
			t.Errorf("Match(%s) allocates %.0f times", path, n)
		}
	}
}

func TestParseRejectsBadRoutesNamingTheField(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"invalid regex", "- name: r\n  matches: [{path: {regex: \"/a(\"}}]\n",
			"line 2: routes[0] r: matches[0]: path.regex: bad expression \"/a(\": missing closing ): `/a(`"},
		{"weights summing to zero", "- name: r\n  backends: [{authority: a:80, weight: 0}]\n",
			"line 2: routes[0] r: backends: weights sum to zero"},
		{"timeout that does not parse", "- name: r\n  timeouts: {request: soon}\n",
			`line 2: routes[0] r: timeouts.request: bad duration "soon": want a number with a unit, such as 500ms or 2s`},
		{"negative timeout", "- name: r\n  timeouts: {response: -1s}\n",
			`line 2: routes[0] r: timeouts.response: bad duration "-1s": want more than zero`},
		{"unknown gRPC status", "- name: r\n  retry: {grpc: unavailabel}\n",
			`line 2: routes[0] r: retry.grpc: bad gRPC status "unavailabel": want a name such as unavailable, internal, deadline-exceeded, or 1..16`},
		{"bad HTTP status", "- name: r\n  retry: {http: 6xx}\n",
			`line 2: routes[0] r: retry.http: bad status "6xx": want 5xx, gateway-error, a code or a range such as 500-504`},
		{"retry limit out of range", "- name: r\n  retry: {http: 5xx, limit: 0}\n",
			`line 2: routes[0] r: retry.limit: want a whole number in 1..10, got "0"`},
		{"retry without statuses", "- name: r\n  retry: {limit: 2}\n",
			`line 2: routes[0] r: retry.http: a retry limit or timeout without http or grpc statuses to retry`},
		{"missing name", "- matches: []\n", "line 1: routes[0]: name: want a DNS label (lower-case letters, digits and -), the route_name of its metrics"},
		{"duplicate name", "- name: r\n- name: r\n", `line 2: routes[1]: name: "r" also names routes[0]`},
		{"unknown field", "- name: r\n  retries: {}\n", `line 2: routes[0]: unknown field "retries" (want name, matches, timeouts, retry, backends)`},
		{"two path kinds", "- name: r\n  matches: [{path: {exact: /a, prefix: /b}}]\n",
			"line 2: routes[0] r: matches[0]: path: want exactly one of exact, prefix, regex"},
		{"path without slash", "- name: r\n  matches: [{path: {prefix: api}}]\n",
			`line 2: routes[0] r: matches[0]: path.prefix: "api" does not start with /`},
		{"lower-case method", "- name: r\n  matches: [{method: get}]\n",
			`line 2: routes[0] r: matches[0]: method: want an HTTP method such as GET or POST, got "get"`},
		{"header with value and regex", "- name: r\n  matches: [{headers: [{name: a, value: b, regex: c}]}]\n",
			"line 2: routes[0] r: matches[0]: headers[0]: want exactly one of value, regex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(tt.src, routes.Policy{})
			if err == nil {
				t.Fatal("accepted")
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestRoutesInheritTheServicePolicyUnlessTheySetTheirOwn(t *testing.T) {
	base, err := routes.FromAnnotations(map[string]string{
		routes.AnnotationRetryHTTP: "5xx", routes.AnnotationTimeoutRequest: "3s",
	})
	if err != nil {
		t.Fatal(err)
	}
	tb := table(t, "- name: own\n  matches: [{path: {prefix: /own}}]\n  timeouts: {response: 1s}\n  retry: {grpc: unavailable, limit: 3}\n- name: inherits\n", base)
	own := tb.Match("GET", "/own", nil)
	if own.Timeouts != (routes.Timeouts{ResponseHeaders: time.Second}) || !own.Retry.RetryGRPC(14) || own.Retry.RetryHTTP(503) || own.Retry.MaxRetries() != 3 {
		t.Errorf("own route: timeouts %+v retry %+v", own.Timeouts, own.Retry)
	}
	inh := tb.Match("GET", "/x", nil)
	if inh.Name != "inherits" || inh.Timeouts.Request != 3*time.Second || !inh.Retry.RetryHTTP(503) || inh.Retry.MaxRetries() != 1 {
		t.Errorf("inheriting route %q: timeouts %+v retry %+v", inh.Name, inh.Timeouts, inh.Retry)
	}
	if own.Budget == nil || inh.Budget == nil || own.Budget == inh.Budget {
		t.Error("each route with retries has a budget of its own")
	}
}

func TestFromAnnotations(t *testing.T) {
	p, err := routes.FromAnnotations(map[string]string{
		"retry.meshscope.io/http":                                        "gateway-error,429",
		"retry.meshscope.io/grpc":                                        "unavailable, DEADLINE_EXCEEDED",
		"retry.meshscope.io/limit":                                       "2",
		"retry.meshscope.io/timeout":                                     "250ms",
		"timeout.meshscope.io/request":                                   "5s",
		"timeout.meshscope.io/response":                                  "1s",
		"balancer.meshscope.io/failure-accrual":                          "consecutive",
		"balancer.meshscope.io/failure-accrual-consecutive-max-failures": "3",
		"balancer.meshscope.io/failure-accrual-consecutive-max-penalty":  "10s",
		"app.kubernetes.io/name":                                         "ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	r := p.Retry
	for _, s := range []int{429, 502, 503, 504} {
		if !r.RetryHTTP(s) {
			t.Errorf("status %d not retried", s)
		}
	}
	if r.RetryHTTP(500) || !r.RetryGRPC(14) || !r.RetryGRPC(4) || r.RetryGRPC(13) || r.MaxRetries() != 2 || r.Timeout != 250*time.Millisecond {
		t.Errorf("retry %+v", r)
	}
	if p.Timeouts != (routes.Timeouts{Request: 5 * time.Second, ResponseHeaders: time.Second}) {
		t.Errorf("timeouts %+v", p.Timeouts)
	}
	want := routes.Accrual{MaxFailures: 3, MinPenalty: time.Second, MaxPenalty: 10 * time.Second, Jitter: 0.5}
	if p.Accrual == nil || *p.Accrual != want {
		t.Errorf("accrual %+v, want %+v", p.Accrual, want)
	}

	for _, bad := range []struct{ k, v, want string }{
		{"retry.meshscope.io/limt", "2", "annotation retry.meshscope.io/limt: unknown annotation"},
		{"timeout.meshscope.io/request", "5", `annotation timeout.meshscope.io/request: bad duration "5": want a number with a unit, such as 500ms or 2s`},
		{"balancer.meshscope.io/failure-accrual", "ewma", `annotation balancer.meshscope.io/failure-accrual: want consecutive, got "ewma"`},
		{"balancer.meshscope.io/failure-accrual-consecutive-max-failures", "3", "annotation balancer.meshscope.io/failure-accrual-consecutive-max-failures: set without balancer.meshscope.io/failure-accrual: consecutive"},
		{"timeout.meshscope.io/idle", "1m", "annotation timeout.meshscope.io/idle: not supported: the proxy has request and response timeouts only"},
	} {
		if _, err := routes.FromAnnotations(map[string]string{bad.k: bad.v}); err == nil || err.Error() != bad.want {
			t.Errorf("%s=%s: error %v, want %s", bad.k, bad.v, err, bad.want)
		}
	}
}

func TestAccrualPenaltyGrowsFromMinToMaxWithJitter(t *testing.T) {
	a := routes.DefaultAccrual
	for level, base := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if d := a.Penalty(level); d < base || d > base+base/2 {
			t.Errorf("level %d: penalty %s, want %s..%s", level, d, base, base+base/2)
		}
	}
	if d := a.Penalty(40); d < time.Minute || d > 90*time.Second {
		t.Errorf("penalty after many trips %s, want 1m..1m30s", d)
	}
}

func TestPickBackendSplitsByWeight(t *testing.T) {
	tb := table(t, "- name: split\n  backends: [{authority: v1:80, weight: 90}, {authority: v2:80, weight: 10}, {authority: off:80, weight: 0}]\n", routes.Policy{})
	r := tb.Match("GET", "/", nil)
	counts := map[string]int{}
	const n = 20000
	for range n {
		counts[r.PickBackend().Authority]++
	}
	// Four standard deviations of a binomial with p = 0.1 over n draws: 4 * sqrt(n * 0.1 * 0.9) = 170.
	if v2 := counts["v2:80"]; v2 < n/10-170 || v2 > n/10+170 || counts["off:80"] != 0 {
		t.Errorf("counts %v, want about 10%% v2 and no off", counts)
	}
	if n := testing.AllocsPerRun(100, func() { r.PickBackend() }); n != 0 {
		t.Errorf("PickBackend allocates %.0f times", n)
	}
}

func TestBudgetAllowsTwentyPercentPlusTenPerSecond(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := routes.NewBudget(func() time.Time { return now })
	// Without traffic: the reserve alone, 10 per second over the 10 s window.
	n := 0
	for b.Withdraw() {
		n++
	}
	if n != 100 {
		t.Fatalf("reserve allowed %d retries, want 100", n)
	}
	// 1,000 requests earn 200 more.
	for range 1000 {
		b.Deposit()
	}
	n = 0
	for b.Withdraw() {
		n++
	}
	if n != 200 {
		t.Fatalf("after 1000 requests %d more retries, want 200", n)
	}
	// A window later everything spent and earned has expired: the reserve again.
	now = now.Add(routes.BudgetTTL)
	n = 0
	for b.Withdraw() {
		n++
	}
	if n != 100 {
		t.Fatalf("a window later %d retries, want 100", n)
	}
}

// BenchmarkMatch is the route match of one request that walks every route of matchRoutes to the default
// route:
//
//	go test -run '^$' -bench Match -benchmem ./proxy/routes
func BenchmarkMatch(b *testing.B) {
	tb := table(b, matchRoutes, routes.Policy{})
	h := http.Header{"X-User": {"alpha-1"}, "Accept": {"*/*"}}
	b.ReportAllocs()
	for b.Loop() {
		tb.Match("GET", "/products/42", h)
	}
}
