// Command scale is Meshscope's scale benchmark: it builds a real Prometheus
// TSDB holding a synthetic mesh of N pods (with and without the recording
// rules' series), runs the real Prometheus and the dashboard on it, and
// reports per page and window the server time, Prometheus' share and the
// queries per page. See README.md, "Scale".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	pods := fs.Int("pods", 10000, "pods of the synthetic mesh (5 per deployment, 20 deployments per namespace)")
	cache := fs.String("cache", filepath.Join(os.TempDir(), "meshscope-scale"), "where built TSDBs are kept, one per pod count")
	history := fs.Duration("history", 65*time.Minute, "data before the build time (the 1h window needs an hour)")
	valid := fs.Duration("valid", 40*time.Minute, "data after the build time: a cached TSDB serves runs this long, then is rebuilt")
	viaPromtool := fs.Bool("promtool", false, "write the samples as OpenMetrics and build the blocks with promtool tsdb create-blocks-from openmetrics\n"+
		"(slow at scale: text parsing dominates) instead of with the same block writer directly")
	chunk := fs.Int("chunk-pods", 1000, "with --promtool: pods per OpenMetrics file and promtool run (bounds disk use: ~3 GB per 1,000 pods)")
	rebuild := fs.Bool("rebuild", false, "build the TSDB even when a valid one is cached")
	buildOnly := fs.Bool("build-only", false, "build (or keep) the cached TSDB, measure nothing")
	windows := fs.String("windows", "1m,1h", "comma-separated rate windows to time every page at")
	rounds := fs.Int("rounds", 3, "timed requests per page and window (the median is reported), after one warm-up")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./dev/scale [flags]\n\n"+
			"Builds (once, cached) a Prometheus TSDB of a synthetic mesh with promtool, runs the real Prometheus\n"+
			"and the dashboard on it, with and without the recording rules' series, and prints per page and\n"+
			"window the server time, Prometheus' share (its query log) and the queries per page.\n"+
			"Needs Debian's prometheus package (prometheus, promtool).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	mesh, err := meshFor(*pods)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	dir := filepath.Join(*cache, fmt.Sprintf("pods-%d", mesh.Pods()))
	unlock, err := lockDir(dir, log)
	if err != nil {
		return err
	}
	defer unlock()
	t, ok := loadTSDB(dir)
	now := time.Now()
	if *rebuild || !ok || t.Start.After(now.Add(-time.Hour-5*time.Minute)) || t.End.Before(now.Add(5*time.Minute)) {
		start := now.Add(-*history).Truncate(time.Minute)
		end := now.Add(*valid).Truncate(time.Minute)
		log.Info("building tsdb", "dir", dir, "pods", mesh.Pods(), "series", mesh.Pods()*mesh.SeriesPerPod(), "from", start, "to", end)
		began := time.Now()
		if t, err = buildTSDB(ctx, buildOptions{Dir: dir, Mesh: mesh, Start: start, End: end, Promtool: *viaPromtool, ChunkPods: *chunk, Compact: true, Log: log}); err != nil {
			return err
		}
		log.Info("built tsdb", "took", time.Since(began).Round(time.Second))
	}
	if *buildOnly {
		return nil
	}
	rs, err := measure(ctx, t, mesh, measureOptions{Windows: strings.Split(*windows, ","), Rounds: max(1, *rounds), Log: log})
	if err != nil {
		return err
	}
	printResults(os.Stdout, t, rs)
	return nil
}

// lockDir holds an exclusive lock on dir's lock file until unlock, waiting
// for another run that holds it: two runs building or measuring the same
// cached TSDB at once would delete each other's blocks and share the cores.
func lockDir(dir string, log *slog.Logger) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		log.Info("another run holds the cached TSDB; waiting for it", "lock", f.Name())
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
	}
	return func() { f.Close() }, nil
}

// printResults prints the figures as a Markdown table, raw and recorded side
// by side per page and window.
func printResults(w io.Writer, t TSDB, rs []result) {
	fmt.Fprintf(w, "\n%d pods, %d series, data %s to %s (UTC), measured %s\n\n", t.Pods, t.Series,
		t.Start.UTC().Format("15:04"), t.End.UTC().Format("15:04"), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintln(w, "| page | window | server: raw / rules | Prometheus CPU: raw / rules | slowest query: raw / rules | all queries: raw / rules | queries: raw / rules | failures: raw / rules | rules page read |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	ms := func(d time.Duration) string { return fmt.Sprintf("%d", d.Milliseconds()) }
	for _, raw := range rs {
		if raw.rules {
			continue
		}
		for _, rec := range rs {
			if !rec.rules || rec.page != raw.page || rec.window != raw.window {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s / %s ms | %s / %s ms | %s / %s ms | %s / %s ms | %d / %d | %d / %d | %s |\n", raw.page, raw.window,
				ms(raw.server), ms(rec.server), ms(raw.cpu), ms(rec.cpu), ms(raw.slowest), ms(rec.slowest), ms(raw.total), ms(rec.total),
				raw.queries, rec.queries, raw.failures, rec.failures, strings.Join(rec.sources, "+"))
		}
	}
}
