package iptables

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/meshscope/meshscope/proxy/flagenv"
	"github.com/meshscope/meshscope/proxy/netns"
)

// EnvPrefix starts the environment twin of every `proxy init` flag: MESHSCOPE_PROXY_INIT_PROXY_UID for
// --proxy-uid.
const EnvPrefix = "MESHSCOPE_PROXY_INIT_"

// runTimeout bounds each iptables program: a stuck xtables lock must not hang a pod's start forever.
const runTimeout = 30 * time.Second

// Options is a `proxy init` command line.
type Options struct {
	Config
	// Mode picks the iptables backend: "nft" or "legacy".
	Mode string
	// IPv6 writes ip6tables' nat table instead of iptables'.
	IPv6 bool
	// Simulate prints the rules and changes nothing.
	Simulate bool
	// Netns, when set, is the network namespace to change (a path such as /var/run/netns/NAME).
	Netns string
}

// ParseFlags reads a `proxy init` command line, with environment twins for flags not given. The error is
// one line naming the flag and the problem; flag.ErrHelp after printing the usage to usageOut.
func ParseFlags(args []string, getenv func(string) string, usageOut io.Writer) (Options, error) {
	o := Options{Config: Config{IncomingProxyPort: 4143, OutgoingProxyPort: 4140}, Mode: "nft"}
	fs := flag.NewFlagSet("proxy init", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	portFlag := func(p *uint16, name, usage string) {
		fs.Func(name, usage+fmt.Sprintf(" (default %d)", *p), func(s string) error {
			ports, err := ParsePorts(s)
			if err == nil && (len(ports) != 1 || ports[0].From != ports[0].To) {
				err = fmt.Errorf("%q: want one port", s)
			}
			if err == nil {
				*p = ports[0].From
			}
			return err
		})
	}
	listFlag := func(p *[]PortRange, name, usage string) {
		fs.Func(name, usage, func(s string) (err error) {
			*p, err = ParsePorts(s)
			return err
		})
	}
	portFlag(&o.IncomingProxyPort, "incoming-proxy-port", "`port` of the proxy's inbound listener, where inbound TCP is redirected")
	portFlag(&o.OutgoingProxyPort, "outgoing-proxy-port", "`port` of the proxy's outbound listener, where outbound TCP is redirected")
	fs.IntVar(&o.ProxyUID, "proxy-uid", 2102, "`uid` the proxy runs as: its own connections are not redirected (-1: no such rule)")
	fs.IntVar(&o.ProxyGID, "proxy-gid", -1, "`gid` whose connections are not redirected either (-1: none)")
	listFlag(&o.InboundPortsToIgnore, "inbound-ports-to-ignore", "comma-separated `ports` and ranges (8000-8100) of inbound connections not redirected; 4190,4191 are always added")
	listFlag(&o.OutboundPortsToIgnore, "outbound-ports-to-ignore", "comma-separated `ports` and ranges of outbound connections not redirected")
	listFlag(&o.PortsToRedirect, "ports-to-redirect", "comma-separated inbound `ports` and ranges to redirect; without it, every inbound port but the ignored ones")
	var subnets string
	fs.StringVar(&subnets, "subnets-to-ignore", "", "comma-separated `CIDRs` whose inbound connections are not redirected, e.g. 10.0.0.0/8")
	fs.StringVar(&o.Mode, "iptables-mode", o.Mode, "iptables backend: `nft` (iptables-nft-restore) or legacy (iptables-legacy-restore)")
	fs.BoolVar(&o.IPv6, "ipv6", false, "write ip6tables' nat table instead of iptables'")
	fs.BoolVar(&o.Simulate, "simulate", false, "print the iptables-restore input and change nothing")
	fs.StringVar(&o.Netns, "netns", "", "network namespace `path` to change (e.g. /var/run/netns/NAME) instead of the current one")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			initUsage(fs, usageOut)
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (all settings are --flags; see --help)", fs.Arg(0))
	}
	if err := flagenv.Apply(fs, EnvPrefix, getenv); err != nil {
		return o, err
	}
	var err error
	if o.SubnetsToIgnore, err = ParseSubnets(subnets, o.IPv6); err != nil {
		return o, fmt.Errorf("--subnets-to-ignore: %w", err)
	}
	if o.Mode != "nft" && o.Mode != "legacy" {
		return o, fmt.Errorf("--iptables-mode %q: want nft or legacy", o.Mode)
	}
	if o.ProxyUID < -1 || o.ProxyGID < -1 {
		return o, errors.New("--proxy-uid and --proxy-gid: want an id, or -1 for none")
	}
	if o.IncomingProxyPort == o.OutgoingProxyPort {
		return o, fmt.Errorf("--incoming-proxy-port and --outgoing-proxy-port are both %d: the proxy could not tell inbound from outbound", o.IncomingProxyPort)
	}
	return o, nil
}

// Run applies o's rules with one iptables-restore (printing what it applied to out), or with Simulate
// only prints them.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if o.Simulate {
		_, err := io.WriteString(out, Rules(o.Config, ""))
		return err
	}
	save, restore := o.program("save"), o.program("restore")
	for _, prog := range []string{save, restore} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("%s not found: install iptables (Debian: apt-get install iptables), or pick the other --iptables-mode", prog)
		}
	}
	var input string
	err := netns.Do(o.Netns, func() error {
		current, err := run(ctx, save, nil, "-t", "nat")
		if err != nil {
			return err
		}
		input = Rules(o.Config, current)
		_, err = run(ctx, restore, strings.NewReader(input), "--noflush")
		return err
	})
	if err != nil {
		return err
	}
	_, err = io.WriteString(out, input)
	return err
}

// program names the backend's binary: iptables-nft-restore, ip6tables-legacy-save, ...
func (o Options) program(verb string) string {
	family := "iptables"
	if o.IPv6 {
		family = "ip6tables"
	}
	return family + "-" + o.Mode + "-" + verb
}

// run runs prog and returns its output; its error is one line: missing privilege said as such, else the
// program's own first line.
func run(ctx context.Context, prog string, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.String(), nil
	}
	msg, _, _ := strings.Cut(strings.TrimSpace(stderr.String()), "\n")
	if msg == "" {
		msg = err.Error()
	}
	if ctx.Err() != nil {
		msg = fmt.Sprintf("gave up after %v (%s)", runTimeout, msg)
	}
	if strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted") {
		return "", fmt.Errorf("no privilege to change iptables: run as root or with CAP_NET_ADMIN and CAP_NET_RAW (%s: %s)", prog, msg)
	}
	return "", fmt.Errorf("%s: %s", prog, msg)
}

func initUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, `Usage: proxy init [flags]

The sidecar's init container: it writes the nat-table rules that send every TCP connection into and out
of this network namespace (a pod) through the proxy, with one iptables-restore --noflush, so that an
unmodified app is meshed without knowing it.

  PREROUTING -> %[1]s: inbound TCP, except ignored ports and subnets, to --incoming-proxy-port
  OUTPUT     -> %[2]s: outbound TCP, except the proxy's own (--proxy-uid/--proxy-gid), loopback and
                ignored ports, to --outgoing-proxy-port

It rewrites only those two chains and the jumps to them: running it again leaves the table as it was. The
proxy, run as --proxy-uid without --inbound-forward, sends each connection where it was going.

Every flag has an environment twin, %[3]s<FLAG IN UPPER SNAKE CASE> (e.g. %[3]sPROXY_UID);
a flag on the command line wins over its twin.

Flags:
`, RedirectChain, OutputChain, EnvPrefix)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprint(w, `
Example:
  proxy init --incoming-proxy-port 4143 --outgoing-proxy-port 4140 --proxy-uid 2102 --inbound-ports-to-ignore 4190,4191
`)
}
