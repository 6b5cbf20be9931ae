// Package identity gives every meshed workload a cryptographic identity, as Linkerd's identity does: a
// trust anchor (root) and an issuer (intermediate) certificate, the issuer service that signs a proxy's
// certificate once its ServiceAccount token is proven by a TokenReview, and the proxy's side (a key that
// never leaves memory, its certificate fetched and renewed, and the TLS configurations of mutual TLS
// between proxies).
//
// An identity is a DNS name, <sa>.<ns>.serviceaccount.identity.meshscope.cluster.local, carried as the
// only DNS subject alternative name of the workload's certificate, so that crypto/tls's own hostname
// check verifies a peer's identity.
package identity

import (
	"errors"
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

// serviceAccountPrefix begins the user name Kubernetes gives a ServiceAccount token: system:serviceaccount:<ns>:<sa>.
const serviceAccountPrefix = "system:serviceaccount:"

// nameOfUser returns the identity proven by a ServiceAccount token's user name.
func nameOfUser(user string) (string, error) {
	rest, ok := strings.CutPrefix(user, serviceAccountPrefix)
	if !ok {
		return "", fmt.Errorf("user %q is not a ServiceAccount", user)
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok || !dnsLabel(ns) || !dnsLabel(sa) {
		return "", fmt.Errorf("user %q: want %s<namespace>:<name>", user, serviceAccountPrefix)
	}
	return Name(ns, sa), nil
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

// ErrNotProven is the issuer's answer to a request whose token does not prove the name it asks for, or
// does not prove any.
var ErrNotProven = errors.New("identity not proven")
