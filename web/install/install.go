// Package install renders everything Meshscope runs in a Kubernetes cluster, for `web install`:
// the control-plane namespace, the dashboard, the destination service, the proxy injector (a
// mutating admission webhook with its certificate), a Prometheus that scrapes every proxy, and the
// ServiceAccounts and RBAC each needs. Objects are built with the real API types and printed as
// YAML in a fixed order with sorted keys, so the same options give the same bytes.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/rules"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Ports of the control plane's containers.
const (
	DashboardPort   = 8084
	DestinationPort = 8086
	WebhookPort     = 8443
	PrometheusPort  = 9090
)

// Names of the objects other commands look up (web check, web dashboard).
const (
	DefaultNamespace = kube.Namespace
	WebhookConfig    = "meshscope-proxy-injector"
	WebhookSecret    = "meshscope-injector-tls"
	// ComponentLabel names a control-plane pod's component (kube.Dashboard, kube.Destination, ...).
	ComponentLabel = "meshscope.io/control-plane-component"
)

// Options shape what Render prints. The zero value (with TLS set) is a default install.
type Options struct {
	// Namespace of the control plane; empty means DefaultNamespace.
	Namespace string
	// Registry and Tag name the images: Registry + "/web:" + Tag and Registry + "/proxy:" + Tag.
	// Empty means "meshscope" and "v0.1.0".
	Registry, Tag string
	// PrometheusImage is the Prometheus image; empty means prom/prometheus:v3.5.0.
	PrometheusImage string
	// DashboardReplicas, DestinationReplicas, InjectorReplicas: zero means 1.
	DashboardReplicas, DestinationReplicas, InjectorReplicas int32
	// PrometheusURL, when set, is the user's own Prometheus-compatible backend: no Prometheus is
	// installed and the dashboard queries it.
	PrometheusURL string
	// Retention bounds the installed Prometheus' storage by age; empty means 6h.
	Retention string
	// RetentionSize bounds it by size; empty means 1GB.
	RetentionSize string
	// GrafanaURL, when set, makes the dashboard link every resource to Grafana.
	GrafanaURL string
	// BasePath serves the dashboard under a prefix (behind an ingress), e.g. /meshscope.
	BasePath string
	// EnforcedHost is the regex the dashboard's Host header must match; empty keeps the dashboard's
	// default (loopback names: what web dashboard's port-forward uses).
	EnforcedHost string
	// TLS is the webhook's certificate; Render needs one (see NewTLS and ClusterTLS).
	TLS *TLS
	// NoIdentity leaves the identity service out: proxies run without certificates or mutual TLS.
	NoIdentity bool
	// Identity is the mesh's trust anchors and issuer; Render needs it unless NoIdentity (see
	// NewIdentity, ReadIdentity and ClusterIdentity).
	Identity *Identity
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func (o Options) namespace() string { return or(o.Namespace, DefaultNamespace) }
func (o Options) image(name string) string {
	return or(o.Registry, "meshscope") + "/" + name + ":" + or(o.Tag, "v0.1.0")
}
func (o Options) prometheusURL() string {
	return or(o.PrometheusURL, "http://"+kube.Prometheus+"."+o.namespace()+".svc.cluster.local:"+strconv.Itoa(PrometheusPort))
}

// Validate reports the first bad option in user terms.
func (o Options) Validate() error {
	if errs := validNamespace(o.namespace()); errs != "" {
		return fmt.Errorf("namespace %q: %s", o.namespace(), errs)
	}
	for name, raw := range map[string]string{"prometheus-url": o.PrometheusURL, "grafana-url": o.GrafanaURL} {
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s %q: want an http(s) URL", name, raw)
		}
	}
	for name, n := range map[string]int32{"dashboard-replicas": o.DashboardReplicas, "destination-replicas": o.DestinationReplicas, "injector-replicas": o.InjectorReplicas} {
		if n < 0 {
			return fmt.Errorf("%s %d: want 1 or more", name, n)
		}
	}
	if o.BasePath != "" && (!strings.HasPrefix(o.BasePath, "/") || strings.HasSuffix(o.BasePath, "/") || strings.ContainsAny(o.BasePath, "?#% ")) {
		return fmt.Errorf("dashboard-base-path %q: want a path like /meshscope (leading slash, no trailing slash)", o.BasePath)
	}
	if _, err := regexp.Compile(o.EnforcedHost); err != nil {
		return fmt.Errorf("dashboard-enforced-host %q: %v", o.EnforcedHost, err)
	}
	if o.RetentionSize != "" {
		if _, err := resource.ParseQuantity(strings.TrimSuffix(o.RetentionSize, "B")); err != nil {
			return fmt.Errorf("retention-size %q: want a size like 512MB or 2GB", o.RetentionSize)
		}
	}
	return nil
}

func validNamespace(ns string) string {
	if len(ns) == 0 || len(ns) > 63 {
		return "want 1 to 63 characters"
	}
	for i, r := range ns {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' && i > 0 && i < len(ns)-1) {
			return "want lower-case letters, digits and inner dashes (an RFC 1123 label)"
		}
	}
	return ""
}

// Render returns the control plane as YAML documents for `kubectl apply -f -`.
func Render(o Options) ([]byte, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.TLS == nil {
		return nil, errors.New("no webhook certificate")
	}
	if !o.NoIdentity && o.Identity == nil {
		return nil, errors.New("no identity issuer")
	}
	objs := o.objects()
	var out bytes.Buffer
	for i, obj := range objs {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return nil, err
		}
		// Fields the server owns, which the types print as null or {}.
		if meta, ok := m["metadata"].(map[string]any); ok {
			delete(meta, "creationTimestamp")
		}
		delete(m, "status")
		b, err := yaml.Marshal(m)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}

// objects is the control plane, in the order it is best applied: namespace, identities and
// permissions, configuration, then workloads and the webhook that depends on them.
func (o Options) objects() []runtime.Object {
	ns := o.namespace()
	components := []string{kube.Dashboard, kube.Destination, kube.Injector}
	if !o.NoIdentity {
		components = append(components, kube.Identity)
	}
	if o.PrometheusURL == "" {
		components = append(components, kube.Prometheus)
	}
	objs := []runtime.Object{&corev1.Namespace{
		TypeMeta: typeMeta("v1", "Namespace"),
		ObjectMeta: metav1.ObjectMeta{
			Name:        ns,
			Labels:      map[string]string{"app.kubernetes.io/part-of": "meshscope"},
			Annotations: map[string]string{"meshscope.io/inject": "disabled"},
		},
	}}
	rules := kube.ClusterRules()
	for _, c := range components {
		objs = append(objs, &corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"), ObjectMeta: o.meta(c)})
	}
	for _, c := range components {
		objs = append(objs,
			&rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"), ObjectMeta: o.clusterMeta(c), Rules: rules[c]},
			&rbacv1.ClusterRoleBinding{
				TypeMeta:   typeMeta("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
				ObjectMeta: o.clusterMeta(c),
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: c + "-" + ns},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: c, Namespace: ns}},
			})
	}
	objs = append(objs, o.webhookSecret())
	if !o.NoIdentity {
		objs = append(objs, o.identitySecret(), o.trustAnchors())
	}
	if o.PrometheusURL == "" {
		objs = append(objs, o.prometheusConfig())
	}
	objs = append(objs,
		o.service(kube.Dashboard, DashboardPort, DashboardPort, "http"),
		o.service(kube.Destination, DestinationPort, DestinationPort, "http"),
		o.service(kube.Injector, 443, WebhookPort, "https"),
	)
	if !o.NoIdentity {
		objs = append(objs, o.service(kube.Identity, IdentityPort, IdentityPort, "https"))
	}
	if o.PrometheusURL == "" {
		objs = append(objs, o.service(kube.Prometheus, PrometheusPort, PrometheusPort, "http"))
	}
	objs = append(objs, o.dashboard(), o.destination(), o.injector())
	if !o.NoIdentity {
		objs = append(objs, o.identity())
	}
	if o.PrometheusURL == "" {
		objs = append(objs, o.prometheus())
	}
	return append(objs, o.webhookConfig())
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

func labels(component string) map[string]string {
	return map[string]string{"app.kubernetes.io/part-of": "meshscope", ComponentLabel: component}
}

func (o Options) meta(component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: component, Namespace: o.namespace(), Labels: labels(component)}
}

// clusterMeta names a cluster-scoped object after its component and the control plane's namespace,
// so that two control planes in two namespaces do not share one.
func (o Options) clusterMeta(component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: component + "-" + o.namespace(), Labels: labels(component)}
}

func (o Options) service(component string, port, target int, name string) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   typeMeta("v1", "Service"),
		ObjectMeta: o.meta(component),
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{ComponentLabel: component},
			Ports:    []corev1.ServicePort{{Name: name, Port: int32(port), TargetPort: intstr.FromInt32(int32(target)), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// deployment is a control-plane Deployment running one container as a non-root user with a
// read-only root filesystem, no privilege escalation and no capabilities.
func (o Options) deployment(component string, replicas int32, c corev1.Container, volumes ...corev1.Volume) *appsv1.Deployment {
	c.Name = strings.TrimPrefix(component, "meshscope-")
	c.ImagePullPolicy = corev1.PullIfNotPresent
	c.SecurityContext = &corev1.SecurityContext{
		RunAsNonRoot:             new(true),
		AllowPrivilegeEscalation: new(false),
		ReadOnlyRootFilesystem:   new(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	return &appsv1.Deployment{
		TypeMeta:   typeMeta("apps/v1", "Deployment"),
		ObjectMeta: o.meta(component),
		Spec: appsv1.DeploymentSpec{
			Replicas: new(or(replicas, 1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{ComponentLabel: component}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(component)},
				Spec: corev1.PodSpec{
					ServiceAccountName: component,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: new(true), RunAsUser: new(int64(65532)), RunAsGroup: new(int64(65532)), FSGroup: new(int64(65532)),
					},
					Containers: []corev1.Container{c},
					Volumes:    volumes,
				},
			},
		},
	}
}

func resources(cpu, memory, limit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(limit)},
	}
}

func httpProbe(path string, port int, scheme corev1.URIScheme) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromInt32(int32(port)), Scheme: scheme,
			// The dashboard answers only to loopback names (DNS rebinding); the kubelet would
			// otherwise send the pod's IP.
			HTTPHeaders: []corev1.HTTPHeader{{Name: "Host", Value: "localhost"}},
		}},
		PeriodSeconds: 10, TimeoutSeconds: 2, FailureThreshold: 3,
	}
}

func (o Options) dashboard() *appsv1.Deployment {
	args := []string{"serve",
		"--listen=0.0.0.0:" + strconv.Itoa(DashboardPort),
		"--prometheus-url=" + o.prometheusURL(),
	}
	if o.GrafanaURL != "" {
		args = append(args, "--grafana-url="+o.GrafanaURL)
	}
	if o.BasePath != "" {
		args = append(args, "--base-path="+o.BasePath)
	}
	if o.EnforcedHost != "" {
		// localhost stays allowed: the kubelet's probes send it, and so does web dashboard.
		args = append(args, "--enforced-host="+o.EnforcedHost+`|localhost(:\d+)?`)
	}
	c := corev1.Container{
		Image:          o.image("web"),
		Args:           args,
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: DashboardPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: httpProbe(o.BasePath+"/readyz", DashboardPort, corev1.URISchemeHTTP),
		LivenessProbe:  httpProbe(o.BasePath+"/healthz", DashboardPort, corev1.URISchemeHTTP),
		Resources:      resources("50m", "64Mi", "256Mi"),
	}
	if o.NoIdentity {
		return o.deployment(kube.Dashboard, o.DashboardReplicas, c)
	}
	// The dashboard taps the proxies over mutual TLS with its own ServiceAccount's identity, which
	// the proxies accept (the injector's --tap-client-identity), so no tap token exists in the cluster:
	// the issuer's address, the trust anchors and a token for the issuer's audience, as a proxy has.
	c.Args = append(c.Args,
		"--identity-addr="+o.serviceAddr(kube.Identity, IdentityPort),
		"--identity-trust-anchors="+trustAnchorsDir+"/"+trustAnchorsFile,
		"--identity-token-file="+identityTokenDir+"/token")
	c.VolumeMounts = []corev1.VolumeMount{
		{Name: "trust-anchors", MountPath: trustAnchorsDir, ReadOnly: true},
		{Name: "identity-token", MountPath: identityTokenDir, ReadOnly: true},
	}
	return o.deployment(kube.Dashboard, o.DashboardReplicas, c, o.trustAnchorsVolume(),
		corev1.Volume{Name: "identity-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: meshid.Audience, ExpirationSeconds: new(int64(86400)), Path: "token"}}},
		}}})
}

// Where the control plane's pods mount the mesh's trust anchors, and the dashboard its token for the
// issuer.
const (
	trustAnchorsDir  = "/var/run/meshscope/trust-anchors"
	identityTokenDir = "/var/run/meshscope/identity"
)

// trustAnchorsVolume is the trust anchors' ConfigMap (trustAnchors), as a volume.
func (o Options) trustAnchorsVolume() corev1.Volume {
	return corev1.Volume{Name: "trust-anchors", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: TrustAnchorsConfig}}}}
}

func (o Options) destination() *appsv1.Deployment {
	return o.deployment(kube.Destination, o.DestinationReplicas, corev1.Container{
		Image:          o.image("proxy"),
		Args:           []string{"destination", "--listen=0.0.0.0:" + strconv.Itoa(DestinationPort)},
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: DestinationPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: httpProbe("/ready", DestinationPort, corev1.URISchemeHTTP),
		LivenessProbe:  httpProbe("/live", DestinationPort, corev1.URISchemeHTTP),
		Resources:      resources("50m", "64Mi", "256Mi"),
	})
}

func (o Options) injector() *appsv1.Deployment {
	c := corev1.Container{
		Image: o.image("proxy"),
		Args: []string{"inject", "--webhook",
			"--listen=0.0.0.0:" + strconv.Itoa(WebhookPort),
			"--tls-dir=/var/run/meshscope/tls",
			"--image=" + o.image("proxy"),
			"--destination-addr=" + o.serviceAddr(kube.Destination, DestinationPort),
		},
		Ports:          []corev1.ContainerPort{{Name: "https", ContainerPort: WebhookPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: httpProbe("/healthz", WebhookPort, corev1.URISchemeHTTPS),
		LivenessProbe:  httpProbe("/healthz", WebhookPort, corev1.URISchemeHTTPS),
		Resources:      resources("20m", "32Mi", "128Mi"),
		VolumeMounts:   []corev1.VolumeMount{{Name: "tls", MountPath: "/var/run/meshscope/tls", ReadOnly: true}},
	}
	volumes := []corev1.Volume{{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: WebhookSecret}}}}
	if !o.NoIdentity {
		c.Args = append(c.Args,
			"--identity-addr="+o.serviceAddr(kube.Identity, IdentityPort),
			"--identity-trust-anchors="+trustAnchorsDir+"/"+trustAnchorsFile,
			// The proxies let the dashboard of this control plane tap, whatever its namespace.
			"--tap-client-identity="+meshid.Name(o.namespace(), kube.Dashboard))
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "trust-anchors", MountPath: trustAnchorsDir, ReadOnly: true})
		volumes = append(volumes, o.trustAnchorsVolume())
	}
	return o.deployment(kube.Injector, o.InjectorReplicas, c, volumes...)
}

func (o Options) serviceAddr(component string, port int) string {
	return component + "." + o.namespace() + ".svc.cluster.local:" + strconv.Itoa(port)
}

// identity is `proxy identity`, the issuer: it signs proxies' certificates for the ServiceAccount
// their token proves (a TokenReview).
func (o Options) identity() *appsv1.Deployment {
	tcp := &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(IdentityPort)}},
		PeriodSeconds: 10, TimeoutSeconds: 2, FailureThreshold: 3,
	}
	return o.deployment(kube.Identity, 1, corev1.Container{
		Image:          o.image("proxy"),
		Args:           []string{"identity", "--dir=" + identityServiceFiles, "--listen=0.0.0.0:" + strconv.Itoa(IdentityPort)},
		Ports:          []corev1.ContainerPort{{Name: "https", ContainerPort: IdentityPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: tcp,
		LivenessProbe:  tcp,
		Resources:      resources("20m", "32Mi", "128Mi"),
		VolumeMounts:   []corev1.VolumeMount{{Name: "issuer", MountPath: identityServiceFiles, ReadOnly: true}},
	}, corev1.Volume{Name: "issuer", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: IdentitySecret}}})
}

func (o Options) identitySecret() *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   typeMeta("v1", "Secret"),
		ObjectMeta: metav1.ObjectMeta{Name: IdentitySecret, Namespace: o.namespace(), Labels: labels(kube.Identity)},
		Data: map[string][]byte{
			trustAnchorsFile: o.Identity.AnchorsPEM, issuerCertFile: o.Identity.IssuerCertPEM, issuerKeyFile: o.Identity.IssuerKeyPEM,
		},
	}
}

// trustAnchors publishes the anchors (not the issuer's key) for the injector and for operators.
func (o Options) trustAnchors() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   typeMeta("v1", "ConfigMap"),
		ObjectMeta: metav1.ObjectMeta{Name: TrustAnchorsConfig, Namespace: o.namespace(), Labels: labels(kube.Identity)},
		Data:       map[string]string{trustAnchorsFile: string(o.Identity.AnchorsPEM)},
	}
}

func (o Options) prometheusConfig() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   typeMeta("v1", "ConfigMap"),
		ObjectMeta: o.meta(kube.Prometheus),
		Data:       map[string]string{"prometheus.yml": kube.PrometheusConfig, rules.FileName: string(rules.YAML())},
	}
}

func (o Options) prometheus() *appsv1.Deployment {
	d := o.deployment(kube.Prometheus, 1, corev1.Container{
		Image: or(o.PrometheusImage, "prom/prometheus:v3.5.0"),
		Args: []string{
			"--config.file=/etc/prometheus/prometheus.yml",
			"--storage.tsdb.path=/prometheus",
			"--storage.tsdb.retention.time=" + or(o.Retention, "6h"),
			"--storage.tsdb.retention.size=" + or(o.RetentionSize, "1GB"),
			"--web.listen-address=0.0.0.0:" + strconv.Itoa(PrometheusPort),
		},
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: PrometheusPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: httpProbe("/-/ready", PrometheusPort, corev1.URISchemeHTTP),
		LivenessProbe:  httpProbe("/-/healthy", PrometheusPort, corev1.URISchemeHTTP),
		Resources:      resources("100m", "256Mi", "1Gi"),
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: "/etc/prometheus", ReadOnly: true},
			{Name: "data", MountPath: "/prometheus"},
		},
	},
		corev1.Volume{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: kube.Prometheus}}}},
		corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: new(resource.MustParse("2Gi"))}}},
	)
	// One writer per data directory: a rolling update must stop the old pod first.
	d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	return d
}

func (o Options) webhookSecret() *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   typeMeta("v1", "Secret"),
		ObjectMeta: metav1.ObjectMeta{Name: WebhookSecret, Namespace: o.namespace(), Labels: labels(kube.Injector)},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": o.TLS.CertPEM, "tls.key": o.TLS.KeyPEM, "ca.crt": o.TLS.CAPEM},
	}
}

// webhookConfig registers the injector for every Pod created outside kube-system and the control
// plane's own namespace. failurePolicy Ignore: while the injector is down, Pods are created without
// a proxy rather than not at all, so a mesh outage never stops a cluster from running its workloads
// (the injector's own replacement pod included).
func (o Options) webhookConfig() *admissionregistrationv1.MutatingWebhookConfiguration {
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	never := admissionregistrationv1.NeverReinvocationPolicy
	equivalent := admissionregistrationv1.Equivalent
	path := "/inject"
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   typeMeta("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
		ObjectMeta: metav1.ObjectMeta{Name: WebhookConfig + "-" + o.namespace(), Labels: labels(kube.Injector)},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "proxy-injector.meshscope.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service:  &admissionregistrationv1.ServiceReference{Namespace: o.namespace(), Name: kube.Injector, Path: &path, Port: new(int32(443))},
				CABundle: o.TLS.CAPEM,
			},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", o.namespace()},
			}}},
			FailurePolicy:           &ignore,
			MatchPolicy:             &equivalent,
			SideEffects:             &none,
			TimeoutSeconds:          new(int32(5)),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &never,
		}},
	}
}
