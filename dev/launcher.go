package main

import (
	"context"
	"crypto/rand"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshscope/meshscope/api/democonfig"
	"github.com/meshscope/meshscope/api/rules"
	"github.com/meshscope/meshscope/dev/demo"
	"github.com/meshscope/meshscope/dev/promengine"
)

// prometheusYML is the one scrape configuration, for the real Prometheus and
// the embedded engine alike; its file_sd path is relative to its directory.
//
//go:embed prometheus.yml
var prometheusYML []byte

// readyTimeout bounds each wait for a component to answer its probe.
const readyTimeout = 90 * time.Second

// running is what run hands its caller once the demo is up.
type running struct {
	DashboardURL, PrometheusURL string
	Backend                     string
	Mesh                        demo.Mesh
	// WebBin is the dashboard binary the demo built, whose terminal twins
	// read DemoFile.
	WebBin, DemoFile string
}

// run starts the whole demo and blocks until ctx ends or a component fails,
// then stops everything. started, if set, is called once all is up.
func run(ctx context.Context, cfg config, con *console, started func(running)) (err error) {
	logw := con.writer("dev")
	log := slog.New(slog.NewTextHandler(logw, nil))
	m, err := cfg.layout()
	if err != nil {
		return err
	}
	if err := checkPorts(cfg, m); err != nil {
		return err
	}
	backend, err := cfg.pickBackend()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "meshscope-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if rmErr := os.RemoveAll(dir); rmErr != nil {
			log.Warn("remove temp dir", "dir", dir, "err", rmErr)
		}
	}()
	paths, err := writeFiles(dir, m)
	if err != nil {
		return err
	}
	fmt.Fprintf(logw, "building the proxy and dashboard binaries in %s\n", dir)
	bins, err := build(ctx, dir, con)
	if err != nil {
		return err
	}
	// The mesh's trust anchor and issuer, as an operator makes them.
	gen := exec.CommandContext(ctx, bins.proxy, "identity", "--generate", "--dir", paths.identity)
	gen.Stdout, gen.Stderr = io.Discard, con.writer("identity")
	if err := gen.Run(); err != nil {
		return fmt.Errorf("proxy identity --generate: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	var (
		wg     sync.WaitGroup
		failed = make(chan error, 64)
	)
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: stop everything, then wait
	// watch reports a component that stops on its own.
	watch := func(name string, done <-chan error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := <-done
			if ctx.Err() == nil {
				failed <- fmt.Errorf("%s stopped: %v", name, err)
			}
		}()
	}
	goWatch := func(name string, f func() error) {
		done := make(chan error, 1)
		go func() { done <- f() }()
		watch(name, done)
	}

	token := rand.Text()
	env := os.Environ()

	// The metrics backend.
	promURL := "http://" + cfg.PrometheusListen
	switch backend {
	case "prometheus":
		done, err := startProcess(ctx, con, "prometheus", cfg.PrometheusBin, []string{
			"--config.file=" + paths.prometheusYML,
			"--storage.tsdb.path=" + filepath.Join(dir, "prometheus-data"),
			"--storage.tsdb.retention.time=6h",
			"--web.listen-address=" + cfg.PrometheusListen,
			"--log.level=warn",
		}, env)
		if err != nil {
			return err
		}
		watch("prometheus", done)
	case "embedded":
		eng, err := promengine.New(promengine.Options{ConfigFile: paths.prometheusYML, DataDir: filepath.Join(dir, "tsdb"),
			Logger: slog.New(slog.NewTextHandler(con.writer("metrics (embedded)"), &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			return err
		}
		goWatch("embedded metrics engine", func() error { return eng.Run(ctx) })
		defer func() {
			if err := eng.Close(); err != nil {
				log.Warn("close embedded engine", "err", err)
			}
		}()
		l, err := net.Listen("tcp", cfg.PrometheusListen)
		if err != nil {
			return fmt.Errorf("metrics backend: %w", err)
		}
		srv := &http.Server{Handler: eng.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 2 * time.Minute, IdleTimeout: 90 * time.Second}
		goWatch("embedded metrics API", func() error { return srv.Serve(l) })
		defer func() {
			shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
			defer stop()
			if err := srv.Shutdown(shutdownCtx); err != nil {
				log.Warn("stop embedded metrics API", "err", err)
			}
		}()
	}

	// The issuer, then one proxy per pod, each ready once it holds its certificate.
	done, err := startProcess(ctx, con, "identity", bins.proxy, m.IssuerArgs(paths.identity), env)
	if err != nil {
		return err
	}
	watch("identity", done)
	proxyEnv := append(env[:len(env):len(env)], "MESHSCOPE_PROXY_TAP_TOKEN="+token)
	for _, p := range m.Pods {
		args := append(m.ProxyArgs(p, paths.destinations), m.IdentityArgs(p, paths.identity)...)
		done, err := startProcess(ctx, con, "proxy "+p.Name, bins.proxy, args, proxyEnv)
		if err != nil {
			return err
		}
		watch("proxy "+p.Name, done)
	}
	for _, p := range m.Pods {
		if err := waitReady(ctx, "http://"+p.Admin+"/ready", failed); err != nil {
			return fmt.Errorf("proxy %s: %w", p.Name, err)
		}
	}

	// The demo services and the traffic, in this process.
	appLog := slog.New(slog.NewTextHandler(con.writer("apps"), nil))
	goWatch("demo apps", func() error { return demo.Run(ctx, m, cfg.Demo, appLog) })

	// The dashboard.
	webArgs := []string{"--listen=" + cfg.DashboardListen, "--prometheus-url=" + promURL}
	if cfg.GrafanaURL != "" {
		webArgs = append(webArgs, "--grafana-url="+cfg.GrafanaURL)
	}
	// It taps the proxies as its own workload identity over mutual TLS, as in a cluster, and so is not
	// given the tap token, which only the terminal twins use (through the demo file, in plain text over
	// loopback).
	webArgs = append(webArgs, m.DashboardIdentityArgs(paths.identity)...)
	done, err = startProcess(ctx, con, "dashboard", bins.web, webArgs, env)
	if err != nil {
		return err
	}
	watch("dashboard", done)

	if err := waitReady(ctx, promURL+"/-/ready", failed); err != nil {
		return fmt.Errorf("metrics backend: %w", err)
	}
	dashURL := "http://" + cfg.DashboardListen + "/"
	if err := waitReady(ctx, dashURL+"healthz", failed); err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	fmt.Fprintf(logw, "the demo is up (metrics backend: %s at %s)\n", backend, promURL)
	fmt.Fprintf(logw, "open the dashboard: %s   (Ctrl-C stops everything)\n", dashURL)
	if cfg.DemoFile != "" {
		pid := os.Getpid()
		if err := democonfig.Write(cfg.DemoFile, democonfig.Demo{DashboardURL: dashURL, PrometheusURL: promURL, TapToken: token, PID: pid}); err != nil {
			return fmt.Errorf("--demo-file: %w", err)
		}
		defer democonfig.Remove(cfg.DemoFile, pid)
		fmt.Fprintf(logw, "from a terminal: go run ./web stat deploy -n shop | go run ./web top deploy/web -n shop | go run ./web tap deploy/web -n shop\n")
		fmt.Fprintf(logw, "  (they read the demo's Prometheus and tap token from %s while it runs)\n", cfg.DemoFile)
	}
	if started != nil {
		started(running{DashboardURL: dashURL, PrometheusURL: promURL, Backend: backend, Mesh: m, WebBin: bins.web, DemoFile: cfg.DemoFile})
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(logw, "stopping")
		return nil
	case err := <-failed:
		return err
	}
}

// pickBackend resolves --backend=auto.
func (c config) pickBackend() (string, error) {
	switch c.Backend {
	case "embedded":
		return "embedded", nil
	case "prometheus":
		if _, err := exec.LookPath(c.PrometheusBin); err != nil {
			return "", fmt.Errorf("--backend=prometheus: %v (install Debian's prometheus, or use --backend=embedded)", err)
		}
		return "prometheus", nil
	}
	if _, err := exec.LookPath(c.PrometheusBin); err != nil {
		return "embedded", nil
	}
	return "prometheus", nil
}

// checkPorts fails early, naming the flag to change, when any address the
// demo needs is taken.
func checkPorts(cfg config, m demo.Mesh) error {
	type want struct{ addr, what, flag string }
	wants := []want{
		{cfg.DashboardListen, "the dashboard", "--dashboard-listen"},
		{cfg.PrometheusListen, "the metrics backend", "--prometheus-listen"},
		{m.Identity, "the identity issuer", "--port-base"},
	}
	for _, p := range m.Pods {
		for _, a := range []struct{ addr, what string }{
			{p.App, "app"}, {p.Inbound, "proxy inbound"}, {p.Outbound, "proxy outbound"}, {p.Admin, "proxy admin"},
		} {
			wants = append(wants, want{a.addr, p.Name + " " + a.what, "--port-base"})
		}
		for _, r := range p.Routes {
			wants = append(wants, want{r, p.Name + " proxy route", "--port-base"})
		}
	}
	first := map[string]string{}
	for _, w := range wants {
		if what, ok := first[w.addr]; ok {
			return fmt.Errorf("%s is given to both %s and %s: choose another with %s", w.addr, what, w.what, w.flag)
		}
		first[w.addr] = w.what
		l, err := net.Listen("tcp", w.addr)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("%s (%s) is already in use: stop what holds it, or choose another with %s", w.addr, w.what, w.flag)
			}
			return fmt.Errorf("%s (%s): %w (see %s)", w.addr, w.what, err, w.flag)
		}
		l.Close()
	}
	return nil
}

// demoFiles are the generated files every process reads.
type demoFiles struct {
	prometheusYML, destinations string
	// identity is the directory of the mesh's trust anchor, issuer and tokens (demo.WriteIdentity).
	identity string
}

func writeFiles(dir string, m demo.Mesh) (demoFiles, error) {
	f := demoFiles{prometheusYML: filepath.Join(dir, "prometheus.yml"), destinations: filepath.Join(dir, "destinations.yaml"),
		identity: filepath.Join(dir, "identity")}
	if err := os.Mkdir(f.identity, 0o700); err != nil {
		return f, err
	}
	if err := m.WriteTokens(f.identity); err != nil {
		return f, fmt.Errorf("identity tokens: %w", err)
	}
	dest, err := m.Destinations()
	if err != nil {
		return f, err
	}
	targets, err := m.Targets()
	if err != nil {
		return f, err
	}
	for path, b := range map[string][]byte{
		f.prometheusYML: prometheusYML,
		f.destinations:  dest,
		filepath.Join(dir, filepath.FromSlash(targetsFile)): targets,
		filepath.Join(dir, filepath.FromSlash(rulesFile)):   rules.YAML(),
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return f, err
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return f, err
		}
	}
	return f, nil
}

type binaries struct{ proxy, web string }

// build compiles the proxy and dashboard once, so that every proxy process
// starts from the same binary at once instead of each "go run" compiling.
func build(ctx context.Context, dir string, con *console) (binaries, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return binaries{}, fmt.Errorf("find the module: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return binaries{}, errors.New("run the demo from inside the meshscope module: go run ./dev")
	}
	bin := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./proxy", "./web")
	cmd.Dir = filepath.Dir(gomod)
	w := con.writer("build")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return binaries{}, fmt.Errorf("go build ./proxy ./web: %w", err)
	}
	return binaries{proxy: filepath.Join(bin, "proxy"), web: filepath.Join(bin, "web")}, nil
}

// waitReady polls url until it answers 200, a component fails, ctx ends or
// readyTimeout passes.
func waitReady(ctx context.Context, url string, failed chan error) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			failed <- err // leave it for run's select
			return err
		case <-deadline.C:
			return fmt.Errorf("not ready after %v: %w", readyTimeout, last)
		case <-tick.C:
		}
	}
}
