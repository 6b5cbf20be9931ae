package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"syscall"
	"time"
)

// The proxy's processor count (GOMAXPROCS) follows its load. Whenever a goroutine becomes runnable while
// another P is idle, Go's scheduler wakes a thread to spin looking for work; at a sidecar's usual rates there
// is none, and each wake-spin-sleep round of that thread costs more CPU than proxying the request did
// (dev/BENCHMARKS.md "Proxy"). So the proxy runs on one P, as linkerd2-proxy runs on one core by default, and takes
// the runtime's own count (the CPUs it may use, or its cgroup's limit) only while one P is nearly busy. A
// GOMAXPROCS set in the environment fixes the count instead.

const (
	procsInterval = 250 * time.Millisecond
	// procsUp: on one P, using more than this share of a core over an interval takes every P.
	procsUp = 0.6
	// procsDown: on more Ps, using less than this many cores for procsDownAfter intervals goes back to one.
	procsDown      = 0.35
	procsDownAfter = 8
)

// procsGovernor decides the processor count from the CPU time used in each interval.
type procsGovernor struct {
	max  int // the runtime's own count at start
	cur  int // 1, or max for "the runtime's own count"
	calm int // intervals in a row below procsDown
}

// next returns the processor count for the next interval, given the cores used in the last one: 1, or
// max for the runtime's own count.
func (g *procsGovernor) next(used float64) int {
	switch {
	case g.cur == 1:
		if used > procsUp {
			g.cur, g.calm = g.max, 0
		}
	case used < procsDown:
		g.calm++
		if g.calm >= procsDownAfter {
			g.cur, g.calm = 1, 0
		}
	default:
		g.calm = 0
	}
	return g.cur
}

// newProcsGovernor puts the process on one P and returns the governor that adapts it, or nil when the
// environment fixes GOMAXPROCS or the runtime's own count is already one.
func newProcsGovernor() *procsGovernor {
	if os.Getenv("GOMAXPROCS") != "" {
		return nil
	}
	g := &procsGovernor{max: runtime.GOMAXPROCS(0), cur: 1}
	if g.max == 1 {
		return nil
	}
	runtime.GOMAXPROCS(1)
	return g
}

// run adapts GOMAXPROCS to the CPU time the process uses until ctx ends, then hands the count back to the
// runtime. While busy the count is the runtime's own (runtime.SetDefaultGOMAXPROCS), which keeps following
// the CPUs the process may use, such as a container's changing CPU limit.
func (g *procsGovernor) run(ctx context.Context, log *slog.Logger) {
	defer runtime.SetDefaultGOMAXPROCS()
	last, err := cpuTime()
	if err != nil {
		log.Warn("cannot read the proxy's CPU time: GOMAXPROCS stays at the runtime's own count", "err", err)
		return
	}
	lastAt := time.Now()
	t := time.NewTicker(procsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			used, err := cpuTime()
			if err != nil {
				continue
			}
			cores := float64(used-last) / float64(now.Sub(lastAt))
			last, lastAt = used, now
			was := g.cur
			if n := g.next(cores); n != was {
				if n == 1 {
					runtime.GOMAXPROCS(1)
				} else {
					runtime.SetDefaultGOMAXPROCS()
				}
				log.Debug("GOMAXPROCS changed", "procs", runtime.GOMAXPROCS(0), "cores_used", cores)
			}
		}
	}
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
