// Package netnstest creates network namespaces for tests that need real interception: `ip netns add`,
// veth pairs, addresses of the test's own choosing, all removed when the test ends, even when it fails.
package netnstest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Require skips tb unless it may create network namespaces and change iptables: root, with `ip` and the
// iptables programs installed. Under CI=true a missing capability fails the test instead: CI runs as root
// with them installed (dev/test.sh), so a skip there would hide a broken setup.
func Require(tb testing.TB) {
	tb.Helper()
	missing := ""
	switch {
	case os.Geteuid() != 0:
		missing = "root (network namespaces and iptables)"
	default:
		for _, prog := range []string{"ip", "iptables-nft-restore", "iptables-nft-save", "iptables-legacy-restore"} {
			if _, err := exec.LookPath(prog); err != nil {
				missing = prog + " (Debian: apt-get install iproute2 iptables)"
				break
			}
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("needs %s, and CI=true: CI must run these tests", missing)
	}
	tb.Skipf("needs %s", missing)
}

// Add creates the network namespace name, with its loopback up, deletes it when tb ends, and returns its
// path. A namespace of that name left by an earlier, killed run is deleted first.
func Add(tb testing.TB, name string) string {
	tb.Helper()
	exec.Command("ip", "netns", "del", name).Run()
	IP(tb, "netns", "add", name)
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	IP(tb, "-n", name, "link", "set", "lo", "up")
	return "/var/run/netns/" + name
}

// Veth connects namespaces a and b with a veth pair, addresses addrA and addrB (CIDR, e.g.
// 10.250.0.1/24 or fd00:250::1/64) on each end, both up. The pair goes with its namespaces.
func Veth(tb testing.TB, a, addrA, b, addrB string) {
	tb.Helper()
	ea, eb := "v-"+a, "v-"+b
	IP(tb, "link", "add", ea, "netns", a, "type", "veth", "peer", "name", eb, "netns", b)
	// nodad: an IPv6 address is usable at once, not after duplicate address detection (a second or two).
	addr := func(ns, cidr, dev string) {
		args := []string{"-n", ns, "addr", "add", cidr, "dev", dev}
		if strings.Contains(cidr, ":") {
			args = append(args, "nodad")
		}
		IP(tb, args...)
	}
	addr(a, addrA, ea)
	addr(b, addrB, eb)
	IP(tb, "-n", a, "link", "set", ea, "up")
	IP(tb, "-n", b, "link", "set", eb, "up")
}

// IP runs `ip args...` and fails tb with its output when it fails.
func IP(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Command is name with args to run inside namespace ns (`ip netns exec`).
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Output runs name with args inside namespace ns (`ip netns exec`) and returns its standard output.
func Output(tb testing.TB, ns, name string, args ...string) string {
	tb.Helper()
	out, err := Command(ns, name, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		tb.Fatalf("%s %s in %s: %v: %s", name, strings.Join(args, " "), ns, err, stderr)
	}
	return string(out)
}
