package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/meshscope/meshscope/api"
)

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
	args, err := l.parse(fs, args, stderr)
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
	watch, err := newRefusals(ctx, fanin, lr.sel)
	if err != nil {
		return err
	}
	var top api.Top
	status := statusPrinter(stderr)
	refused := make(chan error, 1)
	emit := func(it api.TapItem) {
		if it.Event == nil {
			status(it)
			top.Add(it) // which proxies stream: a call seen by two counts once
			if err := watch.observe(it); err != nil {
				select {
				case refused <- err:
				default:
				}
			}
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
		case err := <-refused:
			cancel()
			<-runErr
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
