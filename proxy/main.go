// Command proxy is Meshscope's sidecar: it carries a workload's inbound and outbound HTTP/1.1, HTTP/2,
// gRPC and TCP traffic, and counts every request with linkerd2-proxy's metric names. See --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxy: "+err.Error())
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "proxy: "+err.Error())
		os.Exit(1)
	}
}

// run starts the proxy described by cfg and serves until ctx is done.
func run(ctx context.Context, cfg Config) error {
	level := new(slog.LevelVar)
	level.Set(cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if cfg.Namespace != "" || cfg.Deployment != "" || cfg.Pod != "" {
		log = log.With("namespace", cfg.Namespace, "deployment", cfg.Deployment, "pod", cfg.Pod)
	}
	p, err := newProxy(cfg, log, level)
	if err != nil {
		return err
	}
	// The governor ends with the proxy, whichever way Serve returns, and leaves GOMAXPROCS as it found it.
	gctx, stopGovernor := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if g := newProcsGovernor(); g != nil {
		wg.Go(func() { g.run(gctx, log) })
	}
	err = p.Serve(ctx)
	stopGovernor()
	wg.Wait()
	return err
}
