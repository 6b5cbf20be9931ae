package main

import (
	"context"
	"encoding/json"
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
	if _, ok := sortKeys[trimDesc(v.sort)]; v.sort != "" && !ok {
		return v, badRequest("sort %q: want one of name, success, rps, p50, p95, p99, tcp, optionally prefixed by -", v.sort)
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

type namespacesData struct {
	Namespaces api.Table `json:"namespaces"`
}

func (s *server) namespacesPage(w http.ResponseWriter, r *http.Request) error {
	v, err := s.viewState(r)
	if err != nil {
		return err
	}
	d := namespacesData{Namespaces: s.prom.Golden(r.Context(), byNamespace(v.window), true)}
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces", q) }
	q := s.query(v)
	t := s.table(here, v, "Golden metrics per namespace", "namespaces", "Namespace", d.Namespaces, api.LabelNamespace,
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
	fs, ws := problems(d.Namespaces)
	p.Data = s.data(here(q), nil, nil, []views.Table{t}, fs, ws)
	return s.render(w, r, http.StatusOK, s.shell(r, "Namespaces", nil), views.ResourcePage(p), views.DataFragment(p.Data))
}

type namespaceData struct {
	Deployments api.Table `json:"deployments"`
	Pods        api.Table `json:"pods"`
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
	ctx := r.Context()
	fetch(
		func() { d.Deployments = s.prom.Golden(ctx, deploymentsOf(ns, v.window), true) },
		func() {
			d.Pods = s.prom.Golden(ctx, podsOf(v.window, api.Match{Label: api.LabelNamespace, Value: ns}), true)
		},
	)
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces/{ns}", q, ns) }
	q := s.query(v)
	deps := s.table(here, v, "Deployments", "deployments", "Deployment", d.Deployments, api.LabelDeployment,
		"no deployments with proxies in namespace "+ns,
		func(row api.Row) (string, string) {
			dep := row.Labels[api.LabelDeployment]
			return s.url("/namespaces/{ns}/deployments/{name}", q, ns, dep),
				s.grafana("meshscope-deployment", "deployment", ns, dep, "")
		})
	pods := s.table(here, v, "Pods", "pods", "Pod", d.Pods, api.LabelPod,
		"no pods with proxies in namespace "+ns, s.podLinks(v, ns))
	p := views.Resource{
		Heading: "Namespace " + ns,
		Kind:    "namespace",
		Crumbs:  s.crumbs(q, ""),
		Grafana: s.grafana("meshscope-namespace", "namespace", ns, "", ""),
		Windows: s.windows(here, v),
	}
	fs, ws := problems(d.Deployments, d.Pods)
	p.Data = s.data(here(q), nil, nil, []views.Table{deps, pods}, fs, ws)
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
	Summary  api.Table  `json:"summary"`
	Inbound  api.Table  `json:"inbound"`
	Outbound api.Table  `json:"outbound"`
	Pods     *api.Table `json:"pods,omitempty"`
	History  history    `json:"history"`
}

type history struct {
	Success api.Chart `json:"success_rate"`
	RPS     api.Chart `json:"rps"`
	Latency api.Chart `json:"latency"`
}

// chartSpan is how far back the charts of a window reach: 30 windows, at
// least 10 minutes, at most a day.
func chartSpan(w time.Duration) (span, step time.Duration) {
	span = min(max(30*w, 10*time.Minute), 24*time.Hour)
	return span, max(span/120, time.Second)
}

func (s *server) resource(ctx context.Context, v viewState, self api.Scope, inbound, outbound api.Scope, pods *api.Scope) resourceData {
	var d resourceData
	span, step := chartSpan(v.window)
	fns := []func(){
		func() { d.Summary = s.prom.Golden(ctx, self, true) },
		func() { d.Inbound = s.prom.Golden(ctx, inbound, false) },
		func() { d.Outbound = s.prom.Golden(ctx, outbound, false) },
		func() { d.History.Success, d.History.RPS, d.History.Latency = s.prom.History(ctx, self, span, step) },
	}
	if pods != nil {
		fns = append(fns, func() {
			t := s.prom.Golden(ctx, *pods, true)
			d.Pods = &t
		})
	}
	fetch(fns...)
	return d
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
	pods := podsOf(v.window, self...)
	d := s.resource(r.Context(), v,
		api.Scope{Direction: "inbound", By: []string{api.LabelNamespace, api.LabelDeployment}, Match: self, Window: v.window},
		edges(v.window, api.Match{Label: api.LabelDstNamespace, Value: ns}, api.Match{Label: api.LabelDstDeployment, Value: name}),
		edges(v.window, self...),
		&pods)
	if s.isAPI(r) {
		return s.writeJSON(w, r, d)
	}
	here := func(q url.Values) string { return s.url("/namespaces/{ns}/deployments/{name}", q, ns, name) }
	q := s.query(v)
	tables := []views.Table{
		s.edgeTable(here, v, "Inbound: who calls "+name, "inbound", "Caller", d.Inbound, false),
		s.edgeTable(here, v, "Outbound: what "+name+" calls", "outbound", "Callee", d.Outbound, true),
		s.table(here, v, "Pods", "pods", "Pod", *d.Pods, api.LabelPod, "no pods with proxies in deployment "+name, s.podLinks(v, ns)),
	}
	p := views.Resource{
		Heading: "Deployment " + name,
		Kind:    "deployment",
		Crumbs:  s.crumbs(q, ns),
		Grafana: s.grafana("meshscope-deployment", "deployment", ns, name, ""),
		Windows: s.windows(here, v),
		Live:    views.LiveCalls(s.liveCalls(api.Selector{Namespace: ns, Deployment: name})),
	}
	fs, ws := problems(d.Summary, d.Inbound, d.Outbound, *d.Pods)
	hf, hw := d.History.problems()
	p.Data = s.data(here(q), summary(d.Summary), charts(d.History), tables, append(fs, hf...), append(ws, hw...))
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
	d := s.resource(r.Context(), v,
		podsOf(v.window, self...),
		edges(v.window, api.Match{Label: api.LabelDstNamespace, Value: ns}, api.Match{Label: "dst_pod", Value: pod}),
		edges(v.window, self...),
		nil)
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
	fs, ws := problems(d.Summary, d.Inbound, d.Outbound)
	hf, hw := d.History.problems()
	p.Data = s.data(here(q), summary(d.Summary), charts(d.History), tables, append(fs, hf...), append(ws, hw...))
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
