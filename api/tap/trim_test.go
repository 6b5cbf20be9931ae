package tap

import (
	"strings"
	"testing"
)

func TestTrimBoundsAnEventAndSaysSo(t *testing.T) {
	huge := strings.Repeat("h", 900<<10)
	ev := Event{
		Path: "/" + huge, Authority: huge,
		Headers: map[string][]string{"x-a": {"small"}, "x-huge": {huge, "second"}, "x-z": {"after"}},
	}
	ev.Trim()
	if !ev.Truncated || len(ev.Path) != MaxFieldBytes || len(ev.Authority) != MaxFieldBytes {
		t.Fatalf("truncated %v, path %d, authority %d bytes", ev.Truncated, len(ev.Path), len(ev.Authority))
	}
	total := 0
	for name, values := range ev.Headers {
		for _, v := range values {
			total += len(name) + len(v)
		}
	}
	if total > MaxHeaderBytes || ev.Headers["x-a"][0] != "small" || len(ev.Headers["x-huge"]) != 1 || ev.Headers["x-z"] != nil {
		t.Fatalf("headers of %d bytes after Trim: x-a %q, %d x-huge values, x-z %q", total, ev.Headers["x-a"], len(ev.Headers["x-huge"]), ev.Headers["x-z"])
	}
	line, err := AppendJSON(nil, &ev)
	if err != nil || len(line) > 2*(2*MaxFieldBytes+MaxHeaderBytes) {
		t.Fatalf("event line of %d bytes, %v", len(line), err)
	}

	small := Event{Path: "/ok", Authority: "a:80", Headers: map[string][]string{"accept": {"*/*"}}}
	if allocs := testing.AllocsPerRun(100, small.Trim); allocs != 0 || small.Truncated {
		t.Fatalf("an event within bounds: %v allocations, truncated %v", allocs, small.Truncated)
	}
}
