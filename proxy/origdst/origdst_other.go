//go:build !linux

package origdst

import (
	"errors"
	"net"
	"net/netip"
)

func get(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: only Linux tracks redirected connections")
}
