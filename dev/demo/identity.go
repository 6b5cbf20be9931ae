package demo

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// IdentityName is the identity of s's pods, as the issuer (proxy identity) names a ServiceAccount's:
// <sa>.<ns>.serviceaccount.identity.meshscope.cluster.local. Each deployment runs as a ServiceAccount of
// its own name, as a cluster would give it.
func (s Service) IdentityName() string {
	return s.Deployment + "." + s.Namespace + ".serviceaccount.identity.meshscope.cluster.local"
}

// tokenFile is where a deployment's ServiceAccount token is, in the identity directory.
func tokenFile(dir string, s Service) string {
	return filepath.Join(dir, s.Deployment+"."+s.Namespace+".token")
}

// tokensFile is the issuer's --token-file, in the identity directory.
const tokensFile = "tokens.yaml"

// WriteTokens writes into dir a random token per deployment, and the issuer's --token-file naming each
// token's ServiceAccount: outside a cluster it stands in for the API server's TokenReview. The trust
// anchor and issuer are proxy identity --generate's, in the same dir.
func (m Mesh) WriteTokens(dir string) error {
	type token struct {
		Token     string   `yaml:"token"`
		User      string   `yaml:"user"`
		Audiences []string `yaml:"audiences"`
	}
	var doc struct {
		Tokens []token `yaml:"tokens"`
	}
	for _, s := range m.Services {
		t := rand.Text()
		if err := os.WriteFile(tokenFile(dir, s), []byte(t), 0o600); err != nil {
			return err
		}
		doc.Tokens = append(doc.Tokens, token{Token: t, User: "system:serviceaccount:" + s.Namespace + ":" + s.Deployment,
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

// IdentityArgs are the flags that give p's proxy its identity from the demo's issuer.
func (m Mesh) IdentityArgs(p Pod, dir string) []string {
	return []string{
		"--identity-addr", m.Identity,
		"--identity-trust-anchors", filepath.Join(dir, "ca.crt"),
		"--identity-token-file", tokenFile(dir, p.Service),
	}
}
