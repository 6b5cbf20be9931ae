package kube

import rbacv1 "k8s.io/api/rbac/v1"

// Control-plane components, by the name of their ServiceAccount (and ClusterRole).
const (
	Dashboard   = "meshscope-dashboard"
	Destination = "meshscope-destination"
	Injector    = "meshscope-injector"
	Identity    = "meshscope-identity"
	Prometheus  = "meshscope-prometheus"
)

// watch is what an informer (or Prometheus' service discovery) does: list, then watch from there.
var watch = []string{"list", "watch"}

// ClusterRules returns the cluster-wide permissions each control-plane component needs, by
// component: the verbs its code uses on what it uses them on, and nothing else (proxies hold none at
// all). rbac_test.go asks the real API server that each can do what it needs and nothing more.
func ClusterRules() map[string][]rbacv1.PolicyRule {
	return map[string][]rbacv1.PolicyRule{
		// The dashboard lists pods to find the proxies to tap (api.KubeProxies); everything else it shows
		// comes from Prometheus.
		Dashboard: {
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		},
		// The destination service watches endpoints, services and pods and their owners, and the Gateway
		// API routes whose parents are Services.
		Destination: {
			{APIGroups: []string{""}, Resources: []string{"services", "pods"}, Verbs: watch},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: watch},
			{APIGroups: []string{"apps"}, Resources: []string{"replicasets"}, Verbs: watch},
			{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes", "grpcroutes"}, Verbs: watch},
		},
		// The injector reads a pod's namespace for its meshscope.io/inject annotation.
		Injector: {
			{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}},
		},
		// The identity service has proxies' ServiceAccount tokens reviewed.
		Identity: {
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		},
		// Prometheus discovers pods (kubernetes_sd_configs role pod).
		Prometheus: {
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: watch},
		},
	}
}
