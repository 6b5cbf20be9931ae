package balance

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshscope/meshscope/proxy/routes"
)

// serviceSpec is one validated entry of the destinations file.
type serviceSpec struct {
	authority string // normalized, see NormalizeAuthority
	labels    map[string]string
	identity  string // the endpoints' identity, unless an endpoint names its own
	endpoints []EndpointSpec
	policy    routes.Policy   // from its annotations
	routes    []*routes.Route // its routes: list, validated
}

// parseFile reads the destinations file format of DESIGN.md:
//
//	services:
//	  - authority: voting.shop:8080
//	    labels: {namespace: shop, deployment: voting}
//	    identity: voting.shop.serviceaccount.identity.meshscope.cluster.local   # meshed: mutual TLS
//	    endpoints:
//	      - addr: 127.0.0.1:14143
//	        labels: {pod: voting-7d9f-0}
//	        identity: ...                     # optional, overrides the service's
//
// A service may also carry annotations (retry.meshscope.io/..., timeout.meshscope.io/...,
// balancer.meshscope.io/failure-accrual..., as a Kubernetes Service would) and a routes: list (see
// routes.ParseYAML), whose backends must be services of the same file.
//
// It walks the YAML node tree itself rather than decoding into structs so that every error is one line
// naming the file, the line, the entry and the problem ("dest.yaml:7: services[1] voting.shop:8080:
// endpoints[0]: bad addr ...") instead of yaml's multi-line messages that name Go types.
func parseFile(name string, data []byte) ([]serviceSpec, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml says "yaml: line 3: problem"; say "name:3: problem" like every other error here.
		msg := oneLine(err.Error())
		if rest, ok := strings.CutPrefix(msg, "yaml: line "); ok {
			if line, problem, ok := strings.Cut(rest, ": "); ok {
				return nil, fmt.Errorf("%s:%s: %s", name, line, problem)
			}
		}
		return nil, fmt.Errorf("%s: %s", name, msg)
	}
	if len(doc.Content) == 0 {
		// An empty file is most often an editor's half-written save; treating it as "no services" would
		// silently send all traffic to the authorities as written.
		return nil, fmt.Errorf("%s: empty file: want a services list (write \"services: []\" for none)", name)
	}
	p := parser{name: name}
	return p.top(doc.Content[0])
}

type parser struct{ name string }

func (p parser) errorf(n *yaml.Node, where, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if where != "" {
		msg = where + ": " + msg
	}
	return fmt.Errorf("%s:%d: %s", p.name, n.Line, msg)
}

// fields checks that n is a mapping with only the allowed keys, each at most once, and returns the values.
func (p parser) fields(n *yaml.Node, where string, allowed ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, p.errorf(n, where, "want a mapping with %s, got %s", strings.Join(allowed, ", "), routes.KindName(n))
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, p.errorf(k, where, "want a field name, got %s", routes.KindName(k))
		}
		known := false
		for _, a := range allowed {
			known = known || a == k.Value
		}
		if !known {
			return nil, p.errorf(k, where, "unknown field %q (want %s)", k.Value, strings.Join(allowed, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, p.errorf(k, where, "field %q given twice", k.Value)
		}
		out[k.Value] = v
	}
	return out, nil
}

func (p parser) top(n *yaml.Node) ([]serviceSpec, error) {
	f, err := p.fields(n, "", "services")
	if err != nil {
		return nil, err
	}
	list, ok := f["services"]
	if !ok {
		return nil, p.errorf(n, "", "missing field \"services\"")
	}
	if isNull(list) {
		return nil, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, p.errorf(list, "services", "want a list, got %s", routes.KindName(list))
	}
	services := make([]serviceSpec, 0, len(list.Content))
	seen := make(map[string]int, len(list.Content))
	known := knownAuthorities(list)
	for i, sn := range list.Content {
		s, err := p.service(sn, i, known)
		if err != nil {
			return nil, err
		}
		if j, dup := seen[s.authority]; dup {
			return nil, p.errorf(sn, fmt.Sprintf("services[%d] %s", i, s.authority),
				"duplicate authority (also services[%d])", j)
		}
		seen[s.authority] = i
		services = append(services, s)
	}
	return services, nil
}

// knownAuthorities are the valid authorities of a services list, which routes' backends may name (a
// service listed later included). Invalid entries are left to the full parse to report.
func knownAuthorities(list *yaml.Node) map[string]bool {
	known := make(map[string]bool, len(list.Content))
	for _, sn := range list.Content {
		if sn.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(sn.Content); i += 2 {
			if sn.Content[i].Value == "authority" {
				if a, err := normalizeFileAuthority(sn.Content[i+1].Value); err == nil {
					known[a] = true
				}
			}
		}
	}
	return known
}

func (p parser) service(n *yaml.Node, i int, known map[string]bool) (serviceSpec, error) {
	where := fmt.Sprintf("services[%d]", i)
	f, err := p.fields(n, where, "authority", "labels", "identity", "annotations", "endpoints", "routes")
	if err != nil {
		return serviceSpec{}, err
	}
	an, ok := f["authority"]
	if !ok || isNull(an) {
		return serviceSpec{}, p.errorf(n, where, "missing authority")
	}
	if an.Kind != yaml.ScalarNode {
		return serviceSpec{}, p.errorf(an, where, "authority: want host:port, got %s", routes.KindName(an))
	}
	authority, err := normalizeFileAuthority(an.Value)
	if err != nil {
		return serviceSpec{}, p.errorf(an, where, "bad authority %q: %v", an.Value, err)
	}
	where += " " + authority
	s := serviceSpec{authority: authority}
	if ln, ok := f["labels"]; ok {
		if s.labels, err = p.labels(ln, where); err != nil {
			return serviceSpec{}, err
		}
	}
	if s.identity, err = p.identity(f["identity"], where); err != nil {
		return serviceSpec{}, err
	}
	if an, ok := f["annotations"]; ok {
		// Annotation names have dots and slashes: read them as plain strings, not label names.
		a := map[string]string{}
		if an.Kind != yaml.MappingNode {
			return serviceSpec{}, p.errorf(an, where, "annotations: want a mapping of name: value, got %s", routes.KindName(an))
		}
		if err := an.Decode(&a); err != nil {
			return serviceSpec{}, p.errorf(an, where, "annotations: %s", oneLine(err.Error()))
		}
		if s.policy, err = routes.FromAnnotations(a); err != nil {
			at := an
			for i := 0; i+1 < len(an.Content); i += 2 {
				if strings.Contains(err.Error(), "annotation "+an.Content[i].Value+":") {
					at = an.Content[i]
				}
			}
			return serviceSpec{}, p.errorf(at, where, "%v", err)
		}
	}
	if rn, ok := f["routes"]; ok && !isNull(rn) {
		backend := func(a string) (string, error) {
			a, err := normalizeFileAuthority(a)
			if err == nil && !known[a] {
				err = errors.New("no such service in this file")
			}
			return a, err
		}
		rs, err := routes.ParseYAML(rn, s.policy, backend)
		var re *routes.Error
		if errors.As(err, &re) {
			return serviceSpec{}, fmt.Errorf("%s:%d: %s: %s", p.name, re.Line, where, re.Msg)
		} else if err != nil {
			return serviceSpec{}, p.errorf(rn, where, "%v", err)
		}
		s.routes = rs
	}
	en, ok := f["endpoints"]
	if !ok || isNull(en) {
		return s, nil
	}
	if en.Kind != yaml.SequenceNode {
		return serviceSpec{}, p.errorf(en, where, "endpoints: want a list, got %s", routes.KindName(en))
	}
	seen := make(map[string]int, len(en.Content))
	for j, epn := range en.Content {
		ewhere := fmt.Sprintf("%s: endpoints[%d]", where, j)
		ef, err := p.fields(epn, ewhere, "addr", "labels", "identity")
		if err != nil {
			return serviceSpec{}, err
		}
		addrn, ok := ef["addr"]
		if !ok || isNull(addrn) {
			return serviceSpec{}, p.errorf(epn, ewhere, "missing addr")
		}
		if addrn.Kind != yaml.ScalarNode {
			return serviceSpec{}, p.errorf(addrn, ewhere, "addr: want host:port, got %s", routes.KindName(addrn))
		}
		if err := checkAddr(addrn.Value); err != nil {
			return serviceSpec{}, p.errorf(addrn, ewhere, "bad addr %q: %v", addrn.Value, err)
		}
		if k, dup := seen[addrn.Value]; dup {
			return serviceSpec{}, p.errorf(addrn, ewhere, "duplicate addr %q (also endpoints[%d])", addrn.Value, k)
		}
		seen[addrn.Value] = j
		e := EndpointSpec{Addr: addrn.Value}
		if ln, ok := ef["labels"]; ok {
			if e.Labels, err = p.labels(ln, ewhere); err != nil {
				return serviceSpec{}, err
			}
		}
		if e.Hints.Identity, err = p.identity(ef["identity"], ewhere); err != nil {
			return serviceSpec{}, err
		}
		if e.Hints.Identity == "" {
			e.Hints.Identity = s.identity
		}
		e.Hints.Meshed = e.Hints.Identity != ""
		s.endpoints = append(s.endpoints, e)
	}
	return s, nil
}

func (p parser) labels(n *yaml.Node, where string) (map[string]string, error) {
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, p.errorf(n, where, "labels: want a mapping of name: value, got %s", routes.KindName(n))
	}
	out := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || !validLabelName(k.Value) {
			return nil, p.errorf(k, where, "bad label name %q: want letters, digits and _, not starting with a digit", k.Value)
		}
		if v.Kind != yaml.ScalarNode {
			return nil, p.errorf(v, where, "label %q: want a plain value, got %s", k.Value, routes.KindName(v))
		}
		if _, dup := out[k.Value]; dup {
			return nil, p.errorf(k, where, "label %q given twice", k.Value)
		}
		out[k.Value] = v.Value
	}
	return out, nil
}

// identity reads an identity: field, a DNS name (the peer certificate's only DNS name); nil or empty
// reads as none.
func (p parser) identity(n *yaml.Node, where string) (string, error) {
	if n == nil || isNull(n) {
		return "", nil
	}
	if n.Kind != yaml.ScalarNode || !validIdentity(n.Value) {
		return "", p.errorf(n, where, "bad identity %s: want a DNS name such as web.shop.serviceaccount.identity.meshscope.cluster.local", routes.KindName(n))
	}
	return n.Value, nil
}

// validIdentity reports whether s is a lower-case DNS name, as identities are.
func validIdentity(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// validLabelName reports whether s, once prefixed with dst_, is a Prometheus label name.
func validLabelName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		letter := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// checkAddr accepts host:port with a non-empty host and a numeric port in 1..65535.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err) // the message without the address repeated
		}
		return err
	}
	if host == "" {
		return errors.New("missing host")
	}
	if strings.ContainsAny(host, " \t/@") {
		return errors.New("host has a space, slash or @")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number in 1..65535", port)
	}
	return nil
}

// normalizeFileAuthority validates a file authority (host:port, port required) and returns its lookup key.
func normalizeFileAuthority(a string) (string, error) {
	if err := checkAddr(a); err != nil {
		return "", err
	}
	return NormalizeAuthority(a), nil
}

// NormalizeAuthority turns a request authority (Host header or :authority) into a lookup key: host in
// lower case without a trailing dot, port 80 when none is given (RFC 9110 §4.2.1: http's default port;
// the outbound listener speaks cleartext only), IPv6 literals bracketed.
func NormalizeAuthority(a string) string {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(a, "["), "]"), ""
	}
	if port == "" {
		port = "80"
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return net.JoinHostPort(host, port)
}

// needsNormalizing reports whether NormalizeAuthority could change a: an upper-case letter, a trailing dot
// on the host, or an empty port. (A missing port is not checked: Lookup's byHost already covers it.)
func needsNormalizing(a string) bool {
	for i := 0; i < len(a); i++ {
		switch c := a[i]; {
		case c >= 'A' && c <= 'Z':
			return true
		case c == '.' && (i+1 == len(a) || a[i+1] == ':'):
			return true
		}
	}
	return strings.HasSuffix(a, ":")
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
