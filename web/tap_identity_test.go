package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
	"github.com/meshscope/meshscope/dev/kubetest"
)

// In a mesh with identity (the real issuer, `proxy identity`, having ServiceAccount tokens reviewed by the
// real API server), the dashboard holds its own ServiceAccount's identity and taps a real proxy over
// mutual TLS, without any token (the proxy's --tap-token is one the dashboard does not know, so a plain
// tap would get 401). A "proxy" whose certificate, valid in this mesh, names another ServiceAccount than
// its pod's is never sent the tap request: the live view says why and
// meshscope_web_tap_refused_total{reason="identity_mismatch"} counts it.
func TestLiveTapOverMutualTLS(t *testing.T) {
	srv := kubetest.Start(t)
	ctx := t.Context()
	ns := fmt.Sprintf("taptls-%d", time.Now().UnixNano()%100000)
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := func(sa string) string {
		t.Helper()
		if _, err := srv.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := srv.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{meshid.Audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, sa+".token")
		if err := os.WriteFile(path, []byte(tr.Status.Token), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	bin := buildProxy(t)
	trust := t.TempDir()
	if out, err := exec.Command(bin, "identity", "--generate", "--dir", trust).CombinedOutput(); err != nil {
		t.Fatalf("proxy identity --generate: %v\n%s", err, out)
	}
	anchors := filepath.Join(trust, "ca.crt")
	issuer := freeAddr(t)
	startProcess(t, "issuer", bin, "identity", "--dir", trust, "--kubeconfig", srv.Kubeconfig, "--listen", issuer)

	// The proxy of pod web-a, ServiceAccount web, which lets the dashboard's identity tap.
	web := startWorkload(t, bin, ns, "web", "web-a", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }), "",
		"--identity-addr", issuer, "--identity-trust-anchors", anchors, "--identity-token-file", tokenFile("web"),
		"--tap-client-identity", meshid.Name(ns, kube.Dashboard), "--tap-token", "not-the-dashboards")
	meshedPod(t, srv, ns, "web-a", "web", "web", web.Admin, corev1.PodRunning, true)

	// Pod web-b says it runs as web too, but what answers at its admin port holds the certificate of
	// ServiceAccount other: issued by this mesh, valid, and not web's.
	pool, _, err := meshid.LoadTrustAnchors(anchors)
	if err != nil {
		t.Fatal(err)
	}
	otherID, err := meshid.NewClient(meshid.ClientConfig{Addr: issuer, Anchors: pool, TokenFile: tokenFile("other")})
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := otherID.Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var impostorAsked atomic.Int64
	impostor := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		impostorAsked.Add(1)
		w.Header().Set("Content-Type", tap.ContentType)
		w.WriteHeader(http.StatusOK)
	}))
	impostor.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*otherCert}}
	impostor.StartTLS()
	t.Cleanup(impostor.Close)
	meshedPod(t, srv, ns, "web-b", "web", "web", impostor.Listener.Addr().String(), corev1.PodRunning, true)

	base := startDashboard(t, config{PrometheusURL: "http://127.0.0.1:1", TapTargets: "kubernetes", Kubeconfig: srv.Kubeconfig,
		IdentityAddr: issuer, IdentityTrustAnchors: anchors, IdentityTokenFile: tokenFile(kube.Dashboard)})

	trafficCtx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	go func() {
		for trafficCtx.Err() == nil {
			if resp, err := http.Get("http://" + web.Inbound + "/over-mtls"); err == nil {
				resp.Body.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	wsCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	host := strings.TrimPrefix(base, "http://")
	c, _, err := websocket.Dial(wsCtx, "ws://"+host+"/api/v1/tap/ws?namespace="+ns, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {base}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	var tapped bool
	var refusal string
	var seen []string
	for !tapped || refusal == "" {
		_, data, err := c.Read(wsCtx)
		if err != nil {
			t.Fatalf("live socket: %v; statuses so far: %q", err, seen)
		}
		var frame liveFrame
		if err := json.Unmarshal(data, &frame); err != nil {
			t.Fatal(err)
		}
		for _, e := range frame.Events {
			if e.Proxy == "web-a" && e.Event.Path == "/over-mtls" {
				tapped = true
			}
		}
		for _, st := range frame.Status {
			seen = append(seen, fmt.Sprintf("%s %s %s", st.Proxy, st.State, st.Error))
			// Until the dashboard's own certificate comes, it cannot tap, and says so.
			if st.Proxy == "web-a" && st.State != "streaming" && !strings.Contains(st.Error, "no identity certificate yet") {
				t.Errorf("web-a, the real proxy: %s %s", st.State, st.Error)
			}
			if st.Proxy == "web-b" && st.State == "failed" && !strings.Contains(st.Error, "no identity certificate yet") {
				refusal = st.Error
			}
		}
	}
	if want := meshid.Name(ns, "web"); !strings.Contains(refusal, "does not prove "+want) {
		t.Errorf("web-b's refusal says %q, want it to name the identity expected, %s", refusal, want)
	}
	if n := impostorAsked.Load(); n != 0 {
		t.Errorf("the impostor received %d tap requests, want none", n)
	}
	_, _, body := getBody(t, base+"/metrics")
	if !regexp.MustCompile(`(?m)^meshscope_web_tap_refused_total\{reason="identity_mismatch"\} [1-9]`).MatchString(body) {
		t.Errorf("meshscope_web_tap_refused_total has no identity_mismatch refusal:\n%s", grepLines(body, "tap_refused"))
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
