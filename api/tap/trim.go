package tap

import (
	"slices"
	"strings"
)

// MaxFieldBytes bounds an event's path and its authority, each, after [Event.Trim].
const MaxFieldBytes = 4 << 10

// MaxHeaderBytes bounds the names and values of an event's headers, together, after [Event.Trim]: far
// above what real requests carry, and small enough that one request with huge headers cannot make a
// subscriber's buffer hold megabytes per event, nor a line outgrow a reader's limit ([DefaultMaxLine]).
const MaxHeaderBytes = 16 << 10

// Trim cuts ev's path and authority to MaxFieldBytes each and its headers to MaxHeaderBytes in all
// (names in order; the value that crosses the bound keeps its prefix, later headers are left out), and
// sets Truncated when it cut anything. What it keeps of a cut string is copied, so the original, however
// large, is not held by the event. An event within the bounds is left as it is, without allocating.
func (ev *Event) Trim() {
	if len(ev.Path) > MaxFieldBytes {
		ev.Path, ev.Truncated = strings.Clone(ev.Path[:MaxFieldBytes]), true
	}
	if len(ev.Authority) > MaxFieldBytes {
		ev.Authority, ev.Truncated = strings.Clone(ev.Authority[:MaxFieldBytes]), true
	}
	total := 0
	for name, values := range ev.Headers {
		for _, v := range values {
			total += len(name) + len(v)
		}
	}
	if total <= MaxHeaderBytes {
		return
	}
	ev.Truncated = true
	names := make([]string, 0, len(ev.Headers))
	for name := range ev.Headers {
		names = append(names, name)
	}
	slices.Sort(names)
	budget := MaxHeaderBytes
	kept := make(map[string][]string, len(names))
	for _, name := range names {
		var out []string
		for _, v := range ev.Headers[name] {
			if budget <= len(name) {
				break
			}
			budget -= len(name)
			if len(v) > budget {
				v = strings.Clone(v[:budget])
			}
			budget -= len(v)
			out = append(out, v)
		}
		if len(out) == 0 {
			break
		}
		kept[name] = out
	}
	ev.Headers = kept
}
