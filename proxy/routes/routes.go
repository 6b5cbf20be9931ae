// Package routes is the proxy's per-route policy: which route an outbound request takes (matches on
// method, path and headers, ordered as Gateway API orders them), and what that route asks of the proxy:
// timeouts, a retry policy with its budget, and weighted backends (a traffic split).
//
// A Table is built once per configuration load and read by every request: Match walks a slice sorted by
// precedence and allocates nothing. Configuration comes from the destinations file's routes: lists
// (ParseYAML) and from annotations (FromAnnotations) with Linkerd's names under meshscope's prefix.
package routes

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"
)

// PathKind is how a Match compares the request's path.
type PathKind uint8

// The path match kinds of Gateway API's HTTPPathMatch.
const (
	PathPrefix PathKind = iota // the path starts with Value on a segment boundary ("/api" matches "/api/x", not "/apix")
	PathExact                  // the path is Value
	PathRegex                  // Value, a Go regular expression, matches the whole path
)

// Match is one way a request may select a route; all its parts must hold. Its zero value matches every
// request (a prefix "/" match).
type Match struct {
	Method  string // empty: any
	Path    PathKind
	Value   string // the path, prefix or expression; empty with PathPrefix: "/"
	Headers []HeaderMatch
	re      *regexp.Regexp
}

// HeaderMatch requires a request header: its first value equal to Value or, with Regex, matched whole by
// the expression Value.
type HeaderMatch struct {
	Name  string // canonical (http.CanonicalHeaderKey)
	Value string
	Regex bool
	re    *regexp.Regexp
}

// Compile checks a Match built by hand (from a Gateway API route) and compiles its expressions; its
// error names the part at fault. ParseYAML's matches are compiled already.
func (m *Match) Compile() error {
	if m.Path == PathRegex {
		re, err := compileWhole(m.Value)
		if err != nil {
			return fmt.Errorf("path: %w", err)
		}
		m.re = re
	} else if m.Value != "" && !strings.HasPrefix(m.Value, "/") {
		return fmt.Errorf("path: %q does not start with /", m.Value)
	}
	for i := range m.Headers {
		h := &m.Headers[i]
		h.Name = http.CanonicalHeaderKey(h.Name)
		if !h.Regex {
			continue
		}
		re, err := compileWhole(h.Value)
		if err != nil {
			return fmt.Errorf("header %s: %w", h.Name, err)
		}
		h.re = re
	}
	return nil
}

// Timeouts bound a request on a route; zero means none.
type Timeouts struct {
	// Request bounds the whole exchange, from request headers read to the response's end, retries
	// included. On expiry before the response headers the client gets 504; after, the stream is reset.
	Request time.Duration
	// ResponseHeaders bounds the time until the response headers arrive, retries included: 504.
	ResponseHeaders time.Duration
}

// Backend is one target of a route's traffic split: a service of the destinations file and its share.
type Backend struct {
	Authority string // normalized like the file's authorities; the parent service's own for the default route
	Weight    uint32
}

// Kind says where a route came from; it names the route_kind of its metrics.
type Kind uint8

// Route kinds.
const (
	KindDefault   Kind = iota // no route matched: the service's default route
	KindFile                  // a routes: entry of the destinations file
	KindHTTPRoute             // a Gateway API HTTPRoute rule
	KindGRPCRoute             // a Gateway API GRPCRoute rule
)

// Route is one route's policy. Immutable once in a Table, but for its Budget's counters.
type Route struct {
	Name      string // unique per service; empty for the default route
	Namespace string // the route object's namespace (Gateway API) or the parent's
	Kind      Kind
	Matches   []Match // none: every request
	Timeouts  Timeouts
	Retry     *Retry    // nil: no retries
	Backends  []Backend // none: the parent service itself
	Budget    *Budget   // shared by the route's requests; nil without Retry

	totalWeight uint32
}

// PickBackend chooses one of the route's backends at random in proportion to their weights; nil when
// the route has none (send to the parent service). It does not allocate.
func (r *Route) PickBackend() *Backend {
	switch len(r.Backends) {
	case 0:
		return nil
	case 1:
		return &r.Backends[0]
	}
	n := rand.Uint32N(r.totalWeight)
	for i := range r.Backends {
		if n < r.Backends[i].Weight {
			return &r.Backends[i]
		}
		n -= r.Backends[i].Weight
	}
	return &r.Backends[len(r.Backends)-1]
}

// Table is the routes of one service, ready for matching.
type Table struct {
	entries []entry // every (route, match) pair, most precise first
	// Default takes the requests no route matches: the service's annotations' timeouts and retries,
	// sent to the service itself. Never nil.
	Default *Route
}

type entry struct {
	m     *Match
	r     *Route
	order int // position in the configuration, for ties
}

// NewTable orders routes' matches by Gateway API precedence: an exact path first, then a regular
// expression (longer first), then the longest prefix; then a method match before none; then more header
// matches before fewer; remaining ties go to the route listed first. def is the default route (nil: one
// without policy). Routes must be valid (as ParseYAML and FromHTTPRoute return them).
func NewTable(rs []*Route, def *Route) *Table {
	if def == nil {
		def = &Route{}
	}
	def.Kind, def.Name = KindDefault, ""
	t := &Table{Default: def}
	order := 0
	for _, r := range rs {
		r.totalWeight = 0
		for _, b := range r.Backends {
			r.totalWeight += b.Weight
		}
		if r.Retry != nil && r.Budget == nil {
			r.Budget = NewBudget(nil)
		}
		if len(r.Matches) == 0 {
			r.Matches = []Match{{}}
		}
		for i := range r.Matches {
			t.entries = append(t.entries, entry{m: &r.Matches[i], r: r, order: order})
			order++
		}
	}
	if def.Retry != nil && def.Budget == nil {
		def.Budget = NewBudget(nil)
	}
	sort.SliceStable(t.entries, func(i, j int) bool { return precedes(t.entries[i], t.entries[j]) })
	return t
}

func precedes(a, b entry) bool {
	if ra, rb := pathRank(a.m), pathRank(b.m); ra != rb {
		return ra > rb
	}
	if la, lb := len(a.m.Value), len(b.m.Value); la != lb {
		return la > lb
	}
	if (a.m.Method != "") != (b.m.Method != "") {
		return a.m.Method != ""
	}
	if len(a.m.Headers) != len(b.m.Headers) {
		return len(a.m.Headers) > len(b.m.Headers)
	}
	return a.order < b.order
}

func pathRank(m *Match) int {
	switch m.Path {
	case PathExact:
		return 2
	case PathRegex:
		return 1
	}
	return 0
}

// Match returns the route of the first match, in precedence order, that the request satisfies; the
// Default route when none does. It is safe for concurrent use and does not allocate.
func (t *Table) Match(method, path string, h http.Header) *Route {
	if t == nil {
		return nil
	}
	for i := range t.entries {
		if t.entries[i].m.matches(method, path, h) {
			return t.entries[i].r
		}
	}
	return t.Default
}

// Routes returns the table's routes, each once, in configuration order (for display and tests).
func (t *Table) Routes() []*Route {
	var out []*Route
	seen := map[*Route]bool{}
	es := append([]entry(nil), t.entries...)
	sort.Slice(es, func(i, j int) bool { return es[i].order < es[j].order })
	for _, e := range es {
		if !seen[e.r] {
			seen[e.r] = true
			out = append(out, e.r)
		}
	}
	return out
}

func (m *Match) matches(method, path string, h http.Header) bool {
	if m.Method != "" && m.Method != method {
		return false
	}
	switch m.Path {
	case PathExact:
		if path != m.Value {
			return false
		}
	case PathRegex:
		if !m.re.MatchString(path) {
			return false
		}
	default:
		if !prefixMatch(path, m.Value) {
			return false
		}
	}
	for i := range m.Headers {
		hm := &m.Headers[i]
		vv := h[hm.Name]
		if len(vv) == 0 {
			return false
		}
		if hm.Regex {
			if !hm.re.MatchString(vv[0]) {
				return false
			}
		} else if vv[0] != hm.Value {
			return false
		}
	}
	return true
}

// prefixMatch is Gateway API's PathPrefix: element-wise, so "/api" matches "/api" and "/api/v1" but not
// "/apiv1"; a trailing slash in the prefix is ignored.
func prefixMatch(path, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}
