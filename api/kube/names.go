package kube

// Names in the cluster that every component agrees on.
const (
	// Namespace is the control plane's namespace unless web install is told another.
	Namespace = "meshscope"
	// ProxyContainer is the sidecar container the injector adds: a pod with it is meshed.
	ProxyContainer = "meshscope-proxy"
	// AdminPortName names the proxy container's admin port (/metrics, /tap), 4191.
	AdminPortName = "meshscope-admin"
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
