// Package kube is what Meshscope's components share to talk to the Kubernetes API: loading a kubeconfig
// or the in-cluster configuration, the RBAC rules each component is granted, and the Prometheus scrape
// configuration that finds proxies through the API server.
package kube

import (
	"errors"
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns the API server configuration of a component: from the kubeconfig file at path, or,
// when path is empty, the in-cluster configuration of the pod's ServiceAccount. userAgent names the
// component in the API server's audit log and metrics. The error is one line saying what to fix.
func Config(path, userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if path != "" {
		if _, statErr := os.Stat(path); statErr != nil {
			return nil, fmt.Errorf("kubeconfig: %w", statErr)
		}
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
	} else {
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, errors.New("not running in a cluster (KUBERNETES_SERVICE_HOST unset): give --kubeconfig")
		}
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
	}
	// No client-wide Timeout: it would cut the informers' long-lived watches. Callers bound their own
	// requests with a context deadline.
	cfg.UserAgent = userAgent
	return cfg, nil
}

// Client returns a clientset for Config(path, userAgent).
func Client(path, userAgent string) (kubernetes.Interface, *rest.Config, error) {
	cfg, err := Config(path, userAgent)
	if err != nil {
		return nil, nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, cfg, nil
}
