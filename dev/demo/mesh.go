package demo

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Protocol is what a service speaks on its port.
type Protocol string

// The demo's protocols.
const (
	HTTP1  Protocol = "http/1.1"
	GRPC   Protocol = "grpc"
	H2C    Protocol = "h2c"
	Opaque Protocol = "tcp"
)

// Service is one demo deployment: what it speaks, where clients find it and
// how many pods it runs.
type Service struct {
	Namespace, Deployment string
	// Authority is what clients dial (Host, :authority or a route's target).
	Authority string
	Protocol  Protocol
	// Calls are the deployments this one calls, by Deployment.
	Calls []string
	Pods  int
	// Template is the pod name stem, as a ReplicaSet would name it.
	Template string
}

// shop is the demo shop's call graph: traffic → web → catalog, checkout;
// checkout → payments (and payments-v2, a tenth of its charges by a traffic
// split) → ledger. payments-v2 comes last so the others keep their ports.
func shop() []Service {
	return []Service{
		{Namespace: "shop", Deployment: "web", Authority: "web.shop:8080", Protocol: HTTP1, Calls: []string{"catalog", "checkout"}, Pods: 1, Template: "web-7c9d8f"},
		{Namespace: "shop", Deployment: "catalog", Authority: "catalog.shop:9090", Protocol: GRPC, Pods: 2, Template: "catalog-5f6b7c"},
		{Namespace: "shop", Deployment: "checkout", Authority: "checkout.shop:9090", Protocol: GRPC, Calls: []string{"payments", "payments-v2"}, Pods: 1, Template: "checkout-84d9c6"},
		{Namespace: "payments", Deployment: "payments", Authority: "payments.payments:8080", Protocol: H2C, Calls: []string{"ledger"}, Pods: 1, Template: "payments-6d4b8f"},
		{Namespace: "payments", Deployment: "ledger", Authority: "ledger.payments:5432", Protocol: Opaque, Pods: 1, Template: "ledger-7b5c9d"},
		{Namespace: "payments", Deployment: "payments-v2", Authority: "payments-v2.payments:8080", Protocol: H2C, Calls: []string{"ledger"}, Pods: 1, Template: "payments-v2-5c8d7e"},
	}
}

// Pod is one service instance and its proxy's addresses.
type Pod struct {
	Service Service
	Name    string
	// App is where the service itself listens.
	App string
	// Inbound, Outbound and Admin are the proxy's listeners.
	Inbound, Outbound, Admin string
	// Routes are fixed outbound listeners for clients that cannot name an
	// authority (the TCP client of ledger), by authority.
	Routes map[string]string
}

// Mesh is the whole demo laid out on ports.
type Mesh struct {
	Host     string
	Services []Service
	Pods     []Pod
	// Identity is where the issuer (proxy identity) listens.
	Identity string
}

// PortFunc hands out one unused port per call.
type PortFunc func() (int, error)

// SequentialPorts hands out base, base+1, … for fixed layouts (the Procfile).
func SequentialPorts(base int) PortFunc {
	next := base
	return func() (int, error) {
		if next > 65535 {
			return 0, fmt.Errorf("port base %d leaves too few ports", base)
		}
		next++
		return next - 1, nil
	}
}

// Free ports are drawn from below the kernels' ephemeral ranges (Linux
// 32768-60999, macOS and Windows 49152-65535): those are the ports a kernel
// picks itself, for every outgoing connection and every listener on port 0 of
// any process, so a port free here stays free until the demo binds it, even
// while other test processes open connections by the thousand. Each layout
// starts at a random place in the range, so that concurrent test processes
// rarely probe the same ports.
const (
	freePortLow  = 20000
	freePortHigh = 32768 // exclusive
)

// FreePorts hands out ports free right now on host, never the same one twice
// (two listeners of one layout on one port would fail at start, in tests at
// random), from below the ephemeral range. Safe for concurrent use.
func FreePorts(host string) PortFunc {
	var mu sync.Mutex
	given := map[int]bool{}
	next := freePortLow + rand.IntN(freePortHigh-freePortLow)
	return func() (int, error) {
		mu.Lock()
		defer mu.Unlock()
		for range freePortHigh - freePortLow {
			p := next
			next++
			if next == freePortHigh {
				next = freePortLow
			}
			if given[p] {
				continue
			}
			l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p)))
			if err != nil {
				continue // taken, or not ours to bind
			}
			l.Close()
			given[p] = true
			return p, nil
		}
		return 0, fmt.Errorf("find a free port on %s: none left in %d-%d", host, freePortLow, freePortHigh-1)
	}
}

// Layout assigns every pod its app and proxy ports on host.
func Layout(host string, ports PortFunc) (Mesh, error) {
	m := Mesh{Host: host, Services: shop()}
	addr := func() (string, error) {
		p, err := ports()
		return net.JoinHostPort(host, strconv.Itoa(p)), err
	}
	for _, s := range m.Services {
		for i := range s.Pods {
			pod := Pod{Service: s, Name: fmt.Sprintf("%s-%d", s.Template, i), Routes: map[string]string{}}
			for _, a := range []*string{&pod.App, &pod.Inbound, &pod.Outbound, &pod.Admin} {
				var err error
				if *a, err = addr(); err != nil {
					return Mesh{}, err
				}
			}
			for _, callee := range s.Calls {
				if c := m.service(callee); c.Protocol == Opaque {
					a, err := addr()
					if err != nil {
						return Mesh{}, err
					}
					pod.Routes[c.Authority] = a
				}
			}
			m.Pods = append(m.Pods, pod)
		}
	}
	var err error
	m.Identity, err = addr()
	return m, err
}

func (m Mesh) service(deployment string) Service {
	for _, s := range m.Services {
		if s.Deployment == deployment {
			return s
		}
	}
	panic("demo: no service " + deployment) // the table above is fixed
}

// PodsOf returns the pods of one deployment.
func (m Mesh) PodsOf(deployment string) []Pod {
	var out []Pod
	for _, p := range m.Pods {
		if p.Service.Deployment == deployment {
			out = append(out, p)
		}
	}
	return out
}

// Destinations renders the proxies' destinations file (DESIGN.md): every
// service's authority, its labels, its identity, its pods' proxy inbound
// addresses and its routes (routes.go).
func (m Mesh) Destinations() ([]byte, error) {
	type endpoint struct {
		Addr   string            `yaml:"addr"`
		Labels map[string]string `yaml:"labels"`
	}
	type service struct {
		Authority string            `yaml:"authority"`
		Labels    map[string]string `yaml:"labels"`
		Identity  string            `yaml:"identity"`
		Endpoints []endpoint        `yaml:"endpoints"`
		Routes    []route           `yaml:"routes,omitempty"`
	}
	var doc struct {
		Services []service `yaml:"services"`
	}
	for _, s := range m.Services {
		// Every pod is meshed: a proxy with identity originates mutual TLS to it (one without ignores this).
		svc := service{Authority: s.Authority, Labels: map[string]string{"namespace": s.Namespace, "deployment": s.Deployment},
			Identity: s.IdentityName(), Routes: m.routesOf(s.Deployment)}
		for _, p := range m.PodsOf(s.Deployment) {
			svc.Endpoints = append(svc.Endpoints, endpoint{Addr: p.Inbound, Labels: map[string]string{"pod": p.Name}})
		}
		doc.Services = append(doc.Services, svc)
	}
	return yaml.Marshal(doc)
}

// Targets renders the Prometheus file_sd file: one group per proxy admin
// address with its namespace, deployment and pod as target labels, and the
// serviceaccount its pod runs as, whose identity a dashboard with identity
// checks that the proxy proves before it taps it.
func (m Mesh) Targets() ([]byte, error) {
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	groups := make([]group, 0, len(m.Pods))
	for _, p := range m.Pods {
		groups = append(groups, group{
			Targets: []string{p.Admin},
			Labels: map[string]string{"namespace": p.Service.Namespace, "deployment": p.Service.Deployment, "pod": p.Name,
				"serviceaccount": p.Service.Deployment},
		})
	}
	b, err := json.MarshalIndent(groups, "", "  ")
	return append(b, '\n'), err
}

// ProxyArgs are the command-line flags of p's proxy; destinations is the
// destinations file's path. The tap token goes through the environment
// (MESHSCOPE_PROXY_TAP_TOKEN) so that ps does not show it.
func (m Mesh) ProxyArgs(p Pod, destinations string) []string {
	args := []string{
		"--inbound-listen", p.Inbound, "--inbound-forward", p.App,
		"--outbound-listen", p.Outbound, "--admin-listen", p.Admin,
		"--namespace", p.Service.Namespace, "--deployment", p.Service.Deployment, "--pod", p.Name,
		"--destinations", destinations,
	}
	var opaque []string
	if p.Service.Protocol == Opaque {
		opaque = append(opaque, port(p.Inbound))
	}
	for _, callee := range p.Service.Calls {
		c := m.service(callee)
		if listen, ok := p.Routes[c.Authority]; ok {
			args = append(args, "--outbound-route", listen+"="+c.Authority)
			opaque = append(opaque, port(listen))
		}
	}
	if len(opaque) > 0 {
		args = append(args, "--opaque-ports", strings.Join(opaque, ","))
	}
	return args
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr) // addresses here are all built by Layout
	return p
}
