package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/web/check"
	"github.com/meshscope/meshscope/web/install"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// errChecksFailed makes `web check` exit 1 after it has printed every result.
var errChecksFailed = errors.New("some checks failed")

func checkCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		kf            kubeFlags
		namespace     string
		prometheusURL string
		output        string
		timeout       time.Duration
	)
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: web check [flags]

Checks Meshscope in a cluster, in order: the API server is reachable and recent enough (native
sidecars), the control plane's pods are ready, the API server calls the injector (a dry-run pod asking
for injection comes back with a proxy), every running pod that asks for injection has its proxy, every
meshed pod's proxy is ready, and Prometheus scrapes every
meshed pod's proxy. Each prints ok or a one-line cause and a hint; the exit code is 1 when any fails.
The installed Prometheus is reached through the API server's service proxy unless --prometheus-url.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&namespace, "namespace", install.DefaultNamespace, "the control plane's `namespace`")
	fs.StringVar(&prometheusURL, "prometheus-url", "", "Prometheus `URL` to ask for the proxies' targets (default: the installed one, through the API server)")
	fs.StringVar(&output, "o", "text", "output `format`: text or json")
	fs.DurationVar(&timeout, "timeout", 15*time.Second, "bound on each check")
	kf.register(fs)
	if err := parseFlags(fs, args, os.Getenv); err != nil {
		return err
	}
	if output != "text" && output != "json" {
		return usageError{fmt.Errorf("-o %q: want text or json", output)}
	}
	client, cfg, err := kf.client()
	if err != nil {
		return err
	}
	c := &check.Checker{Client: client, Namespace: namespace, Timeout: timeout}
	if c.Prometheus, c.PrometheusVia, err = prometheusTargets(ctx, cfg, client, namespace, prometheusURL, timeout); err != nil {
		return err
	}
	results := c.Run(ctx)
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			mark := map[check.Status]string{check.OK: "ok  ", check.Fail: "FAIL", check.Skip: "skip"}[r.Status]
			fmt.Fprintf(stdout, "%s %-28s %s\n", mark, r.Name, r.Detail)
			if r.Hint != "" {
				fmt.Fprintf(stdout, "     %-28s hint: %s\n", "", r.Hint)
			}
		}
	}
	for _, r := range results {
		if r.Status == check.Fail {
			return errChecksFailed
		}
	}
	return nil
}

// prometheusTargets returns what asks Prometheus for its targets, and how it reaches it: the given
// URL, else the installed Prometheus through the API server's service proxy (authenticated as the
// kubeconfig's user), else nil when none is installed or the API server cannot say (its own check
// reports that).
func prometheusTargets(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, namespace, url string, timeout time.Duration) (check.Targets, string, error) {
	if url != "" {
		q, err := api.Dial(url, api.Options{Timeout: timeout})
		return q, url, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := client.AppsV1().Deployments(namespace).Get(cctx, kube.Prometheus, metav1.GetOptions{}); err != nil {
		return nil, "", nil
	}
	transport, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, "", err
	}
	proxy := strings.TrimSuffix(cfg.Host, "/") + "/api/v1/namespaces/" + namespace + "/services/http:" + kube.Prometheus + ":" + strconv.Itoa(install.PrometheusPort) + "/proxy"
	q, err := api.Dial(proxy, api.Options{Timeout: timeout, Transport: transport})
	return q, "service " + namespace + "/" + kube.Prometheus + " through the API server", err
}
