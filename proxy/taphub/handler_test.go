package taphub

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshscope/meshscope/api/tap"
)

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serveOnce runs the handler for one request whose client has already gone
// away, so a stream that starts ends at once.
func serveOnce(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	ctx, cancel := context.WithCancel(r.Context())
	cancel()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r.WithContext(ctx))
	return rec
}

func TestHandlerAuthorization(t *testing.T) {
	tests := []struct {
		name       string
		token      string // configured on the proxy
		remote     string
		authHeader string
		want       int // 400: authorized, so the bad filter below is reported
	}{
		{"no token configured, loopback IPv4", "", "127.0.0.1:50000", "", 400},
		{"no token configured, loopback IPv6", "", "[::1]:50000", "", 400},
		{"no token configured, IPv4-mapped loopback", "", "[::ffff:127.0.0.1]:50000", "", 400},
		{"no token configured, remote peer", "", "10.1.2.3:50000", "", 403},
		{"no token configured, remote peer with a token", "", "10.1.2.3:50000", "Bearer s3cret", 403},
		{"token configured, right token from a remote peer", "s3cret", "10.1.2.3:50000", "Bearer s3cret", 400},
		{"token configured, scheme in lower case", "s3cret", "10.1.2.3:50000", "bearer s3cret", 400},
		{"token configured, missing", "s3cret", "127.0.0.1:50000", "", 401},
		{"token configured, wrong", "s3cret", "127.0.0.1:50000", "Bearer s3cres", 401},
		{"token configured, prefix of the right one", "s3cret", "127.0.0.1:50000", "Bearer s3cre", 401},
		{"token configured, basic scheme", "s3cret", "127.0.0.1:50000", "Basic s3cret", 401},
		{"token configured, bare token", "s3cret", "127.0.0.1:50000", "s3cret", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &Handler{Hub: New(Options{}), Token: tt.token}
			r := httptest.NewRequest("GET", "/tap?status=oops", nil)
			r.RemoteAddr = tt.remote
			if tt.authHeader != "" {
				r.Header.Set("Authorization", tt.authHeader)
			}
			// A bad filter too: an unauthorized client must not learn even that.
			rec := serveOnce(h, r)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d", rec.Code, tt.want)
			}
			if tt.want == 400 {
				return
			}
			if strings.Contains(rec.Body.String(), "status") || rec.Header().Get("Content-Type") == tap.ContentType {
				t.Errorf("refused client got more than a refusal: %q", rec.Body.String())
			}
			if tt.want == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

func TestHandlerStartsStreamForAuthorizedClient(t *testing.T) {
	h := &Handler{Hub: New(Options{}), Token: "s3cret"}
	r := httptest.NewRequest("GET", "/tap?status=5xx&max_rps=10", nil)
	r.Header.Set("Authorization", "Bearer s3cret")
	rec := serveOnce(h, r)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/x-ndjson" {
		t.Errorf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	if h.Hub.Active() {
		t.Error("subscription left behind after the client went away")
	}
}

func TestHandlerRejectsBadRequests(t *testing.T) {
	tests := []struct {
		method, target string
		want           int
		wantBody       string
	}{
		{"GET", "/tap?max_rps=0", 400, `"max_rps"`},
		{"GET", "/tap?max_rps=20000", 400, `"max_rps"`},
		{"GET", "/tap?verb=GET", 400, `"verb"`},
		{"GET", "/tap?status=6xx", 400, `"status"`},
		{"GET", "/tap?path=nope", 400, `"path"`},
		{"GET", "/tap?method=GET&method=PUT", 400, `"method"`},
		{"GET", "/tap?path=%zz", 400, "malformed query"},
		{"POST", "/tap", 405, "only GET"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			h := &Handler{Hub: New(Options{})}
			r := httptest.NewRequest(tt.method, tt.target, nil)
			r.RemoteAddr = "127.0.0.1:50000"
			rec := serveOnce(h, r)
			if rec.Code != tt.want || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("%d %q, want %d containing %s", rec.Code, rec.Body.String(), tt.want, tt.wantBody)
			}
			if h.Hub.Active() {
				t.Error("a refused request subscribed")
			}
		})
	}
}

func TestStreamReportsDroppedEvents(t *testing.T) {
	hub := New(Options{Buffer: 4})
	sub := subscribe(t, hub, "")
	for range 10 {
		traffic[0].run(hub)
	}
	rec := httptest.NewRecorder()
	st := &stream{sub: sub, enc: tap.NewEncoder(rec), rc: http.NewResponseController(rec), now: time.Now}
	if err := st.batch(nil); err != nil {
		t.Fatal(err)
	}
	dec := tap.NewDecoder(rec.Body, 0)
	var types []tap.Type
	var ev tap.Event
	for dec.Decode(&ev) == nil {
		types = append(types, ev.Type)
	}
	if len(types) != 5 || types[4] != tap.TypeDropped || ev.Count != 26 {
		t.Errorf("stream %v ending with count %d, want 4 events then dropped 26", types, ev.Count)
	}
}

// openStream starts a tap stream against srv and waits until it is subscribed.
func openStream(t *testing.T, ctx context.Context, client *http.Client, srv *httptest.Server, hub *Hub, query string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/tap?"+query, nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	eventually(t, "stream subscribed", hub.Active)
	return res
}

func TestStreamCarriesEventsOverHTTPAndEndsWhenHubCloses(t *testing.T) {
	hub := New(Options{})
	srv := httptest.NewServer(&Handler{Hub: hub})
	defer srv.Close()
	res := openStream(t, t.Context(), srv.Client(), srv, hub, "direction=outbound")
	defer res.Body.Close()
	for _, r := range traffic {
		r.run(hub)
	}
	hub.Close()
	var got []string
	dec := tap.NewDecoder(res.Body, 0)
	for {
		var ev tap.Event
		err := dec.Decode(&ev)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(ev.Type)+" "+ev.Authority)
	}
	want := "request voting.shop:8080,response ,end ,request emoji.other:8080,response ,end ,request unknown:80,end "
	if strings.Join(got, ",") != want {
		t.Errorf("stream %q\nwant   %q", strings.Join(got, ","), want)
	}
}

func TestDisconnectedClientLeavesNothingBehind(t *testing.T) {
	hub := New(Options{})
	srv := httptest.NewServer(&Handler{Hub: hub})
	defer srv.Close()
	transport := &http.Transport{}
	client := &http.Client{Transport: transport}
	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(t.Context())
	var bodies []io.ReadCloser
	for range 3 {
		res := openStream(t, ctx, client, srv, hub, "")
		bodies = append(bodies, res.Body)
	}
	traffic[0].run(hub)
	cancel()
	for _, b := range bodies {
		b.Close()
	}
	transport.CloseIdleConnections()
	eventually(t, "subscriptions removed", func() bool { return !hub.Active() })
	eventually(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}

func TestStreamOutlivesServerTimeouts(t *testing.T) {
	hub := New(Options{})
	srv := httptest.NewUnstartedServer(&Handler{Hub: hub})
	srv.Config.ReadTimeout = 100 * time.Millisecond
	srv.Config.WriteTimeout = 100 * time.Millisecond
	srv.Start()
	defer srv.Close()
	res := openStream(t, t.Context(), srv.Client(), srv, hub, "")
	defer res.Body.Close()
	time.Sleep(300 * time.Millisecond) // past both timeouts
	if !hub.Active() {
		t.Fatal("server timeouts ended the stream")
	}
	traffic[0].run(hub)
	var ev tap.Event
	if err := tap.NewDecoder(res.Body, 0).Decode(&ev); err != nil || ev.Type != tap.TypeRequest {
		t.Errorf("after the timeouts: %+v, %v", ev, err)
	}
}

func TestEncodedStreamIsNDJSON(t *testing.T) {
	hub := New(Options{})
	sub := subscribe(t, hub, "")
	traffic[3].run(hub)
	rec := httptest.NewRecorder()
	st := &stream{sub: sub, enc: tap.NewEncoder(rec), rc: http.NewResponseController(rec), now: time.Now}
	if err := st.batch(nil); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(rec.Body.Bytes(), []byte("\n")), []byte("\n"))
	if len(lines) != 3 {
		t.Fatalf("%d lines: %s", len(lines), rec.Body.Bytes())
	}
	if !bytes.Contains(lines[2], []byte(`"type":"end"`)) || !bytes.Contains(lines[2], []byte(`"grpc_status":14`)) {
		t.Errorf("end line %s", lines[2])
	}
}

// Each tap stream may hold its buffer's worth of memory: past MaxSubscribers a new one is refused with 503
// and counted, and the streams already open keep streaming.
func TestHandlerRefusesStreamsPastTheMost(t *testing.T) {
	var refused atomic.Int32
	hub := New(Options{MaxSubscribers: 2, LimitReached: func(l string) {
		if l == LimitSubscribers {
			refused.Add(1)
		}
	}})
	srv := httptest.NewServer(&Handler{Hub: hub})
	defer srv.Close()
	for range 2 {
		res := openStream(t, t.Context(), srv.Client(), srv, hub, "")
		defer res.Body.Close()
	}
	res, err := srv.Client().Get(srv.URL + "/tap")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "2 tap streams are open") {
		t.Fatalf("third stream: %d %q, want 503 naming the bound", res.StatusCode, body)
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("%s reached %d times, want 1", LimitSubscribers, n)
	}
}
