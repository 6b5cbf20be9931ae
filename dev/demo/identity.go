package demo

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshscope/meshscope/api/meshid"
)

// The demo dashboard's ServiceAccount, named as web install names the dashboard's in its default
// namespace: the dashboard taps the proxies as this identity, over mutual TLS.
const (
	dashboardNamespace = "meshscope"
	dashboardAccount   = "meshscope-dashboard"
)

// DashboardIdentity is the identity the demo's dashboard holds and the demo's proxies let tap.
var DashboardIdentity = meshid.Name(dashboardNamespace, dashboardAccount)

// IdentityName is the identity of s's pods, as the issuer (proxy identity) names a ServiceAccount's:
// <sa>.<ns>.serviceaccount.identity.meshscope.cluster.local. Each deployment runs as a ServiceAccount of
// its own name, as a cluster would give it.
func (s Service) IdentityName() string { return meshid.Name(s.Namespace, s.Deployment) }

// account is one ServiceAccount the demo's issuer knows: every deployment's, and the dashboard's.
type account struct{ namespace, name string }

func (m Mesh) accounts() []account {
	out := []account{{dashboardNamespace, dashboardAccount}}
	for _, s := range m.Services {
		out = append(out, account{s.Namespace, s.Deployment})
	}
	return out
}

// tokenFile is where a ServiceAccount's token is, in the identity directory.
func tokenFile(dir string, a account) string {
	return filepath.Join(dir, a.name+"."+a.namespace+".token")
}

// tokensFile is the issuer's --token-file, in the identity directory.
const tokensFile = "tokens.yaml"

// WriteTokens writes into dir a random token per deployment and one for the dashboard, and the issuer's
// --token-file naming each token's ServiceAccount: outside a cluster it stands in for the API server's
// TokenReview. The trust anchor and issuer are proxy identity --generate's, in the same dir.
func (m Mesh) WriteTokens(dir string) error {
	type token struct {
		Token     string   `yaml:"token"`
		User      string   `yaml:"user"`
		Audiences []string `yaml:"audiences"`
	}
	var doc struct {
		Tokens []token `yaml:"tokens"`
	}
	for _, a := range m.accounts() {
		t := rand.Text()
		if err := os.WriteFile(tokenFile(dir, a), []byte(t), 0o600); err != nil {
			return err
		}
		doc.Tokens = append(doc.Tokens, token{Token: t, User: "system:serviceaccount:" + a.namespace + ":" + a.name,
			Audiences: []string{"identity.meshscope.io"}})
	}
	slices.SortFunc(doc.Tokens, func(a, b token) int { return strings.Compare(a.User, b.User) })
	b, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, tokensFile), b, 0o600)
}

// IssuerArgs are the flags of the demo's issuer (proxy identity) over dir: --generate's trust anchor and
// issuer, and WriteTokens' tokens.
func (m Mesh) IssuerArgs(dir string) []string {
	return []string{"identity", "--dir", dir, "--token-file", filepath.Join(dir, tokensFile), "--listen", m.Identity}
}

// IdentityArgs are the flags that give p's proxy its identity from the demo's issuer, and let the demo's
// dashboard, alone, tap it over mutual TLS.
func (m Mesh) IdentityArgs(p Pod, dir string) []string {
	return append(m.identityArgs(dir, account{p.Service.Namespace, p.Service.Deployment}),
		"--tap-client-identity", DashboardIdentity)
}

// DashboardIdentityArgs are the flags of web serve that give the dashboard its identity (DashboardIdentity)
// from the demo's issuer: it then taps every proxy over mutual TLS, never with the tap token.
func (m Mesh) DashboardIdentityArgs(dir string) []string {
	return m.identityArgs(dir, account{dashboardNamespace, dashboardAccount})
}

// identityArgs are the flags, the same for the proxy and web serve, that point a workload running as
// ServiceAccount a at the demo's issuer.
func (m Mesh) identityArgs(dir string, a account) []string {
	return []string{
		"--identity-addr", m.Identity,
		"--identity-trust-anchors", filepath.Join(dir, "ca.crt"),
		"--identity-token-file", tokenFile(dir, a),
	}
}
