package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/web/dashboard"
	"github.com/meshscope/meshscope/web/install"
	browserpkg "github.com/pkg/browser"
)

func dashboardCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		kf   kubeFlags
		o    = dashboard.Options{Service: kube.Dashboard}
		show string
	)
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: web dashboard [flags]

Opens the dashboard running in the cluster: port-forwards a local port through the API server to a
ready pod of the meshscope-dashboard Service (as kubectl port-forward does), prints its URL and opens
it in the browser. Ctrl-C stops the port-forward.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.Namespace, "namespace", install.DefaultNamespace, "the control plane's `namespace`")
	fs.StringVar(&o.Address, "address", "127.0.0.1", "local `address` to listen on")
	fs.IntVar(&o.Port, "port", 50750, "local `port`; 0 picks a free one")
	fs.StringVar(&show, "show", "browser", "`browser`: print the URL and open it; url: only print it")
	kf.register(fs)
	if err := parseFlags(fs, args, os.Getenv); err != nil {
		return err
	}
	if show != "browser" && show != "url" {
		return usageError{fmt.Errorf("--show %q: want browser or url", show)}
	}
	if o.Port < 0 || o.Port > 65535 {
		return usageError{fmt.Errorf("--port %d: want 0 to 65535", o.Port)}
	}
	client, cfg, err := kf.client()
	if err != nil {
		return err
	}
	return dashboard.Forward(ctx, cfg, client, o, func(url string) {
		fmt.Fprintf(stdout, "Meshscope dashboard available at:\n%s\n", url)
		if show == "browser" {
			browserpkg.Stdout, browserpkg.Stderr = io.Discard, io.Discard
			if err := browserpkg.OpenURL(url); err != nil {
				fmt.Fprintf(stderr, "could not open a browser (%v): open the URL above\n", err)
			}
		}
	}, stderr)
}
