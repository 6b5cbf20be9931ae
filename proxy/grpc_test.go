package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec sends messages as the bytes they are: a real gRPC service without generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

// echoServer is a tiny gRPC service whose requests say how to answer:
//
//	"ok:x"          answer "echo:x", status OK
//	"fail-early:N"  status code N before any header: a trailers-only response
//	"fail-late:N"   headers first, then status code N in the trailers
//	"deadline"      answer how far the call's deadline is, to the hour ("none" without one)
//	"block"         say so on blocked, wait for the call's end, then report its error on seen
type echoServer struct {
	blocked chan struct{}
	seen    chan string
}

func (s *echoServer) answer(ctx context.Context, msg string) (string, error) {
	cmd, arg, _ := strings.Cut(msg, ":")
	var code int
	fmt.Sscan(arg, &code)
	switch cmd {
	case "ok":
		return "echo:" + arg, nil
	case "fail-early":
		return "", status.Error(codes.Code(code), "failed early")
	case "fail-late":
		grpc.SendHeader(ctx, metadata.Pairs("x-sent", "headers"))
		return "", status.Error(codes.Code(code), "failed late")
	case "deadline":
		d, ok := ctx.Deadline()
		if !ok {
			return "none", nil
		}
		return fmt.Sprintf("%.0fh", time.Until(d).Hours()), nil
	case "block":
		s.blocked <- struct{}{}
		<-ctx.Done()
		s.seen <- ctx.Err().Error()
		return "", ctx.Err()
	}
	return "", status.Error(codes.InvalidArgument, "unknown command")
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "meshscope.test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			out, err := srv.(*echoServer).answer(ctx, string(in))
			b := []byte(out)
			return &b, err
		},
	}},
	Streams: []grpc.StreamDesc{
		{
			// ServerStream answers one request with three messages, then the request's status.
			StreamName: "ServerStream", ServerStreams: true,
			Handler: func(srv any, ss grpc.ServerStream) error {
				var in []byte
				if err := ss.RecvMsg(&in); err != nil {
					return err
				}
				for i := range 3 {
					b := []byte(fmt.Sprintf("part %d", i))
					if err := ss.SendMsg(&b); err != nil {
						return err
					}
				}
				_, err := srv.(*echoServer).answer(ss.Context(), string(in))
				return err
			},
		},
		{
			// ClientStream joins every request into one answer.
			StreamName: "ClientStream", ClientStreams: true,
			Handler: func(srv any, ss grpc.ServerStream) error {
				var all []string
				for {
					var in []byte
					err := ss.RecvMsg(&in)
					if err == io.EOF {
						break
					}
					if err != nil {
						return err
					}
					all = append(all, string(in))
				}
				b := []byte(strings.Join(all, "+"))
				return ss.SendMsg(&b)
			},
		},
		{
			// Bidi answers each request as it comes.
			StreamName: "Bidi", ServerStreams: true, ClientStreams: true,
			Handler: func(srv any, ss grpc.ServerStream) error {
				for {
					var in []byte
					err := ss.RecvMsg(&in)
					if err == io.EOF {
						return nil
					}
					if err != nil {
						return err
					}
					out, err := srv.(*echoServer).answer(ss.Context(), string(in))
					if err != nil {
						return err
					}
					b := []byte(out)
					if err := ss.SendMsg(&b); err != nil {
						return err
					}
				}
			},
		},
	},
}

func startGRPC(t *testing.T) (string, *echoServer) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	es := &echoServer{blocked: make(chan struct{}, 4), seen: make(chan string, 4)}
	srv.RegisterService(&echoDesc, es)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), es
}

func dialGRPC(t *testing.T, addr string) *grpc.ClientConn {
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func unary(ctx context.Context, cc *grpc.ClientConn, msg string) (string, error) {
	in, out := []byte(msg), []byte(nil)
	err := cc.Invoke(ctx, "/meshscope.test.Echo/Unary", &in, &out)
	return string(out), err
}

func TestGRPCCallsAndTheirStatusesThroughTheProxy(t *testing.T) {
	addr, _ := startGRPC(t)
	p := startProxy(t, testConfig(addr))
	cc := dialGRPC(t, p.addr("--inbound-listen").String())
	ctx := context.Background()

	tests := []struct {
		name       string
		call       func() (string, error)
		want       string
		wantCode   codes.Code
		wantStatus string // grpc_status label
	}{
		{"unary ok", func() (string, error) { return unary(ctx, cc, "ok:1") }, "echo:1", codes.OK, "0"},
		{"unary trailers-only error", func() (string, error) { return unary(ctx, cc, "fail-early:5") }, "", codes.NotFound, "5"},
		{"unary error in trailers", func() (string, error) { return unary(ctx, cc, "fail-late:7") }, "", codes.PermissionDenied, "7"},
		{"server streaming ok", func() (string, error) { return serverStream(ctx, cc, "ok:2") }, "part 0,part 1,part 2", codes.OK, "0"},
		{"server streaming error after messages", func() (string, error) { return serverStream(ctx, cc, "fail-late:10") }, "part 0,part 1,part 2", codes.Aborted, "10"},
		{"client streaming", func() (string, error) { return clientStream(ctx, cc, "a", "b", "c") }, "a+b+c", codes.OK, "0"},
		{"bidi streaming", func() (string, error) { return bidi(ctx, cc, "ok:x", "ok:y") }, "echo:x,echo:y", codes.OK, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := metricValue(t, p.registry, "response_total", map[string]string{"grpc_status": tt.wantStatus})
			got, err := tt.call()
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("status %v (%v), want %v", code, err, tt.wantCode)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			class := "success"
			if tt.wantCode != codes.OK {
				class = "failure"
			}
			waitMetric(t, p.registry, "response_total", map[string]string{
				"direction": "inbound", "status_code": "200", "grpc_status": tt.wantStatus, "classification": class,
			}, before+1)
		})
	}
}

func serverStream(ctx context.Context, cc *grpc.ClientConn, msg string) (string, error) {
	s, err := cc.NewStream(ctx, &echoDesc.Streams[0], "/meshscope.test.Echo/ServerStream")
	if err != nil {
		return "", err
	}
	in := []byte(msg)
	if err := s.SendMsg(&in); err != nil {
		return "", err
	}
	s.CloseSend()
	var parts []string
	for {
		var out []byte
		if err := s.RecvMsg(&out); err != nil {
			if err == io.EOF {
				err = nil
			}
			return strings.Join(parts, ","), err
		}
		parts = append(parts, string(out))
	}
}

func clientStream(ctx context.Context, cc *grpc.ClientConn, msgs ...string) (string, error) {
	s, err := cc.NewStream(ctx, &echoDesc.Streams[1], "/meshscope.test.Echo/ClientStream")
	if err != nil {
		return "", err
	}
	for _, m := range msgs {
		b := []byte(m)
		if err := s.SendMsg(&b); err != nil {
			return "", err
		}
	}
	s.CloseSend()
	var out []byte
	if err := s.RecvMsg(&out); err != nil {
		return "", err
	}
	return string(out), nil
}

// bidi sends each message only after the answer to the previous one arrived through the proxy.
func bidi(ctx context.Context, cc *grpc.ClientConn, msgs ...string) (string, error) {
	s, err := cc.NewStream(ctx, &echoDesc.Streams[2], "/meshscope.test.Echo/Bidi")
	if err != nil {
		return "", err
	}
	var answers []string
	for _, m := range msgs {
		b := []byte(m)
		if err := s.SendMsg(&b); err != nil {
			return "", err
		}
		var out []byte
		if err := s.RecvMsg(&out); err != nil {
			return "", err
		}
		answers = append(answers, string(out))
	}
	s.CloseSend()
	var out []byte
	if err := s.RecvMsg(&out); err != io.EOF {
		return "", fmt.Errorf("stream end: %v", err)
	}
	return strings.Join(answers, ","), nil
}

func TestGRPCCancellationAndDeadlinesReachTheServer(t *testing.T) {
	addr, es := startGRPC(t)
	p := startProxy(t, testConfig(addr))
	cc := dialGRPC(t, p.addr("--inbound-listen").String())

	t.Run("cancelled bidi stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := cc.NewStream(ctx, &echoDesc.Streams[2], "/meshscope.test.Echo/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		b := []byte("block")
		if err := s.SendMsg(&b); err != nil {
			t.Fatal(err)
		}
		<-es.blocked
		cancel()
		if got := <-es.seen; got != "context canceled" {
			t.Errorf("server saw %q, want context canceled", got)
		}
		waitMetric(t, p.registry, "response_total", map[string]string{"classification": "failure", "error": "cancelled"}, 1)
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Hour)
		defer cancel()
		got, err := unary(ctx, cc, "deadline")
		if err != nil || got != "3h" {
			t.Errorf("server saw deadline %q (%v), want 3h", got, err)
		}
		if got, err := unary(context.Background(), cc, "deadline"); err != nil || got != "none" {
			t.Errorf("without a deadline, server saw %q (%v), want none", got, err)
		}
	})
}

func TestGRPCThroughAnOutboundRoute(t *testing.T) {
	addr, _ := startGRPC(t)
	cfg := testConfig(addr)
	cfg.OutboundRoutes = []Route{{Listen: "127.0.0.1:0", Authority: addr}}
	p := startProxy(t, cfg)
	cc := dialGRPC(t, p.addr("--outbound-route 127.0.0.1:0="+addr).String())
	got, err := unary(context.Background(), cc, "ok:routed")
	if err != nil || got != "echo:routed" {
		t.Fatalf("got %q, %v", got, err)
	}
	waitMetric(t, p.registry, "response_total", map[string]string{"direction": "outbound", "authority": addr, "grpc_status": "0", "classification": "success"}, 1)
}
