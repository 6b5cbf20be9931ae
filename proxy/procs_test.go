package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestProcsGovernorFollowsLoad(t *testing.T) {
	g := &procsGovernor{max: 4, cur: 1}
	// Cores used in each interval, and the count the governor then chooses.
	steps := []struct {
		used float64
		want int
	}{
		{0.05, 1}, {0.5, 1}, {0.6, 1}, // one P is enough up to procsUp
		{0.7, 4},           // nearly busy: every P
		{1.5, 4}, {0.4, 4}, // still busy
		{0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, // calm, not yet for long enough
		{0.5, 4}, // a busier interval starts the count again
		{0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4}, {0.1, 4},
		{0.1, 1}, // procsDownAfter calm intervals in a row: back to one
		{0.61, 4},
	}
	for i, s := range steps {
		if got := g.next(s.used); got != s.want {
			t.Fatalf("step %d: %.2f cores used: GOMAXPROCS %d, want %d", i, s.used, got, s.want)
		}
	}
}

// The real binary starts on one P unless GOMAXPROCS fixes the count, and says so on /metrics.
func TestBinaryRunsOnOneProcessorUnlessGOMAXPROCSIsSet(t *testing.T) {
	for _, tt := range []struct {
		env  string
		want string
	}{
		{"", "1"},
		{"GOMAXPROCS=3", "3"},
	} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%q", tt.env), func(t *testing.T) {
			admin := freeAddr(t)
			cmd := proxyCommand(t, "--inbound-forward", "127.0.0.1:1", "--inbound-listen", "127.0.0.1:0",
				"--outbound-listen", "127.0.0.1:0", "--admin-listen", admin)
			cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cmd.Process.Signal(os.Interrupt)
				cmd.Wait()
			})
			sc := bufio.NewScanner(stderr)
			for sc.Scan() && !strings.Contains(sc.Text(), "admin listening") {
			}
			go io.Copy(io.Discard, stderr)

			res, err := http.Get("http://" + admin + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			var got string
			for line := range strings.Lines(string(body)) {
				if v, ok := strings.CutPrefix(line, "go_sched_gomaxprocs_threads "); ok {
					got = strings.TrimSpace(v)
				}
			}
			if got != tt.want {
				t.Fatalf("go_sched_gomaxprocs_threads %q, want %q", got, tt.want)
			}
		})
	}
}

// The governor puts the process on one P and, when the proxy ends, hands the count back to the runtime.
func TestProcsGovernorHandsTheCountBackWhenItEnds(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })
	t.Setenv("GOMAXPROCS", "")
	g := newProcsGovernor()
	if runtime.NumCPU() == 1 {
		if g != nil {
			t.Fatal("a governor on a machine with one CPU")
		}
		return
	}
	if g == nil || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("governor %v, GOMAXPROCS %d: want one P from the start", g, runtime.GOMAXPROCS(0))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g.run(ctx, slog.New(slog.DiscardHandler))
	if n := runtime.GOMAXPROCS(0); n == 1 {
		t.Fatal("GOMAXPROCS still 1 after the governor ended")
	}
}
