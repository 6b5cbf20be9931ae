// Package check tells an operator what is wrong with Meshscope in a cluster before they ask, for
// `web check`: each check is ok, or fails with a one-line cause and a hint at the fix.
package check

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/kubernetes"

	"github.com/meshscope/meshscope/api"
	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
)

// Names shared with the injector and `web install`, which this package cannot import (the web
// binary does not link the proxy's code); the proxy's container and scrape job come from api/kube
// and api.
const (
	injectAnnotation  = "meshscope.io/inject"
	componentLabel    = "meshscope.io/control-plane-component"
	webhookConfigName = "meshscope-proxy-injector"
)

// MinVersion is the oldest Kubernetes the mesh supports: native sidecars (init containers with
// restartPolicy Always) are on by default from 1.29.
var MinVersion = version.MustParseGeneric("1.29.0")

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Fail Status = "fail"
	// Skip: the check could not run because an earlier one failed.
	Skip Status = "skip"
)

// Result is one check's outcome.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Detail says what was found (ok) or the cause (fail, skip), in one line.
	Detail string `json:"detail"`
	// Hint says what to do about a failure.
	Hint string `json:"hint,omitempty"`
}

// Targets lists the Prometheus targets of a scrape job (the dashboard's api.Querier has it).
type Targets interface {
	Targets(ctx context.Context, job string) ([]v1.ActiveTarget, error)
}

// Checker holds what the checks need.
type Checker struct {
	Client kubernetes.Interface
	// Namespace is the control plane's.
	Namespace string
	// Prometheus lists the proxies' scrape targets; nil when there is no Prometheus to ask.
	Prometheus Targets
	// PrometheusVia says how Prometheus is reached, for messages (its URL, or the service proxy).
	PrometheusVia string
	// ProbeNamespace is where the webhook check creates its dry-run Pod; empty means "default".
	ProbeNamespace string
	// Timeout bounds each check; zero means 15s.
	Timeout time.Duration
}

// Run runs every check in order; a check that depends on a failed one is skipped.
func (c *Checker) Run(ctx context.Context) []Result {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	checks := []struct {
		name string
		run  func(context.Context) Result
	}{
		{"kubernetes-api", c.apiServer},
		{"control-plane", c.controlPlane},
		{"webhook", c.webhook},
		{"pods-injected", c.injected},
		{"proxies-ready", c.proxiesReady},
		{"proxies-let-dashboard-tap", c.tapClient},
		{"prometheus-scrapes-proxies", c.scraping},
	}
	var out []Result
	for i, ch := range checks {
		if i > 0 && out[0].Status != OK {
			out = append(out, Result{Name: ch.name, Status: Skip, Detail: "the API server is not usable"})
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		r := ch.run(cctx)
		cancel()
		r.Name = ch.name
		out = append(out, r)
	}
	return out
}

func ok(format string, args ...any) Result {
	return Result{Status: OK, Detail: fmt.Sprintf(format, args...)}
}

func fail(hint, format string, args ...any) Result {
	return Result{Status: Fail, Detail: fmt.Sprintf(format, args...), Hint: hint}
}

func (c *Checker) apiServer(ctx context.Context) Result {
	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		return fail("check --kubeconfig and --context, and that the cluster is up (kubectl version)",
			"cannot reach the API server: %v", oneLine(err))
	}
	return versionResult(v.GitVersion)
}

func versionResult(gitVersion string) Result {
	v, err := version.ParseGeneric(gitVersion)
	if err != nil {
		return fail("", "the API server reports version %q, which is not a Kubernetes version", gitVersion)
	}
	if v.LessThan(MinVersion) {
		return fail("upgrade the cluster, or inject with `proxy inject --sidecar=classic`",
			"Kubernetes %s is older than v%s, the first with native sidecars on by default", gitVersion, MinVersion)
	}
	return ok("Kubernetes %s", gitVersion)
}

// controlPlane: every Deployment of the control plane has as many ready pods as it wants.
func (c *Checker) controlPlane(ctx context.Context) Result {
	deps, err := c.Client.AppsV1().Deployments(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: componentLabel})
	if err != nil {
		return fail("", "list deployments in %s: %v", c.Namespace, oneLine(err))
	}
	if len(deps.Items) == 0 {
		return fail("web install | kubectl apply -f -", "no Meshscope control plane in namespace %s", c.Namespace)
	}
	pods, err := c.Client.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: componentLabel})
	if err != nil {
		return fail("", "list pods in %s: %v", c.Namespace, oneLine(err))
	}
	var names []string
	for _, d := range deps.Items {
		component := d.Spec.Template.Labels[componentLabel]
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		ready := 0
		for _, p := range pods.Items {
			if p.Labels[componentLabel] == component && podReady(&p) {
				ready++
			}
		}
		if int32(ready) < want {
			return fail(fmt.Sprintf("kubectl -n %s describe pods -l %s=%s", c.Namespace, componentLabel, component),
				"%s: %d of %d pods ready", d.Name, ready, want)
		}
		names = append(names, d.Name)
	}
	slices.Sort(names)
	return ok("%s ready", strings.Join(names, ", "))
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// webhook: the API server calls the injector. A dry-run Pod asking for injection must come back
// with a proxy; with failurePolicy Ignore an unreachable injector shows only this way.
func (c *Checker) webhook(ctx context.Context) Result {
	name := webhookConfigName + "-" + c.Namespace
	if _, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return fail("web install | kubectl apply -f -", "no MutatingWebhookConfiguration %s: pods are not injected automatically", name)
		}
		return fail("", "read MutatingWebhookConfiguration %s: %v", name, oneLine(err))
	}
	ns := c.ProbeNamespace
	if ns == "" {
		ns = "default"
	}
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "meshscope-check-", Annotations: map[string]string{injectAnnotation: "enabled"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: "meshscope-check"}}},
	}
	p, err := c.Client.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return fail("", "dry-run pod in %s: %v", ns, oneLine(err))
	}
	if !hasProxy(p) {
		return fail(fmt.Sprintf("kubectl -n %s logs deploy/meshscope-injector; kubectl -n %s get endpointslices -l kubernetes.io/service-name=meshscope-injector", c.Namespace, c.Namespace),
			"the API server created a dry-run pod without a proxy: the injector did not answer (failurePolicy Ignore let the pod through)")
	}
	return ok("the API server calls the injector (%s)", name)
}

func hasProxy(p *corev1.Pod) bool {
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, ct := range list {
			if ct.Name == kube.ProxyContainer {
				return true
			}
		}
	}
	return false
}

// runningPods lists the running pods of every namespace.
func (c *Checker) runningPods(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "status.phase=Running"})
	if err != nil {
		return nil, fmt.Errorf("list pods: %v", oneLine(err))
	}
	return pods.Items, nil
}

// meshedPods lists every running pod with a proxy, in every namespace.
func (c *Checker) meshedPods(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := c.runningPods(ctx)
	return slices.DeleteFunc(pods, func(p corev1.Pod) bool { return !hasProxy(&p) }), err
}

// injected: every running pod the webhook should have meshed has its proxy. With failurePolicy
// Ignore, a pod created while the injector was down runs without one, and nothing else says so.
func (c *Checker) injected(ctx context.Context) Result {
	nss, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fail("", "list namespaces: %v", oneLine(err))
	}
	enabled := map[string]bool{}
	for _, ns := range nss.Items {
		enabled[ns.Name] = ns.Annotations[injectAnnotation] == "enabled"
	}
	pods, err := c.runningPods(ctx)
	if err != nil {
		return fail("", "%v", err)
	}
	asked := 0
	for _, p := range pods {
		want := p.Annotations[injectAnnotation]
		if want == "" && enabled[p.Namespace] {
			want = "enabled"
		}
		if want != "enabled" || p.Spec.HostNetwork || p.Namespace == c.Namespace || p.Namespace == "kube-system" {
			continue
		}
		asked++
		if !hasProxy(&p) {
			return fail(fmt.Sprintf("restart its workload (kubectl -n %s rollout restart deploy/NAME) or delete the pod, with the injector up", p.Namespace),
				"%s/%s has no proxy though injection is enabled for it (created while the injector was down?)", p.Namespace, p.Name)
		}
	}
	return ok("%d running pods asked for injection, every one has its proxy", asked)
}

// proxiesReady: every running meshed pod's proxy container is ready.
func (c *Checker) proxiesReady(ctx context.Context) Result {
	pods, err := c.meshedPods(ctx)
	if err != nil {
		return fail("", "%v", err)
	}
	for _, p := range pods {
		statuses := append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...)
		i := slices.IndexFunc(statuses, func(s corev1.ContainerStatus) bool { return s.Name == kube.ProxyContainer })
		if i < 0 || !statuses[i].Ready {
			why := "no status yet"
			if i >= 0 {
				why = containerState(statuses[i].State)
			}
			return fail(fmt.Sprintf("kubectl -n %s logs %s -c %s", p.Namespace, p.Name, kube.ProxyContainer),
				"%s/%s: proxy not ready (%s)", p.Namespace, p.Name, why)
		}
	}
	return ok("%d meshed pods, every proxy ready", len(pods))
}

// tapClient: every meshed pod whose proxy has identity lets this control plane's dashboard tap it
// (--tap-client-identity). A pod injected by another install's injector, or before the control plane
// moved to another namespace, refuses the live view's tap in the TLS handshake, and only the proxy's
// tap_refused_total says so.
func (c *Checker) tapClient(ctx context.Context) Result {
	pods, err := c.meshedPods(ctx)
	if err != nil {
		return fail("", "%v", err)
	}
	dashboard := meshid.Name(c.Namespace, kube.Dashboard)
	withIdentity := 0
	for _, p := range pods {
		env := map[string]string{}
		for _, ctr := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
			if ctr.Name == kube.ProxyContainer {
				for _, e := range ctr.Env {
					env[e.Name] = e.Value
				}
			}
		}
		if env[kube.IdentityAddrEnv] == "" {
			continue // identity off: tap is the token's, or loopback's
		}
		withIdentity++
		lets := env[kube.TapClientIdentityEnv]
		if lets == "" {
			lets = meshid.Name(kube.Namespace, kube.Dashboard)
		}
		if lets != dashboard {
			return fail(fmt.Sprintf("restart its workload (kubectl -n %s rollout restart deploy/NAME) so that this control plane's injector injects it again", p.Namespace),
				"%s/%s: its proxy lets %s tap, not this dashboard (%s): the live views cannot tap it", p.Namespace, p.Name, lets, dashboard)
		}
	}
	return ok("%d proxies with identity, every one lets %s tap", withIdentity, dashboard)
}

func containerState(s corev1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return "waiting: " + s.Waiting.Reason
	case s.Terminated != nil:
		return "terminated: " + s.Terminated.Reason
	default:
		return "running, failing its readiness probe"
	}
}

// scraping: Prometheus scrapes every running meshed pod's proxy, and the last scrape worked.
func (c *Checker) scraping(ctx context.Context) Result {
	if c.Prometheus == nil {
		return Result{Status: Skip, Detail: "no Prometheus installed in " + c.Namespace + " and no --prometheus-url given"}
	}
	pods, err := c.meshedPods(ctx)
	if err != nil {
		return fail("", "%v", err)
	}
	targets, err := c.Prometheus.Targets(ctx, api.Job)
	if err != nil {
		return fail(fmt.Sprintf("kubectl -n %s describe pods -l %s=meshscope-prometheus", c.Namespace, componentLabel),
			"cannot ask Prometheus (%s) for its targets: %v", c.PrometheusVia, oneLine(err))
	}
	health := map[string]v1.ActiveTarget{}
	for _, t := range targets {
		health[string(t.Labels["namespace"])+"/"+string(t.Labels["pod"])] = t
	}
	for _, p := range pods {
		key := p.Namespace + "/" + p.Name
		t, found := health[key]
		switch {
		case !found:
			return fail("check that Prometheus uses the scrape job "+api.Job+" of api/kube/prometheus-kubernetes.yml and may list pods",
				"%s: Prometheus has no target for its proxy (job %s)", key, api.Job)
		case t.Health != v1.HealthGood:
			return fail(fmt.Sprintf("kubectl -n %s logs %s -c %s", p.Namespace, p.Name, kube.ProxyContainer),
				"%s: Prometheus cannot scrape its proxy at %s: %s", key, t.ScrapeURL, t.LastError)
		}
	}
	return ok("%d proxies scraped", len(pods))
}

// oneLine keeps an error to the first line of its message.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
