// Package origdst reads where a redirected TCP connection was going. iptables' REDIRECT (proxy init)
// rewrites a connection's destination to the proxy's port; the kernel's connection tracking keeps the
// original, which SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6) return.
package origdst

import (
	"errors"
	"net"
	"net/netip"
)

// ErrNotTCP is returned for connections that are not TCP sockets.
var ErrNotTCP = errors.New("original destination: not a TCP connection")

// Get returns the original destination of c, an accepted connection. A connection that was not
// redirected has its own local address as original destination, or, when the kernel tracks no
// connections at all (no nat rules were ever loaded), an error wrapping ENOENT.
func Get(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, ErrNotTCP
	}
	return get(tc)
}
