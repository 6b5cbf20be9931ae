// Package destination is Meshscope's discovery service and its client.
//
// The service (Server, run by `proxy destination`) watches the Kubernetes API once for the whole cluster
// (EndpointSlices, Services, Pods, ReplicaSets) with client-go informers and streams, to every proxy that
// asks, the set of endpoints an authority names, as Linkerd's destination controller does. Proxies hold
// no API permissions of their own.
//
// The wire is HTTP/2 cleartext: one long-lived GET per authority,
//
//	GET /v1/endpoints?authority=web.shop.svc.cluster.local:80&namespace=shop
//
// answered with newline-delimited JSON, one Update per line, each the whole current set: the first as
// soon as the service knows, then one per change (changes arriving together are coalesced into one
// line). A proxy that reconnects therefore gets everything it needs in its first line. Many streams
// share one connection; HTTP/2 pings find a dead peer.
//
// The client (Client) is the proxy's side: it answers the proxy's balancer which endpoints an authority
// names, subscribing on first use and keeping the last set when the service is unreachable.
package destination

// Update is one line of an endpoints stream: the whole set the authority names now.
type Update struct {
	// Exists is false when the authority names nothing the cluster knows (no such Service or port, no
	// pod with that IP): the proxy dials it as written. The stream stays open: it may appear later.
	Exists bool `json:"exists"`
	// Labels describe the destination as a whole: namespace, service.
	Labels map[string]string `json:"labels,omitempty"`
	// Endpoints are the ready endpoints, sorted by address. Empty when the destination exists but has
	// no ready endpoint (the proxy answers 503).
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// Policy is the Service's routes and annotations; nil for a pod IP or a Service without any.
	Policy *Policy `json:"policy,omitempty"`
}

// Endpoint is one address to dial, with what is known about the pod behind it.
type Endpoint struct {
	// Addr is ip:port ([ip]:port for IPv6), the pod's port (the Service's target port).
	Addr string `json:"addr"`
	// Labels name the pod: namespace, pod, serviceaccount and its workload (deployment, statefulset or
	// daemonset).
	Labels map[string]string `json:"labels,omitempty"`
	// Hints say how to talk to it.
	Hints Hints `json:"hints,omitzero"`
}

// Hints are the protocol hints of an endpoint.
type Hints struct {
	// Opaque: the port carries a protocol the proxy must not detect, only forward (the Service port's
	// appProtocol, or the config.meshscope.io/opaque-ports annotation of the Service or the pod).
	Opaque bool `json:"opaque,omitempty"`
	// Meshed: the pod runs a meshscope-proxy container.
	Meshed bool `json:"meshed,omitempty"`
	// Identity is the identity the pod's proxy presents, <sa>.<ns>.serviceaccount.identity.meshscope.<trust
	// domain>; empty when the pod is not meshed.
	Identity string `json:"identity,omitempty"`
}

// Policy is a Service's routing policy, sent with its endpoints: its retry, timeout and failure accrual
// annotations (retry.meshscope.io/..., timeout.meshscope.io/..., balancer.meshscope.io/...), and the
// rules of the Gateway API HTTPRoutes and GRPCRoutes whose parent is the Service (and its port).
type Policy struct {
	Annotations map[string]string `json:"annotations,omitempty"`
	Routes      []Route           `json:"routes,omitempty"`
}

// Route is one rule of an HTTPRoute or GRPCRoute, in the order Gateway API ranks them (oldest route
// first, then by namespace/name, then the rule's order).
type Route struct {
	Kind      string `json:"kind"` // HTTPRoute or GRPCRoute
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Annotations are the route object's retry and timeout annotations.
	Annotations map[string]string `json:"annotations,omitempty"`
	Matches     []Match           `json:"matches,omitempty"`
	// Request and BackendRequest are the rule's timeouts (Gateway API durations, "10s"); empty: none.
	Request        string    `json:"request_timeout,omitempty"`
	BackendRequest string    `json:"backend_request_timeout,omitempty"`
	Backends       []Backend `json:"backends,omitempty"`
}

// Match is one match of a rule: GRPCRoute service and method matches arrive as their path.
type Match struct {
	Method   string        `json:"method,omitempty"`
	PathType string        `json:"path_type,omitempty"` // Exact, PathPrefix or RegularExpression
	Path     string        `json:"path,omitempty"`
	Headers  []HeaderMatch `json:"headers,omitempty"`
}

// HeaderMatch is a header match: Exact, or RegularExpression with Regex.
type HeaderMatch struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Regex bool   `json:"regex,omitempty"`
}

// Backend is a backendRef to a Service, as the authority the proxy resolves, with its weight.
type Backend struct {
	Authority string `json:"authority"`
	Weight    uint32 `json:"weight"`
}
