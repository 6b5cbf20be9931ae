// Command dev runs Meshscope's demo: a small shop of services in two
// namespaces, each pod behind its own proxy, steady traffic, a metrics
// backend (the real Prometheus when installed, else an embedded engine built
// from Prometheus' packages) and the dashboard, all from one command:
//
//	go run ./dev
//
// "go run ./dev apps" runs only the demo services and traffic, for the
// Procfile, where every other process has its own line.
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
	"strings"
	"syscall"

	"github.com/meshscope/meshscope/api/democonfig"
	"github.com/meshscope/meshscope/dev/demo"
)

const usage = `usage: go run ./dev [flags]         the whole demo: services, proxies, traffic, Prometheus, dashboard
       go run ./dev apps [flags]    only the demo services and traffic (the Procfile's "apps" line)

The demo's apps and proxies take 25 consecutive ports on 127.0.0.1 from --port-base (14000-14024 by
default, the layout the Procfile uses too): per pod its app, proxy inbound, outbound and admin ports.
The dashboard (--dashboard-listen) and Prometheus (--prometheus-listen) have their own addresses.
Ctrl-C stops everything.

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(cli(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// config is the launcher's command line.
type config struct {
	// PortBase is the first demo port; 0 picks free ports (for tests).
	PortBase int
	// Ports, when set, hands out the demo's ports instead of PortBase: tests
	// take the dashboard's and Prometheus' addresses from the same allocator,
	// so no port is handed out twice in one layout.
	Ports demo.PortFunc
	// DashboardListen and PrometheusListen are the two user-facing addresses.
	DashboardListen, PrometheusListen string
	// Backend is auto, prometheus or embedded.
	Backend string
	// PrometheusBin is the real Prometheus to run (a name on PATH or a path).
	PrometheusBin string
	// GrafanaURL, when set, makes the dashboard link to Grafana.
	GrafanaURL string
	// DemoFile is where the running demo tells the terminal twins its
	// Prometheus and tap token; empty writes none.
	DemoFile string
	// Demo is the services' behaviour and the load.
	Demo demo.Config
}

const host = "127.0.0.1"

func flags(name string, cfg *config, apps bool) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.IntVar(&cfg.PortBase, "port-base", 14000, "first of the demo's consecutive ports on 127.0.0.1 (0: any free ports)")
	if !apps {
		fs.StringVar(&cfg.DashboardListen, "dashboard-listen", host+":8084", "`address` the dashboard listens on")
		fs.StringVar(&cfg.PrometheusListen, "prometheus-listen", host+":9090", "`address` the metrics backend listens on")
		fs.StringVar(&cfg.Backend, "backend", "auto", "metrics backend: auto (prometheus when on PATH, else embedded), prometheus, or embedded")
		fs.StringVar(&cfg.PrometheusBin, "prometheus-bin", "prometheus", "the Prometheus `binary` for --backend=prometheus/auto")
		fs.StringVar(&cfg.GrafanaURL, "grafana-url", "", "Grafana base `URL` the dashboard links to (dev/grafana has the dashboards)")
		fs.StringVar(&cfg.DemoFile, "demo-file", democonfig.DefaultPath(), "`file` telling \"web stat|top|tap\" the demo's Prometheus and tap token while it runs (empty: none)")
	}
	cfg.Demo = demo.DefaultConfig()
	cfg.Demo.RegisterFlags(fs)
	return fs
}

func cli(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name, apps := "dev", false
	if len(args) > 0 && args[0] == "apps" {
		name, apps, args = "dev apps", true, args[1:]
	}
	var cfg config
	fs := flags(name, &cfg, apps)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see --help)\n", name, fs.Arg(0))
		return 2
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	con := &console{out: stdout}
	var err error
	if apps {
		err = runApps(ctx, cfg, con)
	} else {
		err = run(ctx, cfg, con, nil)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

func (c config) validate() error {
	if c.PortBase < 0 || c.PortBase > 65000 {
		return fmt.Errorf("--port-base %d: want 1024..65000, or 0 for any free ports", c.PortBase)
	}
	switch c.Backend {
	case "", "auto", "prometheus", "embedded":
	default:
		return fmt.Errorf("--backend %q: want auto, prometheus or embedded", c.Backend)
	}
	if c.GrafanaURL != "" && !strings.HasPrefix(c.GrafanaURL, "http://") && !strings.HasPrefix(c.GrafanaURL, "https://") {
		return fmt.Errorf("--grafana-url %q: want an http:// or https:// URL", c.GrafanaURL)
	}
	return c.Demo.Validate()
}

// layout places the demo on --port-base.
func (c config) layout() (demo.Mesh, error) {
	ports := c.Ports
	switch {
	case ports != nil:
	case c.PortBase == 0:
		ports = demo.FreePorts(host)
	default:
		ports = demo.SequentialPorts(c.PortBase)
	}
	return demo.Layout(host, ports)
}

// runApps is "go run ./dev apps": the services and traffic alone.
func runApps(ctx context.Context, cfg config, con *console) error {
	m, err := cfg.layout()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(con.writer("apps"), nil))
	return demo.Run(ctx, m, cfg.Demo, log)
}
