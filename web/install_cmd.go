package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/meshscope/meshscope/web/install"
)

func installCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		o             install.Options
		kf            kubeFlags
		ignoreCluster bool
		replicas      [3]int
		identity      bool
		identityDir   string
	)
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: web install [flags] | kubectl apply -f -

Prints, as YAML to apply, everything Meshscope runs in a cluster: the namespace, the dashboard, the
destination service, the proxy injector (a mutating admission webhook, failurePolicy Ignore, with a
certificate made here and kept in a Secret), the identity service (proxy identity, with a trust
anchor and issuer made here unless --identity-dir), a Prometheus that scrapes every proxy (or none, with
--prometheus-url), and each component's ServiceAccount and least-privilege RBAC. It asks the API
server whether an earlier install left a webhook certificate and an identity issuer, and reuses them,
so installing again prints the same bytes; --ignore-cluster prints without asking (and makes new ones).

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.Namespace, "namespace", install.DefaultNamespace, "the control plane's `namespace`")
	fs.StringVar(&o.Registry, "registry", "meshscope", "image `registry` of the web and proxy images")
	fs.StringVar(&o.Tag, "tag", "v0.1.0", "image `tag` of the web and proxy images")
	fs.StringVar(&o.PrometheusImage, "prometheus-image", "prom/prometheus:v3.5.0", "Prometheus `image`")
	fs.IntVar(&replicas[0], "dashboard-replicas", 1, "dashboard replicas")
	fs.IntVar(&replicas[1], "destination-replicas", 1, "destination service replicas")
	fs.IntVar(&replicas[2], "injector-replicas", 1, "proxy injector replicas")
	fs.StringVar(&o.PrometheusURL, "prometheus-url", "", "your own Prometheus-compatible `URL` (Prometheus, Thanos, Mimir, ...): no Prometheus is installed")
	fs.StringVar(&o.Retention, "prometheus-retention", "6h", "the installed Prometheus keeps samples this long (`duration`)")
	fs.StringVar(&o.RetentionSize, "prometheus-retention-size", "1GB", "and at most this much (`size`)")
	fs.StringVar(&o.GrafanaURL, "grafana-url", "", "Grafana base `URL` the dashboard links to")
	fs.StringVar(&o.BasePath, "dashboard-base-path", "", "serve the dashboard under this URL `prefix` (behind an ingress), e.g. /meshscope")
	fs.StringVar(&o.EnforcedHost, "dashboard-enforced-host", "", "`regex` the dashboard's Host header must match (behind an ingress); default: loopback names, as web dashboard uses")
	fs.BoolVar(&identity, "identity", true, "install the identity service (proxies get certificates and speak mutual TLS); --identity=false leaves it out")
	fs.StringVar(&identityDir, "identity-dir", "", "`directory` with the mesh's ca.crt, issuer.crt and issuer.key (proxy identity --generate writes them); default: reuse the cluster's, else make new ones")
	fs.BoolVar(&ignoreCluster, "ignore-cluster", false, "print without contacting the API server")
	kf.register(fs)
	if err := parseFlags(fs, args, os.Getenv); err != nil {
		return err
	}
	for i, n := range replicas {
		if n < 1 {
			return usageError{fmt.Errorf("--%s %d: want 1 or more", [...]string{"dashboard-replicas", "destination-replicas", "injector-replicas"}[i], n)}
		}
	}
	o.DashboardReplicas, o.DestinationReplicas, o.InjectorReplicas = int32(replicas[0]), int32(replicas[1]), int32(replicas[2])
	if err := o.Validate(); err != nil {
		return usageError{err}
	}
	now := time.Now()
	o.NoIdentity = !identity
	if identityDir != "" && identity {
		var err error
		if o.Identity, err = install.ReadIdentity(identityDir, now); err != nil {
			return usageError{fmt.Errorf("--identity-dir: %w", err)}
		}
	}
	if !ignoreCluster {
		client, _, err := kf.client()
		if err != nil {
			return fmt.Errorf("%w (or --ignore-cluster to print without asking the API server)", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if o.TLS, err = install.ClusterTLS(cctx, client, o.Namespace, now); err != nil {
			return fmt.Errorf("%w (or --ignore-cluster to print without asking the API server)", err)
		}
		if identity && o.Identity == nil {
			if o.Identity, err = install.ClusterIdentity(cctx, client, o.Namespace, now); err != nil {
				return fmt.Errorf("%w (or --ignore-cluster to print without asking the API server)", err)
			}
		}
	}
	if identity && o.Identity == nil {
		var err error
		if o.Identity, err = install.NewIdentity(now); err != nil {
			return err
		}
	}
	if o.TLS == nil {
		var err error
		if o.TLS, err = install.NewTLS(o.Namespace, now); err != nil {
			return err
		}
	}
	out, err := install.Render(o)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
