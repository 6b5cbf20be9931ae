// Command proxy is Meshscope's sidecar: it carries a workload's inbound and outbound HTTP/1.1, HTTP/2,
// gRPC and TCP traffic, and counts every request with linkerd2-proxy's metric names. See --help.
//
// The same binary is also the sidecar's init container and the mesh's control plane: when its first
// argument names one of subcommands, it runs that program instead (proxy init, proxy inject, ...).
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
	"sync"
	"syscall"
)

// subcommand is one of the binary's other programs. It parses its own flags from args and returns
// flag.ErrHelp after printing its help, a usageError for a bad command line (exit 2), or another
// error for a failure (exit 1).
type subcommand func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// subcommands maps a first argument to the program it runs; any other first argument is the sidecar's.
var subcommands = map[string]subcommand{
	"init":        initCommand,
	"inject":      injectCmd,
	"destination": destinationCommand,
}

// usageError marks an error in a subcommand's command line: exit code 2 rather than 1.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			os.Exit(runSubcommand(sub, os.Args[1], os.Args[2:]))
		}
	}
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

// runSubcommand runs sub until SIGTERM or an interrupt and returns the process exit code: 0, 1 for a
// failure, 2 for bad usage. A failure is one line on stderr, prefixed with the subcommand's name.
func runSubcommand(sub subcommand, name string, args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := sub(ctx, args, os.Stdout, os.Stderr)
	var usageErr usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usageErr):
		fmt.Fprintf(os.Stderr, "proxy %s: %v\n", name, err)
		return 2
	default:
		fmt.Fprintf(os.Stderr, "proxy %s: %v\n", name, err)
		return 1
	}
}
