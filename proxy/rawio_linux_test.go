package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// rawReader lets io helpers read through a rawIO.
type rawReader struct{ r *rawIO }

func (r rawReader) Read(b []byte) (int, error) { return r.r.read(b) }

func TestRawIOCarriesEveryByteBothWays(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := newRawIO(a), newRawIO(b)
	if ra == nil || rb == nil {
		t.Fatal("no raw I/O for a TCP connection")
	}
	// More than the socket buffers hold, so that writes must wait for the reader.
	want := make([]byte, 16<<20)
	rand.Read(want)
	wrote := make(chan error, 1)
	go func() {
		n, err := ra.write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		a.CloseWrite()
		wrote <- err
	}()
	got, err := io.ReadAll(rawReader{rb})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(want))
	}
	// The other way, on the same connection after the first direction ended.
	if n, err := rb.write([]byte("pong")); n != 4 || err != nil {
		t.Fatalf("write back: %d, %v", n, err)
	}
	buf := make([]byte, 8)
	if n, err := ra.read(buf); string(buf[:n]) != "pong" || err != nil {
		t.Fatalf("read back %q, %v", buf[:n], err)
	}
}

func TestRawIOKeepsDeadlinesCloseAndResets(t *testing.T) {
	a, b := tcpPair(t)
	ra := newRawIO(a)
	buf := make([]byte, 8)

	a.SetReadDeadline(time.Now().Add(-time.Second))
	_, err := ra.read(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})

	// A read waiting for data ends when the connection is closed under it.
	done := make(chan error, 1)
	go func() {
		_, err := ra.read(buf)
		done <- err
	}()
	b.Write([]byte("x"))
	if err := <-done; err != nil {
		t.Fatalf("read: %v", err)
	}
	go func() {
		_, err := ra.read(buf)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let it wait; the assertion holds whether or not it did
	a.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
	}

	// A peer that resets the connection is an error, not an end of stream.
	c, d := tcpPair(t)
	rc := newRawIO(c)
	d.SetLinger(0)
	d.Close()
	if _, err := rc.read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after a reset: %v, want ECONNRESET", err)
	}
	if _, err := rc.write([]byte("x")); err == nil {
		if _, err := rc.write([]byte("x")); err == nil {
			t.Fatal("writes to a reset connection succeed")
		}
	}
}
