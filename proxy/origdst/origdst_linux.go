package origdst

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST
// (linux/netfilter_ipv6/ip6_tables.h): both are 80, at levels SOL_IP and SOL_IPV6.
const soOriginalDst = 80

// query is one getsockopt's arguments and results. It lives on the caller's stack; the raw system call
// (not x/sys/unix's Getsockopt helpers, which allocate their result) writes into it.
type query struct {
	level int
	buf   [unix.SizeofSockaddrInet6]byte
	size  uint32
	errno syscall.Errno
}

func get(tc *net.TCPConn) (netip.AddrPort, error) {
	local, ok := tc.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, ErrNotTCP
	}
	q := query{level: unix.SOL_IPV6, size: unix.SizeofSockaddrInet6}
	// An IPv4 connection accepted on a dual-stack socket is tracked as IPv4: its local address is
	// IPv4-mapped, and SOL_IP is the level to ask.
	if local.AddrPort().Addr().Unmap().Is4() {
		q.level, q.size = unix.SOL_IP, unix.SizeofSockaddrInet4
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	if err := rc.Control(q.getsockopt); err != nil {
		return netip.AddrPort{}, err
	}
	if q.errno != 0 {
		return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt: %w", q.errno)
	}
	// struct sockaddr_in and sockaddr_in6 both start with the family, then the port in network order.
	port := binary.BigEndian.Uint16(q.buf[2:4])
	if q.level == unix.SOL_IP {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(q.buf[4:8])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(q.buf[8:24])), port), nil
}

func (q *query) getsockopt(fd uintptr) {
	_, _, q.errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(q.level), soOriginalDst,
		uintptr(unsafe.Pointer(&q.buf[0])), uintptr(unsafe.Pointer(&q.size)), 0)
}
