package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/meshscope/meshscope/api/rules"
)

// Step is the synthetic scrape interval: 30s, so every 1m window holds
// two samples of each series.
const Step = 30 * time.Second

// TSDB is a built pair of data directories of one mesh over one time range:
// Raw holds the proxies' series only, Rules the same plus the recording
// rules' series backfilled over the range.
type TSDB struct {
	Dir    string    `json:"-"`
	Pods   int       `json:"pods"`
	Series int       `json:"series"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// Version names the generator and the rules the TSDB was built with: a
	// cached TSDB of another version is built again.
	Version string `json:"version"`
}

// version is this generator's and the recording rules' fingerprint; bump
// generation when the synthetic series change.
func version() string {
	const generation = "2"
	sum := sha256.Sum256(rules.YAML())
	return generation + "-" + hex.EncodeToString(sum[:8])
}

func (t TSDB) Raw() string   { return filepath.Join(t.Dir, "raw") }
func (t TSDB) Rules() string { return filepath.Join(t.Dir, "rules") }

// buildOptions say how to build a TSDB.
type buildOptions struct {
	Dir        string
	Mesh       Mesh
	Start, End time.Time
	// Promtool writes the samples as OpenMetrics files and builds the blocks
	// with promtool; otherwise writeBlocks writes them directly.
	Promtool bool
	// ChunkPods is how many pods go in one OpenMetrics file (and one
	// promtool run): files hold every sample of their pods, so this bounds
	// the disk a build needs at once.
	ChunkPods int
	// Compact waits for Prometheus to merge overlapping blocks, so that
	// Prometheus does not do it while it is measured.
	Compact bool
	Log     *slog.Logger
}

// buildTSDB writes the mesh's samples as OpenMetrics, chunk by chunk, and
// turns each into blocks with promtool tsdb create-blocks-from openmetrics;
// then backfills the recording rules with promtool tsdb create-blocks-from
// rules against a Prometheus serving the raw blocks, in two passes (the
// namespace rules read the deployment rules' series), and lets Prometheus
// merge the overlapping blocks of both directories once, so later runs
// start on compacted data.
func buildTSDB(ctx context.Context, o buildOptions) (TSDB, error) {
	t := TSDB{Dir: o.Dir, Pods: o.Mesh.Pods(), Series: o.Mesh.Pods() * o.Mesh.SeriesPerPod(), Start: o.Start, End: o.End, Version: version()}
	if err := os.RemoveAll(o.Dir); err != nil {
		return t, err
	}
	if err := os.MkdirAll(t.Raw(), 0o755); err != nil {
		return t, err
	}
	origin := o.Start.Add(-time.Hour)
	if !o.Promtool {
		if err := writeBlocks(ctx, t.Raw(), o.Mesh, origin, o.Start, o.End, o.Log); err != nil {
			return t, err
		}
	} else if err := writeOpenMetricsBlocks(ctx, o, t, origin); err != nil {
		return t, err
	}
	if err := backfillRules(ctx, t, o.Log); err != nil {
		return t, err
	}
	if o.Compact {
		for _, dir := range []string{t.Raw(), t.Rules()} {
			if err := compact(ctx, dir, o.Log); err != nil {
				return t, err
			}
		}
	}
	b, err := json.Marshal(t)
	if err != nil {
		return t, err
	}
	return t, os.WriteFile(filepath.Join(o.Dir, "tsdb.json"), b, 0o644)
}

// writeOpenMetricsBlocks writes the mesh's samples as OpenMetrics, chunk by
// chunk, and turns each into blocks with promtool tsdb create-blocks-from
// openmetrics.
func writeOpenMetricsBlocks(ctx context.Context, o buildOptions, t TSDB, origin time.Time) error {
	om := filepath.Join(o.Dir, "chunk.om")
	for from := 0; from < o.Mesh.Pods(); from += o.ChunkPods {
		to := min(from+o.ChunkPods, o.Mesh.Pods())
		o.Log.Info("openmetrics", "pods", fmt.Sprintf("%d-%d of %d", from, to, o.Mesh.Pods()))
		f, err := os.Create(om)
		if err != nil {
			return err
		}
		err = o.Mesh.WriteOpenMetrics(f, from, to, origin, o.Start, o.End, Step)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", om, err)
		}
		if err := promtool(ctx, "tsdb", "create-blocks-from", "openmetrics", "--quiet", "--max-block-duration=24h", om, t.Raw()); err != nil {
			return err
		}
	}
	return os.Remove(om)
}

// loadTSDB returns the TSDB built in dir, if any.
func loadTSDB(dir string) (TSDB, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "tsdb.json"))
	if err != nil {
		return TSDB{}, false
	}
	var t TSDB
	if json.Unmarshal(b, &t) != nil {
		return TSDB{}, false
	}
	t.Dir = dir
	return t, t.Version == version()
}

// backfillRules copies the raw blocks into the rules directory (hard links:
// blocks are immutable) and adds the recording rules' blocks.
func backfillRules(ctx context.Context, t TSDB, log *slog.Logger) error {
	if err := os.RemoveAll(t.Rules()); err != nil {
		return err
	}
	if err := os.MkdirAll(t.Rules(), 0o755); err != nil {
		return err
	}
	blocks, err := blockDirs(t.Raw())
	if err != nil {
		return err
	}
	for _, b := range blocks {
		// Blocks only: a hard-linked WAL would be written through both names.
		if out, err := exec.CommandContext(ctx, "cp", "-al", filepath.Join(t.Raw(), b), t.Rules()).CombinedOutput(); err != nil {
			return fmt.Errorf("link block %s into %s: %w: %s", b, t.Rules(), err, out)
		}
	}
	first, second, err := splitRules()
	if err != nil {
		return err
	}
	for i, pass := range [][]byte{first, second} {
		log.Info("backfill recording rules", "pass", i+1)
		file := filepath.Join(t.Dir, fmt.Sprintf("rules-pass%d.yml", i+1))
		if err := os.WriteFile(file, pass, 0o644); err != nil {
			return err
		}
		p, err := startPrometheus(ctx, t.Rules(), "", os.Stderr)
		if err != nil {
			return err
		}
		out := filepath.Join(t.Dir, "rules-out")
		err = promtool(ctx, "tsdb", "create-blocks-from", "rules", "--quiet", "--url="+p.URL,
			"--start="+strconv.FormatInt(t.Start.Unix(), 10), "--end="+strconv.FormatInt(t.End.Unix(), 10),
			"--output-dir="+out, file)
		p.Stop()
		if err != nil {
			return err
		}
		if err := moveBlocks(out, t.Rules()); err != nil {
			return err
		}
	}
	return nil
}

// splitRules splits Meshscope's rules in two files: the rules that read raw
// series, then those that read other rules' series (promtool backfills each
// rule from the data as it is, without the other rules' results).
func splitRules() (first, second []byte, err error) {
	groups, errs := rulefmt.Parse(rules.YAML(), false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	var raw, derived rulefmt.RuleGroups
	for _, g := range groups.Groups {
		a, b := g, g
		a.Rules, b.Rules = nil, nil
		for _, r := range g.Rules {
			if strings.Contains(r.Expr, ":") {
				b.Rules = append(b.Rules, r)
			} else {
				a.Rules = append(a.Rules, r)
			}
		}
		if len(a.Rules) > 0 {
			raw.Groups = append(raw.Groups, a)
		}
		if len(b.Rules) > 0 {
			derived.Groups = append(derived.Groups, b)
		}
	}
	if first, err = yaml.Marshal(raw); err != nil {
		return nil, nil, err
	}
	second, err = yaml.Marshal(derived)
	return first, second, err
}

// blockDirs are the names of the blocks in dir.
func blockDirs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var blocks []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "meta.json")); e.IsDir() && err == nil {
			blocks = append(blocks, e.Name())
		}
	}
	return blocks, nil
}

// moveBlocks moves every block directory of from into to.
func moveBlocks(from, to string) error {
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := os.Rename(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.RemoveAll(from)
}

// compact runs Prometheus on dir until it has merged the blocks that overlap
// in time (one per promtool run), as it does within a minute of starting.
func compact(ctx context.Context, dir string, log *slog.Logger) error {
	p, err := startPrometheus(ctx, dir, "", os.Stderr)
	if err != nil {
		return err
	}
	defer p.Stop()
	deadline := time.Now().Add(30 * time.Minute)
	for {
		overlap, err := overlapping(dir)
		if err != nil {
			return err
		}
		if !overlap {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("blocks of %s still overlap after 30 minutes", dir)
		}
		log.Info("waiting for prometheus to merge overlapping blocks", "dir", dir)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Second):
		}
	}
}

// overlapping tells whether two blocks of dir overlap in time, or a block is
// still being written.
func overlapping(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	type span struct{ min, max int64 }
	var spans []span
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if strings.Contains(e.Name(), ".tmp") {
			return true, nil
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "meta.json"))
		if errors.Is(err, os.ErrNotExist) {
			continue // wal, chunks_head
		}
		if err != nil {
			return false, err
		}
		var meta struct{ MinTime, MaxTime int64 }
		if err := json.Unmarshal(b, &meta); err != nil {
			return false, fmt.Errorf("%s: %w", e.Name(), err)
		}
		for _, s := range spans {
			if meta.MinTime < s.max && s.min < meta.MaxTime {
				return true, nil
			}
		}
		spans = append(spans, span{meta.MinTime, meta.MaxTime})
	}
	return false, nil
}

func promtool(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "promtool", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("promtool %s: %w\n%s", strings.Join(args[:3], " "), err, lastLines(out.String(), 10))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
