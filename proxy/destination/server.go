package destination

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Limits of the service.
const (
	// DefaultCoalesce is how long the service gathers changes before it sends them: a rollout or a
	// Service with thousands of endpoints changing together reaches proxies as one update, not thousands.
	DefaultCoalesce = 50 * time.Millisecond
	// DefaultMaxStreams bounds the open endpoint streams of the whole service; past it a new stream is
	// answered 503 and the proxy retries with backoff.
	DefaultMaxStreams = 100_000
	// writeTimeout bounds one update's write: a proxy that stops reading loses its stream, not the
	// service its memory (each stream holds at most the one latest update).
	writeTimeout = 10 * time.Second
	// maxAuthority bounds the authority and namespace a client may ask about.
	maxAuthority = 512
)

// Options configure a Server. Zero values take the defaults.
type Options struct {
	// ClusterDomain is the cluster's DNS domain; zero means cluster.local.
	ClusterDomain string
	// TrustDomain is the identities' trust domain; zero means cluster.local.
	TrustDomain string
	// Coalesce is how long changes gather before they are sent; zero means DefaultCoalesce.
	Coalesce time.Duration
	// MaxStreams bounds the open endpoint streams; zero means DefaultMaxStreams.
	MaxStreams int
	// Log may be nil (no logs).
	Log *slog.Logger
	// Dynamic, when set, watches Gateway API HTTPRoutes and GRPCRoutes whose parents are Services and
	// sends their rules with the Services' endpoints (gateway.go). Their CRDs may be installed later.
	Dynamic dynamic.Interface
}

// Server is the discovery service. Make it with NewServer, run its informers with Run, and serve its
// Handler.
type Server struct {
	client     kubernetes.Interface
	cluster    *cluster
	log        *slog.Logger
	coalesce   time.Duration
	maxStreams int64
	streams    atomic.Int64
	refused    atomic.Int64  // streams refused past maxStreams
	updates    atomic.Int64  // sets sent, one per stream and change
	synced     chan struct{} // closed once every informer has its first full list
	stopping   chan struct{} // closed when Run ends: open streams end
	wake       chan struct{} // capacity 1: something is dirty

	mu      sync.Mutex
	watches map[target]*watch
	byKey   map[string]map[*watch]struct{} // which watches a change of a key (serviceKey, ipKey) touches
	dirty   map[string]struct{}
}

// watch is one target that streams are open for, with its latest update, encoded once for all of them.
type watch struct {
	t    target
	deps []string
	line []byte
	subs map[*subscriber]struct{}
}

// subscriber is one open stream. It holds only the latest line: a slow reader skips intermediate sets
// rather than queue them (each line is the whole set).
type subscriber struct {
	mu     sync.Mutex
	line   []byte
	notify chan struct{} // capacity 1
}

func (s *subscriber) offer(line []byte) {
	s.mu.Lock()
	s.line = line
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *subscriber) take() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := s.line
	s.line = nil
	return line
}

// NewServer returns a discovery service over client's API server. Nothing is requested before Run.
func NewServer(client kubernetes.Interface, o Options) (*Server, error) {
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.Coalesce == 0 {
		o.Coalesce = DefaultCoalesce
	}
	if o.MaxStreams == 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c, err := newCluster(client, o.ClusterDomain, o.TrustDomain)
	if err != nil {
		return nil, err
	}
	if o.Dynamic != nil {
		if c.routes, err = newGatewayRoutes(o.Dynamic, o.ClusterDomain); err != nil {
			return nil, err
		}
	}
	s := &Server{
		client: client, cluster: c, log: o.Log, coalesce: o.Coalesce, maxStreams: int64(o.MaxStreams),
		synced: make(chan struct{}), stopping: make(chan struct{}), wake: make(chan struct{}, 1),
		watches: map[target]*watch{}, byKey: map[string]map[*watch]struct{}{}, dirty: map[string]struct{}{},
	}
	handlers := []struct {
		inf  cache.SharedIndexInformer
		keys func(obj any) []string
	}{
		{c.services, s.serviceKeys},
		{c.slices, s.sliceKeys},
		{c.pods, s.podKeys},
		{c.replicaSets, s.replicaSetKeys},
	}
	if c.routes != nil {
		handlers = append(handlers, []struct {
			inf  cache.SharedIndexInformer
			keys func(obj any) []string
		}{{c.routes.http, routeKeys}, {c.routes.grpc, routeKeys}}...)
	}
	for _, h := range handlers {
		keys := h.keys
		_, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { s.markDirty(keys(obj)) },
			UpdateFunc: func(old, obj any) {
				s.markDirty(keys(old))
				s.markDirty(keys(obj))
			},
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				s.markDirty(keys(obj))
			},
		})
		if err != nil {
			return nil, fmt.Errorf("informer handler: %w", err)
		}
		// A watch cut mid-stream is resumed by the informer from its last resource version; the log
		// says so at most once a minute per kind, not at every retry.
		var last atomic.Int64
		h.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			if now := time.Now().UnixNano(); now-last.Load() > int64(time.Minute) {
				last.Store(now)
				s.log.Warn("kubernetes watch failed, retrying", "err", err)
			}
		})
	}
	return s, nil
}

func (s *Server) serviceKeys(obj any) []string {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil
	}
	keys := []string{serviceKey(svc.Namespace, svc.Name)}
	ips, _ := serviceIPs(svc)
	for _, ip := range ips {
		keys = append(keys, ipKey(ip))
	}
	return keys
}

func (s *Server) sliceKeys(obj any) []string {
	names, _ := sliceService(obj)
	if len(names) == 0 {
		return nil
	}
	sl := obj.(*discoveryv1.EndpointSlice)
	return []string{serviceKey(sl.Namespace, sl.Labels[discoveryv1.LabelServiceName])}
}

// podKeys are a pod's IPs and the Services whose slices name it: its labels are in their sets.
func (s *Server) podKeys(obj any) []string {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil
	}
	var keys []string
	ips, _ := podIPs(pod)
	for _, ip := range ips {
		keys = append(keys, ipKey(ip))
	}
	slices, _ := s.cluster.slices.GetIndexer().ByIndex(byPod, pod.Namespace+"/"+pod.Name)
	for _, obj := range slices {
		keys = append(keys, s.sliceKeys(obj)...)
	}
	return keys
}

// replicaSetKeys are those of its pods: the ReplicaSet names their deployment.
func (s *Server) replicaSetKeys(obj any) []string {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok {
		return nil
	}
	pods, _ := s.cluster.pods.GetIndexer().ByIndex(byOwner, rs.Namespace+"/"+rs.Name)
	var keys []string
	for _, p := range pods {
		keys = append(keys, s.podKeys(p)...)
	}
	return keys
}

// markDirty records that keys changed; the publisher recomputes the watches they touch. Keys no watch
// depends on cost one map lookup.
func (s *Server) markDirty(keys []string) {
	if len(keys) == 0 {
		return
	}
	s.mu.Lock()
	n := 0
	for _, k := range keys {
		if _, watched := s.byKey[k]; watched {
			s.dirty[k] = struct{}{}
			n++
		}
	}
	s.mu.Unlock()
	if n > 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Run starts the informers, waits for their first full lists (logging, while the API server cannot be
// reached, why), publishes changes until ctx ends, then ends every open stream.
func (s *Server) Run(ctx context.Context) error {
	defer close(s.stopping)
	s.cluster.factory.Start(ctx.Done())
	defer s.cluster.factory.Shutdown()
	if g := s.cluster.routes; g != nil {
		// Not waited for: without the Gateway API CRDs their lists fail until they are installed, and
		// endpoints must not wait for routes; a route arriving later updates its Services' streams.
		g.factory.Start(ctx.Done())
		defer g.factory.Shutdown()
	}
	if err := s.waitSynced(ctx); err != nil {
		return err
	}
	close(s.synced)
	s.log.Info("kubernetes caches synced", "services", len(s.cluster.services.GetStore().ListKeys()),
		"endpointslices", len(s.cluster.slices.GetStore().ListKeys()), "pods", len(s.cluster.pods.GetStore().ListKeys()))
	s.publish(ctx)
	return nil
}

// waitSynced waits for the informers' first lists. While they are missing it says why once a minute:
// the informers retry a refused connection quietly, so it asks the API server itself for the reason.
func (s *Server) waitSynced(ctx context.Context) error {
	informers := []cache.SharedIndexInformer{s.cluster.services, s.cluster.slices, s.cluster.pods, s.cluster.replicaSets}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	nextLog := time.Now().Add(5 * time.Second)
	for {
		all := true
		for _, inf := range informers {
			all = all && inf.HasSynced()
		}
		if all {
			return nil
		}
		if time.Now().After(nextLog) {
			nextLog = time.Now().Add(time.Minute)
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := s.client.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(pctx)
			cancel()
			if err == nil {
				err = errors.New("its first lists have not arrived yet")
			}
			s.log.Warn("waiting for the kubernetes API server, retrying; endpoint streams wait", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// publish recomputes the watches that dirty keys touch, after letting changes gather for coalesce, and
// offers each changed set to its streams.
func (s *Server) publish(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.coalesce):
		}
		s.mu.Lock()
		touched := map[*watch]struct{}{}
		for k := range s.dirty {
			for w := range s.byKey[k] {
				touched[w] = struct{}{}
			}
		}
		clear(s.dirty)
		s.mu.Unlock()
		for w := range touched {
			s.refresh(w)
		}
	}
}

// refresh recomputes w and offers it to its streams if it changed.
func (s *Server) refresh(w *watch) {
	u, deps := s.cluster.resolve(w.t)
	line := encode(u)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watches[w.t] != w {
		return // its last stream closed meanwhile
	}
	s.index(w, deps)
	if string(line) == string(w.line) {
		return
	}
	w.line = line
	for sub := range w.subs {
		sub.offer(line)
	}
}

// index makes w depend on deps instead of its previous ones. Call with mu held.
func (s *Server) index(w *watch, deps []string) {
	for _, k := range w.deps {
		delete(s.byKey[k], w)
		if len(s.byKey[k]) == 0 {
			delete(s.byKey, k)
		}
	}
	w.deps = deps
	for _, k := range deps {
		m := s.byKey[k]
		if m == nil {
			m = map[*watch]struct{}{}
			s.byKey[k] = m
		}
		m[w] = struct{}{}
	}
}

func encode(u Update) []byte {
	b, err := json.Marshal(u)
	if err != nil {
		panic(err) // an Update is strings, bools and slices of them: it always encodes
	}
	return append(b, '\n')
}

// subscribe opens a stream on t; the subscriber is offered the current set at once.
func (s *Server) subscribe(t target) (*subscriber, func()) {
	sub := &subscriber{notify: make(chan struct{}, 1)}
	s.mu.Lock()
	w := s.watches[t]
	if w == nil {
		u, deps := s.cluster.resolve(t)
		w = &watch{t: t, line: encode(u), subs: map[*subscriber]struct{}{}}
		s.watches[t] = w
		s.index(w, deps)
	}
	w.subs[sub] = struct{}{}
	sub.offer(w.line)
	s.mu.Unlock()
	return sub, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(w.subs, sub)
		if len(w.subs) == 0 {
			delete(s.watches, t)
			s.index(w, nil)
		}
	}
}

// Handler serves the endpoint streams (GET /v1/endpoints), /ready (once the caches are synced), /live
// and /metrics (streams open and refused, updates sent).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/endpoints", s.serveEndpoints)
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-s.synced:
			fmt.Fprintln(w, "ready")
		default:
			http.Error(w, "kubernetes caches not synced yet", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "live") })
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "destination_streams", Help: "Endpoint streams open."},
			func() float64 { return float64(s.streams.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "destination_streams_refused_total", Help: "Endpoint streams refused because MaxStreams were open."},
			func() float64 { return float64(s.refused.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "destination_updates_total", Help: "Endpoint sets written to streams."},
			func() float64 { return float64(s.updates.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "destination_watched_targets", Help: "Distinct authorities with open streams."},
			func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(len(s.watches)) }),
	)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) serveEndpoints(w http.ResponseWriter, r *http.Request) {
	authority, namespace := r.URL.Query().Get("authority"), r.URL.Query().Get("namespace")
	if len(authority) > maxAuthority || len(namespace) > maxAuthority {
		http.Error(w, "authority or namespace too long", http.StatusRequestURITooLong)
		return
	}
	t, err := s.cluster.parseAuthority(authority, namespace)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.streams.Add(1) > s.maxStreams {
		s.streams.Add(-1)
		s.refused.Add(1)
		http.Error(w, "too many endpoint streams open", http.StatusServiceUnavailable)
		return
	}
	defer s.streams.Add(-1)
	// The headers go at once: the client knows the stream is open even while the caches are still
	// filling, and waits for its first line with its own deadline.
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	select {
	case <-s.synced:
	case <-s.stopping:
		return
	case <-r.Context().Done():
		return
	}
	sub, cancel := s.subscribe(t)
	defer cancel()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stopping:
			return
		case <-sub.notify:
		}
		line := sub.take()
		if line == nil {
			continue
		}
		if err := rc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		if _, err := w.Write(line); err != nil {
			return
		}
		s.updates.Add(1)
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// Streams returns how many endpoint streams are open.
func (s *Server) Streams() int { return int(s.streams.Load()) }
