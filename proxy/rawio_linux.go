package main

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawIO reads and writes a TCP connection's socket with raw system calls. The socket is non-blocking (Go's
// netpoller waits for it to become ready), so no call can block, and none needs what a plain Read or Write
// does around every system call: tell the scheduler the thread is in a system call. That notice wakes the
// runtime's monitor thread (sysmon) whenever it is asleep, which at a sidecar's usual rates is before
// nearly every request: one more thread to wake and put back to sleep per read and write (dev/BENCHMARKS.md
// "Proxy" has the CPU it costs). Waiting and deadlines are still the netpoller's, through
// syscall.RawConn.
type rawIO struct {
	rc syscall.RawConn

	rmu     sync.Mutex // one read at a time owns rbuf, rn and rerr
	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(fd uintptr) bool
	wmu     sync.Mutex // one write at a time owns wbuf, wn and werr
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

// newRawIO returns the raw reader and writer of c, or nil when c is not a TCP connection.
func newRawIO(c net.Conn) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{rc: rc}
	r.readFn, r.writeFn = r.tryRead, r.tryWrite
	return r
}

func (r *rawIO) read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.rbuf = b
	err := r.rc.Read(r.readFn)
	n, errno := r.rn, r.rerr
	r.rbuf, r.rn, r.rerr = nil, 0, 0
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// tryRead reads once; false asks the netpoller to wait until the socket is readable.
func (r *rawIO) tryRead(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(r.rbuf))), uintptr(len(r.rbuf)))
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		case 0:
			r.rn = int(n)
		default:
			r.rerr = errno
		}
		return true
	}
}

func (r *rawIO) write(b []byte) (int, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.wbuf = b
	err := r.rc.Write(r.writeFn)
	n, errno := r.wn, r.werr
	r.wbuf, r.wn, r.werr = nil, 0, 0
	if err == nil && errno != 0 {
		err = &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", errno)}
	}
	return n, err
}

// tryWrite writes what is left of wbuf; false asks the netpoller to wait until the socket is writable.
func (r *rawIO) tryWrite(fd uintptr) bool {
	for r.wn < len(r.wbuf) {
		rest := r.wbuf[r.wn:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
		switch errno {
		case 0:
			r.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = errno
			return true
		}
	}
	return true
}
