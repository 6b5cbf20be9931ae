package destination

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// Gateway API routes with Service parents (GAMMA, the mesh's use of Gateway API): the discovery service
// watches HTTPRoutes and GRPCRoutes through the dynamic client, so it needs no Gateway API types, and
// sends each Service's rules with its endpoints (Update.Policy).

// The Gateway API resources the service watches.
var (
	HTTPRoutes = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
	GRPCRoutes = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"}
)

// byParent indexes routes by the namespace/name of each Service they name as a parent.
const byParent = "parent"

// policyPrefixes are the annotations of a Service or route that are routing policy (proxy/routes reads them).
var policyPrefixes = []string{"retry.meshscope.io/", "timeout.meshscope.io/", "balancer.meshscope.io/"}

// gatewayRoutes are the informers of both route kinds; zero when the service has no dynamic client.
type gatewayRoutes struct {
	factory    dynamicinformer.DynamicSharedInformerFactory
	http, grpc cache.SharedIndexInformer
	domain     string
}

func newGatewayRoutes(dyn dynamic.Interface, domain string) (*gatewayRoutes, error) {
	f := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	g := &gatewayRoutes{factory: f, http: f.ForResource(HTTPRoutes).Informer(), grpc: f.ForResource(GRPCRoutes).Informer(), domain: domain}
	for _, inf := range []cache.SharedIndexInformer{g.http, g.grpc} {
		if err := inf.AddIndexers(cache.Indexers{byParent: routeParents}); err != nil {
			return nil, fmt.Errorf("informer index: %w", err)
		}
	}
	return g, nil
}

// routeParents are the namespace/name of the Services obj, a route, names as parents.
func routeParents(obj any) ([]string, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, nil
	}
	refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "parentRefs")
	var out []string
	for _, r := range refs {
		ref, _ := r.(map[string]any)
		if ns, name, _, ok := serviceRef(ref, u.GetNamespace()); ok {
			out = append(out, ns+"/"+name)
		}
	}
	return out, nil
}

// serviceRef reads a parentRef or backendRef that names a core Service: its namespace (default: the
// route's), name and port (0: unset).
func serviceRef(ref map[string]any, defaultNamespace string) (ns, name string, port int64, ok bool) {
	group, _ := ref["group"].(string)
	kind, hasKind := ref["kind"].(string)
	if (group != "" && group != "core") || (hasKind && kind != "Service") {
		return "", "", 0, false
	}
	name, _ = ref["name"].(string)
	ns, _ = ref["namespace"].(string)
	if ns == "" {
		ns = defaultNamespace
	}
	port, _ = ref["port"].(int64)
	return ns, name, port, name != ""
}

// keys are the Services whose updates a change of route obj touches.
func routeKeys(obj any) []string {
	parents, _ := routeParents(obj)
	keys := make([]string, 0, len(parents))
	for _, p := range parents {
		ns, name, _ := strings.Cut(p, "/")
		keys = append(keys, serviceKey(ns, name))
	}
	return keys
}

// policy returns the routing policy of port of svc: its policy annotations and the rules of the routes
// whose parent is the Service (without a port, or with this one); nil when there is none.
func (g *gatewayRoutes) policy(svc *corev1.Service, port int32) *Policy {
	p := &Policy{Annotations: policyAnnotations(svc.Annotations)}
	if g != nil {
		var objs []*unstructured.Unstructured
		for _, inf := range []cache.SharedIndexInformer{g.http, g.grpc} {
			found, _ := inf.GetIndexer().ByIndex(byParent, svc.Namespace+"/"+svc.Name)
			for _, o := range found {
				if u, ok := o.(*unstructured.Unstructured); ok && parentPort(u, svc, port) {
					objs = append(objs, u)
				}
			}
		}
		// Gateway API's order between routes: the oldest first, then by namespace/name.
		slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
			if c := a.GetCreationTimestamp().Compare(b.GetCreationTimestamp().Time); c != 0 {
				return c
			}
			return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
		})
		for _, u := range objs {
			p.Routes = append(p.Routes, g.rules(u)...)
		}
	}
	if len(p.Annotations) == 0 && len(p.Routes) == 0 {
		return nil
	}
	return p
}

// parentPort reports whether route u has svc as a parent for port (a parentRef without a port covers
// every port).
func parentPort(u *unstructured.Unstructured, svc *corev1.Service, port int32) bool {
	refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "parentRefs")
	for _, r := range refs {
		ref, _ := r.(map[string]any)
		if ns, name, p, ok := serviceRef(ref, u.GetNamespace()); ok && ns == svc.Namespace && name == svc.Name && (p == 0 || p == int64(port)) {
			return true
		}
	}
	return false
}

func policyAnnotations(a map[string]string) map[string]string {
	var out map[string]string
	for k, v := range a {
		for _, pre := range policyPrefixes {
			if strings.HasPrefix(k, pre) {
				if out == nil {
					out = map[string]string{}
				}
				out[k] = v
			}
		}
	}
	return out
}

// rules turns a route object's rules into wire Routes.
func (g *gatewayRoutes) rules(u *unstructured.Unstructured) []Route {
	grpc := u.GetKind() == "GRPCRoute"
	rules, _, _ := unstructured.NestedSlice(u.Object, "spec", "rules")
	var out []Route
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		wr := Route{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Annotations: policyAnnotations(u.GetAnnotations())}
		matches, _, _ := unstructured.NestedSlice(rule, "matches")
		for _, m := range matches {
			mm, _ := m.(map[string]any)
			if grpc {
				wr.Matches = append(wr.Matches, grpcMatch(mm))
			} else {
				wr.Matches = append(wr.Matches, httpMatch(mm))
			}
		}
		wr.Request, _, _ = unstructured.NestedString(rule, "timeouts", "request")
		wr.BackendRequest, _, _ = unstructured.NestedString(rule, "timeouts", "backendRequest")
		backends, _, _ := unstructured.NestedSlice(rule, "backendRefs")
		for _, b := range backends {
			ref, _ := b.(map[string]any)
			ns, name, port, ok := serviceRef(ref, u.GetNamespace())
			if !ok || port == 0 {
				continue // not a Service, or no port to send to: Gateway API requires one for Services
			}
			weight := int64(1)
			if w, ok := ref["weight"].(int64); ok {
				weight = w
			}
			wr.Backends = append(wr.Backends, Backend{
				Authority: name + "." + ns + ".svc." + g.domain + ":" + strconv.FormatInt(port, 10),
				Weight:    uint32(max(min(weight, 1_000_000), 0)),
			})
		}
		out = append(out, wr)
	}
	return out
}

func httpMatch(m map[string]any) Match {
	var wm Match
	wm.Method, _ = m["method"].(string)
	wm.PathType, _, _ = unstructured.NestedString(m, "path", "type")
	wm.Path, _, _ = unstructured.NestedString(m, "path", "value")
	wm.Headers = headerMatches(m)
	return wm
}

// grpcMatch turns a GRPCRoute match into the path of the HTTP/2 requests it selects (POST
// /service/method).
func grpcMatch(m map[string]any) Match {
	wm := Match{Method: "POST", Headers: headerMatches(m)}
	typ, _, _ := unstructured.NestedString(m, "method", "type")
	svc, _, _ := unstructured.NestedString(m, "method", "service")
	method, _, _ := unstructured.NestedString(m, "method", "method")
	switch {
	case typ == "RegularExpression":
		wm.PathType, wm.Path = "RegularExpression", "/("+orAny(svc)+")/("+orAny(method)+")"
	case svc != "" && method != "":
		wm.PathType, wm.Path = "Exact", "/"+svc+"/"+method
	case svc != "":
		wm.PathType, wm.Path = "PathPrefix", "/"+svc
	case method != "":
		wm.PathType, wm.Path = "RegularExpression", "/[^/]+/"+regexp.QuoteMeta(method)
	}
	return wm
}

func orAny(s string) string {
	if s == "" {
		return "[^/]+"
	}
	return s
}

func headerMatches(m map[string]any) []HeaderMatch {
	hs, _, _ := unstructured.NestedSlice(m, "headers")
	var out []HeaderMatch
	for _, h := range hs {
		hm, _ := h.(map[string]any)
		typ, _ := hm["type"].(string)
		name, _ := hm["name"].(string)
		value, _ := hm["value"].(string)
		out = append(out, HeaderMatch{Name: name, Value: value, Regex: typ == "RegularExpression"})
	}
	return out
}
