package origdst

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/meshscope/meshscope/proxy/netns"
	"github.com/meshscope/meshscope/proxy/netns/netnstest"
)

// accepted dials to in namespace path and returns the connection ln accepted.
func accepted(t testing.TB, path string, ln net.Listener, to string) net.Conn {
	t.Helper()
	var client net.Conn
	if err := netns.Do(path, func() (err error) { client, err = net.Dial("tcp", to); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// maxAllocs is what Get may allocate: nothing (the getsockopt's buffer lives on the stack; the compiler
// keeps SyscallConn's small result there too).
const maxAllocs = 0

func TestGetReturnsWhereARedirectedConnectionWasGoing(t *testing.T) {
	netnstest.Require(t)
	ns := "msi10-origdst"
	path := netnstest.Add(t, ns)
	for _, family := range []string{"iptables", "ip6tables"} {
		cmd := netnstest.Command(ns, family+"-nft-restore", "--noflush")
		cmd.Stdin = strings.NewReader("*nat\n-A OUTPUT -p tcp --dport 9999 -j REDIRECT --to-ports 7000\nCOMMIT\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", family, err, out)
		}
	}
	tests := []struct{ name, listen, dial, want string }{
		{"IPv4 redirected", "127.0.0.1:7000", "127.0.0.1:9999", "127.0.0.1:9999"},
		{"IPv6 redirected", "[::1]:7000", "[::1]:9999", "[::1]:9999"},
		{"IPv4 on a dual-stack listener", "[::]:7000", "127.0.0.1:9999", "127.0.0.1:9999"},
		{"not redirected: its own address", "127.0.0.1:7001", "127.0.0.1:7001", "127.0.0.1:7001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ln net.Listener
			if err := netns.Do(path, func() (err error) { ln, err = net.Listen("tcp", tt.listen); return err }); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c := accepted(t, path, ln, tt.dial)
			got, err := Get(c)
			if err != nil {
				t.Fatal(err)
			}
			if want := netip.MustParseAddrPort(tt.want); got.Addr().Unmap() != want.Addr() || got.Port() != want.Port() {
				t.Fatalf("original destination %v, want %v", got, want)
			}
			// Every redirected connection asks once: that must stay cheap.
			if allocs := testing.AllocsPerRun(100, func() { Get(c) }); allocs > maxAllocs {
				t.Fatalf("%.0f allocations per call, want at most %d", allocs, maxAllocs)
			}
		})
	}
}

// BenchmarkGet: one original destination read, on a redirected connection in a namespace of its own.
func BenchmarkGet(b *testing.B) {
	netnstest.Require(b)
	ns := "msi10-origbench"
	path := netnstest.Add(b, ns)
	cmd := netnstest.Command(ns, "iptables-nft-restore", "--noflush")
	cmd.Stdin = strings.NewReader("*nat\n-A OUTPUT -p tcp --dport 9999 -j REDIRECT --to-ports 7000\nCOMMIT\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	var ln net.Listener
	if err := netns.Do(path, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:7000"); return err }); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c := accepted(b, path, ln, "127.0.0.1:9999")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Get(c); err != nil {
			b.Fatal(err)
		}
	}
}
