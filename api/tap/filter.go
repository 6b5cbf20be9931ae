package tap

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// The URL query parameters of a tap request, one per [Filter] field.
const (
	ParamDirection     = "direction"
	ParamMethod        = "method"
	ParamAuthority     = "authority"
	ParamPath          = "path"
	ParamDstDeployment = "dst_deployment"
	ParamDstNamespace  = "dst_namespace"
	ParamStatus        = "status"
	ParamFailed        = "failed"
	ParamGRPCStatus    = "grpc_status"
	ParamMaxRPS        = "max_rps"
	ParamRoute         = "route"
)

// Params lists every parameter [ParseFilter] accepts, in a stable order.
var Params = []string{
	ParamDirection, ParamMethod, ParamAuthority, ParamPath,
	ParamDstDeployment, ParamDstNamespace, ParamStatus, ParamFailed, ParamGRPCStatus, ParamMaxRPS, ParamRoute,
}

// Bounds of max_rps, the per-stream rate limit in requests per second.
const (
	DefaultMaxRPS = 100
	MaxMaxRPS     = 10000
)

// Filter selects the requests a tap stream reports; all its conditions must
// hold. The zero Filter selects every request, at [DefaultMaxRPS].
type Filter struct {
	// Direction is DirectionInbound, DirectionOutbound, or empty for both.
	Direction string
	// Method is an upper-case HTTP method; empty for any.
	Method string
	// Authority is compared with the request's authority, ignoring case;
	// empty for any.
	Authority string
	// Path is a prefix of the request path (a plain string prefix: "/api"
	// also selects "/apis"); empty for any.
	Path string
	// DstDeployment and DstNamespace are compared with the destination's
	// deployment and namespace labels; empty for any.
	DstDeployment string
	DstNamespace  string
	// Status selects responses by status code; the zero Status selects all.
	Status Status
	// Failed selects the requests that failed as the success rate counts
	// them (see [Failed]): decided when the request ends.
	Failed bool
	// GRPCStatus is the name of a gRPC status code (UNAVAILABLE), selecting
	// the gRPC calls that ended with it; empty for any.
	GRPCStatus string
	// MaxRPS is the most requests per second the stream reports (each with
	// all its events); 0 means DefaultMaxRPS.
	MaxRPS int
	// Route is the name of the outbound route the request took (a routes:
	// entry of the destinations file, an HTTPRoute rule); empty for any.
	Route string
}

// Status is a range of HTTP status codes, written "5xx" for a class or "404"
// for one code. The zero Status selects every response.
type Status struct{ Min, Max int }

// String returns the status as written in a URL: "5xx", "404", or "" for the
// zero Status.
func (s Status) String() string {
	switch {
	case s == Status{}:
		return ""
	case s.Min%100 == 0 && s.Max == s.Min+99:
		return strconv.Itoa(s.Min/100) + "xx"
	default:
		return strconv.Itoa(s.Min)
	}
}

// FilterError is a tap request parameter that [ParseFilter] rejects.
type FilterError struct {
	Param  string // the parameter as given
	Reason string // what is wrong, for the user
}

func (e *FilterError) Error() string {
	return fmt.Sprintf("tap filter %q: %s", e.Param, e.Reason)
}

// ParseFilter reads a Filter from URL query parameters (see [Params]). Empty
// values count as absent. It fails with a [*FilterError] naming the first bad
// parameter (in sorted order): an unknown one, one given twice, a malformed
// value, or max_rps outside 1..MaxMaxRPS.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for _, name := range sortedKeys(q, nil) {
		if !slices.Contains(Params, name) {
			return Filter{}, &FilterError{name, "unknown parameter; known: " + strings.Join(Params, ", ")}
		}
		var value string
		for _, v := range q[name] {
			if v == "" {
				continue
			}
			if value != "" {
				return Filter{}, &FilterError{name, "given more than once"}
			}
			value = v
		}
		if value == "" {
			continue
		}
		if err := f.set(name, value); err != nil {
			return Filter{}, err
		}
	}
	return f, nil
}

// set parses value into the field of parameter name.
func (f *Filter) set(name, value string) error {
	bad := func(reason string) error {
		return &FilterError{name, fmt.Sprintf("%s, got %q", reason, value)}
	}
	switch name {
	case ParamDirection:
		if value != DirectionInbound && value != DirectionOutbound {
			return bad(`must be "inbound" or "outbound"`)
		}
		f.Direction = value
	case ParamMethod:
		if len(value) > 32 || !isToken(value) {
			return bad("must be an HTTP method such as GET")
		}
		f.Method = strings.ToUpper(value)
	case ParamAuthority:
		if len(value) > 300 || !isAuthority(value) {
			return bad("must be an authority such as web.shop:8080")
		}
		f.Authority = value
	case ParamPath:
		if len(value) > 2048 || value[0] != '/' || !isPrintableASCII(value) {
			return bad(`must be a path starting with "/"`)
		}
		f.Path = value
	case ParamDstDeployment:
		if !isDNSName(value, 253, true) {
			return bad("must be a Kubernetes name (lower-case letters, digits, '-', '.')")
		}
		f.DstDeployment = value
	case ParamDstNamespace:
		if !isDNSName(value, 63, false) {
			return bad("must be a Kubernetes namespace (lower-case letters, digits, '-')")
		}
		f.DstNamespace = value
	case ParamStatus:
		s, ok := parseStatus(value)
		if !ok {
			return bad("must be a status class such as 5xx or a code such as 404")
		}
		f.Status = s
	case ParamFailed:
		if value != "true" {
			return bad(`must be "true"`)
		}
		f.Failed = true
	case ParamGRPCStatus:
		name, ok := grpcStatusName(value)
		if !ok {
			return bad("must be a gRPC status code, 0 to 16, or its name such as UNAVAILABLE")
		}
		f.GRPCStatus = name
	case ParamRoute:
		if !isDNSName(value, 63, false) {
			return bad("must be a route name (lower-case letters, digits, '-')")
		}
		f.Route = value
	case ParamMaxRPS:
		n, err := strconv.Atoi(value)
		if err != nil || n < 1 || n > MaxMaxRPS {
			return bad(fmt.Sprintf("must be an integer from 1 to %d", MaxMaxRPS))
		}
		f.MaxRPS = n
	}
	return nil
}

// Values returns the query parameters that ParseFilter reads back into f.
func (f Filter) Values() url.Values {
	q := url.Values{}
	set := func(name, value string) {
		if value != "" {
			q.Set(name, value)
		}
	}
	set(ParamDirection, f.Direction)
	set(ParamMethod, f.Method)
	set(ParamAuthority, f.Authority)
	set(ParamPath, f.Path)
	set(ParamDstDeployment, f.DstDeployment)
	set(ParamDstNamespace, f.DstNamespace)
	set(ParamStatus, f.Status.String())
	if f.Failed {
		q.Set(ParamFailed, "true")
	}
	set(ParamGRPCStatus, f.GRPCStatus)
	set(ParamRoute, f.Route)
	if f.MaxRPS != 0 {
		q.Set(ParamMaxRPS, strconv.Itoa(f.MaxRPS))
	}
	return q
}

// RPS returns the stream's rate limit in requests per second.
func (f Filter) RPS() int {
	if f.MaxRPS == 0 {
		return DefaultMaxRPS
	}
	return f.MaxRPS
}

// MatchRequest reports whether the request event ev passes every condition
// of f except Status, which only the response can decide.
func (f *Filter) MatchRequest(ev *Event) bool {
	return (f.Direction == "" || f.Direction == ev.Direction) &&
		(f.Method == "" || strings.EqualFold(f.Method, ev.Method)) &&
		(f.Authority == "" || strings.EqualFold(f.Authority, ev.Authority)) &&
		strings.HasPrefix(ev.Path, f.Path) &&
		(f.Route == "" || f.Route == ev.Route) &&
		(f.DstDeployment == "" || f.DstDeployment == ev.Destination.Labels[LabelDeployment]) &&
		(f.DstNamespace == "" || f.DstNamespace == ev.Destination.Labels[LabelNamespace])
}

// NeedsResponse reports whether f selects by status, so a request can only be
// reported once its response is known.
func (f *Filter) NeedsResponse() bool { return f.Status != Status{} }

// NeedsEnd reports whether f selects by how the request ended (failed, gRPC
// status), so a request can only be reported once it has ended: a gRPC
// status comes in the trailers.
func (f *Filter) NeedsEnd() bool { return f.Failed || f.GRPCStatus != "" }

// MatchEnd reports whether a request that ended passes f's conditions on its
// outcome: status (the response's, 0 without one), its gRPC status (nil when
// not gRPC) and its stream error.
func (f *Filter) MatchEnd(status int, grpcStatus *int, errText string) bool {
	switch {
	case f.NeedsResponse() && (status == 0 || !f.MatchStatus(status)):
		return false
	case f.Failed && !Failed(status, grpcStatus, errText):
		return false
	case f.GRPCStatus != "" && (grpcStatus == nil || GRPCStatusName(*grpcStatus) != f.GRPCStatus):
		return false
	}
	return true
}

// Failed classifies a request as the proxy's metrics and the success rate do:
// a failure is a stream error, a gRPC status other than OK (gRPC answers
// failures with HTTP 200), a 5xx status, or an end without a response
// (status 0).
func Failed(status int, grpcStatus *int, errText string) bool {
	switch {
	case errText != "":
		return true
	case grpcStatus != nil:
		return *grpcStatus != 0
	}
	return status == 0 || status >= 500
}

// grpcStatusNames are gRPC's status codes by number.
var grpcStatusNames = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// GRPCStatusName is the name of gRPC status code, or its number when gRPC
// defines no such code.
func GRPCStatusName(code int) string {
	if code >= 0 && code < len(grpcStatusNames) {
		return grpcStatusNames[code]
	}
	return strconv.Itoa(code)
}

// grpcStatusName reads a gRPC status as a number or a name, in any case.
func grpcStatusName(s string) (string, bool) {
	if n, err := strconv.Atoi(s); err == nil {
		if n >= 0 && n < len(grpcStatusNames) {
			return grpcStatusNames[n], true
		}
		return "", false
	}
	up := strings.ToUpper(s)
	return up, slices.Contains(grpcStatusNames, up)
}

// MatchStatus reports whether a response with HTTP status code passes f's
// status condition.
func (f *Filter) MatchStatus(code int) bool {
	return f.Status == Status{} || (f.Status.Min <= code && code <= f.Status.Max)
}

// parseStatus reads "5xx" (classes 1xx to 5xx, any case) or "404" (100..599).
func parseStatus(s string) (Status, bool) {
	if len(s) != 3 || s[0] < '1' || s[0] > '5' {
		return Status{}, false
	}
	if strings.EqualFold(s[1:], "xx") {
		lo := int(s[0]-'0') * 100
		return Status{lo, lo + 99}, true
	}
	if s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' {
		return Status{}, false
	}
	code := int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0')
	return Status{code, code}, true
}

// isToken reports whether s is an HTTP token (RFC 9110 section 5.6.2).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}

// isAuthority reports whether s looks like host[:port]: printable ASCII with
// none of the characters that end an authority in a URL, nor userinfo.
func isAuthority(s string) bool {
	return isPrintableASCII(s) && !strings.ContainsAny(s, " /?#@\\")
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// isDNSName reports whether s is a DNS-1123 label (dots false) or subdomain
// (dots true) of at most max characters, as Kubernetes names are.
func isDNSName(s string, max int, dots bool) bool {
	if s == "" || len(s) > max || !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isLowerAlnum(c) || c == '-' || (dots && c == '.')) {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') }
func isAlnum(c byte) bool      { return isLowerAlnum(c) || ('A' <= c && c <= 'Z') }
