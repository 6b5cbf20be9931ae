package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// console serializes whole lines from every process onto one writer, each
// line prefixed by its process name, so logs from many processes never
// interleave mid-line.
type console struct {
	mu  sync.Mutex
	out io.Writer
}

// prefixWriter is one process's view of the console.
type prefixWriter struct {
	c      *console
	prefix string
	buf    []byte
}

func (c *console) writer(name string) *prefixWriter {
	return &prefixWriter{c: c, prefix: fmt.Sprintf("%-24s| ", name)}
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.c.mu.Lock()
		_, err := fmt.Fprintf(w.c.out, "%s%s\n", w.prefix, w.buf[:i])
		w.c.mu.Unlock()
		w.buf = w.buf[i+1:]
		if err != nil {
			return len(p), err
		}
	}
}

// stopGrace is how long a child may take to exit after SIGTERM before it is
// killed.
const stopGrace = 10 * time.Second

// startProcess runs bin with args as a child named name. The child gets
// SIGTERM when ctx ends and SIGKILL stopGrace later; it sits in its own
// process group so a terminal's Ctrl-C reaches only the launcher, which
// stops children in order, and Pdeathsig kills it should the launcher die
// without cleaning up. The returned channel yields the exit error once.
func startProcess(ctx context.Context, con *console, name, bin string, args, env []string) (<-chan error, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	out := con.writer(name)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return done, nil
}
