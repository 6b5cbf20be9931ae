// Command upstream is the benchmark's application: an HTTP server answering every request with a small
// fixed body, over HTTP/1.1 and HTTP/2 cleartext (prior knowledge), so that the same server sits behind
// every proxy compared by dev/bench/proxy.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/meshscope/meshscope/dev/bench/benchserver"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to serve on")
	size := flag.Int("body-bytes", 13, "size of the response body in `bytes`")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *size); err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, listen string, size int) error {
	if size < 0 {
		return fmt.Errorf("--body-bytes %d: want 0 or more", size)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	return benchserver.Serve(ctx, ln, handler(size))
}

// handler answers every request 200 with a text body of size bytes.
func handler(size int) http.Handler {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	length := []string{strconv.Itoa(size)}
	contentType := []string{"text/plain"}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = contentType
		h["Content-Length"] = length
		w.Write(body)
	})
}
