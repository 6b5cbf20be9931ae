package api

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
)

// KubeProxies finds the proxies to tap through the Kubernetes API server instead of the metrics
// backend's targets, which scale-out backends (Mimir, Cortex, Thanos Receive, VictoriaMetrics cluster)
// do not serve: every running pod with a meshscope-proxy container, tapped on the container's port named
// meshscope-admin. Its RBAC is list on pods (kube.ClusterRules' Dashboard).
type KubeProxies struct {
	Client kubernetes.Interface
	// Timeout bounds one listing; zero means 10s.
	Timeout time.Duration
}

// FindProxies lists the meshed pods sel picks (in sel.Namespace only, when set), labelled as the
// Prometheus scrape configuration labels their targets: namespace, deployment (from the injector's
// workload label), pod; each with the identity its proxy proves, its ServiceAccount's.
func (k KubeProxies) FindProxies(ctx context.Context, sel Selector) ([]Proxy, error) {
	timeout := k.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// ResourceVersion 0: served from the API server's watch cache, not a quorum read of etcd.
	pods, err := k.Client.CoreV1().Pods(sel.Namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return nil, fmt.Errorf("list meshed pods: %w", err)
	}
	var out []Proxy
	for i := range pods.Items {
		pod := &pods.Items[i]
		admin := adminAddr(pod)
		if admin == "" {
			continue
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default" // what the API server admits a pod without one with
		}
		p := Proxy{Namespace: pod.Namespace, Pod: pod.Name, Admin: admin, Identity: meshid.Name(pod.Namespace, sa)}
		for _, l := range kube.WorkloadLabels {
			if v := pod.Labels[l]; v != "" && p.Deployment == "" {
				p.Deployment = v
			}
		}
		if sel.matches(p) {
			out = append(out, p)
		}
	}
	sortProxies(out)
	return out, nil
}

// adminAddr is a running pod's proxy admin address, or "" when it has none to tap.
func adminAddr(pod *corev1.Pod) string {
	if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" || pod.DeletionTimestamp != nil {
		return ""
	}
	for _, c := range pod.Spec.Containers {
		if c.Name != kube.ProxyContainer {
			continue
		}
		for _, port := range c.Ports {
			if port.Name == kube.AdminPortName {
				return net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port.ContainerPort)))
			}
		}
	}
	return ""
}
