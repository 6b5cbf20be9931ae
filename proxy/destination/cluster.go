package destination

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshscope/meshscope/api/kube"
)

// The names of the cluster's conventions this service reads.
const (
	// ProxyContainer is the name of the sidecar container the injector adds: a pod with it is meshed.
	ProxyContainer = kube.ProxyContainer
	// OpaquePortsAnnotation lists ports (and ranges, 8000-8100) to proxy as opaque TCP, on a Service
	// (its ports) or a pod (its container ports).
	OpaquePortsAnnotation = "config.meshscope.io/opaque-ports"
	// OpaqueAppProtocol is the Service port appProtocol that marks a port opaque explicitly. Any other
	// appProtocol that is not HTTP's (see httpAppProtocols) marks it opaque too.
	OpaqueAppProtocol = "meshscope.io/opaque"
)

// httpAppProtocols are the Service appProtocol values the proxy can detect and balance per request; any
// other value names a protocol the proxy must only forward.
var httpAppProtocols = map[string]bool{
	"http": true, "http2": true, "h2c": true, "grpc": true, "ws": true,
	"kubernetes.io/h2c": true, "kubernetes.io/ws": true,
}

// The informers' indexes.
const (
	byService = "service" // EndpointSlices by namespace/service
	byPod     = "pod"     // EndpointSlices by namespace/pod of each endpoint
	byIP      = "ip"      // Pods by pod IP, Services by cluster IP
	byOwner   = "owner"   // Pods by namespace/ReplicaSet that owns them
)

// cluster is the service's view of the API server: one informer per kind for the whole cluster, their
// objects trimmed to what resolving needs.
type cluster struct {
	services, slices, pods, replicaSets cache.SharedIndexInformer
	factory                             informers.SharedInformerFactory
	routes                              *gatewayRoutes // nil without a dynamic client

	domain      string // the cluster's DNS domain, cluster.local
	trustDomain string // the identities' trust domain, cluster.local
}

func newCluster(client kubernetes.Interface, domain, trustDomain string) (*cluster, error) {
	// No resync: the informers' watches deliver every change; a periodic resync would only replay the
	// cache to the handlers.
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trim))
	c := &cluster{
		factory:     f,
		services:    f.Core().V1().Services().Informer(),
		slices:      f.Discovery().V1().EndpointSlices().Informer(),
		pods:        f.Core().V1().Pods().Informer(),
		replicaSets: f.Apps().V1().ReplicaSets().Informer(),
		domain:      domain,
		trustDomain: trustDomain,
	}
	for _, add := range []struct {
		inf cache.SharedIndexInformer
		idx cache.Indexers
	}{
		{c.slices, cache.Indexers{byService: sliceService, byPod: slicePods}},
		{c.pods, cache.Indexers{byIP: podIPs, byOwner: podOwner}},
		{c.services, cache.Indexers{byIP: serviceIPs}},
	} {
		if err := add.inf.AddIndexers(add.idx); err != nil {
			return nil, fmt.Errorf("informer index: %w", err)
		}
	}
	return c, nil
}

// trim keeps only the fields resolving reads, so that holding every pod of a large cluster costs a few
// hundred bytes each rather than kilobytes.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		p := &corev1.Pod{ObjectMeta: trimMeta(o.ObjectMeta)}
		if v, ok := o.Annotations[OpaquePortsAnnotation]; ok {
			p.Annotations = map[string]string{OpaquePortsAnnotation: v}
		}
		p.Spec.ServiceAccountName = o.Spec.ServiceAccountName
		p.Spec.HostNetwork = o.Spec.HostNetwork
		for _, ct := range o.Spec.Containers {
			if ct.Name == ProxyContainer {
				p.Spec.Containers = []corev1.Container{{Name: ct.Name}}
			}
		}
		p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = o.Status.Phase, o.Status.PodIP, o.Status.PodIPs
		return p, nil
	case *appsv1.ReplicaSet:
		return &appsv1.ReplicaSet{ObjectMeta: trimMeta(o.ObjectMeta)}, nil
	case *corev1.Service:
		o.ManagedFields = nil
		return o, nil
	case *discoveryv1.EndpointSlice:
		o.ManagedFields = nil
		return o, nil
	}
	return obj, nil
}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		OwnerReferences: m.OwnerReferences, DeletionTimestamp: m.DeletionTimestamp,
	}
}

func sliceService(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]}, nil
}

func slicePods(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var keys []string
	for _, ep := range s.Endpoints {
		if r := ep.TargetRef; r != nil && r.Kind == "Pod" {
			keys = append(keys, podKey(s.Namespace, r))
		}
	}
	return keys, nil
}

func podKey(sliceNamespace string, r *corev1.ObjectReference) string {
	ns := r.Namespace
	if ns == "" {
		ns = sliceNamespace
	}
	return ns + "/" + r.Name
}

func podIPs(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.HostNetwork {
		return nil, nil // host-network pods share their node's IP: it names no pod
	}
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	return ips, nil
}

func podOwner(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	if ref := metav1.GetControllerOf(p); ref != nil && ref.Kind == "ReplicaSet" {
		return []string{p.Namespace + "/" + ref.Name}, nil
	}
	return nil, nil
}

func serviceIPs(obj any) ([]string, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return nil, nil
	}
	var ips []string
	for _, ip := range s.Spec.ClusterIPs {
		if ip != corev1.ClusterIPNone && ip != "" {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// target is what an authority names: a Service port (or one of its endpoints by hostname), or an IP
// and port (a Service's cluster IP, or a pod).
type target struct {
	namespace, service string
	hostname           string // one endpoint of the Service: a StatefulSet pod under a headless Service
	ip                 string // canonical form
	port               int32
	none               bool // a name that cannot be in the cluster: never found
}

// parseAuthority returns the target of an authority asked by a pod of namespace. Its error is for
// authorities that are not host:port at all.
func (c *cluster) parseAuthority(authority, namespace string) (target, error) {
	host, portText, err := net.SplitHostPort(authority)
	if err != nil {
		return target{}, fmt.Errorf("authority %q: want host:port", authority)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return target{}, fmt.Errorf("authority %q: bad port %q", authority, portText)
	}
	t := target{port: int32(port)}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if ip := net.ParseIP(host); ip != nil {
		t.ip = ip.String()
		return t, nil
	}
	name, isSvc := strings.CutSuffix(host, ".svc."+c.domain)
	if !isSvc {
		name, isSvc = strings.CutSuffix(host, ".svc")
	}
	labels := strings.Split(name, ".")
	switch {
	case isSvc && len(labels) == 2, !isSvc && len(labels) == 2:
		t.service, t.namespace = labels[0], labels[1]
	case isSvc && len(labels) == 3:
		t.hostname, t.service, t.namespace = labels[0], labels[1], labels[2]
	case !isSvc && len(labels) == 1 && namespace != "":
		t.service, t.namespace = labels[0], namespace
	default:
		t.none = true
	}
	return t, nil
}

// resolve returns the current endpoint set of t and the keys (see serviceKey, ipKey) whose changes
// can change it.
func (c *cluster) resolve(t target) (Update, []string) {
	switch {
	case t.none:
		return Update{}, nil
	case t.ip != "":
		deps := []string{ipKey(t.ip)}
		if objs, _ := c.services.GetIndexer().ByIndex(byIP, t.ip); len(objs) > 0 {
			svc := objs[0].(*corev1.Service)
			return c.serviceEndpoints(svc, t.port, ""), append(deps, serviceKey(svc.Namespace, svc.Name))
		}
		return c.podEndpoint(t.ip, t.port), deps
	}
	deps := []string{serviceKey(t.namespace, t.service)}
	obj, ok, _ := c.services.GetIndexer().GetByKey(t.namespace + "/" + t.service)
	if !ok {
		return Update{}, deps
	}
	return c.serviceEndpoints(obj.(*corev1.Service), t.port, t.hostname), deps
}

func serviceKey(namespace, name string) string { return "svc:" + namespace + "/" + name }
func ipKey(ip string) string                   { return "ip:" + ip }

func (c *cluster) serviceEndpoints(svc *corev1.Service, port int32, hostname string) Update {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return Update{} // a DNS alias: dialled as written, DNS answers
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if p := &svc.Spec.Ports[i]; p.Port == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			sp = p
		}
	}
	if sp == nil {
		return Update{}
	}
	opaque := sp.AppProtocol != nil && !httpAppProtocols[strings.ToLower(*sp.AppProtocol)] ||
		portListed(svc.Annotations[OpaquePortsAnnotation], sp.Port)
	u := Update{Exists: true, Labels: map[string]string{"namespace": svc.Namespace, "service": svc.Name},
		Policy: c.routes.policy(svc, port)}
	objs, _ := c.slices.GetIndexer().ByIndex(byService, svc.Namespace+"/"+svc.Name)
	seen := map[string]bool{}
	for _, obj := range objs {
		s := obj.(*discoveryv1.EndpointSlice)
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var targetPort int32
		for _, p := range s.Ports {
			if p.Port != nil && ptrOr(p.Name, "") == sp.Name && ptrOr(p.Protocol, corev1.ProtocolTCP) == corev1.ProtocolTCP {
				targetPort = *p.Port
			}
		}
		if targetPort == 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if !ptrOr(ep.Conditions.Ready, true) || len(ep.Addresses) == 0 {
				continue
			}
			var pod *corev1.Pod
			if r := ep.TargetRef; r != nil && r.Kind == "Pod" {
				if obj, ok, _ := c.pods.GetIndexer().GetByKey(podKey(s.Namespace, r)); ok {
					pod = obj.(*corev1.Pod)
				}
			}
			if hostname != "" && ptrOr(ep.Hostname, "") != hostname && (pod == nil || pod.Name != hostname) {
				continue
			}
			addr := net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(targetPort)))
			if seen[addr] {
				continue
			}
			seen[addr] = true
			e := Endpoint{Addr: addr, Labels: map[string]string{"namespace": svc.Namespace}}
			if pod != nil {
				e = c.endpointOf(pod, addr, targetPort)
			}
			e.Hints.Opaque = e.Hints.Opaque || opaque
			u.Endpoints = append(u.Endpoints, e)
		}
	}
	if hostname != "" && len(u.Endpoints) == 0 {
		return Update{} // no such pod under the Service: the name is not the cluster's
	}
	slices.SortFunc(u.Endpoints, func(a, b Endpoint) int { return strings.Compare(a.Addr, b.Addr) })
	return u
}

func (c *cluster) podEndpoint(ip string, port int32) Update {
	objs, _ := c.pods.GetIndexer().ByIndex(byIP, ip)
	for _, obj := range objs {
		pod := obj.(*corev1.Pod)
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil {
			continue // its IP may already be another pod's
		}
		e := c.endpointOf(pod, net.JoinHostPort(ip, strconv.Itoa(int(port))), port)
		return Update{Exists: true, Labels: map[string]string{"namespace": pod.Namespace}, Endpoints: []Endpoint{e}}
	}
	return Update{}
}

// endpointOf describes pod's port at addr.
func (c *cluster) endpointOf(pod *corev1.Pod, addr string, port int32) Endpoint {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	labels := map[string]string{"namespace": pod.Namespace, "pod": pod.Name, "serviceaccount": sa}
	if kind, name := c.workload(pod); kind != "" {
		labels[kind] = name
	}
	e := Endpoint{Addr: addr, Labels: labels}
	e.Hints.Opaque = portListed(pod.Annotations[OpaquePortsAnnotation], port)
	for _, ct := range pod.Spec.Containers {
		if ct.Name == ProxyContainer {
			e.Hints.Meshed = true
			e.Hints.Identity = sa + "." + pod.Namespace + ".serviceaccount.identity.meshscope." + c.trustDomain
		}
	}
	return e
}

// workload returns the label naming the pod's owning workload: deployment (through its ReplicaSet),
// statefulset, daemonset, or replicaset for a ReplicaSet without a Deployment.
func (c *cluster) workload(pod *corev1.Pod) (string, string) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return "", ""
	}
	switch ref.Kind {
	case "StatefulSet":
		return "statefulset", ref.Name
	case "DaemonSet":
		return "daemonset", ref.Name
	case "ReplicaSet":
		if obj, ok, _ := c.replicaSets.GetIndexer().GetByKey(pod.Namespace + "/" + ref.Name); ok {
			if d := metav1.GetControllerOf(obj.(*appsv1.ReplicaSet)); d != nil && d.Kind == "Deployment" {
				return "deployment", d.Name
			}
		}
		return "replicaset", ref.Name
	}
	return "", ""
}

// portListed reports whether port is in list, the opaque-ports annotation's value: ports and ranges,
// comma-separated ("3306,5432,8000-8100"). Entries that do not parse are ignored.
func portListed(list string, port int32) bool {
	for _, f := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, errA := strconv.Atoi(lo)
		b := a
		var errB error
		if isRange {
			b, errB = strconv.Atoi(hi)
		}
		if errA == nil && errB == nil && int(port) >= a && int(port) <= b {
			return true
		}
	}
	return false
}

func ptrOr[T any](p *T, zero T) T {
	if p == nil {
		return zero
	}
	return *p
}
