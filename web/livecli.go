package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/url"
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
		tap.ParamMaxRPS:        "most `requests` per second, in all (split across the proxies); 1 to 10000, default 100",
	}
	vals := map[string]*string{}
	for _, p := range tap.Params {
		vals[p] = fs.String(strings.ReplaceAll(p, "_", "-"), "", help[p])
	}
	return func() url.Values {
		q := url.Values{}
		for p, v := range vals {
			if *v != "" {
				q.Set(p, *v)
			}
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
}

func (l *liveCLI) register(fs *flag.FlagSet) {
	backendFlags(fs, &l.cfg)
	fs.StringVar(&l.namespace, "n", "", "`namespace` of the resource")
	fs.StringVar(&l.namespace, "namespace", "", "`namespace` of the resource")
	l.filter = filterFlags(fs)
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
	return &api.FanIn{Targets: prom, Token: l.cfg.TapToken, Logger: log}, nil
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
		events := make(chan *tap.Event, 1024)
		var mu sync.Mutex // guards dropped
		var dropped uint64
		status := statusPrinter(stderr)
		emit := func(it api.TapItem) {
			if it.Event == nil {
				status(it)
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
				if runErr != nil {
					yield(nil, runErr)
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
