package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// prometheus is a real Prometheus process on loopback serving a tsdb.
type prometheus struct {
	URL  string
	cmd  *exec.Cmd
	done chan error
}

// startPrometheus runs the prometheus binary on dataDir with config (YAML
// text, written next to the data) and waits until it is ready. Its log goes
// to logw. Queries may take minutes, as rule backfills over a whole mesh do.
func startPrometheus(ctx context.Context, dataDir, config string, logw io.Writer) (*prometheus, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(filepath.Dir(dataDir), filepath.Base(dataDir)+".prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command("prometheus",
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+dataDir,
		"--storage.tsdb.retention.time=30d",
		"--web.listen-address="+addr,
		"--query.timeout=10m",
		"--query.max-samples=500000000",
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start prometheus (Debian package prometheus): %w", err)
	}
	p := &prometheus{URL: "http://" + addr, cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	if err := waitReady(ctx, p.URL+"/-/ready", p.done, 5*time.Minute); err != nil {
		p.Stop()
		return nil, fmt.Errorf("prometheus on %s: %w", dataDir, err)
	}
	return p, nil
}

// Stop ends Prometheus with SIGTERM (SIGKILL after a minute) and waits.
func (p *prometheus) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitReady polls url until it answers 200, the process ends or limit passes.
func waitReady(ctx context.Context, url string, exited <-chan error, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before ready: %v", err)
		case <-ctx.Done():
			return errors.New("not ready in time")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
