package api

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api/rules"
)

// Label names the dashboard groups and selects by: the proxies' target labels
// and, on outbound metrics, their destination's.
const (
	LabelNamespace     = "namespace"
	LabelDeployment    = "deployment"
	LabelPod           = "pod"
	LabelDstNamespace  = "dst_namespace"
	LabelDstDeployment = "dst_deployment"
)

// Job is the scrape job of the proxies.
const Job = "meshscope-proxy"

// ErrInvalidName is returned for a name that Kubernetes would not accept.
var ErrInvalidName = errors.New("invalid name")

var (
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// ValidNamespace checks a namespace name against Kubernetes' rule for it
// (an RFC 1123 label: at most 63 lower-case alphanumerics or '-').
func ValidNamespace(s string) error {
	if len(s) > 63 || !dns1123Label.MatchString(s) {
		return fmt.Errorf("%w: namespace %q: want at most 63 lower-case letters, digits or '-', starting and ending alphanumeric", ErrInvalidName, s)
	}
	return nil
}

// ValidName checks a deployment or pod name against Kubernetes' rule for them
// (an RFC 1123 subdomain: at most 253 characters, dot-separated labels).
func ValidName(kind, s string) error {
	if len(s) > 253 || !dns1123Subdomain.MatchString(s) {
		return fmt.Errorf("%w: %s %q: want at most 253 lower-case letters, digits, '-' or '.', starting and ending alphanumeric", ErrInvalidName, kind, s)
	}
	return nil
}

// Match is an equality matcher, label="value"; with AnyOf set, a set
// matcher, label=~"v1|v2|…", that selects any of those values exactly.
type Match struct {
	Label, Value string
	// AnyOf, when not empty, replaces Value: the series whose label holds any
	// of these values. Each is matched literally (regexp.QuoteMeta), whatever
	// characters it holds.
	AnyOf []string
}

// MatchAny is the set matcher selecting label's series whose value is any of
// values, which must not be empty.
func MatchAny(label string, values []string) Match {
	return Match{Label: label, AnyOf: values}
}

// Scope is what a table or chart shows: the metrics of one direction,
// selected by equality matchers, grouped by labels, over a rate window.
type Scope struct {
	// Direction is "inbound" (a workload's own traffic) or "outbound" (edges).
	Direction string
	// By are the grouping labels, one row per distinct combination; empty sums
	// everything selected into one row.
	By []string
	// Match selects the series.
	Match []Match
	// Window is the rate window; zero means 1m.
	Window time.Duration
	// Recorded, when its Name is set, reads that level's recorded series
	// (api/rules) instead of the raw ones; Window must then be a whole
	// multiple of rules.Interval. The Querier sets it (see DetectRecorded).
	Recorded rules.Level
	// RecordedP99, when set, is the recorded p99 series LatencyQuery reads
	// for the 0.99 quantile (set by the Querier with Recorded).
	RecordedP99 string
}

func (sc Scope) windowDuration() time.Duration {
	if sc.Window <= 0 {
		return time.Minute
	}
	return sc.Window
}

func (sc Scope) window() string {
	return model.Duration(sc.windowDuration()).String()
}

// selector renders the series selector of metric with extra matchers first.
// Values are quoted with Go escaping, which PromQL's string literals share,
// so no value can end its quotes early.
func (sc Scope) selector(metric string, extra ...Match) string {
	return selector(metric, append(append([]Match{{Label: "direction", Value: sc.Direction}}, extra...), sc.Match...))
}

// selector renders metric{label="value",...}, each value quoted; set
// matchers as label=~"a|b", each value's regexp metacharacters escaped
// (PromQL's regexps are Go's, anchored at both ends).
func selector(metric string, matches []Match) string {
	var b strings.Builder
	b.WriteString(metric)
	b.WriteByte('{')
	for i, m := range matches {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.Label)
		if len(m.AnyOf) == 0 {
			b.WriteByte('=')
			b.WriteString(strconv.Quote(m.Value))
			continue
		}
		quoted := make([]string, len(m.AnyOf))
		for j, v := range m.AnyOf {
			quoted[j] = regexp.QuoteMeta(v)
		}
		b.WriteString("=~")
		b.WriteString(strconv.Quote(strings.Join(quoted, "|")))
	}
	b.WriteByte('}')
	return b.String()
}

// rate is the per-second rate of counter metric over the window. From
// recorded 1m rates, a longer window is their average over it: exact for an
// aligned window, as each recorded rate covers one minute of it.
func (sc Scope) rate(metric string, extra ...Match) string {
	if sc.Recorded.Name == "" {
		return "rate(" + sc.selector(metric, extra...) + "[" + sc.window() + "])"
	}
	sel := sc.selector(sc.Recorded.Series(metric), extra...)
	if sc.windowDuration() <= rules.Interval {
		return sel
	}
	return "avg_over_time(" + sel + "[" + sc.window() + "])"
}

// gauge selects gauge metric, or the rules' sum of it at sc's level.
func (sc Scope) gauge(metric string, extra ...Match) string {
	if sc.Recorded.Name != "" {
		metric = sc.Recorded.Series(metric)
	}
	return sc.selector(metric, extra...)
}

func sumBy(by []string, expr string) string { return aggregateBy("sum", by, expr) }

func aggregateBy(op string, by []string, expr string) string {
	if len(by) == 0 {
		return op + "(" + expr + ")"
	}
	return op + " by (" + strings.Join(by, ", ") + ") (" + expr + ")"
}

// up selects the scrape health series of the scope's proxies: one per
// target, with the target's labels, 1 when its last scrape succeeded.
func (sc Scope) up() string {
	return selector("up", append([]Match{{Label: "job", Value: Job}}, sc.Match...))
}

// MeshedQuery counts each row's proxies that Prometheus scrapes, by the
// health of their last scrape: one sample per row and value of "up", labelled
// up="1" (answered) or up="0". It reads "up" rather than the targets API so
// that the answer holds the rows asked for alone (at 10,000 proxies the
// targets list is megabytes), and once, with count_values, for both counts.
func MeshedQuery(sc Scope) string {
	return aggregateBy("count_values", sc.By, `"up", `+sc.up())
}

// SuccessRateQuery is the share of responses classified success. Groups with
// responses but no successes get 0 (the "or … * 0"), groups without responses
// get NaN: no traffic, which is not 0% success.
func SuccessRateQuery(sc Scope) string {
	all := sumBy(sc.By, sc.rate(rules.Responses))
	ok := sumBy(sc.By, sc.rate(rules.Responses, Match{Label: "classification", Value: "success"}))
	return "(" + ok + " or " + all + " * 0) / " + all
}

// RPSQuery is the request rate per second.
func RPSQuery(sc Scope) string {
	return sumBy(sc.By, sc.rate(rules.Requests))
}

// LatencyQuery is the q-quantile (0.5 for p50) of response latency in ms.
func LatencyQuery(sc Scope, q float64) string {
	if q == 0.99 && sc.RecordedP99 != "" {
		return sc.selector(sc.RecordedP99)
	}
	return "histogram_quantile(" + strconv.FormatFloat(q, 'f', -1, 64) + ", " +
		sumBy(append([]string{"le"}, sc.By...), sc.rate(rules.Latency)) + ")"
}

// TCPQuery is the number of open TCP connections: from clients (peer src)
// for inbound, to destinations (peer dst) for outbound edges. Without the
// peer matcher each proxied connection would count twice, once per side.
func TCPQuery(sc Scope) string {
	return sumBy(sc.By, sc.gauge(rules.TCPOpen, sc.peer()))
}

// MTLSQuery is the share of traffic over mutual TLS (tls="true"), 0..1: of the
// requests where there are requests, else of the open TCP connections (an
// opaque TCP workload). No traffic at all gives no sample.
func MTLSQuery(sc Scope) string {
	secured := Match{Label: "tls", Value: "true"}
	share := func(all, tls string) string {
		return "(" + tls + " or " + all + " * 0) / (" + all + " > 0)"
	}
	requests := share(sumBy(sc.By, sc.rate(rules.Requests)), sumBy(sc.By, sc.rate(rules.Requests, secured)))
	conns := share(sumBy(sc.By, sc.gauge(rules.TCPOpen, sc.peer())),
		sumBy(sc.By, sc.gauge(rules.TCPOpen, secured, sc.peer())))
	return "(" + requests + ") or (" + conns + ")"
}

// CertExpiryQuery is, for each proxy of the scope's matchers, the seconds
// left on its identity certificate, where fewer than within remain: a proxy
// renews at 70% of its certificate's life, so one this close to the end has
// been failing to renew.
func CertExpiryQuery(sc Scope, within time.Duration) string {
	// The proxy's own gauge has no direction label: the scope's matchers only.
	sel := selector("identity_cert_expiration_timestamp_seconds", sc.Match)
	return "min by (" + LabelNamespace + ", " + LabelPod + ") (" + sel + " > 0) - time() < " +
		strconv.FormatFloat(within.Seconds(), 'f', 0, 64)
}

// peer is the side of a proxied TCP connection a scope counts: the client
// (src) for inbound, the destination (dst) for outbound edges, so that no
// connection counts twice.
func (sc Scope) peer() Match {
	if sc.Direction == "outbound" {
		return Match{Label: "peer", Value: "dst"}
	}
	return Match{Label: "peer", Value: "src"}
}

// TCPReadBytesQuery is bytes per second read from the peer: from clients
// (into the workload) for inbound.
func TCPReadBytesQuery(sc Scope) string {
	return sumBy(sc.By, sc.rate(rules.TCPRead, sc.peer()))
}

// TCPWriteBytesQuery is bytes per second written to the peer: to clients
// (out of the workload) for inbound.
func TCPWriteBytesQuery(sc Scope) string {
	return sumBy(sc.By, sc.rate(rules.TCPWrite, sc.peer()))
}

// TCPFailuresQuery is connections per second closed with a failure.
func TCPFailuresQuery(sc Scope) string {
	return sumBy(sc.By, sc.rate(rules.TCPClose, sc.peer(), Match{Label: "classification", Value: "failure"}))
}

// SuccessUnderQuery is the success rate only where it is under slo: as a
// range query it returns the unhealthy moments of unhealthy rows alone, so
// one query finds since when every row of a table has been unhealthy.
func SuccessUnderQuery(sc Scope, slo float64) string {
	return "(" + SuccessRateQuery(sc) + ") < " + strconv.FormatFloat(slo, 'f', -1, 64)
}

// DataFullQuery is the time of the proxies' earliest sample at the start of
// window w (within a step of it, as DataSinceQuery): no sample when they had
// no data then, i.e. when the window is not full.
func DataFullQuery(w time.Duration) string {
	return "min(timestamp(up{job=" + strconv.Quote(Job) + "} offset " + model.Duration(w-dataSinceStep(w)).String() + "))"
}

// DataSinceQuery is the time of the proxies' earliest scrape within window w
// (to w/60 at worst): when it is later than the window's start the window is
// not full. The scrape health series "up" exists from a target's first scrape.
func DataSinceQuery(w time.Duration) string {
	return "min_over_time(min(timestamp(up{job=" + strconv.Quote(Job) + "}))[" +
		model.Duration(w).String() + ":" + model.Duration(dataSinceStep(w)).String() + "])"
}

// dataSinceStep is the resolution of DataSinceQuery over window w.
func dataSinceStep(w time.Duration) time.Duration {
	return max(w/60, time.Second).Truncate(time.Second)
}
