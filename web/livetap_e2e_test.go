package main

// End-to-end tests of the live views on the real stack (the harness' shop:
// real proxies, real Prometheus, the dashboard), through a real headless
// Chromium and a real websocket client.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
)

// evalJS evaluates a JavaScript expression in b's page.
func evalJS[T any](b *browser, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// portForward relays a local port to the dashboard the way kubectl
// port-forward does; Drop cuts every connection and stops listening, as a
// broken port-forward would, and Restore listens on the same port again.
type portForward struct {
	t      *testing.T
	Addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func startPortForward(t *testing.T, target string) *portForward {
	pf := &portForward{t: t, target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pf.Addr = ln.Addr().String()
	pf.serve(ln)
	t.Cleanup(func() { pf.Drop(); pf.wg.Wait() })
	return pf
}

func (pf *portForward) serve(ln net.Listener) {
	pf.mu.Lock()
	pf.ln = ln
	pf.mu.Unlock()
	pf.wg.Add(1)
	go func() {
		defer pf.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", pf.target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			pf.mu.Lock()
			pf.conns[c], pf.conns[up] = true, true
			pf.mu.Unlock()
			pf.wg.Add(2)
			relay := func(dst, src net.Conn) {
				defer pf.wg.Done()
				io.Copy(dst, src)
				dst.Close()
				src.Close()
				pf.mu.Lock()
				delete(pf.conns, dst)
				delete(pf.conns, src)
				pf.mu.Unlock()
			}
			go relay(c, up)
			go relay(up, c)
		}
	}()
}

func (pf *portForward) Drop() {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	if pf.ln != nil {
		pf.ln.Close()
		pf.ln = nil
	}
	for c := range pf.conns {
		c.Close()
	}
}

func (pf *portForward) Restore() {
	ln, err := net.Listen("tcp", pf.Addr)
	if err != nil {
		pf.t.Fatalf("port-forward listen again on %s: %v", pf.Addr, err)
	}
	pf.serve(ln)
}

// tapRow is one row of the tap table as the page shows it.
type tapRow struct {
	Key, Path, Status string
	LagMS             float64 // from the proxy reading the request to the row on the page
}

const tapRowsJS = `Array.from(document.querySelectorAll("[data-testid=tap-rows] tr")).map(tr => ({
	Key: tr.dataset.key, Path: tr.dataset.path, Status: tr.cells[5].textContent,
	LagMS: Number(tr.dataset.shown) - Date.parse(tr.dataset.ts)}))`

func tapRows(b *browser) ([]tapRow, error) { return evalJS[[]tapRow](b, tapRowsJS) }

func waitState(t *testing.T, b *browser, want string) {
	t.Helper()
	eventually(t, 60*time.Second, "connection state "+want, func() error {
		s, err := evalJS[string](b, `document.querySelector("[data-ws-state]").dataset.wsState`)
		if err != nil {
			return err
		}
		if s != want {
			return fmt.Errorf("data-ws-state=%q", s)
		}
		return nil
	})
}

// waitRows waits until the table holds at least n rows, all satisfying ok.
func waitRows(t *testing.T, b *browser, what string, n int, ok func(tapRow) bool) []tapRow {
	t.Helper()
	var rows []tapRow
	eventually(t, 60*time.Second, what, func() error {
		var err error
		if rows, err = tapRows(b); err != nil {
			return err
		}
		if len(rows) < n {
			return fmt.Errorf("%d rows, want at least %d", len(rows), n)
		}
		for _, r := range rows {
			if !ok(r) {
				return fmt.Errorf("row %+v does not belong", r)
			}
		}
		return nil
	})
	return rows
}

func anyRow(tapRow) bool { return true }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func TestLiveTapAndTopInTheBrowser(t *testing.T) {
	sh := startShop(t)
	dash := startDashboard(t, config{PrometheusURL: sh.Prom.URL()})
	pf := startPortForward(t, strings.TrimPrefix(dash, "http://"))
	base := "http://" + pf.Addr
	b := newBrowser(t)
	dir := artifactsDir(t)

	t.Run("tap page shows the calls of a deployment as they happen", func(t *testing.T) {
		b.do(t, "open tap", chromedp.Navigate(base+"/tap?namespace=shop&deployment=web"))
		waitState(t, b, "open")
		rows := waitRows(t, b, "rows of web's calls", 20, anyRow)
		paths := map[string]bool{}
		var lags []float64
		for _, r := range rows {
			paths[r.Path] = true
			if r.LagMS == r.LagMS { // not NaN
				lags = append(lags, r.LagMS)
			}
		}
		if !paths["/"] || !paths["/vote"] {
			t.Errorf("paths %v, want web's inbound / and its outbound /vote", paths)
		}
		t.Logf("request read by the proxy to its row on the page: median %.0f ms over %d rows", median(lags), len(lags))
		b.screenshot(t, dir, "tap")
	})

	t.Run("clicking a row shows its headers with sensitive ones redacted", func(t *testing.T) {
		const row = `[data-testid=tap-rows] tr[data-path='/secret-check']`
		eventually(t, 60*time.Second, "a request with credentials tapped", func() error {
			req, _ := http.NewRequest(http.MethodGet, "http://"+sh.Web.Inbound+"/secret-check", nil)
			req.Host = "web.shop:8080"
			req.Header.Set("Authorization", "Bearer hunter2")
			req.Header.Set("Cookie", "session=hunter2")
			req.Header.Set("X-Request-Id", "visible-123")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
			if found, err := evalJS[bool](b, `!!document.querySelector("`+row+`")`); err != nil || !found {
				return fmt.Errorf("no row for /secret-check yet (%v)", err)
			}
			return nil
		})
		// New calls push the rows down while they stream: a click at the row's
		// coordinates can land on the row that took its place, so the click is
		// sent to the row element itself.
		if _, err := evalJS[bool](b, `(document.querySelector("`+row+`").click(), true)`); err != nil {
			t.Fatalf("click the row: %v", err)
		}
		b.do(t, "open the row's details", chromedp.WaitVisible(`[data-testid=tap-details]`))
		text := browserRun(t, b, "details", chromedp.TextContent(`[data-testid=tap-details]`))
		redacted := browserRun(t, b, "redacted values", chromedp.Evaluate[int](`document.querySelectorAll("[data-testid=tap-details] [data-testid=redacted]").length`))
		if strings.Contains(text, "hunter2") || redacted < 2 || !strings.Contains(text, "visible-123") {
			t.Errorf("details show %d redacted values and %q; want authorization and cookie redacted, x-request-id shown", redacted, text)
		}
		b.screenshot(t, dir, "tap-details")

		b.do(t, "hide this path", chromedp.Click(`[data-action=hide-path]`))
		if loc := browserRun(t, b, "location", chromedp.Location()); !strings.Contains(loc, "hide_path=%2Fsecret-check") {
			t.Errorf("location %s does not keep the hidden path", loc)
		}
		if rows, _ := tapRows(b); slices.ContainsFunc(rows, func(r tapRow) bool { return r.Path == "/secret-check" }) {
			t.Error("the hidden path's rows are still shown")
		}
	})

	t.Run("a filter from the form narrows the rows", func(t *testing.T) {
		b.do(t, "filter by path", chromedp.Navigate(base+"/tap?namespace=shop&deployment=web"),
			chromedp.SetValue(`[data-testid=filter-path]`, "/vote"),
			chromedp.Click(`[data-testid=filter-apply]`))
		eventually(t, 60*time.Second, "the filtered page loaded, its filter in the URL", func() error {
			if loc, err := evalJS[string](b, `location.href`); err != nil || !strings.Contains(loc, "path=%2Fvote") {
				return fmt.Errorf("location %s (%v)", loc, err)
			}
			return nil
		})
		waitState(t, b, "open")
		waitRows(t, b, "only /vote rows", 10, func(r tapRow) bool { return strings.HasPrefix(r.Path, "/vote") })

		b.do(t, "filter by status", chromedp.Navigate(base+"/tap?namespace=shop&deployment=voting&status=5xx"))
		waitRows(t, b, "only failed calls of voting", 3, func(r tapRow) bool { return r.Status == "500" })
		b.screenshot(t, dir, "tap-filtered")
	})

	t.Run("pause stops updates and resume restarts them", func(t *testing.T) {
		b.do(t, "open tap", chromedp.Navigate(base+"/tap?namespace=shop&deployment=web"))
		waitRows(t, b, "rows before pausing", 5, anyRow)
		b.do(t, "pause", chromedp.Click(`[data-action=pause]`))
		waitState(t, b, "paused")
		before, err := tapRows(b)
		if err != nil {
			t.Fatal(err)
		}
		b.do(t, "stay paused while traffic flows", chromedp.Sleep(3*time.Second))
		after, err := tapRows(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) || after[0].Key != before[0].Key {
			t.Errorf("paused table changed: %d rows (first %s), then %d (first %s)", len(before), before[0].Key, len(after), after[0].Key)
		}
		b.screenshot(t, dir, "tap-paused")
		b.do(t, "resume", chromedp.Click(`[data-action=pause]`))
		waitState(t, b, "open")
		eventually(t, 60*time.Second, "new rows after resume", func() error {
			rows, err := tapRows(b)
			if err != nil || len(rows) == 0 || rows[0].Key == before[0].Key {
				return fmt.Errorf("no new row yet (%v)", err)
			}
			return nil
		})
	})

	t.Run("a dropped port-forward shows its state and reconnects", func(t *testing.T) {
		waitState(t, b, "open")
		pf.Drop()
		waitState(t, b, "closed")
		before, _ := tapRows(b)
		b.screenshot(t, dir, "tap-dropped")
		pf.Restore()
		waitState(t, b, "open")
		eventually(t, 60*time.Second, "new rows after reconnecting", func() error {
			rows, err := tapRows(b)
			if err != nil || len(rows) == 0 || (len(before) > 0 && rows[0].Key == before[0].Key) {
				return fmt.Errorf("no new row yet (%v)", err)
			}
			return nil
		})
	})

	t.Run("top shows the paths with their counts and success rate", func(t *testing.T) {
		b.do(t, "open top", chromedp.Navigate(base+"/top?namespace=shop&deployment=voting"))
		waitState(t, b, "open")
		type topRow struct {
			Source, Destination, Method, Path, Success string
			Count                                      int
		}
		eventually(t, 90*time.Second, "voting's /vote row with enough requests", func() error {
			rows, err := evalJS[[]topRow](b, `Array.from(document.querySelectorAll("[data-testid=top-rows] tr")).map(tr => ({
				Source: tr.cells[0].textContent, Destination: tr.cells[1].textContent, Method: tr.cells[2].textContent,
				Path: tr.cells[3].textContent, Count: Number(tr.cells[4].textContent), Success: tr.cells[8].textContent}))`)
			if err != nil {
				return err
			}
			if len(rows) != 1 {
				return fmt.Errorf("rows %+v, want only web-0's address -> voting-0 GET /vote", rows)
			}
			// Without mTLS an inbound request's source is known by its address only.
			r := rows[0]
			if r.Source != "127.0.0.1" || r.Destination != "voting-0" || r.Method != "GET" || r.Path != "/vote" || r.Count < 40 {
				return fmt.Errorf("row %+v", r)
			}
			var rate float64
			fmt.Sscanf(r.Success, "%f%%", &rate)
			if rate < 65 || rate > 85 {
				return fmt.Errorf("success rate %s, want about 75%% (voting fails one request in four)", r.Success)
			}
			return nil
		})
		b.screenshot(t, dir, "top")
	})

	t.Run("deployment page has a live calls panel", func(t *testing.T) {
		b.do(t, "open voting", chromedp.Navigate(base+"/namespaces/shop/deployments/voting"))
		waitState(t, b, "open")
		waitRows(t, b, "voting's calls in the panel", 3, func(r tapRow) bool { return r.Path == "/vote" })
		b.screenshot(t, dir, "deployment-live-calls")
	})

	// Reconnecting while the port-forward was down logs refused connections: expected.
	p := slices.DeleteFunc(b.problems(), func(m string) bool {
		return strings.Contains(m, "WebSocket connection to") && strings.Contains(m, "ERR_CONNECTION_REFUSED")
	})
	if len(p) > 0 {
		t.Errorf("the pages logged errors:\n%s", strings.Join(p, "\n"))
	}
}

// liveGoroutines counts goroutines running the live views' code.
func liveGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "api.(*FanIn)") || strings.Contains(g, "liveSockets") || strings.Contains(g, "coder/websocket") {
			n++
			found = append(found, g)
		}
	}
	return n, strings.Join(found, "\n\n")
}

// liveFrame is a tap frame as a websocket client receives it.
type liveFrame struct {
	Events []liveEvent   `json:"events"`
	Status []proxyStatus `json:"status"`
}

type liveEvent struct {
	Proxy string `json:"proxy"`
	Event struct {
		Type string `json:"type"`
		Path string `json:"path"`
	} `json:"event"`
}

func TestLiveSocketOnRealProxies(t *testing.T) {
	// The proxies (child processes) take their tap token from the environment.
	const token = "tap-s3cret"
	t.Setenv("MESHSCOPE_PROXY_TAP_TOKEN", token)
	sh := startShop(t)
	dash := startDashboard(t, config{PrometheusURL: sh.Prom.URL(), TapToken: token})
	wsURL := "ws" + strings.TrimPrefix(dash, "http") + "/api/v1/tap/ws?namespace=shop"

	// readUntil reads frames until ok says stop, or fails after a generous deadline.
	readUntil := func(t *testing.T, c *websocket.Conn, what string, ok func(liveFrame) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		for {
			_, msg, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			var f liveFrame
			if err := json.Unmarshal(msg, &f); err != nil {
				t.Fatalf("frame %s: %v", msg, err)
			}
			if ok(f) {
				return
			}
		}
	}
	hasEventsOf := func(proxy string) func(liveFrame) bool {
		return func(f liveFrame) bool {
			return slices.ContainsFunc(f.Events, func(e liveEvent) bool { return e.Proxy == proxy })
		}
	}

	t.Run("the dashboard taps with its token and never shows it", func(t *testing.T) {
		c, _, err := websocket.Dial(context.Background(), wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		for seen := map[string]bool{}; !seen["web-0"] || !seen["voting-0"]; {
			_, msg, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("events of both proxies: %v", err)
			}
			if strings.Contains(string(msg), token) {
				t.Fatalf("a frame carries the tap token: %s", msg)
			}
			var f liveFrame
			json.Unmarshal(msg, &f)
			for _, e := range f.Events {
				seen[e.Proxy] = true
			}
		}
		for _, page := range []string{"/tap?namespace=shop", "/top?namespace=shop", "/namespaces/shop/deployments/web"} {
			if code, _, body := getBody(t, dash+page); code != http.StatusOK || strings.Contains(body, token) {
				t.Errorf("%s: %d, token in page: %v", page, code, strings.Contains(body, token))
			}
		}
	})

	t.Run("a wrong token is reported per proxy, not fatal", func(t *testing.T) {
		other := startDashboard(t, config{PrometheusURL: sh.Prom.URL(), TapToken: "wrong"})
		c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(other, "http")+"/api/v1/tap/ws?namespace=shop&deployment=web", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		readUntil(t, c, "web-0 refused with 401", func(f liveFrame) bool {
			return slices.ContainsFunc(f.Status, func(s proxyStatus) bool {
				return s.Proxy == "web-0" && s.State == "failed" && strings.Contains(s.Error, "401")
			})
		})
	})

	t.Run("the terminal twins tap through the same fan-in", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"tap", []string{"tap", "deploy/voting", "-n", "shop", "--status", "5xx"}, ":status=500"},
			{"top", []string{"top", "deploy/voting", "-n", "shop", "--interval", "500ms", "-o", "json"}, `"path":"/vote"`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				var out, errOut syncBuffer
				done := make(chan int, 1)
				args := append(tc.args, "--prometheus-url", sh.Prom.URL(), "--tap-token", token)
				go func() { done <- cli(ctx, args, &out, &errOut) }()
				eventually(t, 90*time.Second, "web "+tc.name+" prints "+tc.want, func() error {
					if !strings.Contains(out.String(), tc.want) {
						return fmt.Errorf("stdout %q, stderr %q", tail(out.String()), errOut.String())
					}
					return nil
				})
				cancel()
				if code := <-done; code != 0 {
					t.Errorf("exit code %d after interrupt; stderr %s", code, errOut.String())
				}
				if !strings.Contains(errOut.String(), "proxy voting-0 streaming") {
					t.Errorf("stderr %q does not report the proxy streaming", errOut.String())
				}
			})
		}
	})

	t.Run("shutting the dashboard down closes live sockets with going away", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		addrc, errc := make(chan net.Addr, 1), make(chan error, 1)
		cfg := config{Listen: "127.0.0.1:0", PrometheusURL: sh.Prom.URL(), TapToken: token}
		go func() {
			errc <- run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), func(a net.Addr) { addrc <- a })
		}()
		var addr net.Addr
		select {
		case addr = <-addrc:
		case err := <-errc:
			t.Fatal(err)
		}
		c, _, err := websocket.Dial(context.Background(), "ws://"+addr.String()+"/api/v1/tap/ws?namespace=shop&deployment=web", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		readUntil(t, c, "events of web-0", hasEventsOf("web-0"))
		cancel()
		if code, _ := closeStatus(t, c); code != websocket.StatusGoingAway {
			t.Errorf("closed with %d, want %d (going away)", code, websocket.StatusGoingAway)
		}
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	t.Run("a disconnect leaves no goroutine behind", func(t *testing.T) {
		for range 3 {
			c, _, err := websocket.Dial(context.Background(), wsURL, nil)
			if err != nil {
				t.Fatal(err)
			}
			readUntil(t, c, "events of web-0", hasEventsOf("web-0"))
			c.CloseNow() // as a browser tab closing
		}
		eventually(t, 30*time.Second, "live goroutines ended", func() error {
			if n, stacks := liveGoroutines(); n > 0 {
				return fmt.Errorf("%d left:\n%s", n, stacks)
			}
			return nil
		})
	})

	t.Run("a proxy killed mid-stream is reported and the rest continue", func(t *testing.T) {
		c, _, err := websocket.Dial(context.Background(), wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.SetReadLimit(16 << 20)
		readUntil(t, c, "events of voting-0", hasEventsOf("voting-0"))
		sh.Voting.proxy.Stop()
		readUntil(t, c, "voting-0 reported failed", func(f liveFrame) bool {
			return slices.ContainsFunc(f.Status, func(s proxyStatus) bool { return s.Proxy == "voting-0" && s.State == "failed" })
		})
		readUntil(t, c, "web-0 still streaming after the kill", hasEventsOf("web-0"))
	})
}

// tail is the end of a long output, for messages.
func tail(s string) string {
	if len(s) > 500 {
		return "…" + s[len(s)-500:]
	}
	return s
}
