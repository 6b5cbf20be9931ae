// Package netns runs code inside a Linux network namespace. Namespaces belong to threads, not processes:
// Do locks a fresh goroutine to its thread, moves that thread into the namespace and runs fn there. Sockets
// fn opens and processes it starts (os/exec forks from the calling thread) live in the namespace. The
// thread is never handed back to other goroutines: the goroutine ends still locked, so the runtime retires
// the thread with it, instead of moving back and risking a thread stuck in the wrong namespace.
package netns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn in the network namespace at path (e.g. /var/run/netns/NAME or /proc/PID/ns/net) and returns
// its error. An empty path runs fn where the process is.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() {
		// No UnlockOSThread: see the package comment.
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("network namespace %s: setns: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}
