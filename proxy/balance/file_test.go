package balance_test

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshscope/meshscope/proxy/balance"
)

// writeFile writes content to dir/destinations.yaml and returns its path.
func writeFile(t testing.TB, dir, content string) string {
	t.Helper()
	path := filepath.Join(dir, "destinations.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadRejectsBadFilesWithOneLineNamingTheEntry(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string // the error after "<path>:"
	}{
		{"empty file", "", ` empty file: want a services list (write "services: []" for none)`},
		{"yaml syntax error", "services: [\n", `1: did not find expected node content`},
		{"tab indentation", "services:\n\t- authority: a:80\n", `2: found character that cannot start any token`},
		{"unknown top-level field", "servces: []\n", `1: unknown field "servces" (want services)`},
		{"services not a list", "services: {a: b}\n", `1: services: want a list, got a mapping`},
		{"missing authority", "services:\n  - endpoints: []\n", `2: services[0]: missing authority`},
		{"authority without port", "services:\n  - authority: web.shop\n",
			`2: services[0]: bad authority "web.shop": missing port in address`},
		{"authority with a bad port", "services:\n  - authority: web.shop:http\n",
			`2: services[0]: bad authority "web.shop:http": port "http" is not a number in 1..65535`},
		{"duplicate authority after normalising case", "services:\n  - authority: web.shop:80\n  - authority: WEB.shop:80\n",
			`3: services[1] web.shop:80: duplicate authority (also services[0])`},
		{"unknown service field", "services:\n  - authority: web.shop:80\n    endpoint: []\n",
			`3: services[0]: unknown field "endpoint" (want authority, labels, identity, annotations, endpoints, routes)`},
		{"field given twice", "services:\n  - authority: a:80\n    authority: b:80\n",
			`3: services[0]: field "authority" given twice`},
		{"unknown endpoint field", "services:\n  - authority: web.shop:80\n    endpoints:\n      - adr: 127.0.0.1:1\n",
			`4: services[0] web.shop:80: endpoints[0]: unknown field "adr" (want addr, labels, identity)`},
		{"endpoint without addr", "services:\n  - authority: web.shop:80\n    endpoints:\n      - labels: {pod: a}\n",
			`4: services[0] web.shop:80: endpoints[0]: missing addr`},
		{"bad addr", "services:\n  - authority: web.shop:80\n    endpoints:\n      - addr: 127.0.0.1\n",
			`4: services[0] web.shop:80: endpoints[0]: bad addr "127.0.0.1": missing port in address`},
		{"addr with port out of range", "services:\n  - authority: web.shop:80\n    endpoints:\n      - addr: 127.0.0.1:70000\n",
			`4: services[0] web.shop:80: endpoints[0]: bad addr "127.0.0.1:70000": port "70000" is not a number in 1..65535`},
		{"addr without host", "services:\n  - authority: web.shop:80\n    endpoints:\n      - addr: :8080\n",
			`4: services[0] web.shop:80: endpoints[0]: bad addr ":8080": missing host`},
		{"duplicate addr", "services:\n  - authority: web.shop:80\n    endpoints:\n      - addr: 127.0.0.1:1\n      - addr: 127.0.0.1:1\n",
			`5: services[0] web.shop:80: endpoints[1]: duplicate addr "127.0.0.1:1" (also endpoints[0])`},
		{"label name that is no Prometheus name", "services:\n  - authority: web.shop:80\n    labels: {name-space: shop}\n",
			`3: services[0] web.shop:80: bad label name "name-space": want letters, digits and _, not starting with a digit`},
		{"label value that is a list", "services:\n  - authority: web.shop:80\n    labels: {namespace: [a]}\n",
			`3: services[0] web.shop:80: label "namespace": want a plain value, got a list`},
		{"service that is a string", "services:\n  - web.shop:80\n",
			`2: services[0]: want a mapping with authority, labels, identity, annotations, endpoints, routes, got "web.shop:80"`},
		{"identity that is no DNS name", "services:\n  - authority: web.shop:80\n    identity: Web_Shop\n",
			`3: services[0] web.shop:80: bad identity "Web_Shop": want a DNS name such as web.shop.serviceaccount.identity.meshscope.cluster.local`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), tt.content)
			r, err := balance.Load(path, nil)
			if err == nil {
				t.Fatalf("Load accepted the file, resolver %v", r)
			}
			if got, want := err.Error(), path+":"+tt.want; got != want {
				t.Errorf("error\n got %q\nwant %q", got, want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestLoadNamesAMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := balance.Load(path, nil)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v does not name %s", err, path)
	}
}

func TestLoadAcceptsServicesWithoutEndpoints(t *testing.T) {
	for name, content := range map[string]string{
		"explicit empty list":       "services: []\n",
		"null list":                 "services:\n",
		"service with no endpoints": "services:\n  - authority: web.shop:80\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := balance.Load(writeFile(t, t.TempDir(), content), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

const shopFile = `
services:
  - authority: voting.shop:8080
    labels: {namespace: shop, deployment: voting}
    endpoints:
      - addr: 127.0.0.1:14143
        labels: {pod: voting-0}
      - addr: 127.0.0.1:14144
        labels: {pod: voting-1, deployment: voting-canary}
  - authority: web.shop:80
    labels: {namespace: shop, deployment: web}
    endpoints:
      - addr: 127.0.0.1:15143
  - authority: "[::1]:9000"
    endpoints:
      - addr: "[::1]:19000"
`

func TestLookupMatchesAuthorities(t *testing.T) {
	r, err := balance.Load(writeFile(t, t.TempDir(), shopFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		authority string
		want      string // Destination.Authority, "" for nil
	}{
		{"voting.shop:8080", "voting.shop:8080"},
		{"Voting.SHOP:8080", "voting.shop:8080"},
		{"voting.shop.:8080", "voting.shop:8080"},
		{"voting.shop", ""}, // port 80 is not 8080
		{"voting.shop:80", ""},
		{"web.shop", "web.shop:80"},
		{"web.shop:80", "web.shop:80"},
		{"web.shop:", "web.shop:80"},
		{"WEB.shop", "web.shop:80"},
		{"web.shop.", "web.shop:80"},
		{"web.shop.:80", "web.shop:80"},
		{"web.shop:8080", ""},
		{"[::1]:9000", "[::1]:9000"},
		{"[::1]", ""},
		{"other.shop:8080", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.authority, func(t *testing.T) {
			d := r.Lookup(tt.authority)
			got := ""
			if d != nil {
				got = d.Authority
			}
			if got != tt.want {
				t.Errorf("Lookup(%q) = %q, want %q", tt.authority, got, tt.want)
			}
		})
	}

	var none *balance.Resolver
	if d := none.Lookup("web.shop"); d != nil {
		t.Errorf("nil resolver found %v", d)
	}
}

func TestEndpointIdentityDefaultsToTheService(t *testing.T) {
	r, err := balance.Load(writeFile(t, t.TempDir(), `services:
  - authority: voting.shop:8080
    identity: voting.shop.serviceaccount.identity.meshscope.cluster.local
    endpoints:
      - addr: 127.0.0.1:14143
      - addr: 127.0.0.1:14144
        identity: canary.shop.serviceaccount.identity.meshscope.cluster.local
  - authority: legacy.shop:80
    endpoints:
      - addr: 127.0.0.1:14145
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"127.0.0.1:14143": "voting.shop.serviceaccount.identity.meshscope.cluster.local",
		"127.0.0.1:14144": "canary.shop.serviceaccount.identity.meshscope.cluster.local",
		"127.0.0.1:14145": "", // not meshed: plain text
	}
	for _, authority := range []string{"voting.shop:8080", "legacy.shop:80"} {
		var tried []*balance.Endpoint
		for {
			ep, err := r.Lookup(authority).Pick(tried...)
			if err != nil {
				break
			}
			tried = append(tried, ep)
			if ep.Hints.Identity != want[ep.Addr] {
				t.Errorf("%s: identity %q, want %q", ep.Addr, ep.Hints.Identity, want[ep.Addr])
			}
		}
	}
}

func TestEndpointLabelsMergeServiceLabelsWithDstPrefix(t *testing.T) {
	r, err := balance.Load(writeFile(t, t.TempDir(), shopFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := r.Lookup("voting.shop:8080")
	if got, want := d.DstLabels, map[string]string{"dst_deployment": "voting", "dst_namespace": "shop"}; !maps.Equal(got, want) {
		t.Errorf("service labels %v, want %v", got, want)
	}
	want := map[string]map[string]string{
		"127.0.0.1:14143": {"dst_deployment": "voting", "dst_namespace": "shop", "dst_pod": "voting-0"},
		"127.0.0.1:14144": {"dst_deployment": "voting-canary", "dst_namespace": "shop", "dst_pod": "voting-1"},
	}
	seen := map[string]bool{}
	for range 20 {
		ep, err := d.Pick()
		if err != nil {
			t.Fatal(err)
		}
		defer ep.Begin()(nil) // outstanding requests make the balancer use both endpoints
		seen[ep.Addr] = true
		if !maps.Equal(ep.DstLabels, want[ep.Addr]) {
			t.Errorf("%s: labels %v, want %v", ep.Addr, ep.DstLabels, want[ep.Addr])
		}
	}
	if len(seen) != 2 {
		t.Errorf("picked %v, want both endpoints", seen)
	}
	if got := r.Lookup("[::1]:9000").DstLabels; got == nil || len(got) != 0 {
		t.Errorf("unlabelled service has labels %v, want an empty map", got)
	}
}
