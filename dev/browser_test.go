package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browser starts a real headless Chromium for the demo's pages; it ends with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium is required in CI: %v", err)
		}
		t.Skipf("no chromium: %v", err)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// Start the browser on this context: one started under a check's deadline would close with it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// screenshot keeps the page as name.png in $MESHSCOPE_TEST_ARTIFACTS, when set.
func screenshot(ctx context.Context, name string) {
	if dir := os.Getenv("MESHSCOPE_TEST_ARTIFACTS"); dir != "" {
		if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
		}
	}
}

// checkFirstScreenInBrowser: in real Chromium the first screen's first worst
// workload is checkout, with its change against the last hour and since when
// it has been under the SLO.
func checkFirstScreenInBrowser(t *testing.T, ctx context.Context, dash string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	const first = `[data-testid=workloads] [data-testid=row]:first-child`
	if err := chromedp.Do(ctx, chromedp.Navigate(dash+"namespaces"),
		chromedp.Poll[chromedp.Void](`(() => { const r = document.querySelector('`+first+`');
			return r && r.dataset.name === 'shop/checkout' && r.querySelector('[data-testid=since]').textContent.includes(' UTC, ')
				&& r.querySelector('[data-testid=delta]').textContent.includes(' pt'); })()`,
			chromedp.WithPollingInterval(500*time.Millisecond)),
	); err != nil {
		row, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector('`+first+`') || {}).textContent || "none"`))
		t.Fatalf("first screen: %v; first row %q, want shop/checkout with its change and since when", err, row)
	}
	screenshot(ctx, "first-screen")
}

// checkFailedTapInBrowser opens the tap page on checkout with "failed only"
// in real Chromium: checkout's UNAVAILABLE calls (gRPC failures on HTTP 200,
// which status=5xx cannot select) fill the table, and nothing else does.
func checkFailedTapInBrowser(t *testing.T, ctx context.Context, dash string) {
	t.Helper()
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	defer cancelTimeout()
	const rows = `[data-testid=tap-rows] tr`
	if err := chromedp.Do(ctx,
		chromedp.Navigate(dash+"tap?namespace=shop&deployment=checkout&direction=inbound&failed=true"),
		chromedp.WaitVisible(`[data-testid=filter-failed]:checked`),
		chromedp.Poll[chromedp.Void](`[...document.querySelectorAll('`+rows+`')].filter(r => r.cells[5].textContent === 'grpc UNAVAILABLE').length >= 3`,
			chromedp.WithPollingInterval(250*time.Millisecond)),
	); err != nil {
		t.Fatalf("tap page with failed only: %v", err)
	}
	statuses, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('`+rows+`')].map(r => r.cells[5].textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range statuses {
		if s != "grpc UNAVAILABLE" && s != "…" { // "…": a call whose end is yet to come
			t.Errorf("failed-only tap shows a call with status %q: %q", s, statuses)
			break
		}
	}
	screenshot(ctx, "tap-failed-checkout")
	t.Logf("failed-only tap of checkout: %d calls, %s", len(statuses), strings.Join(statuses[:min(3, len(statuses))], ", "))
}
