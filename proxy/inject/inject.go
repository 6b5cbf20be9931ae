// Package inject adds Meshscope's proxy to Kubernetes pod templates and takes it away again: the
// logic behind `proxy inject` (manifests on disk) and the mutating admission webhook (pods as the API
// server creates them). Both work on the same unstructured objects, so what the injector does not
// own passes through untouched: the proxy's containers are built with the real API types and added
// beside the user's, whose fields are never decoded into Go structs and re-encoded.
package inject

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshscope/meshscope/api/kube"
	"github.com/meshscope/meshscope/api/meshid"
)

// Names fixed by the mesh's contract: the injector's containers and port, the annotations that
// shape a pod's proxy, and the label prefix that names its workload.
const (
	ProxyContainer = kube.ProxyContainer
	InitContainer  = "meshscope-init"
	AdminPortName  = kube.AdminPortName
	// XtablesVolume is the init container's writable /run: iptables takes its lock file there, and
	// the container's root filesystem is read-only.
	XtablesVolume = "meshscope-init-xtables"
	AdminPort     = 4191
	InboundPort   = 4143
	OutboundPort  = 4140
	ProxyUID      = 2102

	// InjectAnnotation on a namespace or pod template: "enabled" asks the webhook to mesh its
	// pods; "disabled" keeps `proxy inject` and the webhook away from them.
	InjectAnnotation = "meshscope.io/inject"
	// WorkloadLabelPrefix + "deployment" (or statefulset, daemonset, ...) names the pod's workload,
	// which Prometheus' relabelling turns into the deployment target label.
	WorkloadLabelPrefix = "meshscope.io/proxy-"

	// TrustAnchorsAnnotation carries the mesh's trust anchors (PEM) on an injected pod template; a
	// downward API volume turns it into the file the proxy reads, so no ConfigMap has to be copied
	// into every namespace.
	TrustAnchorsAnnotation = "meshscope.io/identity-trust-anchors"
	// IdentityVolume holds the trust anchors and the ServiceAccount token the identity service reviews.
	IdentityVolume = "meshscope-identity"
	identityDir    = "/var/run/meshscope/identity"
	// IdentityAudience is the audience of that token, which the identity service requires.
	IdentityAudience = "identity.meshscope.io"

	OpaquePortsAnnotation       = "config.meshscope.io/opaque-ports"
	SkipInboundPortsAnnotation  = "config.meshscope.io/skip-inbound-ports"
	SkipOutboundPortsAnnotation = "config.meshscope.io/skip-outbound-ports"
	LogLevelAnnotation          = "config.meshscope.io/proxy-log-level"

	// DefaultImage is the proxy's image; the same binary is its init container.
	DefaultImage = "meshscope/proxy:v0.1.0"
	// DefaultDestinationAddr is the discovery service `web install` runs.
	DefaultDestinationAddr = "meshscope-destination.meshscope.svc.cluster.local:8086"
)

// Sidecar is how the proxy runs beside the application.
type Sidecar string

const (
	// Native runs the proxy as an init container with restartPolicy Always (Kubernetes 1.29+): it
	// starts before the application's containers and stops after them, and a Job still completes.
	Native Sidecar = "native"
	// Classic runs the proxy as the first regular container, for clusters without native sidecars.
	Classic Sidecar = "classic"
)

// Config is how the injector builds the proxy's containers. The zero value injects DefaultImage as
// a native sidecar talking to DefaultDestinationAddr.
type Config struct {
	// Image is the proxy's image, also used for its init container; empty means DefaultImage.
	Image string
	// Sidecar is Native or Classic; empty means Native.
	Sidecar Sidecar
	// DestinationAddr is the discovery service's host:port; empty means DefaultDestinationAddr.
	DestinationAddr string
	// IdentityAddr, when set, is the identity service's host:port the proxy asks for its certificate.
	IdentityAddr string
	// TrustAnchors is the mesh's trust anchor bundle (PEM), required with IdentityAddr.
	TrustAnchors []byte
	// TapClientIdentity, with IdentityAddr, is the identity the proxies let tap over mutual TLS (the
	// dashboard's: web install passes its ServiceAccount in the control plane's namespace); empty keeps
	// the proxy's default, the dashboard's in the namespace meshscope.
	TapClientIdentity string
}

func (c Config) image() string {
	if c.Image == "" {
		return DefaultImage
	}
	return c.Image
}

func (c Config) destinationAddr() string {
	if c.DestinationAddr == "" {
		return DefaultDestinationAddr
	}
	return c.DestinationAddr
}

// Validate reports the first configuration error in user terms.
func (c Config) Validate() error {
	if c.Sidecar != "" && c.Sidecar != Native && c.Sidecar != Classic {
		return fmt.Errorf("sidecar %q: want native or classic", c.Sidecar)
	}
	if c.IdentityAddr != "" {
		if len(c.TrustAnchors) == 0 {
			return fmt.Errorf("identity-addr needs the mesh's trust anchors (identity-trust-anchors)")
		}
		if err := checkAnchors(c.TrustAnchors); err != nil {
			return fmt.Errorf("identity-trust-anchors: %w", err)
		}
	}
	if c.TapClientIdentity != "" {
		if _, _, err := meshid.ParseName(c.TapClientIdentity); err != nil {
			return fmt.Errorf("tap-client-identity: %w", err)
		}
	}
	return nil
}

// checkAnchors accepts a PEM bundle of CA certificates.
func checkAnchors(data []byte) error {
	n := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if b.Type != "CERTIFICATE" || err != nil {
			return fmt.Errorf("PEM block %d: want a certificate", n+1)
		}
		if !cert.IsCA {
			return fmt.Errorf("%q is not a CA certificate", cert.Subject.CommonName)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no PEM certificate")
	}
	return nil
}

// Workload names what owns a pod template: its kind in lower case ("deployment", "statefulset",
// ...) and its name. Kind "pod" (a bare pod) or an empty name adds no workload label.
type Workload struct {
	Kind string
	Name string
}

// label is the workload label's key, or "" when the pod has no workload to name.
func (w Workload) label() string {
	if w.Name == "" || w.Kind == "" || w.Kind == "pod" {
		return ""
	}
	return WorkloadLabelPrefix + w.Kind
}

// SkipError says why a pod template is left alone; it is not a failure.
type SkipError struct{ Reason string }

func (e SkipError) Error() string { return e.Reason }

// Template injects the proxy into a pod template (or a pod): an object with "metadata" and "spec",
// changed in place. Injecting an injected template re-injects it with this Config, so injecting
// twice is injecting once. It returns a SkipError when the template must not be meshed, and an
// error naming the field or annotation for a template it cannot read.
func (c Config) Template(tmpl map[string]any, w Workload) error {
	// Read through JSON, as the API server does: the template's numbers may be json.Number.
	raw, err := json.Marshal(tmpl)
	if err != nil {
		return err
	}
	var typed corev1.PodTemplateSpec
	if err := json.Unmarshal(raw, &typed); err != nil {
		return fmt.Errorf("pod template: %w", err)
	}
	if reason := skipReason(&typed); reason != "" {
		return SkipError{reason}
	}
	opts, err := readAnnotations(typed.Annotations)
	if err != nil {
		return err
	}
	Uninject(tmpl)
	spec := ensureMap(tmpl, "spec")
	proxy, err := toMap(c.proxyContainer(opts, w))
	if err != nil {
		return err
	}
	initc, err := toMap(c.initContainer(opts))
	if err != nil {
		return err
	}
	inits := []any{initc}
	containers := list(spec, "containers")
	if c.Sidecar == Classic {
		containers = append([]any{proxy}, containers...)
	} else {
		inits = append(inits, proxy)
	}
	spec["initContainers"] = append(inits, list(spec, "initContainers")...)
	spec["containers"] = containers
	spec["volumes"] = append(list(spec, "volumes"), map[string]any{"name": XtablesVolume, "emptyDir": map[string]any{}})
	if c.IdentityAddr != "" {
		vol, err := runtime.DefaultUnstructuredConverter.ToUnstructured(new(identityVolume()))
		if err != nil {
			return err
		}
		spec["volumes"] = append(list(spec, "volumes"), vol)
		ensureMap(ensureMap(tmpl, "metadata"), "annotations")[TrustAnchorsAnnotation] = string(c.TrustAnchors)
	}
	if key := w.label(); key != "" {
		ensureMap(ensureMap(tmpl, "metadata"), "labels")[key] = w.Name
	}
	return nil
}

// Uninject takes the proxy's containers and workload label out of a pod template and reports
// whether it found any. Lists and maps it empties are removed, so a template that had none before
// injection has none after.
func Uninject(tmpl map[string]any) bool {
	changed := false
	if spec, ok := tmpl["spec"].(map[string]any); ok {
		for _, key := range []string{"initContainers", "containers", "volumes"} {
			items, ok := spec[key].([]any)
			if !ok {
				continue
			}
			kept := slices.DeleteFunc(slices.Clone(items), func(item any) bool {
				m, _ := item.(map[string]any)
				name, _ := m["name"].(string)
				return name == ProxyContainer || name == InitContainer || name == XtablesVolume || name == IdentityVolume
			})
			if len(kept) == len(items) {
				continue
			}
			changed = true
			if len(kept) == 0 && key != "containers" {
				delete(spec, key)
			} else {
				spec[key] = kept
			}
		}
	}
	if meta, ok := tmpl["metadata"].(map[string]any); ok {
		if labels, ok := meta["labels"].(map[string]any); ok {
			for key := range labels {
				if strings.HasPrefix(key, WorkloadLabelPrefix) {
					delete(labels, key)
					changed = true
				}
			}
			if len(labels) == 0 && changed {
				delete(meta, "labels")
			}
		}
		if annotations, ok := meta["annotations"].(map[string]any); ok {
			if _, found := annotations[TrustAnchorsAnnotation]; found {
				delete(annotations, TrustAnchorsAnnotation)
				changed = true
				if len(annotations) == 0 {
					delete(meta, "annotations")
				}
			}
		}
		if len(meta) == 0 && changed {
			delete(tmpl, "metadata")
		}
	}
	return changed
}

// skipReason says why a template must not be meshed, or "" when it may be.
func skipReason(t *corev1.PodTemplateSpec) string {
	switch {
	case t.Annotations[InjectAnnotation] == "disabled":
		return InjectAnnotation + ": disabled"
	case t.Spec.HostNetwork:
		return "hostNetwork: the proxy would intercept the node's own traffic"
	case t.Annotations["linkerd.io/inject"] == "enabled" || t.Annotations["linkerd.io/inject"] == "ingress" || hasContainer(t, "linkerd-proxy"):
		return "already meshed by Linkerd"
	case t.Annotations["sidecar.istio.io/inject"] == "true" || t.Labels["sidecar.istio.io/inject"] == "true" || hasContainer(t, "istio-proxy"):
		return "already meshed by Istio"
	}
	return ""
}

func hasContainer(t *corev1.PodTemplateSpec, name string) bool {
	for _, list := range [][]corev1.Container{t.Spec.InitContainers, t.Spec.Containers} {
		for _, c := range list {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}

// options are what a template's config.meshscope.io annotations ask of its proxy.
type options struct {
	opaquePorts, skipInbound, skipOutbound, logLevel string
}

func readAnnotations(a map[string]string) (options, error) {
	o := options{
		opaquePorts:  a[OpaquePortsAnnotation],
		skipInbound:  a[SkipInboundPortsAnnotation],
		skipOutbound: a[SkipOutboundPortsAnnotation],
		logLevel:     a[LogLevelAnnotation],
	}
	for name, v := range map[string]string{OpaquePortsAnnotation: o.opaquePorts, SkipInboundPortsAnnotation: o.skipInbound, SkipOutboundPortsAnnotation: o.skipOutbound} {
		if err := checkPorts(v); err != nil {
			return o, fmt.Errorf("annotation %s %q: %w", name, v, err)
		}
	}
	switch o.logLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return o, fmt.Errorf("annotation %s %q: want debug, info, warn or error", LogLevelAnnotation, o.logLevel)
	}
	return o, nil
}

// checkPorts accepts a comma-separated list of ports and ranges ("25,3306,8000-8010").
func checkPorts(s string) error {
	if s == "" {
		return nil
	}
	for item := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(item), "-")
		a, err := port(lo)
		if err != nil {
			return err
		}
		if isRange {
			b, err := port(hi)
			if err != nil {
				return err
			}
			if b < a {
				return fmt.Errorf("range %q runs backwards", item)
			}
		}
	}
	return nil
}

func port(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return n, nil
}

// initContainer is `proxy init`: it installs the iptables rules that send the pod's traffic through
// the proxy, so it needs NET_ADMIN and NET_RAW, and runs as root to use them, before anything else.
func (c Config) initContainer(o options) corev1.Container {
	inbound := "4190,4191"
	if o.skipInbound != "" {
		inbound += "," + o.skipInbound
	}
	args := []string{"init",
		"--incoming-proxy-port=" + strconv.Itoa(InboundPort),
		"--outgoing-proxy-port=" + strconv.Itoa(OutboundPort),
		"--proxy-uid=" + strconv.Itoa(ProxyUID),
		"--inbound-ports-to-ignore=" + inbound,
	}
	if o.skipOutbound != "" {
		args = append(args, "--outbound-ports-to-ignore="+o.skipOutbound)
	}
	root := int64(0)
	return corev1.Container{
		Name:         InitContainer,
		Image:        c.image(),
		Args:         args,
		VolumeMounts: []corev1.VolumeMount{{Name: XtablesVolume, MountPath: "/run"}},
		Resources:    resources("10m", "10Mi", "50Mi"),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &root,
			RunAsNonRoot:             new(false),
			AllowPrivilegeEscalation: new(false),
			ReadOnlyRootFilesystem:   new(true),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
		},
	}
}

// proxyContainer is the sidecar. Its identity (namespace, pod, workload) comes from the downward
// API, so one injected template serves every pod made from it.
func (c Config) proxyContainer(o options, w Workload) corev1.Container {
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	env := []corev1.EnvVar{
		field("MESHSCOPE_PROXY_NAMESPACE", "metadata.namespace"),
		field("MESHSCOPE_PROXY_POD", "metadata.name"),
	}
	if key := w.label(); key != "" {
		env = append(env, field("MESHSCOPE_PROXY_DEPLOYMENT", "metadata.labels['"+key+"']"))
	}
	env = append(env, corev1.EnvVar{Name: "MESHSCOPE_PROXY_DESTINATION_ADDR", Value: c.destinationAddr()})
	var mounts []corev1.VolumeMount
	if c.IdentityAddr != "" {
		env = append(env,
			corev1.EnvVar{Name: kube.IdentityAddrEnv, Value: c.IdentityAddr},
			corev1.EnvVar{Name: "MESHSCOPE_PROXY_IDENTITY_TRUST_ANCHORS", Value: identityDir + "/ca.crt"},
			corev1.EnvVar{Name: "MESHSCOPE_PROXY_IDENTITY_TOKEN_FILE", Value: identityDir + "/token"},
		)
		if c.TapClientIdentity != "" {
			env = append(env, corev1.EnvVar{Name: kube.TapClientIdentityEnv, Value: c.TapClientIdentity})
		}
		mounts = []corev1.VolumeMount{{Name: IdentityVolume, MountPath: identityDir, ReadOnly: true}}
	}
	if o.opaquePorts != "" {
		env = append(env, corev1.EnvVar{Name: "MESHSCOPE_PROXY_OPAQUE_PORTS", Value: o.opaquePorts})
	}
	if o.logLevel != "" {
		env = append(env, corev1.EnvVar{Name: "MESHSCOPE_PROXY_LOG_LEVEL", Value: o.logLevel})
	}
	uid := int64(ProxyUID)
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(AdminPortName)}},
			PeriodSeconds: 10, TimeoutSeconds: 1, FailureThreshold: 3,
		}
	}
	ct := corev1.Container{
		Name:         ProxyContainer,
		Image:        c.image(),
		Env:          env,
		VolumeMounts: mounts,
		Ports: []corev1.ContainerPort{
			{Name: "meshscope-proxy", ContainerPort: InboundPort, Protocol: corev1.ProtocolTCP},
			{Name: AdminPortName, ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP},
		},
		ReadinessProbe: probe("/ready"),
		LivenessProbe:  probe("/live"),
		Resources:      resources("10m", "20Mi", "250Mi"),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsNonRoot:             new(true),
			AllowPrivilegeEscalation: new(false),
			ReadOnlyRootFilesystem:   new(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	if c.Sidecar != Classic {
		always := corev1.ContainerRestartPolicyAlways
		ct.RestartPolicy = &always
	}
	return ct
}

// identityVolume gives the proxy the trust anchors, from the pod's own annotation, and a
// ServiceAccount token for the identity service's audience, which the kubelet renews.
func identityVolume() corev1.Volume {
	return corev1.Volume{Name: IdentityVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
				Path: "ca.crt", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['" + TrustAnchorsAnnotation + "']"},
			}}}},
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: IdentityAudience, ExpirationSeconds: new(int64(86400)), Path: "token"}},
		},
	}}}
}

// resources requests cpu and memory and limits memory (a CPU limit would throttle the proxy on
// every burst, adding latency to every request of the pod).
func resources(cpu, memory, limit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(limit)},
	}
}

// toMap converts a typed container into the unstructured form the template holds.
func toMap(c corev1.Container) (map[string]any, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.Name, err)
	}
	return m, nil
}

// ensureMap returns m[key] as a map, creating it when absent.
func ensureMap(m map[string]any, key string) map[string]any {
	if v, ok := m[key].(map[string]any); ok {
		return v
	}
	v := map[string]any{}
	m[key] = v
	return v
}

// list returns m[key] as a list, nil when absent.
func list(m map[string]any, key string) []any {
	v, _ := m[key].([]any)
	return v
}
