package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
)

// targets is a TargetLister whose answer a test changes as proxies come and go.
type targets struct {
	mu  sync.Mutex
	ts  []v1.ActiveTarget
	err error
}

func (t *targets) Targets(_ context.Context, job string) ([]v1.ActiveTarget, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if job != Job {
		return nil, errors.New("unexpected job " + job)
	}
	return slices.Clone(t.ts), t.err
}

func (t *targets) set(ts ...v1.ActiveTarget) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ts = ts
}

func target(ns, deploy, pod, admin string) v1.ActiveTarget {
	return v1.ActiveTarget{
		Labels: model.LabelSet{"job": Job, "namespace": model.LabelValue(ns),
			"deployment": model.LabelValue(deploy), "pod": model.LabelValue(pod)},
		ScrapeURL: "http://" + admin + "/metrics",
	}
}

// tapServer speaks the proxy's /tap protocol (bearer token unless token is
// empty, NDJSON until the client leaves) and records what each tap request
// asked for, which a real proxy would not tell.
type tapServer struct {
	*httptest.Server
	token  string
	events chan tap.Event
	mu     sync.Mutex
	asked  []url.Values
}

func newTapServer(t *testing.T, token string) *tapServer {
	ts := &tapServer{token: token, events: make(chan tap.Event, 100)}
	ts.Server = httptest.NewServer(http.HandlerFunc(ts.serve))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tapServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/tap" || (ts.token != "" && r.Header.Get("Authorization") != "Bearer "+ts.token) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	ts.mu.Lock()
	ts.asked = append(ts.asked, r.URL.Query())
	ts.mu.Unlock()
	w.Header().Set("Content-Type", tap.ContentType)
	w.WriteHeader(http.StatusOK)
	enc := tap.NewEncoder(w)
	enc.Flush()
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ts.events:
			if enc.Encode(&ev) != nil || enc.Flush() != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}
}

func (ts *tapServer) admin() string { return strings.TrimPrefix(ts.URL, "http://") }

func (ts *tapServer) lastAsked() url.Values {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.asked) == 0 {
		return nil
	}
	return ts.asked[len(ts.asked)-1]
}

func requestEvent(id uint64, path string) tap.Event {
	return tap.Event{V: tap.Version, Type: tap.TypeRequest, ID: id, TS: time.Now(), Direction: tap.DirectionInbound,
		Method: "GET", Authority: "web.shop:8080", Path: path}
}

// collector gathers what a fan-in emits.
type collector struct {
	mu    sync.Mutex
	items []TapItem
}

func (c *collector) emit(it TapItem) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items = append(c.items, it)
}

// waitFor polls until some emitted item satisfies ok, or fails after a generous deadline.
func (c *collector) waitFor(t *testing.T, what string, ok func(TapItem) bool) TapItem {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, it := range c.items {
			if ok(it) {
				c.mu.Unlock()
				return it
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never emitted: %s; got %+v", what, c.snapshot())
	return TapItem{}
}

func (c *collector) snapshot() []TapItem {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.items)
}

func isEvent(pod, path string) func(TapItem) bool {
	return func(it TapItem) bool { return it.Event != nil && it.Proxy.Pod == pod && it.Event.Path == path }
}

func isState(pod string, s ProxyState) func(TapItem) bool {
	return func(it TapItem) bool { return it.Event == nil && it.Proxy.Pod == pod && it.State == s }
}

// runFanIn runs f until the test ends and checks that Run returned.
func runFanIn(t *testing.T, f *FanIn, sel Selector, filter tap.Filter) *collector {
	t.Helper()
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, sel, filter, c.emit) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return c
}

func TestListProxiesSelectsByTargetLabels(t *testing.T) {
	tl := &targets{}
	tl.set(
		target("shop", "web", "web-1", "10.0.0.1:4191"),
		target("shop", "web", "web-0", "10.0.0.2:4191"),
		target("shop", "api", "api-0", "10.0.0.3:4191"),
		target("ops", "web", "web-0", "10.0.0.4:4191"),
		v1.ActiveTarget{Labels: model.LabelSet{"job": Job}, ScrapeURL: "::not a url"},
	)
	cases := []struct {
		name string
		sel  Selector
		want []string
	}{
		{"empty selector picks every proxy", Selector{}, []string{"10.0.0.4:4191", "10.0.0.3:4191", "10.0.0.2:4191", "10.0.0.1:4191"}},
		{"namespace", Selector{Namespace: "shop"}, []string{"10.0.0.3:4191", "10.0.0.2:4191", "10.0.0.1:4191"}},
		{"deployment needs its namespace to be unique", Selector{Namespace: "shop", Deployment: "web"}, []string{"10.0.0.2:4191", "10.0.0.1:4191"}},
		{"pod", Selector{Namespace: "shop", Pod: "web-1"}, []string{"10.0.0.1:4191"}},
		{"nothing matches", Selector{Namespace: "nope"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := ListProxies(context.Background(), tl, tc.sel)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.Admin)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestListProxiesNamesTheBackendError(t *testing.T) {
	_, err := ListProxies(context.Background(), &targets{err: errors.New("connection refused")}, Selector{})
	if err == nil || !strings.Contains(err.Error(), Job) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v, want the job and the cause", err)
	}
}

func TestShareRPSGivesEveryProxyAtLeastOne(t *testing.T) {
	for _, tc := range []struct{ total, n, want int }{
		{100, 1, 100}, {100, 3, 33}, {10000, 10, 1000}, {5, 10, 1}, {1, 3, 1}, {100, 0, 100},
	} {
		if got := ShareRPS(tc.total, tc.n); got != tc.want {
			t.Errorf("ShareRPS(%d, %d) = %d, want %d", tc.total, tc.n, got, tc.want)
		}
	}
}

func TestFanInMergesStreamsWithTokenAndSplitRate(t *testing.T) {
	const token = "s3cret"
	a, b, c := newTapServer(t, token), newTapServer(t, token), newTapServer(t, token)
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", a.admin()), target("shop", "web", "web-1", b.admin()),
		target("shop", "web", "web-2", c.admin()), target("shop", "api", "api-0", "127.0.0.1:1"))
	f := &FanIn{Targets: tl, Token: token}
	got := runFanIn(t, f, Selector{Namespace: "shop", Deployment: "web"}, tap.Filter{MaxRPS: 100, Path: "/api"})

	for _, s := range []*tapServer{a, b, c} {
		s.events <- requestEvent(1, "/api/"+s.admin())
	}
	for i, s := range []*tapServer{a, b, c} {
		pod := "web-" + string(rune('0'+i))
		got.waitFor(t, pod+" streaming", isState(pod, ProxyStreaming))
		got.waitFor(t, pod+"'s event", isEvent(pod, "/api/"+s.admin()))
		q := s.lastAsked()
		if q.Get("max_rps") != "33" || q.Get("path") != "/api" {
			t.Errorf("%s asked with %v, want max_rps=33 (100 split over 3) and the path filter", pod, q)
		}
	}
	for _, it := range got.snapshot() {
		if it.Proxy.Deployment != "web" {
			t.Errorf("emitted an item of a proxy the selector excludes: %+v", it)
		}
	}
}

func TestFanInReportsFailingProxiesAndKeepsTheRest(t *testing.T) {
	good, killed, wrongToken := newTapServer(t, "tok"), newTapServer(t, "tok"), newTapServer(t, "other")
	closedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closedLn.Addr().String()
	closedLn.Close()
	tl := &targets{}
	tl.set(target("shop", "web", "good", good.admin()), target("shop", "web", "killed", killed.admin()),
		target("shop", "web", "wrong-token", wrongToken.admin()), target("shop", "web", "unreachable", closedAddr))
	f := &FanIn{Targets: tl, Token: "tok", Retry: 50 * time.Millisecond}
	got := runFanIn(t, f, Selector{Namespace: "shop"}, tap.Filter{})

	refused := got.waitFor(t, "unreachable proxy failed", isState("unreachable", ProxyFailed))
	if !strings.Contains(refused.Err, "refused") {
		t.Errorf("unreachable proxy reported %q, want the connection error", refused.Err)
	}
	unauthorized := got.waitFor(t, "wrong token failed", isState("wrong-token", ProxyFailed))
	if !strings.Contains(unauthorized.Err, "401") {
		t.Errorf("refused token reported %q, want the 401", unauthorized.Err)
	}
	got.waitFor(t, "killed proxy streaming", isState("killed", ProxyStreaming))
	killed.events <- requestEvent(1, "/before-kill")
	got.waitFor(t, "event before the kill", isEvent("killed", "/before-kill"))

	killed.CloseClientConnections()
	killed.Listener.Close()
	got.waitFor(t, "killed proxy failed", isState("killed", ProxyFailed))
	good.events <- requestEvent(7, "/after-kill")
	got.waitFor(t, "the good proxy's event after the kill", isEvent("good", "/after-kill"))
}

func TestFanInNoticesProxiesThatComeAndGo(t *testing.T) {
	a, b := newTapServer(t, ""), newTapServer(t, "")
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", a.admin()))
	f := &FanIn{Targets: tl, Relist: 20 * time.Millisecond}
	got := runFanIn(t, f, Selector{Namespace: "shop"}, tap.Filter{MaxRPS: 10})
	got.waitFor(t, "web-0 streaming", isState("web-0", ProxyStreaming))

	tl.set(target("shop", "web", "web-0", a.admin()), target("shop", "web", "web-1", b.admin()))
	got.waitFor(t, "new proxy web-1 streaming", isState("web-1", ProxyStreaming))
	b.events <- requestEvent(1, "/new")
	got.waitFor(t, "web-1's event", isEvent("web-1", "/new"))
	if q := b.lastAsked(); q.Get("max_rps") != "5" {
		t.Errorf("web-1 asked max_rps=%s, want 5 (10 split over 2)", q.Get("max_rps"))
	}

	tl.set(target("shop", "web", "web-1", b.admin()))
	got.waitFor(t, "web-0 gone", isState("web-0", ProxyGone))

	tl.set()
	got.waitFor(t, "no proxies left", func(it TapItem) bool { return it.State == NoProxies })
}

func TestFanInFailsWhenTheFirstListingFails(t *testing.T) {
	f := &FanIn{Targets: &targets{err: errors.New("prometheus down")}}
	err := f.Run(context.Background(), Selector{}, tap.Filter{}, func(TapItem) {})
	if err == nil || !strings.Contains(err.Error(), "prometheus down") {
		t.Errorf("Run = %v, want the backend's error", err)
	}
}

func TestFanInLeavesNoGoroutineBehind(t *testing.T) {
	servers := []*tapServer{newTapServer(t, ""), newTapServer(t, ""), newTapServer(t, "")}
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", servers[0].admin()), target("shop", "web", "web-1", servers[1].admin()),
		target("shop", "web", "web-2", servers[2].admin()))
	before := runtime.NumGoroutine()
	for range 3 {
		c := &collector{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		f := &FanIn{Targets: tl, Client: NewTapClient(time.Second, time.Second)}
		go func() { done <- f.Run(ctx, Selector{}, tap.Filter{}, c.emit) }()
		for _, pod := range []string{"web-0", "web-1", "web-2"} {
			c.waitFor(t, pod+" streaming", isState(pod, ProxyStreaming))
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		f.Client.CloseIdleConnections()
	}
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after the fan-ins ended, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestFanInSplitsMaxRPSByEachProxysRateAndSaysItSamples: web-0 carries 30 req/s,
// web-1 10: of max_rps 20, web-0 may report 15 and web-1 5 (an even split would
// show a quarter of web-0's calls and half of web-1's), and the fan-in says that
// 20 of 40 req/s are shown.
func TestFanInSplitsMaxRPSByEachProxysRateAndSaysItSamples(t *testing.T) {
	a, b := newTapServer(t, ""), newTapServer(t, "")
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", a.admin()), target("shop", "web", "web-1", b.admin()))
	var asked []string
	rates := func(_ context.Context, sel Selector, direction string) (map[string]float64, error) {
		asked = append(asked, sel.String()+" "+direction)
		return map[string]float64{ProxyKey("shop", "web-0"): 30, ProxyKey("shop", "web-1"): 10}, nil
	}
	f := &FanIn{Targets: tl, Rates: rates}
	got := runFanIn(t, f, Selector{Namespace: "shop", Deployment: "web"}, tap.Filter{MaxRPS: 20, Direction: tap.DirectionInbound})
	got.waitFor(t, "sampling", func(it TapItem) bool {
		return it.State == Sampling && it.ObservedRPS == 40 && it.MaxRPS == 20 && strings.Contains(it.Err, "at most 20 of the 40.0 req/s")
	})
	for pod, s := range map[string]*tapServer{"web-0": a, "web-1": b} {
		got.waitFor(t, pod+" streaming", isState(pod, ProxyStreaming))
		want := map[string]string{"web-0": "15", "web-1": "5"}[pod]
		if q := s.lastAsked(); q.Get("max_rps") != want {
			t.Errorf("%s asked with max_rps=%s, want %s", pod, q.Get("max_rps"), want)
		}
	}
	if len(asked) == 0 || asked[0] != "namespace=shop deployment=web inbound" {
		t.Errorf("rates asked for %q, want the selector and the filter's direction", asked)
	}
}

func TestShareByRateWithoutRatesSplitsEvenly(t *testing.T) {
	ps := []Proxy{{Namespace: "shop", Pod: "a"}, {Namespace: "shop", Pod: "b"}}
	got := ShareByRate(100, ps, nil)
	if got[ps[0]] != 50 || got[ps[1]] != 50 {
		t.Errorf("shares %v, want 50 each", got)
	}
	got = ShareByRate(100, ps, map[string]float64{ProxyKey("shop", "a"): 3})
	if got[ps[0]] != 100 || got[ps[1]] != 1 {
		t.Errorf("shares %v, want 100 for the busy one and 1 for the idle one", got)
	}
}

// Finding 6 of the hardening review: one request with a 600,000-byte header made a tap line over the
// dashboard's limit, and that proxy's stream failed and reconnected, so repeating it kept the proxy out of
// the live view. The oversized event is dropped and counted; the stream goes on.
func TestFanInDropsAnOversizedEventAndKeepsTheStream(t *testing.T) {
	s := newTapServer(t, "")
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", s.admin()))
	got := runFanIn(t, &FanIn{Targets: tl, MaxLine: 64 << 10}, Selector{Namespace: "shop"}, tap.Filter{MaxRPS: 100})
	huge := requestEvent(2, "/huge")
	huge.Headers = map[string][]string{"x-huge": {strings.Repeat("h", 600_000)}}
	s.events <- requestEvent(1, "/before")
	s.events <- huge
	s.events <- requestEvent(3, "/after")
	got.waitFor(t, "the event after the oversized one", isEvent("web-0", "/after"))
	var dropped uint64
	for _, it := range got.snapshot() {
		if it.State == ProxyFailed {
			t.Errorf("the proxy's stream failed: %s", it.Err)
		}
		if it.Event != nil && it.Event.Type == tap.TypeDropped {
			dropped += it.Event.Count
		}
		if it.Event != nil && it.Event.Path == "/huge" {
			t.Error("the oversized event was delivered")
		}
	}
	if dropped != 1 {
		t.Errorf("dropped count %d, want 1", dropped)
	}
}

// Finding 1 of the hardening review: the dashboard sent its one fleet-wide tap token, in clear, to every
// target Prometheus discovered, so a pod that got itself scraped received it. The token goes only to
// addresses in the allowed networks; another target is not tapped, and the stream says why.
func TestFanInSendsTheTokenOnlyToAllowedNetworks(t *testing.T) {
	const token = "s3cret"
	s := newTapServer(t, token)
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", s.admin()))
	f := &FanIn{Targets: tl, Token: token, TokenNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	got := runFanIn(t, f, Selector{Namespace: "shop"}, tap.Filter{MaxRPS: 100})
	failed := got.waitFor(t, "the proxy reported as not tapped", isState("web-0", ProxyFailed))
	if !strings.Contains(failed.Err, ErrTokenWithheld.Error()) || !strings.Contains(failed.Err, "--tap-token-networks") {
		t.Errorf("failure %q does not say the token was withheld and which flag allows it", failed.Err)
	}
	if q := s.lastAsked(); q != nil {
		t.Errorf("the proxy outside the allowed networks was asked %v", q)
	}

	for _, tt := range []struct {
		admin    string
		networks []netip.Prefix
		want     bool
	}{
		{"127.0.0.1:4191", nil, true},
		{"[::1]:4191", nil, true},
		{"10.1.2.3:4191", nil, false},
		{"10.1.2.3:4191", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, true},
		{"[::ffff:10.1.2.3]:4191", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, true},
		{"localhost:4191", nil, false},
		{"proxy.attacker.example:4191", []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, false},
	} {
		if got := TokenAllowed(tt.admin, tt.networks); got != tt.want {
			t.Errorf("TokenAllowed(%s, %v) = %v, want %v", tt.admin, tt.networks, got, tt.want)
		}
	}
}

// With the dashboard's identity, a Prometheus target is tapped over mutual TLS as the identity its
// serviceaccount label names; one without the label is not tapped at all, since nothing says which
// identity its proxy must prove: the fan-in says why and counts it, and asks the proxy nothing.
func TestFanInWithIdentityTapsOnlyProxiesWhoseIdentityItKnows(t *testing.T) {
	s := newTapServer(t, "")
	labelled := target("shop", "web", "web-1", "10.0.0.1:4191")
	labelled.Labels["serviceaccount"] = "web"
	tl := &targets{}
	tl.set(target("shop", "web", "web-0", s.admin()), labelled)
	ps, err := ListProxies(context.Background(), tl, Selector{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Identity != "" || ps[1].Identity != meshid.Name("shop", "web") {
		t.Fatalf("identities of %+v, want none for web-0 and web's for web-1", ps)
	}

	id, err := meshid.NewClient(meshid.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	refused := map[string]int{}
	tl.set(target("shop", "web", "web-0", s.admin()))
	f := &FanIn{Targets: tl, Identity: id, Token: "never-sent", Retry: 10 * time.Millisecond,
		Refused: func(reason string) { mu.Lock(); refused[reason]++; mu.Unlock() }}
	got := runFanIn(t, f, Selector{Namespace: "shop"}, tap.Filter{MaxRPS: 100})
	failed := got.waitFor(t, "web-0 not tapped", isState("web-0", ProxyFailed))
	if !strings.Contains(failed.Err, "identity is unknown") {
		t.Errorf("failure %q does not say the proxy's identity is unknown", failed.Err)
	}
	got.waitFor(t, "web-0 refused again", func(TapItem) bool { mu.Lock(); defer mu.Unlock(); return refused[RefusedIdentityUnknown] >= 2 })
	if q := s.lastAsked(); q != nil {
		t.Errorf("the proxy whose identity is unknown was asked %v", q)
	}
}
