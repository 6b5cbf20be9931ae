package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
)

// filterFlags registers one flag per tap filter parameter (max_rps becomes
// --max-rps) and returns the values given, for tap.ParseFilter to check.
func filterFlags(fs *flag.FlagSet) func() url.Values {
	help := map[string]string{
		tap.ParamDirection:     "only `inbound` or outbound requests",
		tap.ParamMethod:        "only requests with this HTTP `method`",
		tap.ParamAuthority:     "only requests to this `authority` (host:port)",
		tap.ParamPath:          "only requests whose path starts with this `prefix`",
		tap.ParamDstDeployment: "only requests to this destination `deployment`",
		tap.ParamDstNamespace:  "only requests to this destination `namespace`",
		tap.ParamStatus:        "only requests answered with this `status`: a class such as 5xx or a code such as 404",
		tap.ParamGRPCStatus:    "only gRPC calls that ended with this `status`: a name such as UNAVAILABLE, or 0 to 16",
		tap.ParamMaxRPS:        "most `requests` per second, in all (split across the proxies); 1 to 10000, default 100",
	}
	vals := map[string]*string{}
	for _, p := range tap.Params {
		if p != tap.ParamFailed {
			vals[p] = fs.String(strings.ReplaceAll(p, "_", "-"), "", help[p])
		}
	}
	failed := fs.Bool(tap.ParamFailed, false, "only requests that failed as the success rate counts them: a 5xx, a gRPC status other than OK (also on HTTP 200), a stream error")
	return func() url.Values {
		q := url.Values{}
		for p, v := range vals {
			if *v != "" {
				q.Set(p, *v)
			}
		}
		if *failed {
			q.Set(tap.ParamFailed, "true")
		}
		return q
	}
}

// parseResource reads a RESOURCE argument (deploy/NAME, po/NAME, ns/NAME) into
// the selector's fields, with namespace from -n.
func parseResource(arg, namespace string) (url.Values, error) {
	q := url.Values{}
	if namespace != "" {
		q.Set("namespace", namespace)
	}
	if arg == "" {
		return q, nil
	}
	kind, name, ok := strings.Cut(arg, "/")
	if !ok || name == "" {
		return nil, fmt.Errorf("resource %q: want deploy/NAME, po/NAME or ns/NAME", arg)
	}
	switch kind {
	case "deploy", "deployment", "deployments":
		q.Set("deployment", name)
	case "po", "pod", "pods":
		q.Set("pod", name)
	case "ns", "namespace", "namespaces":
		if namespace != "" && namespace != name {
			return nil, fmt.Errorf("resource %q contradicts -n %s", arg, namespace)
		}
		q.Set("namespace", name)
	default:
		return nil, fmt.Errorf("resource %q: unknown kind %q; want deploy, po or ns", arg, kind)
	}
	if !q.Has("namespace") {
		return nil, fmt.Errorf("resource %q needs its namespace: add -n NAMESPACE", arg)
	}
	return q, nil
}

// liveCLI is what the terminal twins of the live views share: the backend,
// the proxies and the filter.
type liveCLI struct {
	cfg       config
	namespace string
	filter    func() url.Values
	demoFile  *string
}

func (l *liveCLI) register(fs *flag.FlagSet) {
	backendFlags(fs, &l.cfg)
	tapFlags(fs, &l.cfg)
	fs.StringVar(&l.namespace, "n", "", "`namespace` of the resource")
	fs.StringVar(&l.namespace, "namespace", "", "`namespace` of the resource")
	l.filter = filterFlags(fs)
	l.demoFile = demoFileFlag(fs)
}

// parse reads the command line, then the running demo's file for the
// backend flags not given.
func (l *liveCLI) parse(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	pos, err := parseInterspersed(fs, args, os.Getenv)
	if err != nil {
		return nil, err
	}
	return pos, demoDefaults(fs, &l.cfg, *l.demoFile, os.Getenv, stderr)
}

// request parses the optional RESOURCE argument and the filter flags.
func (l *liveCLI) request(args []string) (liveRequest, error) {
	if len(args) > 1 {
		return liveRequest{}, usageError{fmt.Errorf("unexpected argument %q", args[1])}
	}
	resource := ""
	if len(args) == 1 {
		resource = args[0]
	}
	q, err := parseResource(resource, l.namespace)
	if err != nil {
		return liveRequest{}, usageError{err}
	}
	for k, v := range l.filter() {
		q[k] = v
	}
	lr, err := parseLiveQuery(q)
	if err != nil {
		var fe *tap.FilterError
		if errors.As(err, &fe) {
			err = fmt.Errorf("--%s: %s", strings.ReplaceAll(fe.Param, "_", "-"), fe.Reason)
		}
		return liveRequest{}, usageError{err}
	}
	return lr, nil
}

func (l *liveCLI) fanIn(stderr io.Writer) (*api.FanIn, error) {
	prom, err := api.Dial(l.cfg.prometheusURL(), api.Options{Timeout: l.cfg.queryTimeout()})
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	finder, err := l.cfg.proxyFinder(os.Getenv)
	if err != nil {
		return nil, err
	}
	return &api.FanIn{Targets: prom, Finder: finder, Rates: prom.ProxyRates, Token: l.cfg.TapToken, TokenNetworks: l.cfg.TapTokenNetworks, Logger: log}, nil
}

// statusLine says what happened to a proxy's stream, for stderr.
func statusLine(it api.TapItem) string {
	switch {
	case it.Proxy == (api.Proxy{}):
		return string(it.State) + ": " + it.Err
	case it.Err != "":
		return "proxy " + it.Proxy.Name() + " " + string(it.State) + ": " + it.Err
	default:
		return "proxy " + it.Proxy.Name() + " " + string(it.State)
	}
}

// statusPrinter writes the news of the proxies to w, one line each, leaving
// out a line that repeats the last one about the same proxy (a dead proxy is
// retried, and reported failed, every few seconds). Safe for concurrent use.
func statusPrinter(w io.Writer) func(api.TapItem) {
	var mu sync.Mutex
	last := map[api.Proxy]string{}
	return func(it api.TapItem) {
		line := statusLine(it)
		mu.Lock()
		defer mu.Unlock()
		if last[it.Proxy] == line {
			return
		}
		last[it.Proxy] = line
		fmt.Fprintln(w, line)
	}
}

// fanInEvents taps every proxy lr selects through fanin and yields their
// events, merged, until ctx ends, the first listing of proxies fails, or the
// caller stops. News of the proxies (streaming, failed, gone) goes to stderr as
// it happens. Events the terminal is too slow for are dropped, and counted in
// a dropped event before the next one.
func fanInEvents(ctx context.Context, fanin *api.FanIn, lr liveRequest, stderr io.Writer) iter.Seq2[*tap.Event, error] {
	return func(yield func(*tap.Event, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		watch, err := newRefusals(ctx, fanin, lr.sel)
		if err != nil {
			yield(nil, err)
			return
		}
		events := make(chan *tap.Event, 1024)
		var mu sync.Mutex // guards dropped and refused
		var dropped uint64
		var refused error
		status := statusPrinter(stderr)
		emit := func(it api.TapItem) {
			if it.Event == nil {
				status(it)
				if err := watch.observe(it); err != nil {
					mu.Lock()
					refused = cmp.Or(refused, err)
					mu.Unlock()
					cancel()
				}
				return
			}
			select {
			case events <- it.Event:
			default:
				mu.Lock()
				dropped++
				mu.Unlock()
			}
		}
		var runErr error
		runDone := make(chan struct{})
		go func() {
			defer close(runDone)
			runErr = fanin.Run(ctx, lr.sel, lr.filter, emit)
		}()
		defer func() { cancel(); <-runDone }()
		for {
			select {
			case <-runDone:
				mu.Lock()
				err := cmp.Or(refused, runErr)
				mu.Unlock()
				if err != nil {
					yield(nil, err)
				}
				return
			case ev := <-events:
				mu.Lock()
				n := dropped
				dropped = 0
				mu.Unlock()
				if n > 0 && !yield(&tap.Event{V: tap.Version, Type: tap.TypeDropped, TS: time.Now().UTC(), Count: n}, nil) {
					return
				}
				if !yield(ev, nil) {
					return
				}
			}
		}
	}
}

// refusals ends a terminal live view that can show nothing: every proxy it
// selected has failed (refused the token, cannot be reached) and none
// streams. The dashboard keeps retrying instead; a terminal must not sit
// blank or hang without saying why.
type refusals struct {
	mu        sync.Mutex
	want      int
	failed    map[api.Proxy]string
	streaming map[api.Proxy]bool
}

// newRefusals lists the proxies sel picks, failing when there are none.
func newRefusals(ctx context.Context, fanin *api.FanIn, sel api.Selector) (*refusals, error) {
	proxies, err := fanin.List(ctx, sel)
	if err != nil {
		return nil, err
	}
	if len(proxies) == 0 {
		return nil, fmt.Errorf("no proxy of job %s matches %s", api.Job, sel)
	}
	return &refusals{want: len(proxies), failed: map[api.Proxy]string{}, streaming: map[api.Proxy]bool{}}, nil
}

// observe takes the news of a proxy and returns an error once nothing can
// be shown: no proxy matches any more, or all have failed and none streams.
func (r *refusals) observe(it api.TapItem) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch it.State {
	case api.NoProxies:
		return errors.New(it.Err)
	case api.ProxyStreaming:
		r.streaming[it.Proxy] = true
		delete(r.failed, it.Proxy)
	case api.ProxyFailed:
		r.failed[it.Proxy] = it.Err
		delete(r.streaming, it.Proxy)
	case api.ProxyGone:
		delete(r.failed, it.Proxy)
		delete(r.streaming, it.Proxy)
	}
	if len(r.streaming) > 0 || len(r.failed) < r.want {
		return nil
	}
	cause := it.Err
	if strings.Contains(cause, api.ErrTapTokenRejected.Error()) {
		cause = errTapTokenRejected.Error()
	}
	return fmt.Errorf("every proxy selected (%d) refused the tap; proxy %s: %s", len(r.failed), it.Proxy.Name(), cause)
}
