package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/proxy/inject"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const injectUsage = `usage: proxy inject [flags] FILE|DIR|- ...
       proxy inject --webhook [flags]

Adds the Meshscope proxy to every pod template in Kubernetes manifests (Pod, Deployment, StatefulSet,
DaemonSet, ReplicaSet, Job, CronJob, and Lists of them) read from files, directories (their .yaml,
.yml and .json files) or - for stdin, and writes them to stdout: "proxy inject app.yaml | kubectl
apply -f -". Each pod gets "proxy init" as its first init container (NET_ADMIN, NET_RAW) and the
proxy (uid 2102) as a native sidecar, an init container with restartPolicy Always (Kubernetes 1.29+),
or with --sidecar=classic as its first container. Templates annotated config.meshscope.io/opaque-ports,
skip-inbound-ports, skip-outbound-ports or proxy-log-level shape their proxy. Injecting twice is
injecting once; --uninject takes the proxy out again. Templates with hostNetwork, meshed by Linkerd
or Istio, or annotated meshscope.io/inject: disabled are left alone, each with its reason on stderr.
Documents without a pod template are written as they came.

With --webhook it is instead the mutating admission webhook that "web install" deploys: it injects
pods of namespaces or pod templates annotated meshscope.io/inject: enabled as they are created.

`

func injectCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		cfg        inject.Config
		sidecar    string
		uninject   bool
		webhook    bool
		listen     string
		tlsDir     string
		kubeconfig string
		anchors    string
	)
	fs := flag.NewFlagSet("proxy inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), injectUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Image, "image", inject.DefaultImage, "the proxy's `image` (also its init container)")
	fs.StringVar(&sidecar, "sidecar", string(inject.Native), "`native` (init container with restartPolicy Always) or classic (first container)")
	fs.StringVar(&cfg.DestinationAddr, "destination-addr", inject.DefaultDestinationAddr, "the discovery service's `host:port` the proxies use")
	fs.StringVar(&cfg.IdentityAddr, "identity-addr", "", "the identity service's `host:port` (web install runs meshscope-identity.meshscope.svc.cluster.local:8080); empty: the proxies run without identity")
	fs.StringVar(&anchors, "identity-trust-anchors", "", "PEM `file` of the mesh's trust anchors, required with --identity-addr (kubectl -n meshscope get cm meshscope-identity-trust-anchors -o jsonpath='{.data.ca\\.crt}')")
	fs.StringVar(&cfg.TapClientIdentity, "tap-client-identity", "", "with --identity-addr, the `identity` the proxies let tap over mutual TLS: the dashboard's (web install passes meshscope-dashboard in its namespace); empty: the proxy's default, "+meshid.Name(kube.Namespace, kube.Dashboard))
	fs.BoolVar(&uninject, "uninject", false, "take the proxy out instead")
	fs.BoolVar(&webhook, "webhook", false, "serve the admission webhook instead of reading manifests")
	fs.StringVar(&listen, "listen", "0.0.0.0:8443", "webhook: `address` to serve on")
	fs.StringVar(&tlsDir, "tls-dir", "/var/run/meshscope/tls", "webhook: `directory` with tls.crt and tls.key")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "webhook: kubeconfig `path`; empty: the in-cluster configuration")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return usageError{err}
	}
	cfg.Sidecar = inject.Sidecar(sidecar)
	if anchors != "" {
		b, err := os.ReadFile(anchors)
		if err != nil {
			return usageError{fmt.Errorf("--identity-trust-anchors: %w", err)}
		}
		cfg.TrustAnchors = b
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	if webhook {
		if fs.NArg() > 0 {
			return usageError{fmt.Errorf("--webhook takes no files, got %q", fs.Arg(0))}
		}
		return serveWebhook(ctx, cfg, listen, tlsDir, kubeconfig, stderr)
	}
	if fs.NArg() == 0 {
		return usageError{fmt.Errorf("name the manifests to inject: files, directories or - for stdin")}
	}
	in, err := inject.Sources(fs.Args(), os.Stdin)
	if err != nil {
		return err
	}
	mode := inject.Inject
	if uninject {
		mode = inject.Remove
	}
	reports, err := cfg.Manifests(in, stdout, mode)
	for _, r := range reports {
		verb := "injected"
		if mode == inject.Remove {
			verb = "uninjected"
		}
		if r.Done {
			fmt.Fprintf(stderr, "%s %s\n", r.Object, verb)
		} else {
			fmt.Fprintln(stderr, r)
		}
	}
	return err
}

func serveWebhook(ctx context.Context, cfg inject.Config, listen, tlsDir, kubeconfig string, stderr io.Writer) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "tls.crt"), filepath.Join(tlsDir, "tls.key"))
	if err != nil {
		return fmt.Errorf("--tls-dir: %w", err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	log.Info("admission webhook serving", "addr", ln.Addr().String())
	h := &inject.Webhook{Config: cfg, Log: log, NamespaceAnnotations: namespaceAnnotations(client)}
	return h.Serve(ctx, ln, cert)
}

// namespaceAnnotations reads a namespace's annotations from the API server, within the webhook's
// own deadline so that a slow API server cannot hold a Pod's creation.
func namespaceAnnotations(client kubernetes.Interface) func(context.Context, string) (map[string]string, error) {
	return func(ctx context.Context, name string) (map[string]string, error) {
		ns, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return ns.Annotations, nil
	}
}
