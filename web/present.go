package main

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/views"
)

// Health thresholds of the success rate: at or above okRate is healthy, at
// or above warnRate degraded, below it failing.
const (
	okRate   = 0.99
	warnRate = 0.95
)

// sortKey is a sortable column: the value it reads (nil: no value, e.g. no
// traffic) and whether its most useful order in an incident is descending.
type sortKey struct {
	value func(api.Row) *float64
	desc  bool
}

func ptr(v float64) *float64 { return &v }

// sortKeys order rows by a column: worst success rate first, busiest and
// slowest first. A leading "-" reverses; rows without a value stay last.
var sortKeys = map[string]sortKey{
	"name":    {},
	"success": {value: func(r api.Row) *float64 { return r.SuccessRate }},
	"rps":     {value: func(r api.Row) *float64 { return ptr(r.RPS) }, desc: true},
	"p50":     {value: func(r api.Row) *float64 { return r.LatencyP50 }, desc: true},
	"p95":     {value: func(r api.Row) *float64 { return r.LatencyP95 }, desc: true},
	"p99":     {value: func(r api.Row) *float64 { return r.LatencyP99 }, desc: true},
	"tcp":     {value: func(r api.Row) *float64 { return ptr(r.TCPConnections) }, desc: true},
}

func trimDesc(sort string) string { return strings.TrimPrefix(sort, "-") }

// sortRows orders rows by sort (default: worst success rate first), ties
// and rows without a value broken by name. "worst" is the on-call order of
// api.WorstFirst.
func sortRows(rows []api.Row, sort string, slo float64, name func(api.Row) string) {
	if sort == "" {
		sort = "success"
	}
	reverse := strings.HasPrefix(sort, "-")
	if trimDesc(sort) == "worst" {
		slices.SortStableFunc(rows, func(a, b api.Row) int {
			c := api.WorstFirst(a, b, slo)
			if reverse {
				c = -c
			}
			return cmp.Or(c, strings.Compare(name(a), name(b)))
		})
		return
	}
	key := sortKeys[trimDesc(sort)]
	type item struct {
		name  string
		value *float64
		index int
	}
	items := make([]item, len(rows))
	for i, r := range rows {
		items[i] = item{name: name(r), index: i}
		if key.value != nil {
			items[i].value = key.value(r)
		}
	}
	slices.SortFunc(items, func(a, b item) int {
		c := 0
		switch {
		case key.value == nil:
		case a.value == nil && b.value == nil:
		case a.value == nil:
			return 1
		case b.value == nil:
			return -1
		default:
			c = cmp.Compare(*a.value, *b.value)
			if key.desc {
				c = -c
			}
		}
		if c == 0 && key.value == nil {
			c = strings.Compare(a.name, b.name)
		}
		if reverse {
			c = -c
		}
		if c == 0 {
			c = strings.Compare(a.name, b.name)
		}
		return c
	})
	sorted := make([]api.Row, len(rows))
	for i, it := range items {
		sorted[i] = rows[it.index]
	}
	copy(rows, sorted)
}

// sortRows sorts with the server's SLO.
func (s *server) sortRows(rows []api.Row, sort string, name func(api.Row) string) {
	sortRows(rows, sort, s.cfg.slo(), name)
}

// windows is the window selector: the same page at every window.
func (s *server) windows(here func(url.Values) string, v viewState) []views.Link {
	var links []views.Link
	for _, d := range []time.Duration{10 * time.Second, time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour} {
		w := v
		w.window = d
		links = append(links, views.Link{Label: windowNames[d], Href: here(s.query(w)), Active: d == v.window})
	}
	return links
}

var columns = []struct{ label, key string }{
	{"", "name"}, {"Meshed", ""}, {"Success", "success"}, {"RPS", "rps"},
	{"P50", "p50"}, {"P95", "p95"}, {"P99", "p99"}, {"TCP", "tcp"},
}

// trendColumns follow Success in the tables of workloads: the change against
// the last hour, and since when a workload is under the SLO (sorting by it is
// the "worst" order).
var trendColumns = []struct{ label, key string }{{"vs last hour", ""}, {"Unhealthy since", "worst"}}

// columns are a table's headers, each linking to the page sorted by it;
// with here nil they are plain headers.
func (s *server) columns(here func(url.Values) string, v viewState, nameLabel string, trend bool) []views.Column {
	current := v.sort
	if current == "" {
		current = "success"
	}
	cols := columns[:3:3]
	if trend {
		cols = append(cols, trendColumns...)
	}
	cols = append(cols, columns[3:]...)
	var out []views.Column
	for _, c := range cols {
		label := c.label
		if c.key == "name" {
			label = nameLabel
		}
		col := views.Column{Label: label}
		if c.key != "" {
			next := v
			next.sort = c.key
			if trimDesc(current) == c.key {
				col.Sorted = true
				if current == c.key {
					next.sort, label = "-"+c.key, label+" ▲"
				} else {
					label += " ▼"
				}
				col.Label = label
			}
			if here != nil {
				col.Href = here(s.query(next))
			}
		}
		out = append(out, col)
	}
	return out
}

// table turns one api.Table, already sorted, into a panel; link gives each
// row its page and Grafana dashboard.
func (s *server) table(here func(url.Values) string, v viewState, title, testID, nameLabel string, t api.Table, name func(api.Row) string, empty string,
	link func(api.Row) (string, string)) views.Table {
	vt := views.Table{Title: title, TestID: testID, Columns: s.columns(here, v, nameLabel, false), Empty: empty, Error: panelError(t),
		Source: sourceNote(t)}
	failed := failedMetrics(t.Failures)
	for _, r := range t.Rows {
		vr := s.row(r, failed, true)
		vr.Name = name(r)
		if vr.Name == "" || strings.HasSuffix(vr.Name, "/") {
			vr.Name = "(no label)"
		} else {
			vr.Href, vr.Grafana = link(r)
		}
		vt.Rows = append(vt.Rows, vr)
		vt.Trend = vt.Trend || r.Trend != nil
	}
	if vt.Trend {
		vt.Columns = s.columns(here, v, nameLabel, true)
	}
	return vt
}

// edgeName names the deployment on the other side of an edge: the caller
// for inbound, the callee for outbound.
func edgeName(callee bool) func(api.Row) string {
	nsLabel, depLabel := api.LabelNamespace, api.LabelDeployment
	if callee {
		nsLabel, depLabel = api.LabelDstNamespace, api.LabelDstDeployment
	}
	return func(r api.Row) string {
		if r.Labels[depLabel] == "" {
			return "(outside the mesh)"
		}
		return r.Labels[nsLabel] + "/" + r.Labels[depLabel]
	}
}

// edgeTable shows the deployments on the other side of each edge, in the
// order of t.
func (s *server) edgeTable(here func(url.Values) string, v viewState, title, testID, nameLabel string, t api.Table, callee bool) views.Table {
	nsLabel, depLabel := api.LabelNamespace, api.LabelDeployment
	if callee {
		nsLabel, depLabel = api.LabelDstNamespace, api.LabelDstDeployment
	}
	name := edgeName(callee)
	empty := "no callers in this window"
	if callee {
		empty = "no calls to other services in this window"
	}
	vt := views.Table{Title: title, TestID: testID, Columns: s.columns(here, v, nameLabel, false), Empty: empty, Error: panelError(t),
		Source: sourceNote(t), MTLS: true}
	vt.Columns = append(vt.Columns, views.Column{Label: "mTLS"})
	failed := failedMetrics(t.Failures)
	q := s.query(v)
	for _, r := range t.Rows {
		vr := s.row(r, failed, false)
		vr.Name = name(r)
		vr.MTLS = mtlsCell(r.MTLS, failed[api.MetricMTLS])
		ns, dep := r.Labels[nsLabel], r.Labels[depLabel]
		if api.ValidNamespace(ns) == nil && api.ValidName("deployment", dep) == nil {
			vr.Href = s.url("/namespaces/{ns}/deployments/{name}", q, ns, dep)
			vr.Grafana = s.grafana("meshscope-deployment", "deployment", ns, dep, "")
		}
		vt.Rows = append(vt.Rows, vr)
	}
	return vt
}

func failedMetrics(fs []api.Failure) map[string]bool {
	m := map[string]bool{}
	for _, f := range fs {
		m[f.Metric] = true
	}
	return m
}

// unknown stands for a value whose query failed: not zero, not "no traffic".
const unknown = "?"

func (s *server) row(r api.Row, failed map[string]bool, meshed bool) views.Row {
	pick := func(metric, text string) string {
		if failed[metric] {
			return unknown
		}
		return text
	}
	vr := views.Row{
		Meshed:  "—",
		Success: successCell(r.SuccessRate),
		RPS:     pick(api.MetricRPS, formatRPS(r.RPS)),
		P50:     pick(api.MetricP50, formatLatency(r.LatencyP50)),
		P95:     pick(api.MetricP95, formatLatency(r.LatencyP95)),
		P99:     pick(api.MetricP99, formatLatency(r.LatencyP99)),
		TCP:     pick(api.MetricTCP, strconv.FormatFloat(r.TCPConnections, 'f', 0, 64)),
	}
	switch {
	case failed[api.MetricSuccess]:
		vr.Success = views.Cell{Text: unknown, Class: "none"}
	case r.TCPOnly():
		vr.Success = views.Cell{Text: tcpText(r), Class: "tcp"}
	}
	if meshed {
		vr.Meshed = pick(api.MetricMeshed, strconv.Itoa(r.MeshedUp)+"/"+strconv.Itoa(r.MeshedTotal))
	}
	if r.Trend != nil {
		vr.Delta = deltaCell(r)
		vr.Since = s.sinceText(r)
	}
	return vr
}

// tcpText is what an opaque-TCP workload shows instead of "no traffic".
func tcpText(r api.Row) string {
	return fmt.Sprintf("TCP only: %s conns, %s in, %s out, %s failed/s",
		strconv.FormatFloat(r.TCPConnections, 'f', 0, 64), formatBytes(r.TCPReadBytesPerSec),
		formatBytes(r.TCPWriteBytesPerSec), formatRPS(r.TCPFailuresPerSec))
}

func formatBytes(perSec float64) string {
	switch {
	case perSec >= 1<<20:
		return strconv.FormatFloat(perSec/(1<<20), 'f', 1, 64) + " MiB/s"
	case perSec >= 1<<10:
		return strconv.FormatFloat(perSec/(1<<10), 'f', 1, 64) + " KiB/s"
	}
	return strconv.FormatFloat(perSec, 'f', 0, 64) + " B/s"
}

// deltaCell is a row's change against its own last hour: success rate in
// percentage points, p99 in percent; red when success fell by a point or
// more, or p99 grew by half or more.
func deltaCell(r api.Row) views.Cell {
	var parts []string
	bad := false
	if r.SuccessRate != nil && r.SuccessRateLastHour != nil {
		d := 100 * (*r.SuccessRate - *r.SuccessRateLastHour)
		parts = append(parts, fmt.Sprintf("%+.2f pt", d))
		bad = d <= -1
	}
	if ratio := r.LatencyRatio(); ratio > 0 {
		parts = append(parts, fmt.Sprintf("p99 %+.0f%%", 100*(ratio-1)))
		bad = bad || ratio >= 1.5
	}
	if len(parts) == 0 {
		return views.Cell{Text: "—", Class: "none"}
	}
	c := views.Cell{Text: strings.Join(parts, " · ")}
	if bad {
		c.Class = "bad"
	}
	return c
}

// sinceText says since when an unhealthy row has been under the SLO.
func (s *server) sinceText(r api.Row) string {
	if r.UnhealthySince == nil {
		return "—"
	}
	ago := time.Since(*r.UnhealthySince)
	if ago >= api.UnhealthyLookback-api.UnhealthyStep {
		return "over " + api.UnhealthyLookback.String()
	}
	return r.UnhealthySince.UTC().Format("15:04") + " UTC, " + formatAgo(ago) + " ago"
}

// formatAgo is a duration to the minute: "<1m", "7m", "2h13m".
func formatAgo(d time.Duration) string {
	if d < time.Minute {
		return "<1m"
	}
	return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
}

func successCell(rate *float64) views.Cell {
	if rate == nil {
		return views.Cell{Text: "no traffic", Class: "none"}
	}
	class := "bad"
	switch {
	case *rate >= okRate:
		class = "ok"
	case *rate >= warnRate:
		class = "warn"
	}
	return views.Cell{Text: strconv.FormatFloat(100**rate, 'f', 2, 64) + "%", Class: class}
}

// mtlsCell shows a share of traffic over mutual TLS: "secured" when all of it is, else the share.
func mtlsCell(share *float64, failed bool) views.Cell {
	switch {
	case failed:
		return views.Cell{Text: unknown, Class: "none"}
	case share == nil:
		return views.Cell{Text: "—", Class: "none"}
	case *share >= 1:
		return views.Cell{Text: "secured", Class: "ok"}
	case *share <= 0:
		return views.Cell{Text: "plain text", Class: "warn"}
	}
	return views.Cell{Text: strconv.FormatFloat(100**share, 'f', 0, 64) + "% mTLS", Class: "warn"}
}

// certAlerts word the proxies whose identity certificate ends within certWarnWithin.
func certAlerts(expiring []api.CertExpiry) []string {
	var out []string
	for _, e := range expiring {
		left := time.Duration(e.SecondsLeft) * time.Second
		msg := fmt.Sprintf("identity certificate of pod %s/%s ends in %s: its proxy has not renewed it (it renews at 70%% of the certificate's life): is the issuer (proxy identity) up?",
			e.Namespace, e.Pod, left.Round(time.Minute))
		if left <= 0 {
			msg = fmt.Sprintf("identity certificate of pod %s/%s has expired: its proxy falls back to plain text and meshed clients are refused; is the issuer (proxy identity) up?", e.Namespace, e.Pod)
		}
		out = append(out, msg)
	}
	return out
}

func formatRPS(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func formatLatency(ms *float64) string {
	switch {
	case ms == nil:
		return "—"
	case *ms >= 1000:
		return strconv.FormatFloat(*ms/1000, 'f', 2, 64) + " s"
	case *ms >= 10:
		return strconv.FormatFloat(*ms, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(*ms, 'f', 1, 64) + " ms"
}

// panelError says which metrics a panel could not get, with the first cause.
func panelError(t api.Table) string {
	if len(t.Failures) == 0 {
		return ""
	}
	if len(t.Failures) == t.Metrics {
		return "could not get any metric: " + cause(t.Failures[0])
	}
	var names []string
	for _, f := range t.Failures {
		names = append(names, f.Metric)
	}
	return "could not get " + strings.Join(names, ", ") + ": " + cause(t.Failures[0])
}

// cause is a failure's error without the query text it is wrapped in: the
// query is in the JSON twin and the log, the page needs the reason.
func cause(f api.Failure) string {
	if u := errors.Unwrap(f.Err); u != nil {
		return u.Error()
	}
	return f.Error
}

// summary is the big numbers of a deployment or pod page.
func (s *server) summary(t api.Table) *views.Summary {
	failed := failedMetrics(t.Failures)
	r := api.Row{}
	if len(t.Rows) > 0 {
		r = t.Rows[0]
	}
	vr := s.row(r, failed, true)
	return &views.Summary{
		Cells: []views.SummaryCell{
			{Label: "Success rate", Value: vr.Success, TestID: "summary-success"},
			{Label: "Requests/s", Value: views.Cell{Text: vr.RPS}, TestID: "summary-rps"},
			{Label: "P50", Value: views.Cell{Text: vr.P50}, TestID: "summary-p50"},
			{Label: "P95", Value: views.Cell{Text: vr.P95}, TestID: "summary-p95"},
			{Label: "P99", Value: views.Cell{Text: vr.P99}, TestID: "summary-p99"},
			{Label: "TCP connections", Value: views.Cell{Text: vr.TCP}, TestID: "summary-tcp"},
			{Label: "Meshed", Value: views.Cell{Text: vr.Meshed}, TestID: "summary-meshed"},
			{Label: "Inbound over mTLS", Value: mtlsCell(r.MTLS, failed[api.MetricMTLS]), TestID: "summary-mtls"},
		},
		Error: panelError(t),
	}
}

// data assembles a page's refreshing fragment; failures and warnings are
// those of every api result the page used, for the banner naming the backend
// and its first error.
func (s *server) data(refresh string, sum *views.Summary, charts []views.Chart, tables []views.Table, failures []api.Failure, warnings []string) views.Data {
	d := views.Data{
		RefreshHref:  refresh,
		RefreshEvery: s.cfg.refresh().String(),
		UpdatedAt:    time.Now().UTC().Format("15:04:05 UTC"),
		Summary:      sum,
		Charts:       charts,
		Tables:       tables,
	}
	if len(failures) > 0 {
		d.Banners = []string{fmt.Sprintf("Prometheus at %s did not answer %d of this page's queries: %s",
			s.prom.Backend, len(failures), cause(failures[0]))}
	}
	seen := map[string]bool{}
	for _, w := range warnings {
		if !seen[w] {
			seen[w] = true
			d.Warnings = append(d.Warnings, "Prometheus warned: "+w)
		}
	}
	return d
}

// sourceNote is the footnote of a table: whether it reads the recording
// rules' series or the proxies' own.
func sourceNote(t api.Table) string {
	switch t.Source {
	case api.SourceRecorded:
		return "from recorded series (Meshscope's recording rules)"
	case api.SourceRaw:
		return "from raw series"
	}
	return ""
}

// problems gathers the failures and warnings of every table of a page.
func problems(tables ...api.Table) ([]api.Failure, []string) {
	var fs []api.Failure
	var ws []string
	for _, t := range tables {
		fs = append(fs, t.Failures...)
		ws = append(ws, t.Warnings...)
	}
	return fs, ws
}

// grafana links a resource to its dashboard in DESIGN's format, or returns
// "" without --grafana-url.
func (s *server) grafana(uid, slug, ns, deployment, pod string) string {
	if s.cfg.GrafanaURL == "" {
		return ""
	}
	var q []string
	for _, kv := range [][2]string{{"var-namespace", ns}, {"var-deployment", deployment}, {"var-pod", pod}} {
		if kv[1] != "" {
			q = append(q, kv[0]+"="+url.QueryEscape(kv[1]))
		}
	}
	q = append(q, "from=now-1h", "to=now")
	return strings.TrimRight(s.cfg.GrafanaURL, "/") + "/d/" + uid + "/" + slug + "?" + strings.Join(q, "&")
}

// Chart geometry, in SVG user units.
const (
	chartW, chartH         = 380, 170
	plotX0, plotX1         = 44, 372
	plotY0, plotY1         = 10, 145
	xLabelY                = 162
	maxGapSteps    float64 = 1.5
)

// charts draws the history of a deployment or pod.
func charts(h history) []views.Chart {
	return []views.Chart{
		chart(h.Success, "Success rate", "chart-success", func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }, 1),
		chart(h.RPS, "Requests per second", "chart-rps", func(v float64) string { return formatRPS(v) }, 0),
		chart(h.Latency, "Latency (p50, p95, p99)", "chart-latency", func(v float64) string { return formatLatency(&v) }, 0),
	}
}

// chart scales c into the plot; fixedMax, when positive, is the y axis top
// (1 for a ratio), else the data's maximum.
func chart(c api.Chart, title, testID string, label func(float64) string, fixedMax float64) views.Chart {
	vc := views.Chart{Title: title, TestID: testID, Width: chartW, Height: chartH}
	if c.Failure != nil {
		vc.Error = "could not get " + c.Failure.Metric + ": " + cause(*c.Failure)
		return vc
	}
	top := fixedMax
	points := 0
	for _, s := range c.Series {
		for _, p := range s.Points {
			points++
			if fixedMax <= 0 {
				top = math.Max(top, p.V)
			}
		}
	}
	if points == 0 {
		vc.Empty = "no traffic between " + c.Start.UTC().Format("15:04") + " and " + c.End.UTC().Format("15:04") + " UTC"
		return vc
	}
	if top <= 0 {
		top = 1
	}
	span := c.End.Sub(c.Start).Seconds()
	x := func(t time.Time) float64 {
		return plotX0 + (plotX1-plotX0)*t.Sub(c.Start).Seconds()/span
	}
	y := func(v float64) float64 { return plotY1 - (plotY1-plotY0)*v/top }
	for i, s := range c.Series {
		var b strings.Builder
		for j, p := range s.Points {
			cmd := "L"
			if j == 0 || p.T.Sub(s.Points[j-1].T).Seconds() > maxGapSteps*c.Step.Seconds() {
				cmd = "M"
			}
			fmt.Fprintf(&b, "%s%.1f,%.1f ", cmd, x(p.T), y(p.V))
			if cmd == "M" {
				// A zero-length segment with round caps draws a lone sample as a dot.
				b.WriteString("l0,0 ")
			}
		}
		vc.Lines = append(vc.Lines, views.ChartLine{Name: s.Name, Class: fmt.Sprintf("s%d", i%3), Path: strings.TrimSpace(b.String())})
	}
	for _, f := range []float64{1, 0.5, 0} {
		vc.YLabels = append(vc.YLabels, views.AxisLabel{Text: label(top * f), Y: int(y(top * f))})
	}
	vc.XLabels = []views.AxisLabel{
		{Text: c.Start.UTC().Format("15:04"), X: plotX0 + 14, Y: xLabelY},
		{Text: c.End.UTC().Format("15:04") + " UTC", X: plotX1 - 24, Y: xLabelY},
	}
	return vc
}

// problems are the failures and warnings of the charts.
func (h history) problems() ([]api.Failure, []string) {
	var fs []api.Failure
	var ws []string
	for _, c := range []api.Chart{h.Success, h.RPS, h.Latency} {
		if c.Failure != nil {
			fs = append(fs, *c.Failure)
		}
		ws = append(ws, c.Warnings...)
	}
	return fs, ws
}
