package kube

// Names in the cluster that every component agrees on.
const (
	// Namespace is the control plane's namespace unless web install is told another.
	Namespace = "meshscope"
	// ProxyContainer is the sidecar container the injector adds: a pod with it is meshed.
	ProxyContainer = "meshscope-proxy"
	// AdminPortName names the proxy container's admin port (/metrics, /tap), 4191.
	AdminPortName = "meshscope-admin"
	// IdentityAddrEnv, set on the proxy container, turns its identity on (--identity-addr).
	IdentityAddrEnv = "MESHSCOPE_PROXY_IDENTITY_ADDR"
	// TapClientIdentityEnv, set on the proxy container, names the identity it lets tap
	// (--tap-client-identity); unset, the dashboard's in Namespace.
	TapClientIdentityEnv = "MESHSCOPE_PROXY_TAP_CLIENT_IDENTITY"
)

// WorkloadLabels are the pod labels the injector adds to name a pod's workload, by the kind of the
// workload: the dashboard's deployment label comes from whichever is set (see prometheus-kubernetes.yml).
var WorkloadLabels = []string{
	"meshscope.io/proxy-deployment",
	"meshscope.io/proxy-statefulset",
	"meshscope.io/proxy-daemonset",
	"meshscope.io/proxy-replicaset",
	"meshscope.io/proxy-job",
	"meshscope.io/proxy-cronjob",
}
