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

var read = []string{"get", "list", "watch"}

// ClusterRules returns the cluster-wide permissions each control-plane component needs, by
// component: read access to what it watches and nothing else (proxies hold none at all).
func ClusterRules() map[string][]rbacv1.PolicyRule {
	return map[string][]rbacv1.PolicyRule{
		// The dashboard lists namespaces, workloads and pods (tap targets).
		Dashboard: {
			{APIGroups: []string{""}, Resources: []string{"namespaces", "pods"}, Verbs: read},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets", "daemonsets", "replicasets"}, Verbs: read},
		},
		// The destination service watches endpoints, services and pods and their owners, and the Gateway
		// API routes whose parents are Services.
		Destination: {
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: read},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
			{APIGroups: []string{"apps"}, Resources: []string{"replicasets"}, Verbs: read},
			{APIGroups: []string{"batch"}, Resources: []string{"jobs"}, Verbs: read},
			{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes", "grpcroutes"}, Verbs: read},
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
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: read},
		},
	}
}
