package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProxyForwardsToTheUpstream(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upstream saw "+r.URL.Path)
	}))
	defer upstream.Close()
	rp, err := newProxy(strings.TrimPrefix(upstream.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(rp)
	defer front.Close()
	resp, err := http.Get(front.URL + "/a/b")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "upstream saw /a/b" {
		t.Errorf("got %s %q", resp.Status, body)
	}
}

func TestNewProxyRejectsUpstreamsThatAreNotHostPort(t *testing.T) {
	for _, upstream := range []string{"", "127.0.0.1:1/path", "%zz"} {
		if _, err := newProxy(upstream); err == nil {
			t.Errorf("newProxy(%q) accepted it", upstream)
		}
	}
}
