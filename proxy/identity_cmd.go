package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"golang.org/x/time/rate"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/proxy/identity"
)

func init() { subcommands["identity"] = identityMain }

// identityMain is `proxy identity`: the mesh's certificate issuer, or with --generate the maker of its
// trust anchor and issuer files.
func identityMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("proxy identity", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	generate := fs.Bool("generate", false, "write a new issuer certificate and key into --dir, signed by the trust anchor there (ca.crt, ca.key), which is first created when --dir has none; then exit. Run again on the same directory to rotate the issuer")
	dir := fs.String("dir", ".", "`directory` of ca.crt, issuer.crt and issuer.key (the default of the three flags below)")
	anchors := fs.String("trust-anchors", "", "trust anchor bundle, PEM: one or two root certificates (default DIR/ca.crt)")
	issuerCert := fs.String("issuer-cert", "", "issuer certificate, PEM, chaining to a trust anchor (default DIR/issuer.crt); re-read when it changes")
	issuerKey := fs.String("issuer-key", "", "issuer private key, PEM (default DIR/issuer.key); re-read when it changes")
	listen := fs.String("listen", "0.0.0.0:8080", "`address` to serve proxies' certificate requests on (HTTPS)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig `file` of the API server that reviews ServiceAccount tokens (default: the in-cluster configuration)")
	tokenFile := fs.String("token-file", "", "outside a cluster: a YAML `file` of tokens and the ServiceAccounts they prove, reviewed instead of the API server (the demo's launcher writes it)")
	lifetime := fs.Duration("lifetime", identity.DefaultLifetime, "how long the certificates issued are valid")
	perSecond := fs.Float64("rate", 50, "certificates signed per second at most (a burst of twice as many is let through); more are answered 429")
	poll := fs.Duration("reload-interval", 5*time.Second, "how often the issuer files are checked for a rotation")
	var level slog.Level
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			identityUsage(fs, stdout)
			return err
		}
		return usageError{oneLine(err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))}
	}
	if *generate {
		written, err := identity.Generate(*dir, time.Now())
		if err != nil {
			return err
		}
		for _, w := range written {
			fmt.Fprintln(stdout, w)
		}
		return nil
	}
	orDefault := func(v, file string) string {
		if v == "" {
			return filepath.Join(*dir, file)
		}
		return v
	}
	if *kubeconfig != "" && *tokenFile != "" {
		return usageError{errors.New("--kubeconfig and --token-file exclude each other: tokens are reviewed by the API server or by the file")}
	}
	if *lifetime < time.Minute {
		return usageError{fmt.Errorf("--lifetime %v: want at least 1m", *lifetime)}
	}
	if *perSecond <= 0 || *poll <= 0 {
		return usageError{errors.New("--rate and --reload-interval must be positive")}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("component", "identity")

	pool, _, err := meshid.LoadTrustAnchors(orDefault(*anchors, identity.TrustAnchorsFile))
	if err != nil {
		return fmt.Errorf("--trust-anchors: %w", err)
	}
	issuer, err := identity.NewIssuer(orDefault(*issuerCert, identity.IssuerCertFile), orDefault(*issuerKey, identity.IssuerKeyFile), pool)
	if err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	issuer.Lifetime = *lifetime
	var reviewer identity.TokenReviewer
	if *tokenFile != "" {
		reviewer = &identity.FileReviewer{Path: *tokenFile}
	} else {
		client, _, err := kube.Client(*kubeconfig, "meshscope-identity")
		if err != nil {
			return err
		}
		reviewer = identity.KubeReviewer{Client: client}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, errors.Unwrap(err))
	}
	c := issuer.Certificate()
	log.Info("issuing certificates", "addr", ln.Addr().String(), "issuer", c.Subject.CommonName, "issuer_expires", c.NotAfter.UTC().Format(time.RFC3339), "lifetime", *lifetime)
	svc := &identity.Service{Issuer: issuer, Reviewer: reviewer, Limiter: rate.NewLimiter(rate.Limit(*perSecond), int(2**perSecond)+1), Log: log}
	return svc.Serve(ctx, ln, *poll)
}

func identityUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, `Usage: proxy identity [flags]

The mesh's certificate issuer. A proxy sends a certificate request with its ServiceAccount token; the issuer
has the token reviewed (a Kubernetes TokenReview for the audience %s, or --token-file outside
a cluster) and signs a certificate, valid --lifetime, for the identity the token proves:
<serviceaccount>.<namespace>.serviceaccount.%s, and for no other name.

Trust: a trust anchor (root, ca.crt, up to two roots in the bundle) signs the issuer (issuer.crt and
issuer.key), which signs workload certificates. --generate makes them for a new mesh; bring-your-own PEM
files work the same. Rotating the issuer: write new issuer files (--generate again on the same directory
does) and the running issuer switches to them within --reload-interval; proxies keep their certificates
and trust, since both issuers chain to the same root.

Flags:
`, meshid.Audience, meshid.TrustDomain)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprint(w, `
Examples:
  proxy identity --generate --dir ./identity
  proxy identity --dir ./identity --token-file tokens.yaml --listen 127.0.0.1:8080
`)
}
