package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/dev/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

// mesh is a generated trust anchor and issuer in a temporary directory.
type mesh struct {
	dir     string
	anchors *x509.CertPool
	issuer  *Issuer
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	dir := t.TempDir()
	if _, err := Generate(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	pool, _, err := meshid.LoadTrustAnchors(filepath.Join(dir, TrustAnchorsFile))
	if err != nil {
		t.Fatal(err)
	}
	is, err := NewIssuer(filepath.Join(dir, IssuerCertFile), filepath.Join(dir, IssuerKeyFile), pool)
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{dir: dir, anchors: pool, issuer: is}
}

// serve runs the issuer service with a token file on loopback and returns its address.
func (m *mesh) serve(t *testing.T, reviewer TokenReviewer, limiter *rate.Limiter) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	svc := &Service{Issuer: m.issuer, Reviewer: reviewer, Limiter: limiter}
	go func() { defer close(done); svc.Serve(ctx, ln, 50*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func tokenFile(t *testing.T, users map[string]string) *FileReviewer {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := WriteTokenFile(p, users); err != nil {
		t.Fatal(err)
	}
	return &FileReviewer{Path: p}
}

func TestProxyGetsACertificateForItsServiceAccountOnly(t *testing.T) {
	m := newMesh(t)
	addr := m.serve(t, tokenFile(t, map[string]string{"web-token": ServiceAccountUser("shop", "web")}), nil)
	c, err := meshid.NewClient(meshid.ClientConfig{Addr: addr, Anchors: m.anchors, TokenFile: writeToken(t, "web-token")})
	if err != nil {
		t.Fatal(err)
	}
	if c.Ready() {
		t.Fatal("ready before any certificate")
	}
	cert, err := c.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if want := "web.shop.serviceaccount.identity.meshscope.cluster.local"; len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != want {
		t.Errorf("DNS names %v, want [%s]", leaf.DNSNames, want)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 24*time.Hour || life > 24*time.Hour+2*clockSkew {
		t.Errorf("certificate lives %v, want 24h", life)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !publicKeysEqual(leaf.PublicKey, cert.PrivateKey.(*ecdsa.PrivateKey).Public()) {
		t.Error("certificate is not for the proxy's own P-256 key")
	}
	if _, err := m.issuer.Certificate().Verify(x509.VerifyOptions{Roots: m.anchors}); err != nil {
		t.Error(err)
	}
}

func TestIssuerRefuses(t *testing.T) {
	m := newMesh(t)
	reviewer := tokenFile(t, map[string]string{"web-token": ServiceAccountUser("shop", "web"), "user-token": "alice"})
	addr := m.serve(t, reviewer, nil)
	svc := &Service{Issuer: m.issuer, Reviewer: reviewer}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrFor := func(names ...string) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: names}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	for _, tc := range []struct {
		name  string
		token string
		csr   []byte
		want  string
	}{
		{"an unknown token", "nobody", csrFor(), "unknown token"},
		{"a user that is not a ServiceAccount", "user-token", csrFor(), "not a ServiceAccount"},
		{"a request for another workload's name", "web-token", csrFor(meshid.Name("shop", "checkout")), "the token proves web.shop"},
		{"a request for its own name and another", "web-token", csrFor(meshid.Name("shop", "web"), "evil.example"), "evil.example"},
		{"a malformed request", "web-token", []byte("garbage"), "certificate request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Certify(context.Background(), tc.token, tc.csr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("its own name", func(t *testing.T) {
		chain, err := svc.Certify(context.Background(), "web-token", csrFor(meshid.Name("shop", "web")))
		if err != nil || chain[0].DNSNames[0] != meshid.Name("shop", "web") {
			t.Fatalf("got %v, %v", chain, err)
		}
	})
	t.Run("over the wire, a client with an unknown token has no certificate", func(t *testing.T) {
		c, _ := meshid.NewClient(meshid.ClientConfig{Addr: addr, Anchors: m.anchors, TokenFile: writeToken(t, "nobody")})
		if _, err := c.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("got %v, want 403", err)
		}
	})
	t.Run("a client that does not trust the issuer's anchor refuses it", func(t *testing.T) {
		other := newMesh(t)
		c, _ := meshid.NewClient(meshid.ClientConfig{Addr: addr, Anchors: other.anchors, TokenFile: writeToken(t, "web-token")})
		var uae x509.UnknownAuthorityError
		if _, err := c.Fetch(context.Background()); !errors.As(err, &uae) {
			t.Fatalf("got %v, want an unknown authority", err)
		}
	})
}

func TestIssuerRateLimits(t *testing.T) {
	m := newMesh(t)
	addr := m.serve(t, tokenFile(t, map[string]string{"web-token": ServiceAccountUser("shop", "web")}), rate.NewLimiter(rate.Every(time.Hour), 1))
	c, _ := meshid.NewClient(meshid.ClientConfig{Addr: addr, Anchors: m.anchors, TokenFile: writeToken(t, "web-token")})
	if _, err := c.Fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "429") {
		t.Fatalf("second request in the hour: %v, want 429", err)
	}
}

// TestIssuerRotation rotates the issuer while the service runs: the next certificates come from the new
// issuer, and both old and new certificates verify against the unchanged trust anchors.
func TestIssuerRotation(t *testing.T) {
	m := newMesh(t)
	addr := m.serve(t, tokenFile(t, map[string]string{"web-token": ServiceAccountUser("shop", "web")}), nil)
	c, _ := meshid.NewClient(meshid.ClientConfig{Addr: addr, Anchors: m.anchors, TokenFile: writeToken(t, "web-token")})
	before, err := c.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	oldIssuer := m.issuer.Certificate()
	if _, err := Generate(m.dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for m.issuer.Certificate().Equal(oldIssuer) {
		if time.Now().After(deadline) {
			t.Fatal("the service never switched to the new issuer")
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, err := c.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if after.Leaf.Issuer.String() != before.Leaf.Issuer.String() || after.Leaf.CheckSignatureFrom(oldIssuer) == nil {
		t.Error("the certificate after the rotation is still signed by the old issuer")
	}
	for _, cert := range []*tls.Certificate{before, after} {
		inter := x509.NewCertPool()
		issuer, _ := x509.ParseCertificate(cert.Certificate[1])
		inter.AddCert(issuer)
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: m.anchors, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("certificate from issuer %s no longer verifies: %v", issuer.SerialNumber, err)
		}
	}
}

func TestBadIssuerFilesKeepTheCurrentIssuer(t *testing.T) {
	m := newMesh(t)
	old := m.issuer.Certificate()
	// A key that does not match the certificate (a rotation half written by hand).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := writeFile(filepath.Join(m.dir, IssuerKeyFile), keyPEM(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := m.issuer.Reload(); changed || err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("reload: changed %v, err %v; want the mismatch reported", changed, err)
	}
	if !m.issuer.Certificate().Equal(old) {
		t.Fatal("issuer replaced by files that do not load")
	}
	// An issuer from another mesh does not chain to the anchors.
	other := newMesh(t)
	for _, f := range []string{IssuerCertFile, IssuerKeyFile} {
		data, _ := os.ReadFile(filepath.Join(other.dir, f))
		os.WriteFile(filepath.Join(m.dir, f), data, 0o600)
	}
	if _, err := m.issuer.Reload(); err == nil || !strings.Contains(err.Error(), "trust anchors") {
		t.Fatalf("reload of a foreign issuer: %v", err)
	}
}

func TestTrustAnchors(t *testing.T) {
	a, b, c := newMesh(t), newMesh(t), newMesh(t)
	read := func(m *mesh) string {
		data, _ := os.ReadFile(filepath.Join(m.dir, TrustAnchorsFile))
		return string(data)
	}
	bundle := filepath.Join(t.TempDir(), "bundle.crt")
	os.WriteFile(bundle, []byte(read(a)+read(b)), 0o644)
	pool, certs, err := meshid.LoadTrustAnchors(bundle)
	if err != nil || len(certs) != 2 {
		t.Fatalf("two roots: %v %v", certs, err)
	}
	// Both meshes' issuers verify against the two-root bundle: a root rotation's overlap.
	for _, m := range []*mesh{a, b} {
		if _, err := m.issuer.Certificate().Verify(x509.VerifyOptions{Roots: pool}); err != nil {
			t.Error(err)
		}
	}
	os.WriteFile(bundle, []byte(read(a)+read(b)+read(c)), 0o644)
	if _, _, err := meshid.LoadTrustAnchors(bundle); err == nil || !strings.Contains(err.Error(), "at most 2") {
		t.Errorf("three roots: %v", err)
	}
	os.WriteFile(bundle, []byte("not pem"), 0o644)
	if _, _, err := meshid.LoadTrustAnchors(bundle); err == nil || !strings.Contains(err.Error(), "no PEM CERTIFICATE") {
		t.Errorf("garbage: %v", err)
	}
}

func TestBringYourOwnIssuer(t *testing.T) {
	// An issuer made elsewhere (here: by hand, with an RSA root as some corporate PKIs have).
	dir := t.TempDir()
	root, rootKey, err := newCA(nil, nil, "corp root", time.Now(), time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	ikey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "corp issuer"}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, ikey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	issuerCert, _ := x509.ParseCertificate(der)
	os.WriteFile(filepath.Join(dir, "root.pem"), certPEM(root), 0o644)
	os.WriteFile(filepath.Join(dir, "issuer.pem"), certPEM(issuerCert), 0o644)
	os.WriteFile(filepath.Join(dir, "issuer-key.pem"), keyPEM(ikey), 0o600)
	pool, _, err := meshid.LoadTrustAnchors(filepath.Join(dir, "root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	is, err := NewIssuer(filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "issuer-key.pem"), pool)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := is.Sign(key.Public(), meshid.Name("shop", "web"))
	if err != nil {
		t.Fatal(err)
	}
	// The issuer's certificate ends in an hour: so does the workload's, not in 24.
	if !chain[0].NotAfter.Equal(issuerCert.NotAfter) {
		t.Errorf("workload certificate ends %v, after its issuer (%v)", chain[0].NotAfter, issuerCert.NotAfter)
	}
}
