package iptables

import (
	"context"
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
func savedNat(t *testing.T, ns, mode string) string {
	t.Helper()
	return withoutCounters(netnstest.Output(t, ns, "iptables-"+mode+"-save", "-t", "nat"))
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
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			ns := "msi10-ipt-" + mode
			path := netnstest.Add(t, ns)
			// Someone else's rules in the nat table, before and after ours: they must survive untouched.
			other := "*nat\n:OTHER - [0:0]\n-A OTHER -p udp -j RETURN\n-A PREROUTING -p udp -j OTHER\n-A OUTPUT -p udp --dport 53 -j RETURN\nCOMMIT\n"
			restore(t, ns, mode, other)
			o, err := ParseFlags([]string{"--netns", path, "--iptables-mode", mode, "--proxy-gid", "2103",
				"--inbound-ports-to-ignore", "22,8000-8100", "--outbound-ports-to-ignore", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
				"--subnets-to-ignore", "10.96.0.0/12"}, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			host := hostNat(t, mode)
			if err := Run(context.Background(), o, io.Discard); err != nil {
				t.Fatal(err)
			}
			if after := hostNat(t, mode); after != host {
				t.Fatalf("the test process's own nat table changed:\nbefore:\n%s\nafter:\n%s", host, after)
			}
			once := savedNat(t, ns, mode)
			if err := Run(context.Background(), o, io.Discard); err != nil {
				t.Fatal(err)
			}
			if twice := savedNat(t, ns, mode); twice != once {
				t.Fatalf("second run changed the table:\nonce:\n%s\ntwice:\n%s", once, twice)
			}
			for _, want := range []string{
				"-A PREROUTING -p udp -j OTHER", "-A OTHER -p udp -j RETURN", "-A OUTPUT -p udp -m udp --dport 53 -j RETURN",
				`-A PREROUTING -m comment --comment "meshscope-init: jump to MESHSCOPE_INIT_REDIRECT" -j MESHSCOPE_INIT_REDIRECT`,
				"--dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 ", "--dports 16 ", "-m owner --gid-owner 2103",
				"-s 10.96.0.0/12", "-j REDIRECT --to-ports 4143", "-j REDIRECT --to-ports 4140",
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
	for _, golden := range []string{"defaults", "everything"} {
		t.Run(golden, func(t *testing.T) {
			ns := "msi10-gold"
			netnstest.Add(t, ns)
			input, err := os.ReadFile(filepath.Join("testdata", "simulate-"+golden+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			restore(t, ns, "nft", string(input))
			if got := savedNat(t, ns, "nft"); !strings.Contains(got, "MESHSCOPE_INIT_OUTPUT") {
				t.Fatalf("golden %s not applied:\n%s", golden, got)
			}
		})
	}
}

// hostNat is the nat table of the test's own network namespace, without comments and counters.
func hostNat(t *testing.T, mode string) string {
	out, err := exec.Command("iptables-"+mode+"-save", "-t", "nat").Output()
	if err != nil {
		t.Fatalf("iptables-%s-save: %v", mode, err)
	}
	return withoutCounters(string(out))
}

func restore(t *testing.T, ns, mode, input string) {
	t.Helper()
	cmd := netnstest.Command(ns, "iptables-"+mode+"-restore", "--noflush")
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-%s-restore: %v: %s\ninput:\n%s", mode, err, out, input)
	}
}
