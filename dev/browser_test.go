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

// checkFailedTapInBrowser opens the tap page on checkout with "failed only"
// in real Chromium: checkout's UNAVAILABLE calls (gRPC failures on HTTP 200,
// which status=5xx cannot select) fill the table, and nothing else does.
func checkFailedTapInBrowser(t *testing.T, dash string) {
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
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
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
	if dir := os.Getenv("MESHSCOPE_TEST_ARTIFACTS"); dir != "" {
		if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(filepath.Join(dir, "tap-failed-checkout.png"), png, 0o644)
		}
	}
	t.Logf("failed-only tap of checkout: %d calls, %s", len(statuses), strings.Join(statuses[:min(3, len(statuses))], ", "))
}
