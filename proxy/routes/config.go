package routes

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is a configuration error at a line of the YAML it came from; Msg names the field.
type Error struct {
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

func errorf(n *yaml.Node, format string, args ...any) error {
	return &Error{Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}

// ParseYAML reads a service's routes: list of the destinations file:
//
//	routes:
//	  - name: checkout                      # unique in the service; the route_name of its metrics
//	    matches:                            # any one selects the route; none: every request
//	      - method: POST
//	        path: {exact: /checkout}        # or {prefix: /api}, or {regex: "/v[0-9]+/.*"} (whole path)
//	        headers: [{name: x-canary, value: "true"}]   # or {name: ..., regex: ...}
//	    timeouts: {request: 2s, response: 500ms}         # response: until the response headers
//	    retry: {http: 5xx, grpc: "unavailable,internal", limit: 2, timeout: 300ms}
//	    backends:                           # a traffic split to services of the file
//	      - {authority: payments-v1.payments:8080, weight: 90}
//	      - {authority: payments-v2.payments:8080, weight: 10}
//
// Routes without timeouts or retry take base's (the service's annotations). normalize turns a backend's
// authority into the file's lookup key; checking that the service exists is the caller's (it knows the
// file). Errors name the route and the field.
func ParseYAML(n *yaml.Node, base Policy, normalize func(string) (string, error)) ([]*Route, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errorf(n, "routes: want a list, got %s", KindName(n))
	}
	var out []*Route
	seen := map[string]int{}
	for i, rn := range n.Content {
		where := fmt.Sprintf("routes[%d]", i)
		f, err := fields(rn, where, "name", "matches", "timeouts", "retry", "backends")
		if err != nil {
			return nil, err
		}
		r := &Route{Kind: KindFile, Timeouts: base.Timeouts, Retry: base.Retry}
		nn, ok := f["name"]
		if !ok || nn.Kind != yaml.ScalarNode || !validName(nn.Value) {
			at := rn
			if ok {
				at = nn
			}
			return nil, errorf(at, "%s: name: want a DNS label (lower-case letters, digits and -), the route_name of its metrics", where)
		}
		r.Name = nn.Value
		if j, dup := seen[r.Name]; dup {
			return nil, errorf(nn, "%s: name: %q also names routes[%d]", where, r.Name, j)
		}
		seen[r.Name] = i
		where += " " + r.Name
		if mn, ok := f["matches"]; ok {
			if r.Matches, err = parseMatches(mn, where); err != nil {
				return nil, err
			}
		}
		if tn, ok := f["timeouts"]; ok {
			if r.Timeouts, err = parseTimeouts(tn, where); err != nil {
				return nil, err
			}
		}
		if rtn, ok := f["retry"]; ok {
			if r.Retry, err = parseRetry(rtn, where); err != nil {
				return nil, err
			}
		}
		if bn, ok := f["backends"]; ok {
			if r.Backends, err = parseBackends(bn, where, normalize); err != nil {
				return nil, err
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func parseMatches(n *yaml.Node, where string) ([]Match, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errorf(n, "%s: matches: want a list, got %s", where, KindName(n))
	}
	var out []Match
	for i, mn := range n.Content {
		mw := fmt.Sprintf("%s: matches[%d]", where, i)
		f, err := fields(mn, mw, "method", "path", "headers")
		if err != nil {
			return nil, err
		}
		var m Match
		if v, ok := f["method"]; ok {
			if v.Kind != yaml.ScalarNode || !validMethod(v.Value) {
				return nil, errorf(v, "%s: method: want an HTTP method such as GET or POST, got %s", mw, KindName(v))
			}
			m.Method = v.Value
		}
		if pn, ok := f["path"]; ok {
			pf, err := fields(pn, mw+": path", "exact", "prefix", "regex")
			if err != nil {
				return nil, err
			}
			if len(pf) != 1 {
				return nil, errorf(pn, "%s: path: want exactly one of exact, prefix, regex", mw)
			}
			for k, v := range pf {
				if v.Kind != yaml.ScalarNode {
					return nil, errorf(v, "%s: path.%s: want a string, got %s", mw, k, KindName(v))
				}
				m.Value = v.Value
				switch k {
				case "exact":
					m.Path = PathExact
				case "prefix":
					m.Path = PathPrefix
				case "regex":
					m.Path = PathRegex
				}
				if m.Path != PathRegex && !strings.HasPrefix(v.Value, "/") {
					return nil, errorf(v, "%s: path.%s: %q does not start with /", mw, k, v.Value)
				}
			}
			if m.Path == PathRegex {
				if err := m.Compile(); err != nil {
					return nil, errorf(pn, "%s: path.regex: %v", mw, strings.TrimPrefix(err.Error(), "path: "))
				}
			}
		}
		if hn, ok := f["headers"]; ok {
			if m.Headers, err = parseHeaderMatches(hn, mw); err != nil {
				return nil, err
			}
		}
		out = append(out, m)
	}
	return out, nil
}

func parseHeaderMatches(n *yaml.Node, where string) ([]HeaderMatch, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errorf(n, "%s: headers: want a list, got %s", where, KindName(n))
	}
	var out []HeaderMatch
	for i, hn := range n.Content {
		hw := fmt.Sprintf("%s: headers[%d]", where, i)
		f, err := fields(hn, hw, "name", "value", "regex")
		if err != nil {
			return nil, err
		}
		name, ok := f["name"]
		if !ok || name.Kind != yaml.ScalarNode || name.Value == "" || strings.ContainsAny(name.Value, " :\t") {
			return nil, errorf(hn, "%s: name: want a header name", hw)
		}
		h := HeaderMatch{Name: http.CanonicalHeaderKey(name.Value)}
		v, hasV := f["value"]
		re, hasRe := f["regex"]
		switch {
		case hasV == hasRe:
			return nil, errorf(hn, "%s: want exactly one of value, regex", hw)
		case hasV:
			if v.Kind != yaml.ScalarNode {
				return nil, errorf(v, "%s: value: want a string, got %s", hw, KindName(v))
			}
			h.Value = v.Value
		default:
			if re.Kind != yaml.ScalarNode {
				return nil, errorf(re, "%s: regex: want a string, got %s", hw, KindName(re))
			}
			if h.re, err = compileWhole(re.Value); err != nil {
				return nil, errorf(re, "%s: regex: %v", hw, err)
			}
			h.Value, h.Regex = re.Value, true
		}
		out = append(out, h)
	}
	return out, nil
}

// compileWhole compiles a Gateway API regular expression, which must match the whole value.
func compileWhole(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		// regexp's message, without its repeated "error parsing regexp: " prefix.
		return nil, fmt.Errorf("bad expression %q: %s", expr, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	return regexp.MustCompile("^(?:" + expr + ")$"), nil
}

func parseTimeouts(n *yaml.Node, where string) (Timeouts, error) {
	f, err := fields(n, where+": timeouts", "request", "response")
	if err != nil {
		return Timeouts{}, err
	}
	var t Timeouts
	for k, v := range f {
		d, err := parseDuration(v.Value)
		if err != nil || v.Kind != yaml.ScalarNode {
			return Timeouts{}, errorf(v, "%s: timeouts.%s: %v", where, k, durationError(v, err))
		}
		if k == "request" {
			t.Request = d
		} else {
			t.ResponseHeaders = d
		}
	}
	return t, nil
}

func parseRetry(n *yaml.Node, where string) (*Retry, error) {
	f, err := fields(n, where+": retry", "http", "grpc", "limit", "timeout")
	if err != nil {
		return nil, err
	}
	kv := map[string]string{}
	for k, v := range f {
		if v.Kind != yaml.ScalarNode {
			return nil, errorf(v, "%s: retry.%s: want a plain value, got %s", where, k, KindName(v))
		}
		kv[k] = v.Value
	}
	r, field, err := retryFrom(kv["http"], kv["grpc"], kv["limit"], kv["timeout"])
	if err != nil {
		at := f[field]
		if at == nil {
			at = n
		}
		return nil, errorf(at, "%s: retry.%s: %v", where, field, err)
	}
	if r == nil {
		return nil, errorf(n, "%s: retry: want http or grpc statuses to retry", where)
	}
	return r, nil
}

// retryFrom builds a retry policy from its four settings (empty: unset); nil when neither http nor grpc
// is set. On error it names the setting at fault.
func retryFrom(httpStatuses, grpcCodes, limit, timeout string) (*Retry, string, error) {
	var r Retry
	var err error
	if httpStatuses != "" {
		if r.HTTP, err = parseHTTPStatuses(httpStatuses); err != nil {
			return nil, "http", err
		}
	}
	if grpcCodes != "" {
		if r.GRPC, err = parseGRPCCodes(grpcCodes); err != nil {
			return nil, "grpc", err
		}
	}
	if limit != "" {
		if r.Limit, err = strconv.Atoi(limit); err != nil || r.Limit < 1 || r.Limit > 10 {
			return nil, "limit", fmt.Errorf("want a whole number in 1..10, got %q", limit)
		}
	}
	if timeout != "" {
		if r.Timeout, err = parseDuration(timeout); err != nil {
			return nil, "timeout", err
		}
	}
	if r.HTTP == nil && r.GRPC == 0 {
		if limit != "" || timeout != "" {
			return nil, "http", fmt.Errorf("a retry limit or timeout without http or grpc statuses to retry")
		}
		return nil, "", nil
	}
	return &r, "", nil
}

func parseBackends(n *yaml.Node, where string, normalize func(string) (string, error)) ([]Backend, error) {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		return nil, errorf(n, "%s: backends: want a list of {authority, weight}", where)
	}
	var out []Backend
	var sum uint64
	for i, bn := range n.Content {
		bw := fmt.Sprintf("%s: backends[%d]", where, i)
		f, err := fields(bn, bw, "authority", "weight")
		if err != nil {
			return nil, err
		}
		an, ok := f["authority"]
		if !ok || an.Kind != yaml.ScalarNode {
			return nil, errorf(bn, "%s: missing authority", bw)
		}
		a, err := normalize(an.Value)
		if err != nil {
			return nil, errorf(an, "%s: bad authority %q: %v", bw, an.Value, err)
		}
		b := Backend{Authority: a, Weight: 1}
		if wn, ok := f["weight"]; ok {
			w, err := strconv.ParseUint(wn.Value, 10, 32)
			if err != nil || wn.Kind != yaml.ScalarNode || w > 1_000_000 {
				return nil, errorf(wn, "%s: weight: want a whole number in 0..1000000, got %s", bw, KindName(wn))
			}
			b.Weight = uint32(w)
		}
		sum += uint64(b.Weight)
		out = append(out, b)
	}
	if sum == 0 {
		return nil, errorf(n, "%s: backends: weights sum to zero", where)
	}
	return out, nil
}

// parseDuration reads a Go duration ("500ms", "2s"), which must be positive.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: want a number with a unit, such as 500ms or 2s", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("bad duration %q: want more than zero", s)
	}
	return d, nil
}

func durationError(n *yaml.Node, err error) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("want a duration, got %s", KindName(n))
}

// fields checks that n is a mapping with only the allowed keys, each at most once, and returns the values.
func fields(n *yaml.Node, where string, allowed ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, errorf(n, "%s: want a mapping with %s, got %s", where, strings.Join(allowed, ", "), KindName(n))
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		known := false
		for _, a := range allowed {
			known = known || a == k.Value
		}
		if !known || k.Kind != yaml.ScalarNode {
			return nil, errorf(k, "%s: unknown field %q (want %s)", where, k.Value, strings.Join(allowed, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, errorf(k, "%s: field %q given twice", where, k.Value)
		}
		out[k.Value] = v
	}
	return out, nil
}

// KindName says what a YAML node is, for error messages about a field of the wrong kind: the routes
// here and the rest of the destinations file (proxy/balance) word them alike.
func KindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

// validName reports whether s is a DNS label (RFC 1123), as Kubernetes names routes.
func validName(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validMethod reports whether s is an HTTP method token in upper case.
func validMethod(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for _, c := range s {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}
