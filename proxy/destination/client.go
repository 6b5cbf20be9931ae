package destination

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshscope/meshscope/proxy/balance"
)

// The client's limits.
const (
	// DefaultFirstAnswer is how long a request for an authority not asked about before waits for the
	// service's first answer; past it the request is dialled as written (the answer still arrives and
	// serves later requests).
	DefaultFirstAnswer = 2 * time.Second
	// maxSubscriptions bounds the authorities one proxy follows; past it new authorities are dialled as
	// written (logged once).
	maxSubscriptions = 10_000
	// maxLine bounds one update: about 50,000 endpoints.
	maxLine = 16 << 20
	// idleAfter: an authority no request named for this long is no longer followed.
	idleAfter = 10 * time.Minute
	// minRetry and maxRetry bound the backoff between attempts to reach the service.
	minRetry = 250 * time.Millisecond
	maxRetry = 30 * time.Second
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Addr is the discovery service's host:port.
	Addr string
	// Namespace is the proxy's own: the namespace of short authorities (svc:port).
	Namespace string
	// FirstAnswer: see DefaultFirstAnswer; zero means the default.
	FirstAnswer time.Duration
	// Log may be nil (no logs).
	Log *slog.Logger
}

// Client is the proxy's side of the discovery service: a balance.Source that follows, for each
// authority the proxy's requests name, the endpoint set the service streams. All its streams share one
// HTTP/2 connection. When the service cannot be reached, authorities already known keep their last set,
// new ones are dialled as written, and every stream retries with backoff; the log says so once per
// outage, not per request.
type Client struct {
	opts ClientOptions
	hc   *http.Client
	log  *slog.Logger

	ctx    context.Context // the life of the streams: Close ends it
	cancel context.CancelFunc
	wg     sync.WaitGroup

	subs  sync.Map // authority as asked and normalized -> *subscription
	count atomic.Int64
	down  atomic.Bool // the last attempt to reach the service failed
	full  atomic.Bool // maxSubscriptions reached and logged
	// Refused counts lookups of new authorities dialled as written because maxSubscriptions were
	// followed; the proxy exports it.
	Refused atomic.Int64
	logMu   sync.Mutex // orders the down/up log lines
	closed  atomic.Bool
}

// subscription follows one authority.
type subscription struct {
	authority string   // normalized
	keys      []string // the keys it is stored under in Client.subs
	dest      atomic.Pointer[balance.Destination]
	ready     chan struct{} // closed at the first answer, or the first failure to get one
	readyOnce sync.Once
	used      atomic.Bool // named by a request since the last idle sweep
	cancel    context.CancelFunc
}

func (s *subscription) markReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// NewClient returns a Client of the service at o.Addr; Run sweeps idle authorities and Close ends it.
func NewClient(o ClientOptions) *Client {
	if o.FirstAnswer == 0 {
		o.FirstAnswer = DefaultFirstAnswer
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ResponseHeaderTimeout: 10 * time.Second,
		HTTP2: &http.HTTP2Config{
			// A connection that answers no ping for PingTimeout is closed: every stream on it retries.
			SendPingTimeout: 20 * time.Second,
			PingTimeout:     10 * time.Second,
		},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{opts: o, hc: &http.Client{Transport: tr}, log: o.Log, ctx: ctx, cancel: cancel}
}

// Lookup returns the Destination the service knows for authority, or nil when it names nothing in the
// cluster or the service has not answered: the caller dials it as written. The first Lookup of an
// authority subscribes to it and waits up to FirstAnswer for the service (not at all while the service
// is known to be unreachable); later ones do not wait and do not allocate.
func (c *Client) Lookup(authority string) *balance.Destination {
	v, ok := c.subs.Load(authority)
	if !ok {
		v, ok = c.subscribe(authority)
		if !ok {
			return nil
		}
	}
	sub := v.(*subscription)
	if !sub.used.Load() {
		sub.used.Store(true)
	}
	select {
	case <-sub.ready:
	default:
		if c.down.Load() {
			return nil
		}
		t := time.NewTimer(c.opts.FirstAnswer)
		select {
		case <-sub.ready:
		case <-t.C:
		}
		t.Stop()
	}
	return sub.dest.Load()
}

// subscribe finds or starts the subscription of authority. A new one is stored under both the spelling
// that started it and its normalized form, so that later requests spelling it either way find it without
// normalizing; other spellings are normalized each time.
func (c *Client) subscribe(authority string) (any, bool) {
	norm := balance.NormalizeAuthority(authority)
	if v, ok := c.subs.Load(norm); ok {
		return v, true
	}
	if c.closed.Load() || c.count.Load() >= maxSubscriptions {
		c.Refused.Add(1)
		if c.full.CompareAndSwap(false, true) {
			c.log.Warn("discovery: too many authorities followed, new ones are dialled as written", "max", maxSubscriptions)
		}
		return nil, false
	}
	ctx, cancel := context.WithCancel(c.ctx)
	sub := &subscription{authority: norm, keys: []string{norm}, ready: make(chan struct{}), cancel: cancel}
	if norm != authority {
		sub.keys = append(sub.keys, authority)
	}
	v, loaded := c.subs.LoadOrStore(norm, sub)
	if loaded {
		cancel()
		return v, true
	}
	c.count.Add(int64(len(sub.keys)))
	if norm != authority {
		c.subs.Store(authority, sub)
	}
	c.wg.Go(func() { c.follow(ctx, sub) })
	return sub, true
}

// Run removes, every idleAfter, the authorities no request named since the previous sweep, until ctx
// ends; then it closes the client.
func (c *Client) Run(ctx context.Context) {
	defer c.Close()
	t := time.NewTicker(idleAfter)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.ctx.Done():
			return
		case <-t.C:
			c.sweep()
		}
	}
}

func (c *Client) sweep() {
	c.subs.Range(func(k, v any) bool {
		sub := v.(*subscription)
		if k != sub.authority {
			return true // an alias: handled with its subscription
		}
		if sub.used.Swap(false) {
			return true
		}
		sub.cancel()
		for _, key := range sub.keys {
			c.subs.Delete(key)
			c.count.Add(-1)
		}
		return true
	})
}

// Close ends every stream and waits for them.
func (c *Client) Close() {
	c.closed.Store(true)
	c.cancel()
	c.wg.Wait()
	c.hc.CloseIdleConnections()
}

// follow keeps sub's stream open until ctx ends, reconnecting with backoff.
func (c *Client) follow(ctx context.Context, sub *subscription) {
	b := balance.NewBuilder()
	retry := minRetry
	for {
		got, err := c.stream(ctx, sub, b)
		if ctx.Err() != nil {
			return
		}
		var bad badAuthority
		if errors.As(err, &bad) {
			c.log.Debug("discovery: authority refused, dialled as written", "authority", sub.authority, "err", err)
			sub.markReady()
			return // nothing will change its mind: the sweep forgets it when unused
		}
		c.noteDown(err)
		sub.markReady() // known sets stay; a new authority is dialled as written meanwhile
		if got {
			retry = minRetry
		}
		// Up to half of jitter, so that the streams of many proxies do not all return at once.
		wait := retry/2 + rand.N(retry/2+1)
		retry = min(2*retry, maxRetry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// badAuthority is the service's refusal of an authority (400): retrying cannot help.
type badAuthority struct{ msg string }

func (e badAuthority) Error() string { return e.msg }

// stream reads one stream of sub until it breaks; got reports whether any update arrived.
func (c *Client) stream(ctx context.Context, sub *subscription, b *balance.Builder) (got bool, err error) {
	q := url.Values{"authority": {sub.authority}}
	if c.opts.Namespace != "" {
		q.Set("namespace", c.opts.Namespace)
	}
	u := "http://" + c.opts.Addr + "/v1/endpoints?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("%s: %s", resp.Status, bytesLine(msg))
		if resp.StatusCode == http.StatusBadRequest {
			return false, badAuthority{err.Error()}
		}
		return false, err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	for sc.Scan() {
		var up Update
		if err := json.Unmarshal(sc.Bytes(), &up); err != nil {
			return got, fmt.Errorf("bad update: %w", err)
		}
		if !got {
			got = true
			c.noteUp()
		}
		sub.dest.Store(destinationOf(b, sub.authority, up, c.log))
		sub.markReady()
	}
	if err := sc.Err(); err != nil {
		return got, err
	}
	return got, io.ErrUnexpectedEOF
}

// destinationOf turns an update into the balancer's Destination; nil when the authority is not found.
func destinationOf(b *balance.Builder, authority string, up Update, log *slog.Logger) *balance.Destination {
	if !up.Exists {
		return nil
	}
	eps := make([]balance.EndpointSpec, len(up.Endpoints))
	for i, e := range up.Endpoints {
		eps[i] = balance.EndpointSpec{Addr: e.Addr, Labels: e.Labels,
			Hints: balance.Hints{Opaque: e.Hints.Opaque, Meshed: e.Hints.Meshed, Identity: e.Hints.Identity}}
	}
	rs, policy := routesOf(up.Policy, authority, log)
	return b.Build(authority, up.Labels, eps, rs, policy)
}

func (c *Client) noteDown(err error) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if !c.down.Swap(true) {
		c.log.Warn("discovery service unreachable: known authorities keep their endpoints, new ones are dialled as written; retrying",
			"addr", c.opts.Addr, "err", err)
	}
}

func (c *Client) noteUp() {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if c.down.Swap(false) {
		c.log.Info("discovery service reachable again", "addr", c.opts.Addr)
	}
}

func bytesLine(b []byte) string {
	for i, ch := range b {
		if ch == '\n' {
			return string(b[:i])
		}
	}
	return string(b)
}
