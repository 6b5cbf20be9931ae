package main

import (
	"net/http"
	"net/url"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/views"
)

// Rows kept by the live views: the tap table in the browser (the page, and the
// panel of a deployment or pod page), the top table sent by the server.
const (
	liveTapRows   = 200
	livePanelRows = 50
	liveTopRows   = 100
)

// liveQuery encodes what a live socket taps as its query string.
func liveQuery(lr liveRequest) url.Values {
	q := lr.filter.Values()
	for k, v := range map[string]string{"namespace": lr.sel.Namespace, "deployment": lr.sel.Deployment, "pod": lr.sel.Pod} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// formFilter is the filter form's content: the query as the user typed it, so
// a bad value is shown next to its error.
func formFilter(q url.Values) views.TapFilter {
	return views.TapFilter{
		Namespace:     q.Get("namespace"),
		Deployment:    q.Get("deployment"),
		Pod:           q.Get("pod"),
		DstDeployment: q.Get(tap.ParamDstDeployment),
		Method:        q.Get(tap.ParamMethod),
		Authority:     q.Get(tap.ParamAuthority),
		Path:          q.Get(tap.ParamPath),
		Status:        q.Get(tap.ParamStatus),
		Failed:        q.Get(tap.ParamFailed),
		GRPCStatus:    q.Get(tap.ParamGRPCStatus),
		MaxRPS:        q.Get(tap.ParamMaxRPS),
		Direction:     q.Get(tap.ParamDirection),
	}
}

// liveCalls is the live calls panel of a deployment or pod page: the calls of
// the proxies sel picks. The dashboard's pages render it with views.LiveCalls.
func (s *server) liveCalls(sel api.Selector) views.LiveTap {
	q := liveQuery(liveRequest{sel: sel})
	return views.LiveTap{
		Filter:     formFilter(q),
		Query:      q.Encode(),
		SocketURL:  s.url("/api/v1/tap/ws", nil),
		StaticHref: s.url("/static/", nil),
		FormAction: s.url("/tap", nil),
		MaxRows:    livePanelRows,
		TapHref:    s.url("/tap", q),
	}
}

// canonical redirects to the page's canonical URL when r's differs (the form
// submits every field, most of them empty), so the link to paste in an
// incident channel names only the filters in force. It reports whether it did.
func canonical(w http.ResponseWriter, r *http.Request, lr liveRequest) bool {
	want := liveQuery(lr)
	for _, p := range uiParams {
		for _, v := range r.URL.Query()[p] {
			if v != "" {
				want.Add(p, v)
			}
		}
	}
	if want.Encode() == r.URL.RawQuery {
		return false
	}
	u := *r.URL
	u.RawQuery = want.Encode()
	http.Redirect(w, r, u.RequestURI(), http.StatusFound)
	return true
}

// tapPage is /tap. A filter that cannot be used is a 400 showing the form with
// the error, so the user can fix it in place.
func (s *server) tapPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	lr, err := parseLiveQuery(q)
	if err == nil && canonical(w, r, lr) {
		return nil
	}
	p := views.LiveTap{
		Filter:     formFilter(q),
		Query:      liveQuery(lr).Encode(),
		SocketURL:  s.url("/api/v1/tap/ws", nil),
		StaticHref: s.url("/static/", nil),
		FormAction: s.url("/tap", nil),
		MaxRows:    liveTapRows,
	}
	if err != nil {
		p.Error = err.Error()
	}
	return s.render(w, r, liveStatus(err), s.shell(r, "Live tap", nil), views.TapPage(p), nil)
}

// topPage is /top.
func (s *server) topPage(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	lr, err := parseLiveQuery(q)
	if err == nil && canonical(w, r, lr) {
		return nil
	}
	p := views.LiveTop{
		Filter:     formFilter(q),
		Query:      liveQuery(lr).Encode(),
		SocketURL:  s.url("/api/v1/top/ws", nil),
		StaticHref: s.url("/static/", nil),
		FormAction: s.url("/top", nil),
		MaxRows:    liveTopRows,
	}
	if err != nil {
		p.Error = err.Error()
	}
	return s.render(w, r, liveStatus(err), s.shell(r, "Live top", nil), views.TopPage(p), nil)
}

// liveStatus is the status of a live page whose filter failed to parse with
// bad: the page still renders, with the form showing the error.
func liveStatus(bad error) int {
	if bad != nil {
		return http.StatusBadRequest
	}
	return http.StatusOK
}
