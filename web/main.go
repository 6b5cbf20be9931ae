// Command web serves the Meshscope dashboard. Its subcommands stat, top and tap
// are the dashboard's terminal twins and take the same backend flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

const usage = `usage: web [serve] [flags]          serve the dashboard (default)
       web stat RESOURCE [flags]      golden metrics as a table (ns, deploy, po)
       web top [RESOURCE] [flags]     live requests aggregated by path
       web tap [RESOURCE] [flags]     live stream of requests
       web install [flags]            print the control plane to kubectl apply
       web check [flags]              what is wrong with Meshscope in the cluster
       web dashboard [flags]          open the cluster's dashboard through a port-forward
       web routes deploy/NAME [flags] a deployment's routes: success, latency, retries, timeouts, splits

Run "web COMMAND --help" for the flags of a command ("web serve --help" for the
dashboard's). Right after "go run ./dev", stat, top and tap find the demo by
themselves (see --demo-file).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(cli(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// cli runs the subcommand named by args[0] (serve when args is empty or starts
// with a flag) and returns the process exit code: 0, 1 for a failure, 2 for bad usage.
func cli(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	name := "serve"
	switch {
	case len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		name = "help"
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		name, args = args[0], args[1:]
	}
	var err error
	switch name {
	case "serve":
		err = serveCmd(ctx, args, stdout, stderr)
	case "stat":
		err = statCmd(ctx, args, stdout, stderr)
	case "top":
		err = topCmd(ctx, args, stdout, stderr)
	case "tap":
		err = tapCmd(ctx, args, stdout, stderr)
	case "install":
		err = installCmd(ctx, args, stdout, stderr)
	case "check":
		err = checkCmd(ctx, args, stdout, stderr)
	case "dashboard":
		err = dashboardCmd(ctx, args, stdout, stderr)
	case "routes":
		err = routesCmd(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "web: unknown command %q\n%s", name, usage)
		return 2
	}
	var usageErr usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usageErr):
		fmt.Fprintf(stderr, "web %s: %v\n", name, err)
		return 2
	default:
		fmt.Fprintf(stderr, "web %s: %v\n", name, err)
		return 1
	}
}

// usageError marks an error in the command line itself (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }
