package main

// The end-to-end harness: real proxies (built from ./proxy) in front of test
// upstreams, a real Prometheus scraping them, and the dashboard itself. The
// live tap's tests reuse it: startMesh gives a running shop.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshscope/meshscope/dev/demo"
)

// requireTool returns path when the tool is installed; without it the test
// fails under CI=true and is skipped otherwise.
func requireTool(t *testing.T, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true: %v (bash dev/test.sh installs it)", path, err)
		}
		t.Skipf("%s not installed: %v", path, err)
	}
	return path
}

// freeAddr returns a loopback address nothing listens on right now, never
// one it returned before.
func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// freePorts never hands out a port twice in this test process: a closed
// probe's port came back for the next address of the same proxy ("same
// address as --inbound-listen"). Its ports lie below the kernel's ephemeral
// range, where no other process's connection takes them before they are bound.
var freePorts = demo.FreePorts("127.0.0.1")

// eventually retries check until it returns nil or the deadline passes.
func eventually(t *testing.T, deadline time.Duration, what string, check func() error) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v: %v", what, deadline, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// process is a child process the test owns; Stop ends it and waits.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

func startProcess(t *testing.T, name string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &bytes.Buffer{}, done: make(chan struct{})}
	lw := lockedWriter{mu: &sync.Mutex{}, w: p.out}
	p.cmd.Stdout, p.cmd.Stderr = lw, lw
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out)
		}
	})
	return p
}

// Stop sends SIGTERM, then SIGKILL after 10s, and waits for the exit.
func (p *process) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// lockedWriter serialises a child's stdout and stderr into one buffer.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// buildProxy compiles ./proxy into dir and returns the binary's path.
func buildProxy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "proxy")
	cmd := exec.Command("go", "build", "-o", bin, "./proxy")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./proxy: %v\n%s", err, out)
	}
	return bin
}

// workload is one pod of the test mesh: an app behind its own proxy.
type workload struct {
	Namespace, Deployment, Pod string
	// Inbound, Outbound and Admin are the proxy's listeners.
	Inbound, Outbound, Admin string
	proxy                    *process
}

// startWorkload runs app on a test server and a proxy in front of it, with
// dests as its destinations file (may be empty) and the proxy flags extra,
// and waits until it is ready.
func startWorkload(t *testing.T, bin, ns, deploy, pod string, app http.Handler, dests string, extra ...string) *workload {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	w := &workload{Namespace: ns, Deployment: deploy, Pod: pod,
		Inbound: freeAddr(t), Outbound: freeAddr(t), Admin: freeAddr(t)}
	args := []string{"--inbound-listen", w.Inbound, "--inbound-forward", ln.Addr().String(),
		"--outbound-listen", w.Outbound, "--admin-listen", w.Admin,
		"--namespace", ns, "--deployment", deploy, "--pod", pod, "--shutdown-grace", "1s"}
	if dests != "" {
		f := filepath.Join(t.TempDir(), "destinations.yaml")
		if err := os.WriteFile(f, []byte(dests), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--destinations", f)
	}
	w.proxy = startProcess(t, "proxy "+pod, bin, append(args, extra...)...)
	eventually(t, 30*time.Second, "proxy "+pod+" ready", func() error {
		resp, err := http.Get("http://" + w.Admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("ready: %s", resp.Status)
		}
		return nil
	})
	return w
}

// promServer is a real Prometheus scraping workloads every second, with the
// target labels the dashboard groups by; Stop and Start keep its data.
type promServer struct {
	t    *testing.T
	bin  string
	dir  string
	Addr string
	proc *process
}

func startPrometheus(t *testing.T, workloads ...*workload) *promServer {
	t.Helper()
	p := &promServer{t: t, bin: requireTool(t, "/usr/bin/prometheus"), dir: t.TempDir(), Addr: freeAddr(t)}
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	var groups []group
	for _, w := range workloads {
		groups = append(groups, group{Targets: []string{w.Admin},
			Labels: map[string]string{"namespace": w.Namespace, "deployment": w.Deployment, "pod": w.Pod}})
	}
	sd, _ := json.Marshal(groups)
	cfg := `global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: meshscope-proxy
    scrape_interval: 1s
    file_sd_configs: [{files: ["` + filepath.Join(p.dir, "targets.json") + `"], refresh_interval: 1s}]
`
	for name, body := range map[string][]byte{"targets.json": sd, "prometheus.yml": []byte(cfg)} {
		if err := os.WriteFile(filepath.Join(p.dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p.Start()
	return p
}

// URL is the Prometheus HTTP API's base URL.
func (p *promServer) URL() string { return "http://" + p.Addr }

// Start runs Prometheus and waits until it is ready.
func (p *promServer) Start() {
	p.t.Helper()
	p.proc = startProcess(p.t, "prometheus", p.bin,
		"--config.file="+filepath.Join(p.dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(p.dir, "data"),
		"--web.listen-address="+p.Addr, "--log.level=warn")
	eventually(p.t, 60*time.Second, "prometheus ready", func() error {
		resp, err := http.Get(p.URL() + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("ready: %s", resp.Status)
		}
		return nil
	})
}

// Stop ends Prometheus, keeping its data for Start.
func (p *promServer) Stop() { p.proc.Stop() }

// startDashboard serves the dashboard with cfg on a free port until the test
// ends and returns its base URL.
func startDashboard(t *testing.T, cfg config) string {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { errc <- run(ctx, cfg, log, func(a net.Addr) { addrc <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("dashboard run: %v", err)
		}
	})
	select {
	case a := <-addrc:
		return "http://" + a.String() + cfg.BasePath
	case err := <-errc:
		t.Fatalf("dashboard: %v", err)
	}
	return ""
}

// failingApp answers every failEvery-th request with a 500 (never when
// failEvery is 0), after delay.
func failingApp(failEvery int64, delay time.Duration) http.Handler {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		if failEvery > 0 && n.Add(1)%failEvery == 0 {
			http.Error(w, "deliberate failure", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// callingApp calls authority through its proxy's outbound listener on every
// request, then answers 200 whatever the callee said.
func callingApp(outbound *string, authority string) http.Handler {
	client := &http.Client{Timeout: 10 * time.Second}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+*outbound+"/vote", nil)
		req.Host = authority
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		fmt.Fprintln(w, "ok")
	})
}

// traffic sends GET requests to url at about rps until the test ends, and
// counts what it sent.
type traffic struct {
	start time.Time
	mu    sync.Mutex
	done  []time.Time // completion times of the requests sent
}

func sendTraffic(t *testing.T, url string, rps int) *traffic {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{start: time.Now()}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 10 * time.Second}
		tick := time.NewTicker(time.Second / time.Duration(rps))
		defer tick.Stop()
		sem := make(chan struct{}, 16)
		for {
			select {
			case <-ctx.Done():
				for range cap(sem) {
					sem <- struct{}{}
				}
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				continue // the mesh is slower than the ticker: skip, do not pile up
			}
			go func() {
				defer func() { <-sem }()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Host = "web.shop:8080"
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					tr.mu.Lock()
					tr.done = append(tr.done, time.Now())
					tr.mu.Unlock()
				}
			}()
		}
	}()
	return tr
}

// rateOver is the achieved request rate over the last w.
func (tr *traffic) rateOver(w time.Duration) float64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	since := time.Now().Add(-w)
	n := len(tr.done) - sort.Search(len(tr.done), func(i int) bool { return tr.done[i].After(since) })
	return float64(n) / w.Seconds()
}

// shop is the test mesh: web (always succeeds, 5ms) calls voting (fails one
// request in four, 20ms), each behind a real proxy, scraped by a real
// Prometheus, with traffic into web.
type shop struct {
	Web, Voting *workload
	Prom        *promServer
	Traffic     *traffic
}

// Known truths of the shop.
const (
	shopRPS           = 20
	votingSuccessRate = 0.75
	votingDelay       = 20 * time.Millisecond
)

func startShop(t *testing.T) *shop {
	t.Helper()
	requireTool(t, "/usr/bin/prometheus")
	bin := buildProxy(t)
	voting := startWorkload(t, bin, "shop", "voting", "voting-0", failingApp(4, votingDelay), "")
	dests := `services:
  - authority: voting.shop:8080
    labels: {namespace: shop, deployment: voting}
    endpoints:
      - addr: ` + voting.Inbound + `
        labels: {pod: voting-0}
`
	var webOutbound string
	web := startWorkload(t, bin, "shop", "web", "web-0", callingApp(&webOutbound, "voting.shop:8080"), dests)
	webOutbound = web.Outbound
	s := &shop{Web: web, Voting: voting}
	s.Prom = startPrometheus(t, web, voting)
	s.Traffic = sendTraffic(t, "http://"+web.Inbound+"/", shopRPS)
	return s
}

// within reports whether got is within tol (a fraction) of want.
func within(got, want, tol float64) bool {
	return got >= want*(1-tol) && got <= want*(1+tol)
}

// getBody fetches url with a loopback Host and returns status, content type and body.
func getBody(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), strings.TrimSpace(string(b))
}
