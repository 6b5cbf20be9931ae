package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/views"
)

// pageRoutes registers the golden-metrics pages and their JSON twins: the
// same handler answers both, the path decides the format.
func (s *server) pageRoutes(r chi.Router) {
	for _, prefix := range []string{"", "/api/v1"} {
		r.Get(prefix+"/namespaces", s.handle(s.namespacesPage))
		r.Get(prefix+"/namespaces/{ns}", s.handle(s.namespacePage))
		r.Get(prefix+"/namespaces/{ns}/deployments/{name}", s.handle(s.deploymentPage))
		r.Get(prefix+"/namespaces/{ns}/pods/{pod}", s.handle(s.podPage))
	}
}

// viewState is the state a page keeps in its URL.
type viewState struct {
	window time.Duration
	sort   string
}

func (s *server) viewState(r *http.Request) (viewState, error) {
	v := viewState{window: s.cfg.window(), sort: r.URL.Query().Get("sort")}
	if w := r.URL.Query().Get("window"); w != "" {
		d, err := time.ParseDuration(w)
		if _, ok := windowNames[d]; err != nil || !ok {
			return v, badRequest("window %q: want one of 10s, 1m, 5m, 15m, 1h", w)
		}
		v.window = d
	}
	if _, ok := sortKeys[trimDesc(v.sort)]; v.sort != "" && !ok && trimDesc(v.sort) != "worst" {
		return v, badRequest("sort %q: want one of name, success, rps, p50, p95, p99, tcp, worst, optionally prefixed by -", v.sort)
	}
	return v, nil
}

// query returns the URL query of v, omitting defaults so links stay short.
func (s *server) query(v viewState) url.Values {
	q := url.Values{}
	if v.window != s.cfg.window() {
		q.Set("window", windowNames[v.window])
	}
	if v.sort != "" {
		q.Set("sort", v.sort)
	}
	return q
}

// crumbs leads from the namespaces list to namespace ns (empty: the list
// only), keeping the view state q.
func (s *server) crumbs(q url.Values, ns string) []views.Link {
	c := []views.Link{{Label: "Namespaces", Href: s.url("/namespaces", q)}}
	if ns != "" {
		c = append(c, views.Link{Label: ns, Href: s.url("/namespaces/{ns}", q, ns)})
	}
	return c
}

func pathName(r *http.Request, param, kind string) (string, error) {
	v := chi.URLParam(r, param)
	var err error
	if kind == "namespace" {
		err = api.ValidNamespace(v)
	} else {
		err = api.ValidName(kind, v)
	}
	if err != nil {
		return "", notFound("%v", err)
	}
	return v, nil
}

// fetch runs fns concurrently: the panels of a page wait on one another
// only for the slowest.
func fetch(fns ...func()) {
	var wg sync.WaitGroup
	for _, f := range fns {
		wg.Go(f)
	}
	wg.Wait()
}

func byNamespace(w time.Duration) api.Scope {
	return api.Scope{Direction: "inbound", By: []string{api.LabelNamespace}, Window: w}
}

func deploymentsOf(ns string, w time.Duration) api.Scope {
	return api.Scope{Direction: "inbound", By: []string{api.LabelNamespace, api.LabelDeployment},
		Match: []api.Match{{Label: api.LabelNamespace, Value: ns}}, Window: w}
}

func podsOf(w time.Duration, match ...api.Match) api.Scope {
	return api.Scope{Direction: "inbound", By: []string{api.LabelNamespace, api.LabelDeployment, api.LabelPod},
		Match: match, Window: w}
}

// edges are outbound series, one row per caller and callee deployment.
func edges(w time.Duration, match ...api.Match) api.Scope {
	return api.Scope{Direction: "outbound",
		By:    []string{api.LabelNamespace, api.LabelDeployment, api.LabelDstNamespace, api.LabelDstDeployment},
		Match: match, Window: w}
}

// worstShown is how many workloads the first screen lists, worst first.
const worstShown = 10

// windowInfo says over what the figures of a page are computed: the window
// asked for, or, when the data begins inside it, the part since then.
type windowInfo struct {
	Requested string `json:"requested"`
	// Seconds is the window the rates are computed over.
	Seconds float64 `json:"seconds"`
	// Full is false when the data begins inside the requested window.
	Full bool `json:"full"`
	// DataSince is the proxies' first sample in the window, when not full.
	DataSince *time.Time `json:"data_since,omitempty"`
	// Note says so in words ("window not full: data since 22:41:03 UTC").
	Note    string       `json:"note,omitempty"`
	Failure *api.Failure `json:"failure,omitempty"`
}

// honestWindow finds how much of v's window has data and returns the window
// to compute over: the part that exists, so that rates over a young mesh are
// not divided by time it did not run. One query per page.
func (s *server) honestWindow(ctx context.Context, v viewState) (windowInfo, time.Duration, []string) {
	info := windowInfo{Requested: windowNames[v.window], Seconds: v.window.Seconds(), Full: true}
	if s.dataSince.full(time.Now(), v.window) {
		return info, v.window, nil
	}
	since, full, ws, err := s.prom.DataSince(ctx, v.window)
	s.dataSince.learn(time.Now(), since)
	switch {
	case err != nil:
		f := api.Failure{Metric: "data since", Error: err.Error(), Err: err}
		info.Failure = &f
		return info, v.window, ws
	case full:
		return info, v.window, ws
	}
	info.Full = false
	if since.IsZero() {
		info.Note = "window not full: no data yet"
		return info, v.window, ws
	}
	eff := min(max(time.Since(since).Round(time.Second), time.Second), v.window)
	info.DataSince, info.Seconds = &since, eff.Seconds()
	info.Note = "window not full: data since " + since.Format("15:04:05") + " UTC; figures cover the last " + eff.String()
	return info, eff, ws
}

// notes are the window's note, for the top of the page's data.
func (w windowInfo) notes() []string {
	if w.Note == "" {
		return nil
	}
	return []string{w.Note}
}

func (w windowInfo) problems() []api.Failure {
	if w.Failure == nil {
		return nil
	}
	return []api.Failure{*w.Failure}
}

// worst is the worst workloads of scope sc, worst first, at most limit of
// them (0: all) of total: every row's trend against its own last hour and,
// for the unhealthy, since when.
func (s *server) worst(ctx context.Context, sc api.Scope, limit int) (t api.Table, total int) {
	return s.prom.Worst(ctx, sc, true, time.Hour, s.cfg.slo(), limit)
}

type namespacesData struct {
	Window windowInfo `json:"window"`
	// Workloads are the worst deployments of every namespace, at most
	// worstShown of WorkloadsTotal, worst first.
	Workloads      api.Table `json:"workloads"`
	WorkloadsTotal int       `json:"workloads_total"`
	Namespaces     api.Table `json:"namespaces"`
}

func workloadName(r api.Row) string {
	return r.Labels[api.LabelNamespace] + "/" + r.Labels[api.LabelDeployment]
}

func labelName(label string) func(api.Row) string {
	return func(r api.Row) string { return r.Labels[label] }
}

func (s *server) namespacesPage(w http.ResponseWriter, r *http.Request) error {
	v, err := s.viewState(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var d namespacesData
	var (
		win time.Duration
		ws  []string
	)
	d.Window, win, ws = s.honestWindow(ctx, v)
	fetch(
		func() {
			d.Workloads, d.WorkloadsTotal = s.worst(ctx, api.Scope{Direction: "inbound", By: []string{api.LabelNamespace, api.LabelDeployment}, Window: win}, worstShown)
		},
		func() { d.Namespaces = s.prom.Golden(ctx, byNamespace(win), true) },
	)
	s.sortRows(d.Namespaces.Rows, v.sort, labelName(api.LabelNamespace))
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces", q) }
	q := s.query(v)
	title := "Worst workloads"
	if d.WorkloadsTotal > worstShown {
		title = fmt.Sprintf("Worst workloads (%d of %d)", worstShown, d.WorkloadsTotal)
	}
	worst := s.table(here, v, title, "workloads", "Deployment", d.Workloads, workloadName,
		"no workloads: Prometheus has no proxies of job "+api.Job,
		func(row api.Row) (string, string) {
			ns, dep := row.Labels[api.LabelNamespace], row.Labels[api.LabelDeployment]
			return s.url("/namespaces/{ns}/deployments/{name}", q, ns, dep), s.grafana("meshscope-deployment", "deployment", ns, dep, "")
		})
	worst.Columns = s.columns(func(url.Values) string { return here(q) }, viewState{window: v.window, sort: "worst"}, "Deployment", true)
	t := s.table(here, v, "Golden metrics per namespace", "namespaces", "Namespace", d.Namespaces, labelName(api.LabelNamespace),
		"no namespaces: Prometheus has no proxies of job "+api.Job,
		func(row api.Row) (string, string) {
			ns := row.Labels[api.LabelNamespace]
			return s.url("/namespaces/{ns}", q, ns), s.grafana("meshscope-namespace", "namespace", ns, "", "")
		})
	p := views.Resource{
		Heading: "Namespaces",
		Kind:    "namespaces",
		Grafana: s.grafana("meshscope-top-line", "top-line", "", "", ""),
		Windows: s.windows(here, v),
	}
	fs, tws := problems(d.Workloads, d.Namespaces)
	p.Data = s.data(here(q), nil, nil, []views.Table{worst, t}, append(d.Window.problems(), fs...), append(ws, tws...))
	p.Data.Notes = d.Window.notes()
	return s.render(w, r, http.StatusOK, s.shell(r, "Namespaces", nil), views.ResourcePage(p), views.DataFragment(p.Data))
}

type namespaceData struct {
	Window      windowInfo `json:"window"`
	Deployments api.Table  `json:"deployments"`
	Pods        api.Table  `json:"pods"`
}

func (s *server) namespacePage(w http.ResponseWriter, r *http.Request) error {
	v, err := s.viewState(r)
	if err != nil {
		return err
	}
	ns, err := pathName(r, "ns", "namespace")
	if err != nil {
		return err
	}
	var d namespaceData
	var (
		win time.Duration
		ws  []string
	)
	ctx := r.Context()
	d.Window, win, ws = s.honestWindow(ctx, v)
	fetch(
		func() { d.Deployments, _ = s.worst(ctx, deploymentsOf(ns, win), 0) },
		func() {
			d.Pods = s.prom.Golden(ctx, podsOf(win, api.Match{Label: api.LabelNamespace, Value: ns}), true)
		},
	)
	s.sortRows(d.Deployments.Rows, cmp.Or(v.sort, "worst"), labelName(api.LabelDeployment))
	s.sortRows(d.Pods.Rows, v.sort, labelName(api.LabelPod))
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces/{ns}", q, ns) }
	q := s.query(v)
	deps := s.table(here, v, "Deployments, worst first", "deployments", "Deployment", d.Deployments, labelName(api.LabelDeployment),
		"no deployments with proxies in namespace "+ns,
		func(row api.Row) (string, string) {
			dep := row.Labels[api.LabelDeployment]
			return s.url("/namespaces/{ns}/deployments/{name}", q, ns, dep),
				s.grafana("meshscope-deployment", "deployment", ns, dep, "")
		})
	deps.Columns = s.columns(here, viewState{window: v.window, sort: cmp.Or(v.sort, "worst")}, "Deployment", true)
	pods := s.table(here, v, "Pods", "pods", "Pod", d.Pods, labelName(api.LabelPod),
		"no pods with proxies in namespace "+ns, s.podLinks(v, ns))
	p := views.Resource{
		Heading: "Namespace " + ns,
		Kind:    "namespace",
		Crumbs:  s.crumbs(q, ""),
		Grafana: s.grafana("meshscope-namespace", "namespace", ns, "", ""),
		Windows: s.windows(here, v),
	}
	fs, tws := problems(d.Deployments, d.Pods)
	p.Data = s.data(here(q), nil, nil, []views.Table{deps, pods}, append(d.Window.problems(), fs...), append(ws, tws...))
	p.Data.Notes = d.Window.notes()
	return s.render(w, r, http.StatusOK, s.shell(r, "Namespace "+ns, nil), views.ResourcePage(p), views.DataFragment(p.Data))
}

func (s *server) podLinks(v viewState, ns string) func(api.Row) (string, string) {
	q := s.query(v)
	return func(row api.Row) (string, string) {
		pod := row.Labels[api.LabelPod]
		return s.url("/namespaces/{ns}/pods/{pod}", q, ns, pod), s.grafana("meshscope-pod", "pod", ns, "", pod)
	}
}

// resourceData is a deployment's or a pod's page: its own golden metrics,
// their history, who calls it (inbound edges), what it calls (outbound).
type resourceData struct {
	Window   windowInfo `json:"window"`
	Summary  api.Table  `json:"summary"`
	Inbound  api.Table  `json:"inbound"`
	Outbound api.Table  `json:"outbound"`
	Pods     *api.Table `json:"pods,omitempty"`
	History  history    `json:"history"`
	// CertExpiring are its proxies whose identity certificate ends within certWarnWithin.
	CertExpiring []api.CertExpiry `json:"cert_expiring,omitempty"`
	certFailure  *api.Failure
	// warnings are the window query's, for the page's banner.
	warnings []string
}

type history struct {
	Success api.Chart `json:"success_rate"`
	RPS     api.Chart `json:"rps"`
	Latency api.Chart `json:"latency"`
}

// certWarnWithin is how close to its end a proxy's identity certificate must be for a page to warn: a
// proxy renews at 70% of the life (about 17 h of the 24 h default), so 6 h left means renewals have been
// failing for hours.
const certWarnWithin = 6 * time.Hour

// chartSpan is how far back the charts of a window reach: 30 windows, at
// least 10 minutes, at most a day.
func chartSpan(w time.Duration) (span, step time.Duration) {
	span = min(max(30*w, 10*time.Minute), 24*time.Hour)
	return span, max(span/120, time.Second)
}

// resource fetches a deployment's or pod's page; scopes gives its scopes at
// the window that has data: itself, its callers, its callees, its pods (nil:
// none). Its tables are sorted as v asks.
func (s *server) resource(ctx context.Context, v viewState, scopes func(w time.Duration) (self, inbound, outbound api.Scope, pods *api.Scope)) resourceData {
	var d resourceData
	var win time.Duration
	d.Window, win, d.warnings = s.honestWindow(ctx, v)
	self, inbound, outbound, pods := scopes(win)
	span, step := chartSpan(v.window)
	fns := []func(){
		func() { d.Summary = s.prom.GoldenMTLS(ctx, self, true) },
		func() { d.Inbound = s.prom.GoldenMTLS(ctx, inbound, false) },
		func() { d.Outbound = s.prom.GoldenMTLS(ctx, outbound, false) },
		func() {
			var err error
			if d.CertExpiring, err = s.prom.CertExpiring(ctx, self, certWarnWithin); err != nil {
				f := api.Failure{Metric: "identity certificates", Error: err.Error(), Err: err}
				d.certFailure = &f
			}
		},
		func() { d.History.Success, d.History.RPS, d.History.Latency = s.prom.History(ctx, self, span, step) },
	}
	if pods != nil {
		fns = append(fns, func() {
			t := s.prom.Golden(ctx, *pods, true)
			d.Pods = &t
		})
	}
	fetch(fns...)
	s.sortRows(d.Inbound.Rows, v.sort, edgeName(false))
	s.sortRows(d.Outbound.Rows, v.sort, edgeName(true))
	if d.Pods != nil {
		s.sortRows(d.Pods.Rows, v.sort, labelName(api.LabelPod))
	}
	return d
}

// problems are the failures and warnings of every part of the page.
func (d resourceData) problems() ([]api.Failure, []string) {
	tables := []api.Table{d.Summary, d.Inbound, d.Outbound}
	if d.Pods != nil {
		tables = append(tables, *d.Pods)
	}
	fs, ws := problems(tables...)
	if d.certFailure != nil {
		fs = append(fs, *d.certFailure)
	}
	hf, hw := d.History.problems()
	return append(append(d.Window.problems(), fs...), hf...), append(append(d.warnings, ws...), hw...)
}

func (s *server) deploymentPage(w http.ResponseWriter, r *http.Request) error {
	v, err := s.viewState(r)
	if err != nil {
		return err
	}
	ns, err := pathName(r, "ns", "namespace")
	if err != nil {
		return err
	}
	name, err := pathName(r, "name", "deployment")
	if err != nil {
		return err
	}
	self := []api.Match{{Label: api.LabelNamespace, Value: ns}, {Label: api.LabelDeployment, Value: name}}
	var d deploymentData
	fetch(func() {
		d.resourceData = s.resource(r.Context(), v, func(w time.Duration) (api.Scope, api.Scope, api.Scope, *api.Scope) {
			pods := podsOf(w, self...)
			return api.Scope{Direction: "inbound", By: []string{api.LabelNamespace, api.LabelDeployment}, Match: self, Window: w},
				edges(w, api.Match{Label: api.LabelDstNamespace, Value: ns}, api.Match{Label: api.LabelDstDeployment, Value: name}),
				edges(w, self...),
				&pods
		})
	}, func() {
		d.Routes, d.InboundRoutes, d.RouteHistory = s.routeData(r.Context(), ns, name, v.window)
	})
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces/{ns}/deployments/{name}", q, ns, name) }
	q := s.query(v)
	tables := []views.Table{
		s.edgeTable(here, v, "Inbound: who calls "+name, "inbound", "Caller", d.Inbound, false),
		s.edgeTable(here, v, "Outbound: what "+name+" calls", "outbound", "Callee", d.Outbound, true),
		s.table(here, v, "Pods", "pods", "Pod", *d.Pods, labelName(api.LabelPod), "no pods with proxies in deployment "+name, s.podLinks(v, ns)),
	}
	p := views.Resource{
		Heading: "Deployment " + name,
		Kind:    "deployment",
		Crumbs:  s.crumbs(q, ns),
		Grafana: s.grafana("meshscope-deployment", "deployment", ns, name, ""),
		Windows: s.windows(here, v),
		Live:    views.LiveCalls(s.liveCalls(api.Selector{Namespace: ns, Deployment: name})),
	}
	fs, ws := d.problems()
	p.Data = s.data(here(q), s.summary(d.Summary), append(charts(d.History), d.RouteHistory.charts()...), tables, fs, ws)
	p.Data.Notes = d.Window.notes()
	p.Data.Routes = s.routeTables(ns, name, d.Routes, d.InboundRoutes)
	p.Data.Alerts = certAlerts(d.CertExpiring)
	return s.render(w, r, http.StatusOK, s.shell(r, "Deployment "+ns+"/"+name, nil), views.ResourcePage(p), views.DataFragment(p.Data))
}

func (s *server) podPage(w http.ResponseWriter, r *http.Request) error {
	v, err := s.viewState(r)
	if err != nil {
		return err
	}
	ns, err := pathName(r, "ns", "namespace")
	if err != nil {
		return err
	}
	pod, err := pathName(r, "pod", "pod")
	if err != nil {
		return err
	}
	self := []api.Match{{Label: api.LabelNamespace, Value: ns}, {Label: api.LabelPod, Value: pod}}
	d := s.resource(r.Context(), v, func(w time.Duration) (api.Scope, api.Scope, api.Scope, *api.Scope) {
		return podsOf(w, self...),
			edges(w, api.Match{Label: api.LabelDstNamespace, Value: ns}, api.Match{Label: "dst_pod", Value: pod}),
			edges(w, self...),
			nil
	})
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces/{ns}/pods/{pod}", q, ns, pod) }
	q := s.query(v)
	crumbs := s.crumbs(q, ns)
	for _, row := range d.Summary.Rows {
		if dep := row.Labels[api.LabelDeployment]; dep != "" {
			crumbs = append(crumbs, views.Link{Label: dep, Href: s.url("/namespaces/{ns}/deployments/{name}", q, ns, dep)})
		}
	}
	tables := []views.Table{
		s.edgeTable(here, v, "Inbound: who calls "+pod, "inbound", "Caller", d.Inbound, false),
		s.edgeTable(here, v, "Outbound: what "+pod+" calls", "outbound", "Callee", d.Outbound, true),
	}
	p := views.Resource{
		Heading: "Pod " + pod,
		Kind:    "pod",
		Crumbs:  crumbs,
		Grafana: s.grafana("meshscope-pod", "pod", ns, "", pod),
		Windows: s.windows(here, v),
		Live:    views.LiveCalls(s.liveCalls(api.Selector{Namespace: ns, Pod: pod})),
	}
	fs, ws := d.problems()
	p.Data = s.data(here(q), s.summary(d.Summary), charts(d.History), tables, fs, ws)
	p.Data.Notes = d.Window.notes()
	p.Data.Alerts = certAlerts(d.CertExpiring)
	return s.render(w, r, http.StatusOK, s.shell(r, "Pod "+ns+"/"+pod, nil), views.ResourcePage(p), views.DataFragment(p.Data))
}

// writeJSON writes a JSON twin. A page whose metrics partly failed is still
// a 200: the failures are in its "failures" fields.
func (s *server) writeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if err := r.Context().Err(); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
