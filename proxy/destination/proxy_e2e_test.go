package destination_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshscope/meshscope/proxy/destination"
	"github.com/meshscope/meshscope/proxy/netns"
	"github.com/meshscope/meshscope/proxy/netns/netnstest"
)

// buildProxy builds the proxy binary once per test run.
var buildProxy = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "meshscope-destination-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "proxy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/meshscope/meshscope/proxy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build proxy: %v: %s", err, out)
	}
	return bin, nil
})

// A real proxy in a network namespace standing in for a pod: its app calls a Service by its short name
// through the outbound listener; the discovery service (listening inside the namespace, watching the
// real API server from outside it) tells the proxy which pods are behind it. The pods' IPs are
// addresses on the namespace's loopback, so calls really connect (the API server refuses loopback
// addresses in EndpointSlices).
func TestProxyRoutesByAuthorityThroughDiscovery(t *testing.T) {
	netnstest.Require(t)
	c := newCluster(t)
	const nsName = "msdisc"
	path := netnstest.Add(t, nsName)
	podA, podB := "10.251.0.2", "10.251.0.3"
	for _, ip := range []string{podA, podB} {
		netnstest.IP(t, "-n", nsName, "addr", "add", ip+"/32", "dev", "lo")
	}
	inNS := func(f func() error) {
		t.Helper()
		if err := netns.Do(path, f); err != nil {
			t.Fatal(err)
		}
	}
	// The pods' apps answer with their pod's name.
	for ip, name := range map[string]string{podA: "web-7d9f-a", podB: "web-7d9f-b"} {
		var ln net.Listener
		inNS(func() (err error) { ln, err = net.Listen("tcp", ip+":8080"); return err })
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	rs := c.replicaSet("web", "web-7d9f")
	c.pod(podSpec{name: "web-7d9f-a", ip: podA, owner: &rs})
	c.pod(podSpec{name: "web-7d9f-b", ip: podB, owner: &rs})
	c.service("web", "", nil, httpPort...)
	c.slice("web", "web-1", httpPort, epSpec{ip: podA, pod: "web-7d9f-a"})

	// The discovery service, reachable from the namespace's loopback.
	srv, err := destination.NewServer(c.client, destination.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var dln net.Listener
	inNS(func() (err error) { dln, err = net.Listen("tcp", "127.0.0.1:0"); return err })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go srv.Run(ctx)
	hs := destination.NewHTTPServer(srv.Handler(), nil)
	go hs.Serve(dln)
	t.Cleanup(func() { hs.Close() })

	// The proxy, configured as the injector does: its namespace and pod from the downward API's env.
	bin, err := buildProxy()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--inbound-listen", "", "--outbound-listen", "127.0.0.1:4140", "--admin-listen", "127.0.0.1:4191")
	cmd.Env = append(os.Environ(), "MESHSCOPE_PROXY_DESTINATION_ADDR="+dln.Addr().String(),
		"MESHSCOPE_PROXY_NAMESPACE="+c.ns, "MESHSCOPE_PROXY_POD=client-0")
	logs, _ := cmd.StderrPipe()
	inNS(cmd.Start)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			t.Logf("proxy: %s", sc.Text())
		}
	}()
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })

	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = netns.Do(path, func() error { conn, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
			return conn, err
		}}}
	call := func(host string) string {
		req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:4140/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	metrics := func() string {
		resp, err := client.Get("http://127.0.0.1:4191/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	eventually(t, "the proxy answers", func() bool {
		resp, err := client.Get("http://127.0.0.1:4191/ready")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})

	if got := call("web"); got != "200 web-7d9f-a" {
		t.Fatalf("call web: %s", got)
	}
	series := func(authority, pod string) map[string]string {
		return map[string]string{"authority": authority, "direction": "outbound", "dst_deployment": "web", "dst_namespace": c.ns, "dst_pod": pod}
	}
	hasRequests := func(want map[string]string) {
		t.Helper()
		m := metrics()
		if !hasSeries(t, m, "request_total", want) {
			t.Fatalf("no request_total series with %v in:\n%s", want, grep(m, "request_total"))
		}
	}
	hasRequests(series("web:80", "web-7d9f-a"))

	// The Service's endpoint moves to pod b: the proxy follows without a restart.
	c.slice("web", "web-1", httpPort, epSpec{ip: podB, pod: "web-7d9f-b"})
	eventually(t, "calls reach pod b", func() bool { return call("web."+c.ns+".svc.cluster.local") == "200 web-7d9f-b" })
	hasRequests(series("web."+c.ns+".svc.cluster.local:80", "web-7d9f-b"))
	// A pod IP is labelled too; an authority the cluster does not know is dialled as written.
	if got := call(podA + ":8080"); got != "200 web-7d9f-a" {
		t.Fatalf("call pod a by IP: %s", got)
	}
	hasRequests(series(podA+":8080", "web-7d9f-a"))
}

// hasSeries reports whether the exposition text has a sample of family name whose labels include want.
func hasSeries(t *testing.T, text, name string, want map[string]string) bool {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
next:
	for _, m := range families[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return true
	}
	return false
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
