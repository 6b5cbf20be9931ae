package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/dev/kubetest"
)

// meshedPod records in the API server a running pod whose meshscope-proxy container's admin port is
// the real proxy at admin (the pod IP is the proxy's loopback address, so the tap really connects),
// running as ServiceAccount sa (empty: the namespace's default).
func meshedPod(t *testing.T, srv *kubetest.Server, ns, name, deployment, sa, admin string, phase corev1.PodPhase, meshed bool) {
	t.Helper()
	host, portText, _ := net.SplitHostPort(admin)
	port, _ := strconv.Atoi(portText)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"meshscope.io/proxy-deployment": deployment}},
		Spec: corev1.PodSpec{ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
	if meshed {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: kube.ProxyContainer, Image: "proxy",
			Ports: []corev1.ContainerPort{{Name: kube.AdminPortName, ContainerPort: int32(port)}}})
	}
	ctx := context.Background()
	got, err := srv.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Status = corev1.PodStatus{Phase: phase, PodIP: host, PodIPs: []corev1.PodIP{{IP: host}}}
	if _, err := srv.Client.CoreV1().Pods(ns).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Without any Prometheus (its URL refuses connections), `web tap --kubeconfig` finds the deployment's
// proxies among the API server's pods and streams their requests; pods of another deployment, pods
// without a proxy and pods not running are not tapped.
func TestTapFindsProxiesThroughTheAPIServer(t *testing.T) {
	srv := kubetest.Start(t)
	ns := fmt.Sprintf("taptargets-%d", time.Now().UnixNano()%100000)
	if _, err := srv.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bin := buildProxy(t)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	webA := startWorkload(t, bin, ns, "web", "web-a", ok, "")
	webB := startWorkload(t, bin, ns, "web", "web-b", ok, "")
	other := startWorkload(t, bin, ns, "other", "other-a", ok, "")
	meshedPod(t, srv, ns, "web-a", "web", "", webA.Admin, corev1.PodRunning, true)
	meshedPod(t, srv, ns, "web-b", "web", "", webB.Admin, corev1.PodRunning, true)
	meshedPod(t, srv, ns, "other-a", "other", "", other.Admin, corev1.PodRunning, true)
	meshedPod(t, srv, ns, "web-pending", "web", "", "127.0.0.1:1", corev1.PodPending, true)
	meshedPod(t, srv, ns, "web-unmeshed", "web", "", "127.0.0.1:2", corev1.PodRunning, false)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tapCmd(ctx, []string{"--kubeconfig", srv.Kubeconfig, "--prometheus-url", "http://127.0.0.1:1",
			"-n", ns, "deploy/web", "-o", "wide"}, &out, &errOut)
	}()
	for _, w := range []*workload{webA, webB, other} {
		go func() {
			for ctx.Err() == nil {
				if resp, err := http.Get("http://" + w.Inbound + "/from-" + w.Pod); err == nil {
					resp.Body.Close()
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	eventually(t, 60*time.Second, "requests of both web pods tapped", func() error {
		select {
		case err := <-done:
			t.Fatalf("tap ended: %v\n%s", err, errOut.String())
		default:
		}
		s := out.String()
		if !strings.Contains(s, ":path=/from-web-a") || !strings.Contains(s, ":path=/from-web-b") {
			return fmt.Errorf("stdout so far:\n%s\nstderr:\n%s", s, errOut.String())
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tap: %v\n%s", err, errOut.String())
	}
	if s := out.String(); strings.Contains(s, "/from-other-a") {
		t.Errorf("another deployment's proxy was tapped:\n%s", s)
	}
	if s := errOut.String(); strings.Contains(s, "web-pending") || strings.Contains(s, "web-unmeshed") || !strings.Contains(s, "proxy web-a streaming") {
		t.Errorf("want web-a and web-b streaming, a pending or unmeshed pod never tapped; stderr:\n%s", s)
	}
}
