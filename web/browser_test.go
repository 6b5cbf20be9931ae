package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// artifactsDir is where browser tests save screenshots: $MESHSCOPE_TEST_ARTIFACTS
// when set (CI keeps it), else a temporary directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MESHSCOPE_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is a real headless Chromium with the flags of the guide, and the
// console messages its pages wrote.
type browser struct {
	ctx     context.Context
	mu      sync.Mutex
	console []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	exec := requireTool(t, "/usr/bin/chromium")
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exec), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{ctx: ctx}
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, string(m.Type)+": "+m.Text+" ("+m.URL+")")
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); cancelAlloc(); <-done })
	return b
}

// do runs steps with a generous deadline.
func (b *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func browserRun[T any](t *testing.T, b *browser, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// screenshot saves the whole page as name.png in the artifacts directory.
func (b *browser) screenshot(t *testing.T, dir, name string) {
	t.Helper()
	png := browserRun(t, b, "screenshot "+name, chromedp.FullScreenshot(100))
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", path)
}

// problems are console messages that say the page is broken: script errors
// and Content-Security-Policy violations.
func (b *browser) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.console {
		if strings.HasPrefix(m, "error") || strings.HasPrefix(m, "exception") || strings.Contains(m, "Content Security Policy") {
			out = append(out, m)
		}
	}
	return out
}

// browseDashboard walks the dashboard like an on-call engineer: namespaces,
// a namespace, a deployment, the window selector, the refresh and its pause,
// a pod. It logs the first paint of the first page.
func browseDashboard(t *testing.T, dash string) {
	b := newBrowser(t)
	dir := artifactsDir(t)
	const shopRow = `[data-testid=namespaces] [data-testid=row][data-name=shop]`

	b.do(t, "open namespaces", chromedp.Navigate(dash+"/namespaces"), chromedp.WaitVisible(shopRow))
	paint := browserRun(t, b, "first paint", chromedp.Evaluate[pageTiming](firstPaintJS, chromedp.EvalAwaitPromise))
	t.Logf("/namespaces through the real stack: first contentful paint %.0f ms, DOMContentLoaded %.0f ms, first byte %.0f ms (budget 1000 ms, not asserted)",
		paint.FCP, paint.DCL, paint.TTFB)
	b.screenshot(t, dir, "namespaces")
	const worst = `[data-testid=workloads] [data-testid=row]`
	b.do(t, "see the worst workload first", chromedp.WaitVisible(worst+`[data-name="shop/voting"] [data-testid=since]`))
	top := browserRun(t, b, "worst workloads", chromedp.Evaluate[[]string](`[...document.querySelectorAll('`+worst+`:first-child td')].map(td => td.textContent.trim())`))
	if len(top) < 5 || top[0] != "shop/voting" || !strings.Contains(top[3], " pt") || !strings.Contains(top[4], " UTC, ") {
		t.Errorf("first worst workload reads %q, want shop/voting with its change (pt) and since when (UTC)", top)
	}

	b.do(t, "follow the namespace link",
		chromedp.Click(shopRow+` [data-testid=name] a`),
		chromedp.WaitVisible(`[data-testid=page-namespace] [data-testid=deployments] [data-testid=row][data-name=voting]`))
	if loc := browserRun(t, b, "location", chromedp.Location()); !strings.HasSuffix(loc, "/namespaces/shop") {
		t.Errorf("namespace link led to %s", loc)
	}
	b.screenshot(t, dir, "namespace")

	b.do(t, "follow the deployment link",
		chromedp.Click(`[data-testid=deployments] [data-testid=row][data-name=voting] [data-testid=name] a`),
		chromedp.WaitVisible(`[data-testid=page-deployment] [data-testid=chart-rps] [data-testid=chart-line]`),
		chromedp.WaitVisible(`[data-testid=inbound] [data-testid=row][data-name="shop/web"]`))
	b.screenshot(t, dir, "deployment")

	b.do(t, "change the window to 10s",
		chromedp.Click(`[data-testid=window-10s]`),
		chromedp.WaitVisible(`[data-testid=window-10s].active`))
	if loc := browserRun(t, b, "location", chromedp.Location()); !strings.Contains(loc, "window=10s") {
		t.Errorf("window change left the URL at %s, want window=10s in it", loc)
	}

	first := browserRun(t, b, "updated at", chromedp.Text(`[data-testid=updated-at]`))
	b.do(t, "see the data refresh", chromedp.Poll[chromedp.Void](
		`document.querySelector('[data-testid=updated-at]').textContent !== `+jsString(first),
		chromedp.WithPollingInterval(200*time.Millisecond)))
	if browserRun(t, b, "refreshed fragment keeps its rows", chromedp.Evaluate[int](`document.querySelectorAll('[data-testid=inbound] [data-testid=row]').length`)) == 0 {
		t.Error("the refreshed fragment lost the inbound edges")
	}
	b.screenshot(t, dir, "deployment-10s")

	b.do(t, "pause the refresh", chromedp.Click(`[data-testid=pause]`), chromedp.Sleep(1500*time.Millisecond))
	paused := browserRun(t, b, "updated at", chromedp.Text(`[data-testid=updated-at]`))
	b.do(t, "stay paused for several refresh intervals", chromedp.Sleep(4*time.Second))
	if now := browserRun(t, b, "updated at", chromedp.Text(`[data-testid=updated-at]`)); now != paused {
		t.Errorf("paused page refreshed: %q became %q", paused, now)
	}

	b.do(t, "follow a pod link",
		chromedp.Click(`[data-testid=pods] [data-testid=row][data-name=voting-0] [data-testid=name] a`),
		chromedp.WaitVisible(`[data-testid=page-pod] [data-testid=summary-success]`))
	b.screenshot(t, dir, "pod")

	checkDarkMode(t, b, dash, dir)

	if p := b.problems(); len(p) > 0 {
		t.Errorf("the pages logged errors:\n%s", strings.Join(p, "\n"))
	}
}

// colours are what the browser computed for the page and for the worst
// workload's success cell (a failing one: red).
type colours struct {
	Page     string  `json:"page"`
	Bad      string  `json:"bad"`
	Contrast float64 `json:"contrast"`
}

// coloursJS reads the computed colours and the WCAG contrast ratio of the
// red success text against the page.
const coloursJS = `(() => {
  const rgb = s => s.match(/\d+/g).slice(0, 3).map(Number);
  const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const page = getComputedStyle(document.body).backgroundColor;
  const bad = getComputedStyle(document.querySelector('[data-testid=workloads] td.bad')).color;
  const [a, b] = [lum(rgb(page)), lum(rgb(bad))];
  return {page: page, bad: bad, contrast: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)};
})()`

// checkDarkMode: a browser preferring dark gets dark colours, with health
// colours still readable (WCAG AA, 4.5:1); the toggle's choice beats the
// preference and survives a reload through its cookie.
func checkDarkMode(t *testing.T, b *browser, dash, dir string) {
	t.Helper()
	const badCell = `[data-testid=workloads] td.bad`
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if _, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}}); err != nil {
		t.Fatalf("prefer dark: %v", err)
	}
	b.do(t, "open the first screen preferring dark", chromedp.Navigate(dash+"/namespaces?window=10s"), chromedp.WaitVisible(badCell))
	dark := browserRun(t, b, "colours", chromedp.Evaluate[colours](coloursJS))
	b.screenshot(t, dir, "namespaces-dark")
	if dark.Page != "rgb(13, 17, 23)" || dark.Contrast < 4.5 {
		t.Errorf("dark preference: page %s, failing success %s at contrast %.1f; want the dark page and at least 4.5:1", dark.Page, dark.Bad, dark.Contrast)
	}
	// system -> dark -> light: the toggle picks light against the preference.
	b.do(t, "toggle to light", chromedp.Click(`[data-testid=theme-toggle]`), chromedp.Click(`[data-testid=theme-toggle]`),
		chromedp.Reload(), chromedp.WaitVisible(badCell))
	light := browserRun(t, b, "colours", chromedp.Evaluate[colours](coloursJS))
	if toggle := browserRun(t, b, "toggle", chromedp.Text(`[data-testid=theme-toggle]`)); light.Page != "rgb(255, 255, 255)" || light.Contrast < 4.5 || toggle != "theme: light" {
		t.Errorf("after choosing light and reloading: page %s, contrast %.1f, toggle %q; want white, 4.5:1, theme: light", light.Page, light.Contrast, toggle)
	}
	b.screenshot(t, dir, "namespaces-light-chosen")
	b.do(t, "back to the system's choice", chromedp.Click(`[data-testid=theme-toggle]`), chromedp.Reload(), chromedp.WaitVisible(badCell))
}

// pageTiming is what the Performance API says about a page load, in ms since
// navigation start; FCP is -1 when the browser reported no paint.
type pageTiming struct {
	FCP  float64 `json:"fcp"`
	DCL  float64 `json:"dcl"`
	TTFB float64 `json:"ttfb"`
}

const firstPaintJS = `new Promise(resolve => {
  const nav = performance.getEntriesByType('navigation')[0];
  const done = fcp => resolve({fcp: fcp, dcl: nav.domContentLoadedEventEnd, ttfb: nav.responseStart});
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) if (e.name === 'first-contentful-paint') done(e.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(-1), 3000);
})`

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`).Replace(s) + "'"
}
