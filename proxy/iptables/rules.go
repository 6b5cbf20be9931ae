// Package iptables is `proxy init`: the nat-table rules that send a pod's TCP connections through its
// proxy, as data, and the one iptables-restore that applies them.
//
// PREROUTING jumps to MESHSCOPE_INIT_REDIRECT, which returns for ignored inbound ports and source subnets
// and redirects every other inbound TCP connection (or only --ports-to-redirect) to the proxy's incoming
// port. OUTPUT jumps to MESHSCOPE_INIT_OUTPUT, which returns for the proxy's own connections (its uid, and
// gid when given: else they would come back to it forever), for loopback (the pod talking to itself) and
// for ignored outbound ports, and redirects every other TCP connection to the proxy's outgoing port. The
// proxy reads where each connection was going with SO_ORIGINAL_DST.
package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The chains proxy init owns; it rewrites these and its jumps to them, nothing else.
const (
	RedirectChain = "MESHSCOPE_INIT_REDIRECT"
	OutputChain   = "MESHSCOPE_INIT_OUTPUT"
)

// AlwaysIgnoredInbound are the inbound ports never redirected: the proxy's admin port (4191, metrics and
// probes must reach it whatever the proxy's state) and 4190, which Linkerd keeps for its control port.
var AlwaysIgnoredInbound = []PortRange{{4190, 4190}, {4191, 4191}}

// maxMultiport is how many ports one multiport match takes; a range counts as two (iptables-extensions).
const maxMultiport = 15

// PortRange is a port or an inclusive range of ports.
type PortRange struct{ From, To uint16 }

func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d:%d", r.From, r.To)
}

// Config is what the rules depend on.
type Config struct {
	// IncomingProxyPort receives redirected inbound connections (the proxy's inbound listener).
	IncomingProxyPort uint16
	// OutgoingProxyPort receives redirected outbound connections (the proxy's outbound listener).
	OutgoingProxyPort uint16
	// ProxyUID is the user the proxy runs as: its connections are never redirected. Negative: no such rule.
	ProxyUID int
	// ProxyGID, when not negative, is a group whose connections are never redirected either.
	ProxyGID int
	// InboundPortsToIgnore are destination ports of inbound connections left alone (AlwaysIgnoredInbound
	// is added by Rules).
	InboundPortsToIgnore []PortRange
	// OutboundPortsToIgnore are destination ports of outbound connections left alone.
	OutboundPortsToIgnore []PortRange
	// PortsToRedirect, when not empty, are the only inbound destination ports redirected.
	PortsToRedirect []PortRange
	// SubnetsToIgnore are sources whose inbound connections are left alone.
	SubnetsToIgnore []netip.Prefix
}

// Rules returns the iptables-restore input (for `iptables-restore --noflush`) that installs cfg's rules in
// the nat table. current is the nat table as iptables-save prints it, empty when it has none of ours:
// declaring the two chains empties them, and a jump to them already in PREROUTING or OUTPUT is kept
// (and any duplicate of it deleted) rather than added again, so that applying the result twice leaves the
// table as once.
func Rules(cfg Config, current string) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n", RedirectChain, OutputChain)
	rule := func(chain, match, comment, target string) {
		b.WriteString("-A " + chain)
		if match != "" {
			b.WriteString(" " + match)
		}
		fmt.Fprintf(&b, " -m comment --comment %q -j %s\n", "meshscope-init: "+comment, target)
	}

	// Callers (the injector) may name 4190,4191 themselves, as Linkerd's do: list each port once.
	inbound := append([]PortRange(nil), AlwaysIgnoredInbound...)
	for _, r := range cfg.InboundPortsToIgnore {
		if !slices.Contains(inbound, r) {
			inbound = append(inbound, r)
		}
	}
	for _, ports := range multiports(inbound) {
		rule(RedirectChain, "-p tcp -m multiport --dports "+ports, "skip inbound ports "+ports, "RETURN")
	}
	for _, subnet := range cfg.SubnetsToIgnore {
		rule(RedirectChain, "-s "+subnet.String(), "skip inbound from "+subnet.String(), "RETURN")
	}
	toIn := fmt.Sprintf("REDIRECT --to-ports %d", cfg.IncomingProxyPort)
	if len(cfg.PortsToRedirect) == 0 {
		rule(RedirectChain, "-p tcp", fmt.Sprintf("redirect all inbound TCP to the proxy (port %d)", cfg.IncomingProxyPort), toIn)
	}
	for _, ports := range multiports(cfg.PortsToRedirect) {
		rule(RedirectChain, "-p tcp -m multiport --dports "+ports, fmt.Sprintf("redirect inbound ports %s to the proxy (port %d)", ports, cfg.IncomingProxyPort), toIn)
	}

	if cfg.ProxyUID >= 0 {
		rule(OutputChain, fmt.Sprintf("-m owner --uid-owner %d", cfg.ProxyUID), fmt.Sprintf("skip the proxy: connections of uid %d", cfg.ProxyUID), "RETURN")
	}
	if cfg.ProxyGID >= 0 {
		rule(OutputChain, fmt.Sprintf("-m owner --gid-owner %d", cfg.ProxyGID), fmt.Sprintf("skip the proxy: connections of gid %d", cfg.ProxyGID), "RETURN")
	}
	rule(OutputChain, "-o lo", "skip loopback: the pod calling itself", "RETURN")
	for _, ports := range multiports(cfg.OutboundPortsToIgnore) {
		rule(OutputChain, "-p tcp -m multiport --dports "+ports, "skip outbound ports "+ports, "RETURN")
	}
	rule(OutputChain, "-p tcp", fmt.Sprintf("redirect all outbound TCP to the proxy (port %d)", cfg.OutgoingProxyPort),
		fmt.Sprintf("REDIRECT --to-ports %d", cfg.OutgoingProxyPort))

	for _, j := range []struct{ from, to string }{{"PREROUTING", RedirectChain}, {"OUTPUT", OutputChain}} {
		existing := jumps(current, j.from, j.to)
		if len(existing) == 0 {
			rule(j.from, "", "jump to "+j.to, j.to)
			continue
		}
		for _, dup := range existing[1:] {
			b.WriteString("-D" + strings.TrimPrefix(dup, "-A") + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// jumps returns the rules of chain from (as iptables-save prints them) that jump to chain to.
func jumps(saved, from, to string) []string {
	var found []string
	inNat := false
	for line := range strings.Lines(saved) {
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(line, "*") {
			inNat = line == "*nat"
			continue
		}
		if inNat && strings.HasPrefix(line, "-A "+from+" ") && (strings.HasSuffix(line, " -j "+to) || strings.Contains(line, " -j "+to+" ")) {
			found = append(found, line)
		}
	}
	return found
}

// multiports splits ranges into multiport port lists of at most maxMultiport ports each (a range counts
// twice), in the order given.
func multiports(ranges []PortRange) []string {
	var lists []string
	var cur []string
	weight := 0
	for _, r := range ranges {
		w := 1
		if r.From != r.To {
			w = 2
		}
		if weight+w > maxMultiport {
			lists = append(lists, strings.Join(cur, ","))
			cur, weight = nil, 0
		}
		cur = append(cur, r.String())
		weight += w
	}
	if len(cur) > 0 {
		lists = append(lists, strings.Join(cur, ","))
	}
	return lists
}

// ParsePorts parses a comma-separated list of ports and ranges, e.g. "25,587,8000-8100". Spaces and
// empty items are ignored.
func ParsePorts(s string) ([]PortRange, error) {
	var ranges []PortRange
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		from, to, isRange := strings.Cut(item, "-")
		lo, err := parsePort(from)
		if err != nil {
			return nil, err
		}
		hi := lo
		if isRange {
			if hi, err = parsePort(to); err != nil {
				return nil, err
			}
			if hi < lo {
				return nil, fmt.Errorf("port range %q ends before it starts", item)
			}
		}
		ranges = append(ranges, PortRange{lo, hi})
	}
	return ranges, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number in 1..65535", s)
	}
	return uint16(n), nil
}

// ParseSubnets parses a comma-separated list of CIDR prefixes of one family (IPv6 when ipv6).
func ParseSubnets(s string, ipv6 bool) ([]netip.Prefix, error) {
	var subnets []netip.Prefix
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("subnet %q is not in CIDR notation (e.g. 10.0.0.0/8)", item)
		}
		if p.Addr().Is6() != ipv6 {
			family := "IPv4"
			if ipv6 {
				family = "IPv6"
			}
			return nil, fmt.Errorf("subnet %q is not %s (--ipv6 picks the family)", item, family)
		}
		subnets = append(subnets, p.Masked())
	}
	return subnets, nil
}
