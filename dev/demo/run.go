package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
)

// Run serves every pod's app and sends traffic until ctx ends, then stops
// them all. Each app listens on its pod's App address and calls other
// services only through its pod's proxy.
func Run(ctx context.Context, m Mesh, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	listeners := make([]net.Listener, 0, len(m.Pods))
	for _, p := range m.Pods {
		l, err := net.Listen("tcp", p.App)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("%s app: %w", p.Name, err)
		}
		listeners = append(listeners, l)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	for i, p := range m.Pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			plog := log.With("pod", p.Name)
			if err := runPod(ctx, m, p, cfg, listeners[i], plog); err != nil {
				fail(fmt.Errorf("%s: %w", p.Name, err))
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := runTraffic(ctx, m, cfg.RPS, log.With("pod", "traffic")); err != nil {
			fail(fmt.Errorf("traffic: %w", err))
		}
	}()
	wg.Wait()
	return errors.Join(errs...)
}

func runPod(ctx context.Context, m Mesh, p Pod, cfg Config, l net.Listener, log *slog.Logger) error {
	switch p.Service.Deployment {
	case "web":
		return runWeb(ctx, m, p, cfg.Web, l, log)
	case "catalog":
		return runCatalog(ctx, cfg.Catalog, l)
	case "checkout":
		return runCheckout(ctx, m, p, cfg.Checkout, l)
	case "payments", "payments-v2": // two versions of one service, behaving alike
		return runPayments(ctx, m, p, cfg.Payments, l)
	case "ledger":
		return runLedger(ctx, cfg.Ledger, l, log)
	}
	l.Close()
	return fmt.Errorf("no app for deployment %q", p.Service.Deployment)
}
