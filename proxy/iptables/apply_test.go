package iptables

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/meshscope/meshscope/proxy/netns/netnstest"
)

// savedNat is the nat table as iptables-save prints it, without its timestamped comment lines and packet
// counters, which change by themselves.
func savedNat(t *testing.T, ns, prog string) string {
	t.Helper()
	return withoutCounters(netnstest.Output(t, ns, prog+"-save", "-t", "nat"))
}

func withoutCounters(out string) string {
	var b strings.Builder
	counters := regexp.MustCompile(`\[\d+:\d+\]$`)
	for line := range strings.Lines(out) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(counters.ReplaceAllString(strings.TrimSpace(line), "[0:0]") + "\n")
		}
	}
	return b.String()
}

func TestInitTwiceLeavesTheSameTableAndOnlyItsOwnRules(t *testing.T) {
	netnstest.Require(t)
	for _, tt := range []struct {
		prog, mode, subnet string
		ipv6               bool
	}{{"iptables-nft", "nft", "10.96.0.0/12", false}, {"iptables-legacy", "legacy", "10.96.0.0/12", false}, {"ip6tables-nft", "nft", "fd00::/8", true}} {
		t.Run(tt.prog, func(t *testing.T) {
			ns := "msi10-" + tt.prog
			path := netnstest.Add(t, ns)
			// Someone else's rules in the nat table, before and after ours: they must survive untouched.
			other := "*nat\n:OTHER - [0:0]\n-A OTHER -p udp -j RETURN\n-A PREROUTING -p udp -j OTHER\n-A OUTPUT -p udp --dport 53 -j RETURN\nCOMMIT\n"
			restore(t, ns, tt.prog, other)
			o, err := ParseFlags([]string{"--netns", path, "--iptables-mode", tt.mode, fmt.Sprintf("--ipv6=%v", tt.ipv6), "--proxy-gid", "2103",
				"--inbound-ports-to-ignore", "22,8000-8100", "--outbound-ports-to-ignore", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
				"--subnets-to-ignore", tt.subnet}, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			host := hostNat(t, tt.prog)
			if err := Run(context.Background(), o, io.Discard); err != nil {
				t.Fatal(err)
			}
			if after := hostNat(t, tt.prog); after != host {
				t.Fatalf("the test process's own nat table changed:\nbefore:\n%s\nafter:\n%s", host, after)
			}
			once := savedNat(t, ns, tt.prog)
			if err := Run(context.Background(), o, io.Discard); err != nil {
				t.Fatal(err)
			}
			if twice := savedNat(t, ns, tt.prog); twice != once {
				t.Fatalf("second run changed the table:\nonce:\n%s\ntwice:\n%s", once, twice)
			}
			for _, want := range []string{
				"-A PREROUTING -p udp -j OTHER", "-A OTHER -p udp -j RETURN", "-A OUTPUT -p udp -m udp --dport 53 -j RETURN",
				`-A PREROUTING -m comment --comment "meshscope-init: jump to MESHSCOPE_INIT_REDIRECT" -j MESHSCOPE_INIT_REDIRECT`,
				"--dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 ", "--dports 16 ", "-m owner --gid-owner 2103",
				"-s " + tt.subnet, "-j REDIRECT --to-ports 4143", "-j REDIRECT --to-ports 4140",
			} {
				if !strings.Contains(once, want) {
					t.Errorf("nat table lacks %q:\n%s", want, once)
				}
			}
			for line := range strings.Lines(once) {
				if strings.HasPrefix(line, "-A MESHSCOPE_") && !strings.Contains(line, `--comment "meshscope-init: `) {
					t.Errorf("rule without its comment: %s", line)
				}
			}
		})
	}
}

func TestGoldenRulesAreRealIptablesRestoreInput(t *testing.T) {
	netnstest.Require(t)
	for _, golden := range []string{"defaults", "everything", "ipv6"} {
		t.Run(golden, func(t *testing.T) {
			family := "iptables"
			if golden == "ipv6" {
				family = "ip6tables"
			}
			ns := "msi10-gold"
			netnstest.Add(t, ns)
			input, err := os.ReadFile(filepath.Join("testdata", "simulate-"+golden+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			restore(t, ns, family+"-nft", string(input))
			if got := savedNat(t, ns, family+"-nft"); !strings.Contains(got, "MESHSCOPE_INIT_OUTPUT") {
				t.Fatalf("golden %s not applied:\n%s", golden, got)
			}
		})
	}
}

// hostNat is the nat table of the test's own network namespace, without comments and counters.
func hostNat(t *testing.T, prog string) string {
	out, err := exec.Command(prog+"-save", "-t", "nat").Output()
	if err != nil {
		t.Fatalf("%s-save: %v", prog, err)
	}
	return withoutCounters(string(out))
}

// restore applies input with prog-restore --noflush in ns (prog: iptables-nft, ip6tables-legacy, ...).
func restore(t *testing.T, ns, prog, input string) {
	t.Helper()
	cmd := netnstest.Command(ns, prog+"-restore", "--noflush")
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s-restore: %v: %s\ninput:\n%s", prog, err, out, input)
	}
}
