package balance

import (
	"strings"
	"testing"
)

// FuzzParseFile feeds the destinations file parser arbitrary bytes (the file is written by people and
// tools): it must never panic, its error must be one line naming the file, and what it accepts must hold
// the invariants Lookup and Pick rely on.
func FuzzParseFile(f *testing.F) {
	for _, seed := range []string{
		"",
		"services: []\n",
		"services:\n  - authority: web.shop:80\n    labels: {namespace: shop}\n    endpoints:\n      - addr: 127.0.0.1:1\n        labels: {pod: a}\n",
		"services:\n  - authority: \"[::1]:80\"\n    endpoints:\n      - addr: \"[::1]:1\"\n",
		"services:\n  - authority: a:80\n  - authority: A:80\n",
		"services: &x [*x]\n",
		"services:\n  - {authority: a:1, endpoints: [{addr: b:2, labels: {x: [1]}}]}\n",
		"services:\n\t- x\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		services, err := parseFile("d.yaml", data)
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "d.yaml:") || strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error is not one line naming the file: %q", msg)
			}
			return
		}
		authorities := map[string]bool{}
		for _, s := range services {
			if authorities[s.authority] {
				t.Fatalf("duplicate authority %q accepted", s.authority)
			}
			authorities[s.authority] = true
			if NormalizeAuthority(s.authority) != s.authority {
				t.Fatalf("authority %q is not in lookup form", s.authority)
			}
			addrs := map[string]bool{}
			for _, e := range s.endpoints {
				if err := checkAddr(e.Addr); err != nil || addrs[e.Addr] {
					t.Fatalf("bad or duplicate addr %q accepted (%v)", e.Addr, err)
				}
				addrs[e.Addr] = true
				for k := range e.Labels {
					if !validLabelName(k) {
						t.Fatalf("label name %q accepted", k)
					}
				}
			}
		}
	})
}
