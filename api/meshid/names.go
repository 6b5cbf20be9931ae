// Package meshid is a workload's side of the mesh's identity, shared by the proxy and the dashboard:
// identity names, the issuer's wire, and a Client that holds a key in memory and the certificate the
// issuer (proxy/identity, `proxy identity`) signs for it, renewed at 70% of its life, with the TLS
// configurations of mutual TLS on both sides of a connection.
//
// An identity is a DNS name, <sa>.<ns>.serviceaccount.identity.meshscope.cluster.local, carried as the
// only DNS subject alternative name of the workload's certificate, so that crypto/tls's own hostname
// check verifies a peer's identity.
package meshid

import (
	"fmt"
	"strings"
)

const (
	// TrustDomain is the suffix of every identity name.
	TrustDomain = "identity.meshscope.cluster.local"
	// Audience is the audience a ServiceAccount token must have for the issuer to accept it.
	Audience = "identity.meshscope.io"
	// IssuerName is the issuer service's own identity, which proxies check when they connect to it: the
	// ServiceAccount meshscope-identity in the control plane's namespace meshscope.
	IssuerName = "meshscope-identity.meshscope.serviceaccount." + TrustDomain
)

// Name returns the identity of ServiceAccount sa in namespace ns.
func Name(ns, sa string) string {
	return sa + "." + ns + ".serviceaccount." + TrustDomain
}

// ParseName returns the namespace and ServiceAccount of an identity name.
func ParseName(name string) (ns, sa string, err error) {
	rest, ok := strings.CutSuffix(name, ".serviceaccount."+TrustDomain)
	if !ok {
		return "", "", fmt.Errorf("identity %q is not in the trust domain %s", name, TrustDomain)
	}
	sa, ns, ok = strings.Cut(rest, ".")
	if !ok || !dnsLabel(sa) || !dnsLabel(ns) {
		return "", "", fmt.Errorf("identity %q: want <serviceaccount>.<namespace>.serviceaccount.%s", name, TrustDomain)
	}
	return ns, sa, nil
}

// dnsLabel reports whether s is an RFC 1123 label, as Kubernetes namespaces are. ServiceAccount names may
// be DNS subdomains (with dots); the issuer refuses those, since a dot would make the identity ambiguous.
func dnsLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
