package benchserver_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/meshscope/meshscope/dev/bench/benchserver"
)

func TestServeSpeaksHTTP1AndH2CUntilItsContextEnds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- benchserver.Serve(ctx, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.Proto)
		}))
	}()
	tests := []struct {
		name string
		set  func(*http.Protocols)
		want string
	}{
		{"HTTP/1.1", func(p *http.Protocols) { p.SetHTTP1(true) }, "HTTP/1.1"},
		{"h2c prior knowledge", func(p *http.Protocols) { p.SetUnencryptedHTTP2(true) }, "HTTP/2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p http.Protocols
			tt.set(&p)
			tr := &http.Transport{Protocols: &p}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("http://" + ln.Addr().String() + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || string(body) != tt.want {
				t.Errorf("got %s %q, want 200 %q", resp.Status, body, tt.want)
			}
		})
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("Serve returned %v after its context ended", err)
	}
}
