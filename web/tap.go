package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"strconv"
	"time"
	"unicode"

	"google.golang.org/grpc/codes"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/tap"
)

const tapUsage = `usage: web tap RESOURCE -n NAMESPACE [filter flags] [-o wide|json]
       web tap --proxy ADDR [filter flags] [-o wide|json]

Streams the requests of the proxies RESOURCE picks (deploy/NAME, po/NAME or
ns/NAME; found among Prometheus' active targets of job meshscope-proxy and
tapped at once, --max-rps split across them; proxy news on stderr), or of the
one proxy whose admin address is --proxy, live, one line per event:
  req  when the request headers were read (method, authority, path)
  rsp  when the response headers were written (status, latency)
  end  when the response ended (gRPC status, duration, length, error)
"dropped" says how many events this terminal was too slow to receive.
Stop with Ctrl-C. Every flag has an environment twin MESHSCOPE_WEB_<FLAG>
(e.g. MESHSCOPE_WEB_TAP_TOKEN); flags win.

Examples:
  web tap deploy/web -n shop --status 5xx
  web tap --proxy 127.0.0.1:4191 --direction inbound --status 5xx

Flags:
`

// tapCmd is `web tap`: the live requests of the proxies a RESOURCE picks, or
// of the one proxy at --proxy, in the terminal.
func tapCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, tapUsage); fs.PrintDefaults() }
	var l liveCLI
	l.register(fs)
	proxy := fs.String("proxy", "", "admin `address` (host:port) of the proxy to tap, e.g. 127.0.0.1:4191")
	timeout := fs.Duration("timeout", 5*time.Second, "how long connecting to the proxy and its answer may take")
	output := fs.String("o", "", "output `format`: empty for one line per event, wide to add workload labels, json for NDJSON")
	args, err := l.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	lr, err := l.request(args)
	if err != nil {
		return err
	}
	switch {
	case lr.sel != (api.Selector{}) && *proxy != "":
		return usageError{errors.New("give a RESOURCE or --proxy ADDR, not both")}
	case lr.sel == (api.Selector{}) && *proxy == "":
		return usageError{errors.New("what to tap: a RESOURCE such as deploy/web -n shop, or for one proxy --proxy is required: its admin address, e.g. 127.0.0.1:4191")}
	case *output != "" && *output != "wide" && *output != "json":
		return usageError{fmt.Errorf("-o %q: want wide or json", *output)}
	case *timeout <= 0:
		return usageError{fmt.Errorf("--timeout %v: must be positive", *timeout)}
	}
	var events iter.Seq2[*tap.Event, error]
	if *proxy == "" {
		fanin, err := l.fanIn(stderr)
		if err != nil {
			return err
		}
		fanin.Client = api.NewTapClient(*timeout, *timeout)
		events = fanInEvents(ctx, fanin, lr, stderr)
	} else {
		if _, _, err := net.SplitHostPort(*proxy); err != nil {
			return usageError{fmt.Errorf("--proxy %q: want host:port", *proxy)}
		}
		events = proxyEvents(ctx, api.NewTapClient(*timeout, *timeout), *proxy, l.cfg.TapToken, lr.filter)
	}
	err = printEvents(stdout, *output, events)
	if ctx.Err() != nil {
		return nil // interrupted: the normal way to stop
	}
	return err
}

// errTapTokenRejected is the proxy's 401 in the user's terms.
var errTapTokenRejected = errors.New("tap token rejected (set --tap-token or MESHSCOPE_WEB_TAP_TOKEN to the proxy's --tap-token)")

// proxyEvents taps the proxy whose admin port is at admin and yields its
// events until the stream ends (the proxy shut down: an error), ctx ends, or
// the caller stops. A refusal is yielded as an error in the user's terms.
func proxyEvents(ctx context.Context, client *http.Client, admin, token string, f tap.Filter) iter.Seq2[*tap.Event, error] {
	return func(yield func(*tap.Event, error) bool) {
		s, err := api.OpenTap(ctx, client, admin, token, f, 0)
		if errors.Is(err, api.ErrTapTokenRejected) {
			err = errTapTokenRejected
		}
		if err != nil {
			yield(nil, err)
			return
		}
		defer s.Close()
		for {
			ev, err := s.Next()
			if !yield(ev, err) || err != nil {
				return
			}
		}
	}
}

// printEvents writes each event of events to w in format ("" or "wide": one
// line per event, like linkerd viz tap; "json": NDJSON) until events ends,
// returning its error.
func printEvents(w io.Writer, format string, events iter.Seq2[*tap.Event, error]) error {
	var enc *tap.Encoder
	if format == "json" {
		enc = tap.NewEncoder(w)
	}
	var line []byte
	for ev, err := range events {
		if err != nil {
			return err
		}
		if enc != nil {
			// Flush every event: a pipe reader sees each as it happens.
			if err := enc.Encode(ev); err != nil {
				return err
			}
			if err := enc.Flush(); err != nil {
				return err
			}
			continue
		}
		line = appendEventLine(line[:0], ev, format == "wide")
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	return nil
}

// appendEventLine appends ev as one human-readable line.
func appendEventLine(b []byte, ev *tap.Event, wide bool) []byte {
	switch ev.Type {
	case tap.TypeRequest:
		b = append(b, "req"...)
	case tap.TypeResponse:
		b = append(b, "rsp"...)
	case tap.TypeEnd:
		b = append(b, "end"...)
	case tap.TypeDropped:
		return fmt.Appendf(b, "dropped count=%d (this terminal read too slowly; narrow the filters or lower --max-rps)\n", ev.Count)
	default:
		return fmt.Appendf(b, "%s id=%d (unknown event type)\n", ev.Type, ev.ID)
	}
	b = fmt.Appendf(b, " id=%d proxy=%s src=%s dst=%s", ev.ID, proxyDirection(ev.Direction), field(ev.Source.Addr), field(ev.Destination.Addr))
	if wide {
		b = appendLabels(b, "src_", ev.Source.Labels)
		b = appendLabels(b, "dst_", ev.Destination.Labels)
	}
	switch ev.Type {
	case tap.TypeRequest:
		b = fmt.Appendf(b, " :method=%s :authority=%s :path=%s", field(ev.Method), field(ev.Authority), field(ev.Path))
		if ev.Query != "" {
			b = fmt.Appendf(b, " query=%s", field(ev.Query))
		}
	case tap.TypeResponse:
		b = fmt.Appendf(b, " :status=%d latency=%dµs", ev.Status, micros(ev.LatencyMS))
	case tap.TypeEnd:
		if c := ev.GRPCStatus; c != nil && 0 <= *c && *c <= int(codes.Unauthenticated) {
			b = fmt.Appendf(b, " grpc-status=%s", codes.Code(*c))
		} else if c != nil {
			b = fmt.Appendf(b, " grpc-status=%d", *c)
		}
		b = fmt.Appendf(b, " duration=%dµs response-length=%dB", micros(ev.DurationMS), ev.Bytes)
		if ev.Error != "" {
			b = fmt.Appendf(b, " error=%s", strconv.Quote(ev.Error))
		}
	}
	return append(b, '\n')
}

func proxyDirection(d string) string {
	switch d {
	case tap.DirectionInbound:
		return "in"
	case tap.DirectionOutbound:
		return "out"
	}
	return field(d)
}

// appendLabels appends the workload labels in a fixed order, each prefixed.
func appendLabels(b []byte, prefix string, labels map[string]string) []byte {
	for _, k := range []string{tap.LabelNamespace, tap.LabelDeployment, tap.LabelPod} {
		if v := labels[k]; v != "" {
			b = fmt.Appendf(b, " %s%s=%s", prefix, k, field(v))
		}
	}
	return b
}

func micros(ms float64) int64 { return int64(ms*1000 + 0.5) }

// field returns s fit for one key=value of a line: "-" when empty, quoted
// when it holds spaces or anything unprintable, so a hostile path can neither
// break the line apart nor send escape sequences to the terminal.
func field(s string) string {
	if s == "" {
		return "-"
	}
	for _, r := range s {
		if r == ' ' || r == '"' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
