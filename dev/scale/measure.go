package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// page is one dashboard page the benchmark times, by its JSON twin's path.
type page struct {
	name, path string
}

// pages are the dashboard's pages over m: the all-namespaces first screen,
// and a namespace, deployment and pod holding a failing workload.
func pages(m Mesh) []page {
	dep := m.Deployment(3)
	pod := dep.Name + "-5d8f7c-0"
	return []page{
		{"/namespaces (first screen)", "/api/v1/namespaces"},
		{"namespace", "/api/v1/namespaces/" + dep.Namespace},
		{"deployment", "/api/v1/namespaces/" + dep.Namespace + "/deployments/" + dep.Name},
		{"pod", "/api/v1/namespaces/" + dep.Namespace + "/pods/" + pod},
	}
}

// result is one page at one window against one TSDB.
type result struct {
	rules  bool
	page   string
	window string
	// server is the median time to the page's whole JSON over the rounds.
	server time.Duration
	// slowest and total are Prometheus' own time (its query log's
	// execTotalTime) for the slowest of the page's queries, which run
	// concurrently, and for all of them, in the median round.
	slowest, total time.Duration
	// cpu is the CPU time Prometheus spent during the page (user and
	// system): unlike the times above, it does not grow with the machine's
	// load.
	cpu      time.Duration
	queries  int
	sources  []string
	failures int
}

type measureOptions struct {
	Windows []string
	Rounds  int
	Log     *slog.Logger
}

// measure runs Prometheus on each of t's directories and the dashboard
// against it, and times every page at every window.
func measure(ctx context.Context, t TSDB, m Mesh, o measureOptions) ([]result, error) {
	bin, err := buildDashboard(ctx, t.Dir)
	if err != nil {
		return nil, err
	}
	var out []result
	for _, withRules := range []bool{false, true} {
		dir := t.Raw()
		if withRules {
			dir = t.Rules()
		}
		rs, err := measureOne(ctx, bin, dir, withRules, m, o)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

func measureOne(ctx context.Context, bin, dir string, withRules bool, m Mesh, o measureOptions) ([]result, error) {
	queryLog := dir + ".queries.log"
	if err := os.Remove(queryLog); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	prom, err := startPrometheus(ctx, dir, "global:\n  query_log_file: "+queryLog+"\n", os.Stderr)
	if err != nil {
		return nil, err
	}
	defer prom.Stop()
	web, err := startDashboard(ctx, bin, prom.URL)
	if err != nil {
		return nil, err
	}
	defer web.stop()
	if withRules {
		// The dashboard asks which recorded series exist at its start; wait
		// for its answer to reach the pages of every window.
		for _, w := range o.Windows {
			if err := waitFor(ctx, 2*time.Minute, func() error {
				_, r, err := web.get(ctx, "/api/v1/namespaces/"+m.Deployment(0).Namespace+"?window="+w)
				if err == nil && !slices.Contains(r.sources, "recorded") {
					err = fmt.Errorf("window %s: sources %v, want recorded", w, r.sources)
				}
				return err
			}); err != nil {
				return nil, err
			}
		}
	}
	var out []result
	for _, p := range pages(m) {
		for _, w := range o.Windows {
			path := p.path + "?window=" + w
			if _, _, err := web.get(ctx, path); err != nil { // warm up
				return nil, err
			}
			var rounds []result
			for range o.Rounds {
				before, err := fileSize(queryLog)
				if err != nil {
					return nil, err
				}
				cpuBefore, err := cpuTime(prom.cmd.Process.Pid)
				if err != nil {
					return nil, err
				}
				d, r, err := web.get(ctx, path)
				if err != nil {
					return nil, err
				}
				cpuAfter, err := cpuTime(prom.cmd.Process.Pid)
				if err != nil {
					return nil, err
				}
				r.server, r.rules, r.page, r.window, r.cpu = d, withRules, p.name, w, cpuAfter-cpuBefore
				if err := readQueryLog(queryLog, before, &r); err != nil {
					return nil, err
				}
				rounds = append(rounds, r)
			}
			slices.SortFunc(rounds, func(a, b result) int { return int(a.server - b.server) })
			r := rounds[len(rounds)/2]
			o.Log.Info("page", "rules", withRules, "page", p.name, "window", w, "server", r.server.Round(time.Millisecond), "prometheus_cpu", r.cpu,
				"prometheus_slowest", r.slowest.Round(time.Millisecond), "queries", r.queries, "failures", r.failures)
			out = append(out, r)
		}
	}
	return out, nil
}

// readQueryLog adds the Prometheus queries logged after offset (the page's)
// to r, leaving out the dashboard's periodic check for recorded series.
func readQueryLog(path string, offset int64, r *result) error {
	// Prometheus writes each entry when its query ends; the page has ended.
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e struct {
			Params struct {
				Query string `json:"query"`
			} `json:"params"`
			Stats struct {
				Timings struct {
					ExecTotalTime float64 `json:"execTotalTime"`
				} `json:"timings"`
			} `json:"stats"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("query log %s: %w", path, err)
		}
		if strings.HasPrefix(e.Params.Query, "count by (__name__)") {
			continue
		}
		d := time.Duration(e.Stats.Timings.ExecTotalTime * float64(time.Second))
		r.queries++
		r.total += d
		r.slowest = max(r.slowest, d)
	}
	return sc.Err()
}

// cpuTime is the user and system CPU time process pid has used, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are plain.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// buildDashboard compiles ./web of the module the benchmark runs in.
func buildDashboard(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "meshscope-web")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/meshscope/meshscope/web")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./web: %w\n%s", err, out)
	}
	return bin, nil
}

type dashboard struct {
	url    string
	cmd    *exec.Cmd
	done   chan error
	client *http.Client
}

func startDashboard(ctx context.Context, bin, promURL string) (*dashboard, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--listen="+addr, "--prometheus-url="+promURL)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &dashboard{url: "http://" + addr, cmd: cmd, done: make(chan error, 1), client: &http.Client{Timeout: time.Minute}}
	go func() { d.done <- cmd.Wait() }()
	if err := waitReady(ctx, d.url+"/healthz", d.done, time.Minute); err != nil {
		d.stop()
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	return d, nil
}

func (d *dashboard) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
}

// get fetches a page's JSON, timing it, and reads the sources and failures
// of every table and chart in it.
func (d *dashboard) get(ctx context.Context, path string) (time.Duration, result, error) {
	var r result
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url+path, nil)
	if err != nil {
		return 0, r, err
	}
	start := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, r, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	if err != nil {
		return 0, r, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, r, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, r, fmt.Errorf("GET %s: %w", path, err)
	}
	walk(v, &r)
	return took, r, nil
}

// walk collects every "source" and counts every "failures" entry in v.
func walk(v any, r *result) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			switch s := x.(type) {
			case string:
				if k == "source" && s != "" && !slices.Contains(r.sources, s) {
					r.sources = append(r.sources, s)
				}
			case []any:
				if k == "failures" {
					r.failures += len(s)
				}
			}
			walk(x, r)
		}
	case []any:
		for _, x := range v {
			walk(x, r)
		}
	}
}

func waitFor(ctx context.Context, limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
