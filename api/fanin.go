package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
)

// TargetLister is the one call to the metrics backend the fan-in needs; the
// dashboard's Querier has it.
type TargetLister interface {
	// Targets returns the backend's active scrape targets of job.
	Targets(ctx context.Context, job string) ([]v1.ActiveTarget, error)
}

// Selector picks proxies by their target labels. An empty field matches every value.
type Selector struct {
	Namespace  string
	Deployment string
	Pod        string
}

func (s Selector) String() string {
	var parts []string
	for _, kv := range [][2]string{{"namespace", s.Namespace}, {"deployment", s.Deployment}, {"pod", s.Pod}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	if len(parts) == 0 {
		return "all proxies"
	}
	return strings.Join(parts, " ")
}

func (s Selector) matches(p Proxy) bool {
	return (s.Namespace == "" || s.Namespace == p.Namespace) &&
		(s.Deployment == "" || s.Deployment == p.Deployment) &&
		(s.Pod == "" || s.Pod == p.Pod)
}

// Proxy is one tappable proxy: an active target of Job.
type Proxy struct {
	Namespace  string `json:"namespace,omitempty"`
	Deployment string `json:"deployment,omitempty"`
	Pod        string `json:"pod,omitempty"`
	// Admin is the host:port of the proxy's admin listener, taken from the scrape URL.
	Admin string `json:"admin"`
	// Identity is the identity the proxy must prove over mutual TLS: its pod's ServiceAccount's, as
	// discovery knows it (KubeProxies; a target's serviceaccount label); empty when unknown.
	Identity string `json:"identity,omitempty"`
}

// Name is how the proxy is shown: its pod, or its admin address when the target has no pod label.
func (p Proxy) Name() string {
	if p.Pod != "" {
		return p.Pod
	}
	return p.Admin
}

// ListProxies returns the active targets of Job that sel selects, sorted by
// namespace, deployment, pod and address. Targets that are down are listed too:
// tapping them reports why they cannot be reached.
func ListProxies(ctx context.Context, tl TargetLister, sel Selector) ([]Proxy, error) {
	targets, err := tl.Targets(ctx, Job)
	if err != nil {
		return nil, fmt.Errorf("list proxies (job %s): %w", Job, err)
	}
	seen := map[string]bool{}
	var out []Proxy
	for _, t := range targets {
		u, err := url.Parse(t.ScrapeURL)
		if err != nil || u.Host == "" {
			continue
		}
		p := Proxy{
			Namespace:  string(t.Labels["namespace"]),
			Deployment: string(t.Labels["deployment"]),
			Pod:        string(t.Labels["pod"]),
			Admin:      u.Host,
		}
		if sa := string(t.Labels["serviceaccount"]); sa != "" && p.Namespace != "" {
			p.Identity = meshid.Name(p.Namespace, sa)
		}
		if !sel.matches(p) || seen[p.Admin] {
			continue
		}
		seen[p.Admin] = true
		out = append(out, p)
	}
	sortProxies(out)
	return out, nil
}

// sortProxies orders proxies by namespace, deployment, pod and address.
func sortProxies(out []Proxy) {
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Deployment != b.Deployment {
			return a.Deployment < b.Deployment
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		return a.Admin < b.Admin
	})
}

// ProxyState says what the fan-in knows about one proxy's tap stream.
type ProxyState string

// The states a TapItem reports.
const (
	// ProxyStreaming: the proxy accepted the tap request; its events follow.
	ProxyStreaming ProxyState = "streaming"
	// ProxyFailed: the proxy could not be reached or its stream broke; the fan-in retries.
	ProxyFailed ProxyState = "failed"
	// ProxyGone: the proxy is no longer an active target; its stream was closed.
	ProxyGone ProxyState = "gone"
	// NoProxies: no active target matches the selector (TapItem.Proxy is zero).
	NoProxies ProxyState = "none"
	// ListFailed: listing the targets again failed; the fan-in keeps the proxies it has (Proxy is zero).
	ListFailed ProxyState = "list-failed"
	// Sampling: how many requests per second the selected proxies carry (ObservedRPS, from the metrics)
	// against the most the stream reports (MaxRPS); Err says so in words. Proxy is zero.
	Sampling ProxyState = "sampling"
)

// TapItem is one thing the fan-in delivers: a tap event from a proxy, or news
// about a proxy (State set, Event nil).
type TapItem struct {
	Proxy Proxy
	Event *tap.Event
	State ProxyState
	// Err says why, for every state but ProxyStreaming and ProxyGone.
	Err string
	// ObservedRPS and MaxRPS are set with Sampling.
	ObservedRPS float64
	MaxRPS      int
}

// ProxyRates returns the requests per second each selected proxy carries, keyed by ProxyKey, in the
// direction a filter asks for ("" for both); the dashboard's Querier has it.
type ProxyRates func(ctx context.Context, sel Selector, direction string) (map[string]float64, error)

// ProxyKey names a proxy in a ProxyRates answer: its namespace and pod target labels.
func ProxyKey(namespace, pod string) string { return namespace + "/" + pod }

// ErrTokenWithheld: a proxy is not tapped, because its address is outside the networks the tap token may
// be sent to.
var ErrTokenWithheld = errors.New("tap token withheld")

// MeshTLS is the client side of mutual TLS to a peer that must prove identity name: meshid.Client has it.
type MeshTLS interface {
	ClientConfig(name string) *tls.Config
}

// Reasons of FanIn.Refused besides meshid.RefusalReason's.
const (
	// RefusedIdentityUnknown: with Identity set, a proxy whose identity discovery does not know.
	RefusedIdentityUnknown = "identity_unknown"
	// RefusedTokenWithheld: the proxy's address is outside TokenNetworks (ErrTokenWithheld).
	RefusedTokenWithheld = "token_withheld"
)

// refusedError is a tap not made, or refused, for security's sake: counted and logged as a refusal.
type refusedError struct {
	reason string
	err    error
}

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// DefaultTokenNetworks is where a tap token goes unless told otherwise: this machine only (the demo,
// kubectl port-forward).
var DefaultTokenNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// TokenAllowed reports whether a tap token may be sent to the proxy admin address admin (host:port) when
// tokens may go to networks (nil: DefaultTokenNetworks).
func TokenAllowed(admin string, networks []netip.Prefix) bool {
	if networks == nil {
		networks = DefaultTokenNetworks
	}
	host, _, err := net.SplitHostPort(admin)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, n := range networks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// FanIn taps every proxy a Selector picks and merges their streams. Zero
// durations and sizes take the defaults named on each field.
type FanIn struct {
	// Targets are the metrics backend's scrape targets: the proxies to tap, unless Finder is set.
	Targets TargetLister
	// Finder, when set, finds the proxies instead of Targets: KubeProxies asks the API server.
	Finder ProxyFinder
	// Rates, when set, splits max_rps across the proxies by the rate each carries (a busy proxy gets more
	// of it than an idle one), and the fan-in reports what share of the traffic is shown (Sampling).
	// Without it, or when it fails, every proxy gets an equal share.
	Rates ProxyRates
	// Identity, when set, is the dashboard's workload identity: every proxy is tapped over mutual TLS,
	// the dashboard's certificate presented and the proxy's checked against the identity discovery gives
	// it (Proxy.Identity), and Token is never sent; a proxy whose identity is unknown is not tapped.
	Identity MeshTLS
	// Refused, when set, is told each tap the dashboard did not make, or the proxy refused, for
	// security's sake: by reason, meshid.RefusalReason's or RefusedIdentityUnknown or RefusedTokenWithheld.
	Refused func(reason string)
	// Token is sent as a bearer token to the proxies whose admin address is in TokenNetworks; it never
	// leaves the dashboard.
	Token string
	// TokenNetworks are the networks Token may be sent to, in clear: whoever gets a target listed (a line
	// in a file_sd file, a pod matching the scrape config) would otherwise receive the one credential
	// that taps every proxy. A proxy outside them is not tapped (with Token set), and says why. Nil
	// means DefaultTokenNetworks; a host name is never in them (it may resolve anywhere).
	TokenNetworks []netip.Prefix
	// Client makes the tap requests; nil means one with connect and header timeouts
	// and no overall timeout, since a tap stream stays open.
	Client *http.Client
	// Relist is how often the targets are listed again to notice proxies that come and go (10s).
	Relist time.Duration
	// Retry is how long a failed proxy waits before it is tapped again (2s).
	Retry time.Duration
	// MaxLine caps one NDJSON line from a proxy (tap.DefaultMaxLine); a longer line is dropped and counted
	// as a dropped event, and the stream goes on.
	MaxLine int
	Logger  *slog.Logger

	clientOnce sync.Once
}

func (f *FanIn) relist() time.Duration { return orDefault(f.Relist, 10*time.Second) }
func (f *FanIn) retry() time.Duration  { return orDefault(f.Retry, 2*time.Second) }

func (f *FanIn) logger() *slog.Logger {
	if f.Logger != nil {
		return f.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (f *FanIn) client() *http.Client {
	f.clientOnce.Do(func() {
		if f.Client == nil && f.Identity != nil {
			f.Client = NewMeshTapClient(f.Identity, 5*time.Second, 10*time.Second)
		} else if f.Client == nil {
			f.Client = NewTapClient(5*time.Second, 10*time.Second)
		}
	})
	return f.Client
}

// ProxyFinder finds the proxies a Selector picks, sorted as ListProxies sorts them.
type ProxyFinder interface {
	FindProxies(ctx context.Context, sel Selector) ([]Proxy, error)
}

// List returns the proxies sel picks: from Finder when set, else from the targets of Targets.
func (f *FanIn) List(ctx context.Context, sel Selector) ([]Proxy, error) {
	if f.Finder != nil {
		return f.Finder.FindProxies(ctx, sel)
	}
	return ListProxies(ctx, f.Targets, sel)
}

// ShareRPS splits a total rate across n proxies, at least 1 each.
func ShareRPS(total, n int) int {
	if n <= 0 {
		return total
	}
	return max(1, total/n)
}

// ShareByRate splits a total rate across proxies in proportion to the rates they carry (keyed by
// ProxyKey), rounding up and at least 1 each, so a proxy carrying less than its share is not limited
// at all. With no rate known it splits evenly.
func ShareByRate(total int, proxies []Proxy, rates map[string]float64) map[Proxy]int {
	sum := 0.0
	for _, p := range proxies {
		sum += rates[ProxyKey(p.Namespace, p.Pod)]
	}
	shares := make(map[Proxy]int, len(proxies))
	for _, p := range proxies {
		if sum <= 0 {
			shares[p] = ShareRPS(total, len(proxies))
			continue
		}
		shares[p] = min(tap.MaxMaxRPS, max(1, int(math.Ceil(float64(total)*rates[ProxyKey(p.Namespace, p.Pod)]/sum))))
	}
	return shares
}

// Run taps the proxies sel picks with filter, delivering every event and every
// change of a proxy's state to emit until ctx ends. emit is called from several
// goroutines at once and must not block. The filter's max_rps is split across the
// proxies. Run returns an error only when the first listing of targets fails;
// later failures are delivered as items. Every goroutine it starts has ended when
// it returns.
func (f *FanIn) Run(ctx context.Context, sel Selector, filter tap.Filter, emit func(TapItem)) error {
	proxies, err := f.List(ctx, sel)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type running struct {
		share  int
		cancel context.CancelFunc
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	streams := map[Proxy]running{}
	apply := func(proxies []Proxy) {
		shares := f.shares(ctx, sel, filter, proxies, emit)
		want := map[Proxy]bool{}
		for _, p := range proxies {
			want[p] = true
		}
		for p, r := range streams {
			if !want[p] {
				r.cancel()
				delete(streams, p)
				emit(TapItem{Proxy: p, State: ProxyGone})
			}
		}
		for _, p := range proxies {
			share := shares[p]
			if r, ok := streams[p]; ok && r.share == share {
				continue
			} else if ok {
				r.cancel()
			}
			pctx, pcancel := context.WithCancel(ctx)
			streams[p] = running{share: share, cancel: pcancel}
			wg.Add(1)
			go func() {
				defer wg.Done()
				pf := filter
				pf.MaxRPS = share
				f.tapProxy(pctx, p, pf, emit)
			}()
		}
		if len(proxies) == 0 {
			emit(TapItem{State: NoProxies, Err: "no proxy of job " + Job + " matches " + sel.String()})
		}
	}
	apply(proxies)
	tick := time.NewTicker(f.relist())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		proxies, err := f.List(ctx, sel)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			f.logger().Warn("tap fan-in: listing targets failed, keeping the last set", "err", err)
			emit(TapItem{State: ListFailed, Err: err.Error()})
			continue
		}
		apply(proxies)
	}
}

// shares splits filter's max_rps across proxies: by the rate each carries when f.Rates knows it (and
// then emits what share of that traffic the stream can show), else evenly.
func (f *FanIn) shares(ctx context.Context, sel Selector, filter tap.Filter, proxies []Proxy, emit func(TapItem)) map[Proxy]int {
	var rates map[string]float64
	if f.Rates != nil && len(proxies) > 0 {
		var err error
		if rates, err = f.Rates(ctx, sel, filter.Direction); err != nil {
			f.logger().Warn("tap fan-in: proxies' request rates unknown, max_rps split evenly", "err", err)
			rates = nil
		} else {
			observed := 0.0
			for _, p := range proxies {
				observed += rates[ProxyKey(p.Namespace, p.Pod)]
			}
			msg := fmt.Sprintf("the selected proxies carry %.1f req/s (last minute); the stream reports at most %d req/s", observed, filter.RPS())
			if observed > float64(filter.RPS()) {
				msg = fmt.Sprintf("at most %d of the %.1f req/s the selected proxies carry (last minute) are shown; raise max_rps to see more", filter.RPS(), observed)
			}
			emit(TapItem{State: Sampling, Err: msg, ObservedRPS: observed, MaxRPS: filter.RPS()})
		}
	}
	return ShareByRate(filter.RPS(), proxies, rates)
}

// tapProxy streams one proxy's events until ctx ends, reporting each failure and
// trying again after f.retry(). A refusal is counted each time and logged when
// its reason changes, so that a proxy refused in a loop is one log line.
func (f *FanIn) tapProxy(ctx context.Context, p Proxy, filter tap.Filter, emit func(TapItem)) {
	logged := ""
	for {
		err := f.stream(ctx, p, filter, emit)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("stream ended")
		}
		if r, ok := errors.AsType[*refusedError](err); ok {
			if f.Refused != nil {
				f.Refused(r.reason)
			}
			if r.reason != logged {
				f.logger().Warn("tap refused: proxy not tapped", "proxy", p.Name(), "admin", p.Admin, "reason", r.reason, "err", err)
				logged = r.reason
			}
		} else {
			logged = ""
			f.logger().Info("tap fan-in: proxy stream failed", "proxy", p.Name(), "admin", p.Admin, "err", err)
		}
		emit(TapItem{Proxy: p, State: ProxyFailed, Err: err.Error()})
		t := time.NewTimer(f.retry())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stream makes one tap request to p and delivers its events until the stream or ctx ends.
func (f *FanIn) stream(ctx context.Context, p Proxy, filter tap.Filter, emit func(TapItem)) error {
	var s *TapStream
	var err error
	switch {
	case f.Identity != nil && p.Identity == "":
		return &refusedError{RefusedIdentityUnknown, fmt.Errorf("tap %s: not tapped: the proxy's identity is unknown (its pod's ServiceAccount; a Prometheus target needs a serviceaccount label), so it cannot be checked", p.Admin)}
	case f.Identity != nil:
		s, err = OpenMeshTap(ctx, f.client(), p.Admin, p.Identity, filter, f.MaxLine)
	case f.Token != "" && !TokenAllowed(p.Admin, f.TokenNetworks):
		return &refusedError{RefusedTokenWithheld, fmt.Errorf("%w: %s is not in the networks the tap token may be sent to (--tap-token-networks)", ErrTokenWithheld, p.Admin)}
	default:
		s, err = OpenTap(ctx, f.client(), p.Admin, f.Token, filter, f.MaxLine)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	emit(TapItem{Proxy: p, State: ProxyStreaming})
	for {
		ev, err := s.Next()
		if errors.Is(err, tap.ErrLineTooLong) {
			// One oversized line is one event lost, not the proxy: were the stream dropped, a client that
			// sends requests with huge headers could keep its proxy out of every live view.
			f.logger().Info("tap fan-in: event over the line limit dropped", "proxy", p.Name(), "err", err)
			emit(TapItem{Proxy: p, Event: &tap.Event{V: tap.Version, Type: tap.TypeDropped, TS: time.Now().UTC(), Count: 1}})
			continue
		}
		if err != nil {
			return err
		}
		emit(TapItem{Proxy: p, Event: ev})
	}
}
