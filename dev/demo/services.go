package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// callTimeout bounds every call a demo service makes to another.
const callTimeout = 5 * time.Second

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// products is the catalog's stock list.
func products() []Product {
	names := []string{"kettle", "teapot", "mug", "grinder", "scale", "filter", "dripper", "tin", "spoon", "tray"}
	out := make([]Product, len(names))
	for i, n := range names {
		out[i] = Product{ID: fmt.Sprintf("p%03d", i+1), Name: n, PriceCents: 500 + 250*i}
	}
	return out
}

// serveHTTP runs srv on l until ctx ends, then shuts it down gracefully.
func serveHTTP(ctx context.Context, srv *http.Server, l net.Listener) error {
	srv.ReadHeaderTimeout = 5 * time.Second
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.IdleTimeout = 90 * time.Second
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// serveGRPC runs srv on l until ctx ends, then stops it gracefully.
func serveGRPC(ctx context.Context, srv *grpc.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	return nil
}

// grpcClient dials the pod's proxy outbound listener, naming the callee in
// :authority so the proxy routes and balances each call.
func grpcClient(outbound, authority string) (*grpc.ClientConn, error) {
	return grpc.NewClient(outbound,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(jsonCodec{})))
}

// runWeb is the storefront: HTTP/1.1, calling catalog and checkout over gRPC.
func runWeb(ctx context.Context, m Mesh, p Pod, b Behaviour, l net.Listener, log *slog.Logger) error {
	catalog, err := grpcClient(p.Outbound, m.service("catalog").Authority)
	if err != nil {
		return err
	}
	defer catalog.Close()
	checkout, err := grpcClient(p.Outbound, m.service("checkout").Authority)
	if err != nil {
		return err
	}
	defer checkout.Close()

	// own applies web's own latency and failures before any downstream call.
	own := func(next func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if err := sleep(r.Context(), b.Latency()); err != nil {
				return
			}
			if b.Fails() {
				http.Error(w, "web: injected failure", http.StatusInternalServerError)
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
			defer cancel()
			if err := next(w, r.WithContext(ctx)); err != nil {
				log.Debug("downstream call failed", "path", r.URL.Path, "err", err)
				http.Error(w, "web: "+status.Convert(err).Message(), http.StatusBadGateway)
			}
		}
	}
	writeJSON := func(w http.ResponseWriter, code int, v any) error {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		return json.NewEncoder(w).Encode(v)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", own(func(w http.ResponseWriter, r *http.Request) error {
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		var reply ListProductsReply
		if err := catalog.Invoke(r.Context(), methodList, &ListProductsRequest{Page: page}, &reply); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, reply)
	}))
	mux.Handle("GET /products/{id}", own(func(w http.ResponseWriter, r *http.Request) error {
		var reply Product
		if err := catalog.Invoke(r.Context(), methodGetProduct, &GetProductRequest{ID: r.PathValue("id")}, &reply); err != nil {
			if status.Code(err) == codes.NotFound {
				http.NotFound(w, r)
				return nil
			}
			return err
		}
		return writeJSON(w, http.StatusOK, reply)
	}))
	mux.Handle("POST /cart/items", own(func(w http.ResponseWriter, r *http.Request) error {
		if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<16)); err != nil {
			return nil // the client went away
		}
		w.WriteHeader(http.StatusCreated)
		return nil
	}))
	mux.Handle("POST /checkout", own(func(w http.ResponseWriter, r *http.Request) error {
		var req PlaceOrderRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "bad order", http.StatusBadRequest)
			return nil
		}
		var reply PlaceOrderReply
		if err := checkout.Invoke(r.Context(), methodPlaceOrder, &req, &reply); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, reply)
	}))
	srv := &http.Server{Handler: mux, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	return serveHTTP(ctx, srv, l)
}

// runCatalog serves the product list over gRPC.
func runCatalog(ctx context.Context, b Behaviour, l net.Listener) error {
	items := products()
	own := func(ctx context.Context) error {
		if err := sleep(ctx, b.Latency()); err != nil {
			return status.FromContextError(err).Err()
		}
		if b.Fails() {
			return status.Error(codes.Internal, "catalog: injected failure")
		}
		return nil
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}))
	srv.RegisterService(serviceDesc(catalogService,
		unary(catalogService, "ListProducts", func(ctx context.Context, req *ListProductsRequest) (*ListProductsReply, error) {
			if err := own(ctx); err != nil {
				return nil, err
			}
			const perPage = 5
			start := min(max(req.Page, 0)*perPage, len(items))
			return &ListProductsReply{Products: items[start:min(start+perPage, len(items))]}, nil
		}),
		unary(catalogService, "GetProduct", func(ctx context.Context, req *GetProductRequest) (*Product, error) {
			if err := own(ctx); err != nil {
				return nil, err
			}
			for _, p := range items {
				if p.ID == req.ID {
					return &p, nil
				}
			}
			return nil, status.Errorf(codes.NotFound, "no product %q", req.ID)
		}),
	), nil)
	return serveGRPC(ctx, srv, l)
}

// runCheckout places orders over gRPC, charging them through payments over
// HTTP/2 cleartext; it answers failures the gRPC way, HTTP 200 with a
// non-OK grpc-status.
func runCheckout(ctx context.Context, m Mesh, p Pod, b Behaviour, l net.Listener) error {
	payments := &http.Client{Transport: h2cTransport(p.Outbound), Timeout: callTimeout}
	defer payments.CloseIdleConnections()
	chargeURL := "http://" + m.service("payments").Authority + "/v1/charges"
	var orders atomic.Int64
	srv := grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}))
	srv.RegisterService(serviceDesc(checkoutService,
		unary(checkoutService, "PlaceOrder", func(ctx context.Context, req *PlaceOrderRequest) (*PlaceOrderReply, error) {
			if err := sleep(ctx, b.Latency()); err != nil {
				return nil, status.FromContextError(err).Err()
			}
			if b.Fails() {
				return nil, status.Error(codes.Unavailable, "checkout: injected failure")
			}
			order := fmt.Sprintf("o%d", orders.Add(1))
			body, err := json.Marshal(map[string]any{"order_id": order, "amount_cents": req.TotalCents})
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, chargeURL, bytes.NewReader(body))
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			hreq.Header.Set("Content-Type", "application/json")
			resp, err := payments.Do(hreq)
			if err != nil {
				return nil, status.Errorf(codes.Unavailable, "payments: %v", err)
			}
			defer resp.Body.Close()
			charge, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			if err != nil {
				return nil, status.Errorf(codes.Unavailable, "payments: %v", err)
			}
			if resp.StatusCode != http.StatusCreated {
				return nil, status.Errorf(codes.Unavailable, "payments: %s", resp.Status)
			}
			return &PlaceOrderReply{OrderID: order, Charge: strings.TrimSpace(string(charge))}, nil
		}),
	), nil)
	return serveGRPC(ctx, srv, l)
}

// h2cTransport speaks HTTP/2 with prior knowledge to the proxy's outbound
// listener, whatever host the URL names (the proxy routes by :authority).
func h2cTransport(outbound string) *http.Transport {
	t := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, outbound)
		},
		IdleConnTimeout: 90 * time.Second,
	}
	t.Protocols = new(http.Protocols)
	t.Protocols.SetUnencryptedHTTP2(true)
	return t
}

// runPayments charges cards over HTTP/2 cleartext, recording every charge
// in the ledger over opaque TCP.
func runPayments(ctx context.Context, m Mesh, p Pod, b Behaviour, l net.Listener) error {
	ledger := &ledgerClient{addr: p.Routes[m.service("ledger").Authority]}
	defer ledger.close()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/charges", func(w http.ResponseWriter, r *http.Request) {
		if err := sleep(r.Context(), b.Latency()); err != nil {
			return
		}
		if b.Fails() {
			http.Error(w, "payments: injected failure", http.StatusServiceUnavailable)
			return
		}
		var charge struct {
			OrderID     string `json:"order_id"`
			AmountCents int    `json:"amount_cents"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&charge); err != nil {
			http.Error(w, "bad charge", http.StatusBadRequest)
			return
		}
		id, err := ledger.record(fmt.Sprintf("CHARGE %s %d", charge.OrderID, charge.AmountCents))
		if err != nil {
			http.Error(w, "payments: ledger: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, id)
	})
	srv := &http.Server{Handler: mux}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return serveHTTP(ctx, srv, l)
}

// ledgerClient keeps a few ledger connections open, as a database pool would.
type ledgerClient struct {
	addr string
	mu   sync.Mutex
	idle []*ledgerConn
}

type ledgerConn struct {
	net.Conn
	r *bufio.Reader
}

const ledgerPoolSize = 4

func (c *ledgerClient) record(line string) (string, error) {
	conn, err := c.get()
	if err != nil {
		return "", err
	}
	reply, err := conn.roundTrip(line)
	if err != nil {
		conn.Close()
		return "", err
	}
	c.put(conn)
	if id, ok := strings.CutPrefix(reply, "OK "); ok {
		return id, nil
	}
	return "", fmt.Errorf("ledger refused: %s", reply)
}

func (c *ledgerClient) get() (*ledgerConn, error) {
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		conn := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return conn, nil
	}
	c.mu.Unlock()
	raw, err := net.DialTimeout("tcp", c.addr, callTimeout)
	if err != nil {
		return nil, err
	}
	conn := &ledgerConn{Conn: raw, r: bufio.NewReader(raw)}
	// The ledger speaks first: wait for its greeting.
	if err := conn.SetDeadline(time.Now().Add(callTimeout)); err != nil {
		raw.Close()
		return nil, err
	}
	greeting, err := conn.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "LEDGER ") {
		raw.Close()
		return nil, fmt.Errorf("ledger greeting %q: %v", greeting, err)
	}
	return conn, nil
}

func (c *ledgerClient) put(conn *ledgerConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle) >= ledgerPoolSize {
		conn.Close()
		return
	}
	c.idle = append(c.idle, conn)
}

func (c *ledgerClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.idle {
		conn.Close()
	}
	c.idle = nil
}

func (c *ledgerConn) roundTrip(line string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(callTimeout)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	reply, err := c.r.ReadString('\n')
	return strings.TrimSpace(reply), err
}

// runLedger is a server-speaks-first line protocol store: it greets every
// connection, then answers each "CHARGE order amount" line with "OK id" or
// "ERR reason".
func runLedger(ctx context.Context, b Behaviour, l net.Listener, log *slog.Logger) error {
	var (
		wg      sync.WaitGroup
		entries atomic.Int64
		mu      sync.Mutex
		conns   = map[net.Conn]struct{}{}
	)
	go func() {
		<-ctx.Done()
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	defer wg.Wait()
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[conn] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(conns, conn)
				mu.Unlock()
				conn.Close()
			}()
			serveLedgerConn(ctx, conn, b, &entries, log)
		}()
	}
}

func serveLedgerConn(ctx context.Context, conn net.Conn, b Behaviour, entries *atomic.Int64, log *slog.Logger) {
	if _, err := io.WriteString(conn, "LEDGER 1.0 ready\n"); err != nil {
		return
	}
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		if err := sleep(ctx, b.Latency()); err != nil {
			return
		}
		reply := "ERR injected failure"
		switch {
		case !strings.HasPrefix(sc.Text(), "CHARGE "):
			reply = "ERR unknown command"
		case !b.Fails():
			reply = fmt.Sprintf("OK l%d", entries.Add(1))
		}
		if _, err := io.WriteString(conn, reply+"\n"); err != nil {
			log.Debug("ledger write", "err", err)
			return
		}
	}
}
