package api

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/meshscope/meshscope/api/rules"
)

var (
	nsScope     = Scope{Direction: "inbound", By: []string{"namespace"}, Window: time.Minute}
	deployScope = Scope{Direction: "inbound", By: []string{"namespace", "deployment"},
		Match: []Match{{Label: "namespace", Value: "shop"}}, Window: 5 * time.Minute}
	edgeScope = Scope{Direction: "outbound", By: []string{"namespace", "deployment", "dst_namespace", "dst_deployment"},
		Match: []Match{{Label: "dst_namespace", Value: "shop"}, {Label: "dst_deployment", Value: "voting"}}, Window: 10 * time.Second}
)

func TestBuildersExactQueries(t *testing.T) {
	for _, tc := range []struct {
		name, got, want string
	}{
		{"success rate per namespace keeps no-traffic apart from zero success", SuccessRateQuery(nsScope),
			`(sum by (namespace) (rate(response_total{direction="inbound",classification="success"}[1m])) or ` +
				`sum by (namespace) (rate(response_total{direction="inbound"}[1m])) * 0) / ` +
				`sum by (namespace) (rate(response_total{direction="inbound"}[1m]))`},
		{"rps per deployment of one namespace", RPSQuery(deployScope),
			`sum by (namespace, deployment) (rate(request_total{direction="inbound",namespace="shop"}[5m]))`},
		{"p99 per deployment groups by le too", LatencyQuery(deployScope, 0.99),
			`histogram_quantile(0.99, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="inbound",namespace="shop"}[5m])))`},
		{"p50 quantile renders as 0.5", LatencyQuery(nsScope, 0.5),
			`histogram_quantile(0.5, sum by (le, namespace) (rate(response_latency_ms_bucket{direction="inbound"}[1m])))`},
		{"tcp connections are a gauge of client connections, not a rate", TCPQuery(deployScope),
			`sum by (namespace, deployment) (tcp_open_connections{direction="inbound",peer="src",namespace="shop"})`},
		{"edge tcp connections count the destination side", TCPQuery(edgeScope),
			`sum by (namespace, deployment, dst_namespace, dst_deployment) (tcp_open_connections{direction="outbound",peer="dst",dst_namespace="shop",dst_deployment="voting"})`},
		{"callers are outbound series toward the deployment", RPSQuery(edgeScope),
			`sum by (namespace, deployment, dst_namespace, dst_deployment) (rate(request_total{direction="outbound",dst_namespace="shop",dst_deployment="voting"}[10s]))`},
		{"no grouping sums everything", RPSQuery(Scope{Direction: "inbound", Match: []Match{{Label: "pod", Value: "web-0"}}}),
			`sum(rate(request_total{direction="inbound",pod="web-0"}[1m]))`},
		{"recorded success rate at 1m reads the last recorded 1m rates", SuccessRateQuery(recordedAt(nsScope, "namespace")),
			`(sum by (namespace) (namespace:response_total:rate1m{direction="inbound",classification="success"}) or ` +
				`sum by (namespace) (namespace:response_total:rate1m{direction="inbound"}) * 0) / ` +
				`sum by (namespace) (namespace:response_total:rate1m{direction="inbound"})`},
		{"recorded rps over 5m averages five recorded 1m rates", RPSQuery(recordedAt(deployScope, "deployment")),
			`sum by (namespace, deployment) (avg_over_time(deployment:request_total:rate1m{direction="inbound",namespace="shop"}[5m]))`},
		{"recorded p99 reads the recorded buckets", LatencyQuery(recordedAt(deployScope, "deployment"), 0.99),
			`histogram_quantile(0.99, sum by (le, namespace, deployment) (avg_over_time(deployment:response_latency_ms_bucket:rate1m{direction="inbound",namespace="shop"}[5m])))`},
		{"recorded edge tcp connections", TCPQuery(recordedAt(Scope{Direction: "outbound", By: edgeScope.By, Match: edgeScope.Match}, "edge")),
			`sum by (namespace, deployment, dst_namespace, dst_deployment) (edge:tcp_open_connections:sum{direction="outbound",peer="dst",dst_namespace="shop",dst_deployment="voting"})`},
		{"hostile value stays inside its quotes", RPSQuery(Scope{Direction: "inbound", Match: []Match{{Label: "namespace", Value: `a"} or vector(1) #`}}}),
			`sum(rate(request_total{direction="inbound",namespace="a\"} or vector(1) #"}[1m]))`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", tc.got, tc.want)
			}
			if _, err := parser.NewParser(parser.Options{}).ParseExpr(tc.got); err != nil {
				t.Errorf("query does not parse: %v", err)
			}
		})
	}
}

// recordedAt is sc reading the recorded series of the named level.
func recordedAt(sc Scope, level string) Scope {
	for _, l := range rules.Levels() {
		if l.Name == level {
			sc.Recorded = l
		}
	}
	return sc
}

func TestNameValidation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		validate  func(string) error
		value     string
		wantValid bool
	}{
		{"plain namespace", ValidNamespace, "shop", true},
		{"namespace with dash and digits", ValidNamespace, "team-42", true},
		{"namespace with dot is not a label", ValidNamespace, "a.b", false},
		{"namespace upper case", ValidNamespace, "Shop", false},
		{"namespace leading dash", ValidNamespace, "-shop", false},
		{"namespace 64 chars", ValidNamespace, strings.Repeat("a", 64), false},
		{"namespace 63 chars", ValidNamespace, strings.Repeat("a", 63), true},
		{"empty namespace", ValidNamespace, "", false},
		{"namespace with quote", ValidNamespace, `a"b`, false},
		{"deployment with dots", deploy, "web.v2", true},
		{"pod name", pod, "voting-7d9f-0", true},
		{"deployment with slash", deploy, "a/b", false},
		{"deployment with brace", deploy, "a}", false},
		{"deployment trailing dot", deploy, "web.", false},
		{"deployment 254 chars", deploy, strings.Repeat("a", 254), false},
		{"deployment with newline", deploy, "a\nb", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.validate(tc.value)
			if (err == nil) != tc.wantValid {
				t.Fatalf("valid = %v, want %v (err %v)", err == nil, tc.wantValid, err)
			}
			if err != nil && !errors.Is(err, ErrInvalidName) {
				t.Errorf("error %v is not ErrInvalidName", err)
			}
		})
	}
}

func deploy(s string) error { return ValidName("deployment", s) }
func pod(s string) error    { return ValidName("pod", s) }

// FuzzMatcherValueStaysQuoted proves that whatever a label value holds, the
// built query parses and selects exactly that value: it cannot close its
// quotes and add PromQL of its own, nor, in a set matcher, widen the set
// with regexp of its own.
func FuzzMatcherValueStaysQuoted(f *testing.F) {
	for _, s := range []string{"shop", `"`, `\`, `"} or vector(1) or {x="`, "\n", "`", "\x00", "日本", `\"`, "'"} {
		f.Add(s)
	}
	p := parser.NewParser(parser.Options{})
	f.Fuzz(func(t *testing.T, value string) {
		if !utf8.ValidString(value) {
			t.Skip("label values are UTF-8")
		}
		sc := Scope{Direction: "inbound", By: []string{"deployment"},
			Match: []Match{{Label: "namespace", Value: value}, MatchAny("deployment", []string{value, "b"})}}
		for _, q := range []string{SuccessRateQuery(sc), RPSQuery(sc), LatencyQuery(sc, 0.95), TCPQuery(sc)} {
			expr, err := p.ParseExpr(q)
			if err != nil {
				t.Fatalf("query for %q does not parse: %v\n%s", value, err, q)
			}
			selectors := 0
			parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok {
					return nil
				}
				selectors++
				found, sets := 0, 0
				for _, m := range vs.LabelMatchers {
					switch m.Name {
					case "namespace":
						found++
						if m.Value != value {
							t.Errorf("matcher value %q, want %q in\n%s", m.Value, value, q)
						}
					case "deployment":
						sets++
						if !m.Matches(value) || !m.Matches("b") {
							t.Errorf("set matcher %s does not select %q and \"b\"", m, value)
						}
						if value != "" && (m.Matches(value+"b") || m.Matches("b"+value)) {
							t.Errorf("set matcher %s selects more than %q and \"b\"", m, value)
						}
					}
				}
				if found != 1 || sets != 1 {
					t.Errorf("selector %s has %d namespace and %d deployment matchers, want 1 each", vs, found, sets)
				}
				return nil
			})
			if selectors == 0 {
				t.Fatalf("no selector in %s", q)
			}
		}
	})
}
