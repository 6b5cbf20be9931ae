package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
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

const topUsage = `usage: web top [RESOURCE] [flags]

Live requests of the proxies RESOURCE picks (deploy/NAME, po/NAME or ns/NAME,
with -n NAMESPACE; none: every proxy), aggregated by source, destination,
method and path, busiest first, redrawn every --interval until interrupted.
The proxies are the active targets of job meshscope-proxy in Prometheus; their
tap streams are opened with --tap-token.

Flags:
`

// topCmd is `web top`: the live top table in the terminal.
func topCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, topUsage); fs.PrintDefaults() }
	var l liveCLI
	l.register(fs)
	interval := fs.Duration("interval", 2*time.Second, "how often the table is redrawn")
	rows := fs.Int("rows", 20, "how many rows to show")
	output := fs.String("o", "table", "output `format`: table, or json (one snapshot per line)")
	args, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return usageError{fmt.Errorf("-o %q: want table or json", *output)}
	}
	if *interval <= 0 || *rows <= 0 {
		return usageError{errors.New("--interval and --rows must be positive")}
	}
	lr, err := l.request(args)
	if err != nil {
		return err
	}
	fanin, err := l.fanIn(stderr)
	if err != nil {
		return err
	}
	var top api.Top
	var mu sync.Mutex // serializes writes to stderr
	emit := func(it api.TapItem) {
		if it.Event == nil {
			mu.Lock()
			fmt.Fprintln(stderr, statusLine(it))
			mu.Unlock()
			return
		}
		top.Add(it)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- fanin.Run(ctx, lr.sel, lr.filter, emit) }()
	clear := *output == "table" && isTerminal(stdout)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		select {
		case err := <-runErr:
			return err
		case <-ctx.Done():
			cancel()
			<-runErr
			return writeTop(stdout, top.Snapshot(*rows), *output, false)
		case <-tick.C:
			if err := writeTop(stdout, top.Snapshot(*rows), *output, clear); err != nil {
				return err
			}
		}
	}
}

// parseInterspersed parses flags before and after the positional arguments
// (`web top deploy/web -n shop`), returning the positional ones, then fills
// the flags not given from their MESHSCOPE_WEB_* environment twins.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, parseFlags(fs, nil, os.Getenv)
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func writeTop(w io.Writer, s api.TopSnapshot, format string, clear bool) error {
	if format == "json" {
		b, err := json.Marshal(s)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	if clear {
		fmt.Fprint(w, "\033[H\033[2J")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tDESTINATION\tMETHOD\tPATH\tCOUNT\tBEST\tWORST\tLAST\tSUCCESS_RATE")
	for _, r := range s.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%.2f%%\n", r.Source, r.Destination, r.Method, r.Path,
			r.Count, fmtMS(r.BestMS), fmtMS(r.WorstMS), fmtMS(r.LastMS), 100*r.SuccessRate())
	}
	fmt.Fprintf(tw, "(%d requests, %d rows; dropped by proxies: %d; beyond the row limit: %d)\n\n",
		s.Requests, s.Keys, s.ProxyDropped, s.Untracked)
	return tw.Flush()
}

func fmtMS(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%dµs", int(ms*1000))
	case ms < 1000:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.2fs", ms/1000)
	}
}
