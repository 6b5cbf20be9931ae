package main

import (
	"net/url"
	"strings"
	"testing"

	"github.com/meshscope/meshscope/api"
)

func TestParseResource(t *testing.T) {
	cases := []struct {
		arg, namespace string
		want           url.Values
		errHas         string
	}{
		{"deploy/web", "shop", url.Values{"namespace": {"shop"}, "deployment": {"web"}}, ""},
		{"deployment/web", "shop", url.Values{"namespace": {"shop"}, "deployment": {"web"}}, ""},
		{"po/web-0", "shop", url.Values{"namespace": {"shop"}, "pod": {"web-0"}}, ""},
		{"ns/shop", "", url.Values{"namespace": {"shop"}}, ""},
		{"", "shop", url.Values{"namespace": {"shop"}}, ""},
		{"", "", url.Values{}, ""},
		{"deploy/web", "", nil, "-n NAMESPACE"},
		{"ns/shop", "ops", nil, "contradicts"},
		{"svc/web", "shop", nil, `unknown kind "svc"`},
		{"web", "shop", nil, "want deploy/NAME"},
		{"deploy/", "shop", nil, "want deploy/NAME"},
	}
	for _, tc := range cases {
		t.Run(tc.arg+" -n "+tc.namespace, func(t *testing.T) {
			got, err := parseResource(tc.arg, tc.namespace)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want one containing %q", err, tc.errHas)
				}
				return
			}
			if err != nil || got.Encode() != tc.want.Encode() {
				t.Errorf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestStatusPrinterLeavesOutRepeats(t *testing.T) {
	var out strings.Builder
	report := statusPrinter(&out)
	web := api.Proxy{Pod: "web-0", Admin: "127.0.0.1:4191"}
	for _, it := range []api.TapItem{
		{Proxy: web, State: api.ProxyStreaming},
		{Proxy: web, State: api.ProxyFailed, Err: "connection refused"},
		{Proxy: web, State: api.ProxyFailed, Err: "connection refused"}, // the retry fails the same way
		{State: api.NoProxies, Err: "no proxy matches"},
		{Proxy: web, State: api.ProxyStreaming},
	} {
		report(it)
	}
	want := "proxy web-0 streaming\nproxy web-0 failed: connection refused\nnone: no proxy matches\nproxy web-0 streaming\n"
	if out.String() != want {
		t.Errorf("printed\n%s\nwant\n%s", out.String(), want)
	}
}
