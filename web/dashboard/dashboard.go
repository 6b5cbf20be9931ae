// Package dashboard opens the in-cluster dashboard on the operator's machine, for `web dashboard`:
// a port-forward through the API server to a ready pod of the dashboard's Service (client-go's
// port-forward, as kubectl port-forward and `linkerd viz dashboard` do), until the context ends.
package dashboard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// Options say what to forward.
type Options struct {
	// Namespace is the control plane's.
	Namespace string
	// Service is the dashboard's Service; its first port is forwarded.
	Service string
	// Address is the local address to listen on; empty means 127.0.0.1, the only address the
	// dashboard's Host check accepts by default besides localhost.
	Address string
	// Port is the local port; zero picks a free one.
	Port int
}

// Forward port-forwards a local port to a ready pod of the dashboard's Service until ctx ends (nil)
// or the connection to the pod is lost (an error). ready is called with the dashboard's URL once
// the local port listens.
func Forward(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, o Options, ready func(url string), errOut io.Writer) error {
	pod, port, err := target(ctx, client, o)
	if err != nil {
		return err
	}
	u := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(o.Namespace).Name(pod).SubResource("portforward").URL()
	dialer, err := dialer(cfg, u)
	if err != nil {
		return err
	}
	addr := o.Address
	if addr == "" {
		addr = "127.0.0.1"
	}
	stop, readyc := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{addr}, []string{strconv.Itoa(o.Port) + ":" + strconv.Itoa(port)}, stop, readyc, io.Discard, errOut)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case err := <-done:
		return fmt.Errorf("port-forward to pod %s/%s: %w", o.Namespace, pod, err)
	case <-readyc:
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		<-done
		return fmt.Errorf("port-forward: no local port: %v", err)
	}
	ready("http://" + hostPort(addr, int(ports[0].Local)) + "/")
	select {
	case <-ctx.Done():
		close(stop)
		<-done
		return nil
	case err := <-done:
		if errors.Is(err, portforward.ErrLostConnectionToPod) {
			return fmt.Errorf("lost the connection to pod %s/%s (restarted?): run web dashboard again", o.Namespace, pod)
		}
		return err
	}
}

func hostPort(addr string, port int) string {
	if addr == "127.0.0.1" || addr == "localhost" {
		addr = "localhost"
	}
	return addr + ":" + strconv.Itoa(port)
}

// dialer upgrades the port-forward request as kubectl does: websockets first (SPDY tunnelled over
// them, Kubernetes 1.31+), SPDY when the server or a proxy on the way refuses the upgrade.
func dialer(cfg *rest.Config, u *url.URL) (httpstream.Dialer, error) {
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return nil, err
	}
	spdyDialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	ws, err := portforward.NewSPDYOverWebsocketDialer(u, cfg)
	if err != nil {
		return nil, err
	}
	return portforward.NewFallbackDialer(ws, spdyDialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	}), nil
}

// target picks the ready pod behind the Service (by name, for a stable choice) and the container
// port its first port targets.
func target(ctx context.Context, client kubernetes.Interface, o Options) (string, int, error) {
	svc, err := client.CoreV1().Services(o.Namespace).Get(ctx, o.Service, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", 0, fmt.Errorf("no service %s in namespace %s: install the control plane (web install | kubectl apply -f -) or give --namespace", o.Service, o.Namespace)
	}
	if err != nil {
		return "", 0, fmt.Errorf("service %s/%s: %w", o.Namespace, o.Service, err)
	}
	if len(svc.Spec.Ports) == 0 || len(svc.Spec.Selector) == 0 {
		return "", 0, fmt.Errorf("service %s/%s has no port or selector", o.Namespace, o.Service)
	}
	pods, err := client.CoreV1().Pods(o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String()})
	if err != nil {
		return "", 0, fmt.Errorf("pods of service %s/%s: %w", o.Namespace, o.Service, err)
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	sp := svc.Spec.Ports[0]
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || !ready(&p) {
			continue
		}
		port, err := containerPort(&p, sp)
		if err != nil {
			return "", 0, err
		}
		return p.Name, port, nil
	}
	return "", 0, fmt.Errorf("no ready pod behind service %s/%s (%d pods): kubectl -n %s get pods -l %s", o.Namespace, o.Service, len(pods.Items), o.Namespace, labels.SelectorFromSet(svc.Spec.Selector))
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// containerPort resolves a Service port's target (a number, a name, or the port itself) in a pod.
func containerPort(p *corev1.Pod, sp corev1.ServicePort) (int, error) {
	switch {
	case sp.TargetPort.IntValue() > 0:
		return sp.TargetPort.IntValue(), nil
	case sp.TargetPort.StrVal != "":
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == sp.TargetPort.StrVal {
					return int(cp.ContainerPort), nil
				}
			}
		}
		return 0, fmt.Errorf("pod %s has no port named %s", p.Name, sp.TargetPort.StrVal)
	default:
		return int(sp.Port), nil
	}
}
