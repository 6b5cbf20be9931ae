// Package rules holds Meshscope's recording rules (meshscope.rules.yml, the
// file users load into their Prometheus or ruler) and the names of the series
// they record, which the dashboard queries when the backend has them. It
// imports nothing of Prometheus, so the dashboard and `web install` can use it.
package rules

import (
	_ "embed"
	"slices"
	"strconv"
	"time"
)

//go:embed meshscope.rules.yml
var file []byte

// FileName is the rules file's name, e.g. for a ConfigMap key.
const FileName = "meshscope.rules.yml"

// YAML returns the rules file: Prometheus' rule file format.
func YAML() []byte { return slices.Clone(file) }

// Interval is how often every group is evaluated, and the window of the
// recorded rates: a window of k Intervals is the average of the last k
// recorded rates.
const Interval = time.Minute

// The raw metrics the rules record: the counters as 1m rates, the gauge as
// a sum.
const (
	Requests  = "request_total"
	Responses = "response_total"
	Latency   = "response_latency_ms_bucket"
	TCPOpen   = "tcp_open_connections"
	TCPRead   = "tcp_read_bytes_total"
	TCPWrite  = "tcp_write_bytes_total"
	TCPClose  = "tcp_close_total"
)

// Level is one aggregation level of the rules: the direction of the proxy
// series it reads and the labels it keeps (besides direction and the
// classification, le or peer that selections need).
type Level struct {
	// Name is the level part of level:metric:operations; empty means no
	// level (raw series).
	Name      string
	Direction string
	Labels    []string
	// P99Windows are the windows over which the level also records its p99
	// latency (see P99).
	P99Windows []time.Duration
}

// Levels are the levels the rules record, narrowest first.
func Levels() []Level {
	return []Level{
		{Name: "namespace", Direction: "inbound", Labels: []string{"namespace"}},
		{Name: "deployment", Direction: "inbound", Labels: []string{"namespace", "deployment"}, P99Windows: []time.Duration{time.Minute, time.Hour}},
		{Name: "edge", Direction: "outbound", Labels: []string{"namespace", "deployment", "dst_namespace", "dst_deployment"}},
	}
}

// Series is the recorded name of raw metric at level l:
// level:request_total:rate1m for the counters, level:tcp_open_connections:sum
// for the gauge.
func (l Level) Series(metric string) string {
	if metric == TCPOpen {
		return l.Name + ":" + metric + ":sum"
	}
	return l.Name + ":" + metric + ":rate1m"
}

// Names are every series the level records: its metrics' (Series) and its
// p99s' (P99).
func (l Level) Names() []string {
	var names []string
	for _, m := range []string{Requests, Responses, Latency, TCPOpen, TCPRead, TCPWrite, TCPClose} {
		names = append(names, l.Series(m))
	}
	for _, w := range l.P99Windows {
		name, _ := l.P99(w)
		names = append(names, name)
	}
	return names
}

// P99 is the recorded name of the level's p99 latency in ms over window w,
// level:response_latency_ms:p99_rate1h, and whether the level records it:
// histogram_quantile(0.99, ...) of its recorded buckets, one series per group
// of the level's labels.
func (l Level) P99(w time.Duration) (string, bool) {
	if !slices.Contains(l.P99Windows, w) {
		return "", false
	}
	return l.Name + ":response_latency_ms:p99_rate" + windowName(w), true
}

// windowName is a window as Prometheus writes durations: 1m, 1h.
func windowName(w time.Duration) string {
	switch {
	case w%time.Hour == 0:
		return strconv.Itoa(int(w/time.Hour)) + "h"
	case w%time.Minute == 0:
		return strconv.Itoa(int(w/time.Minute)) + "m"
	}
	return strconv.Itoa(int(w/time.Second)) + "s"
}

// Covers tells whether the level keeps every label in labels for series of
// direction, so a query grouping and selecting by them can read it.
func (l Level) Covers(direction string, labels []string) bool {
	if l.Direction != direction {
		return false
	}
	for _, name := range labels {
		if !slices.Contains(l.Labels, name) {
			return false
		}
	}
	return true
}
