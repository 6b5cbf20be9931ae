// Package promengine is the demo's embedded metrics backend: Prometheus' own
// discovery, scrape, tsdb, promql and rules packages wired together in one
// process, for machines without a prometheus binary. It reads the same
// configuration file as the real Prometheus and answers the subset of the
// HTTP API the dashboard uses (query, query_range, targets) in Prometheus'
// JSON shapes, encoding query results with promql's own JSON marshalers.
// Prometheus' web/api/v1 package is not used: it drags alertmanager, the
// OpenTelemetry collector and an OpenAPI toolkit into go.mod.
//
// Nothing but dev/ may import this package: it must stay out of the proxy and
// dashboard binaries.
package promengine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	_ "github.com/prometheus/prometheus/discovery/file" // file_sd_configs, the only discovery the demo uses
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/tsdb"
)

// Options configure an Engine. Zero values work except ConfigFile.
type Options struct {
	// ConfigFile is a Prometheus configuration file (scrape_configs with
	// file_sd_configs); relative file_sd paths resolve against its directory,
	// as in Prometheus.
	ConfigFile string
	// DataDir holds the tsdb; empty means a fresh temporary directory removed
	// by Close.
	DataDir string
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
}

// Engine scrapes the configured targets into a tsdb and serves queries.
type Engine struct {
	logger    *slog.Logger
	dataDir   string
	removeDir bool
	db        *tsdb.DB
	engine    *promql.Engine
	discovery *discovery.Manager
	scrape    *scrape.Manager
	rules     *rules.Manager
	// ruleFiles, ruleInterval and ruleLabels are what Run hands the rules
	// manager.
	ruleFiles    []string
	ruleInterval time.Duration
	ruleLabels   labels.Labels
	handler      http.Handler
	// stop ends discovery and Run; done closes when Run has returned.
	stop   context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	running bool // Run has started
	closed  bool // Close has been called
}

// ErrClosed is Run's answer after Close or a first Run.
var ErrClosed = errors.New("promengine: closed")

// New opens the tsdb and prepares discovery, scraping and the API. Call Run
// to start scraping and Close to release everything.
func New(opts Options) (_ *Engine, err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := config.LoadFile(opts.ConfigFile, false, logger)
	if err != nil {
		return nil, fmt.Errorf("load prometheus config: %w", err)
	}
	e := &Engine{logger: logger, dataDir: opts.DataDir, done: make(chan struct{})}
	if e.dataDir == "" {
		if e.dataDir, err = os.MkdirTemp("", "meshscope-tsdb-"); err != nil {
			return nil, fmt.Errorf("create tsdb dir: %w", err)
		}
		e.removeDir = true
	}
	reg := prometheus.NewRegistry()
	dbOpts := tsdb.DefaultOptions()
	dbOpts.RetentionDuration = int64(6 * time.Hour / time.Millisecond)
	if e.db, err = tsdb.Open(e.dataDir, logger.With("component", "tsdb"), reg, dbOpts, nil); err != nil {
		e.removeData()
		return nil, fmt.Errorf("open tsdb: %w", err)
	}
	e.engine = promql.NewEngine(promql.EngineOpts{
		Logger:               logger.With("component", "query engine"),
		Reg:                  reg,
		MaxSamples:           50_000_000,
		Timeout:              2 * time.Minute,
		LookbackDelta:        5 * time.Minute,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
	})
	ctx, cancel := context.WithCancel(context.Background())
	e.stop, e.cancel = ctx, cancel
	defer func() {
		if err != nil {
			cancel()
			e.closeDB()
		}
	}()
	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("discovery metrics: %w", err)
	}
	e.discovery = discovery.NewManager(ctx, logger.With("component", "discovery"), reg, sdMetrics,
		discovery.Name("scrape"), discovery.Updatert(time.Second))
	if e.discovery == nil {
		return nil, errors.New("create discovery manager")
	}
	e.scrape, err = scrape.NewManager(&scrape.Options{DiscoveryReloadInterval: model.Duration(time.Second)},
		logger.With("component", "scrape"), nil, e.db, nil, reg)
	if err != nil {
		return nil, fmt.Errorf("create scrape manager: %w", err)
	}
	if err := e.scrape.ApplyConfig(cfg); err != nil {
		return nil, fmt.Errorf("apply scrape config: %w", err)
	}
	sdConfigs := map[string]discovery.Configs{}
	for _, sc := range cfg.ScrapeConfigs {
		sdConfigs[sc.JobName] = sc.ServiceDiscoveryConfigs
	}
	if err := e.discovery.ApplyConfig(sdConfigs); err != nil {
		return nil, fmt.Errorf("apply discovery config: %w", err)
	}
	if err := e.newRules(ctx, cfg, reg); err != nil {
		return nil, err
	}
	e.handler = e.newHandler()
	return e, nil
}

// Run discovers and scrapes targets until ctx ends or Close is called.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.closed || e.running {
		e.mu.Unlock()
		return ErrClosed // also a second Run: an engine runs once
	}
	e.running = true
	e.mu.Unlock()
	defer close(e.done)
	discoveryDone := make(chan error, 1)
	go func() { discoveryDone <- e.discovery.Run() }()
	scrapeDone := make(chan error, 1)
	go func() { scrapeDone <- e.scrape.Run(e.discovery.SyncCh()) }()
	rulesDone := make(chan struct{})
	go func() { e.rules.Run(); close(rulesDone) }()
	if err := e.rules.Update(e.ruleInterval, e.ruleFiles, e.ruleLabels, "", nil); err != nil {
		e.logger.Error("recording rules not evaluated", "err", err)
	}
	select {
	case <-ctx.Done():
	case <-e.stop.Done():
	case err := <-discoveryDone:
		e.logger.Error("discovery stopped", "err", err)
	case err := <-scrapeDone:
		e.logger.Error("scraping stopped", "err", err)
	}
	e.cancel() // stops discovery
	e.scrape.Stop()
	e.rules.Stop()
	<-rulesDone
	return nil
}

// newRules prepares a rules manager that evaluates the configuration's
// rule files (globs, as in Prometheus) with the engine into the tsdb. It
// loads them once here so that a bad file fails New; Run starts them.
func (e *Engine) newRules(ctx context.Context, cfg *config.Config, reg prometheus.Registerer) error {
	for _, pattern := range cfg.RuleFiles {
		matches, err := filepath.Glob(pattern)
		if err != nil {
			return fmt.Errorf("rule_files %q: %w", pattern, err)
		}
		e.ruleFiles = append(e.ruleFiles, matches...)
	}
	e.ruleInterval = time.Duration(cfg.GlobalConfig.EvaluationInterval)
	e.ruleLabels = cfg.GlobalConfig.ExternalLabels
	e.rules = rules.NewManager(&rules.ManagerOptions{
		AppendableV2: e.db,
		Queryable:    e.db,
		QueryFunc:    rules.EngineQueryFunc(e.engine, e.db),
		// The demo has no Alertmanager: alerting rules evaluate, nothing is sent.
		NotifyFunc: func(context.Context, string, ...*rules.Alert) {},
		Context:    ctx,
		Logger:     e.logger.With("component", "rule manager"),
		Registerer: reg,
	})
	if _, errs := e.rules.LoadGroups(e.ruleInterval, e.ruleLabels, "", nil, false, e.ruleFiles...); len(errs) > 0 {
		return fmt.Errorf("load rule files: %w", errors.Join(errs...))
	}
	return nil
}

// Handler serves /-/ready, /-/healthy and the API subset.
func (e *Engine) Handler() http.Handler { return e.handler }

// Close stops Run and waits for it, closes the tsdb and removes a
// temporary data directory.
func (e *Engine) Close() error {
	e.mu.Lock()
	e.closed = true
	running := e.running
	e.mu.Unlock()
	e.cancel()
	if running {
		<-e.done
	}
	return e.closeDB()
}

func (e *Engine) closeDB() error {
	err := e.db.Close()
	e.removeData()
	return err
}

func (e *Engine) removeData() {
	if e.removeDir {
		if err := os.RemoveAll(e.dataDir); err != nil {
			e.logger.Warn("remove tsdb dir", "dir", e.dataDir, "err", err)
		}
	}
}
