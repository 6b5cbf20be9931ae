package install

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Names and lifetimes of the mesh's identity (the `proxy identity` issuer's contract): a trust anchor
// (root) signs the issuer, an intermediate CA that signs the proxies' certificates.
const (
	IdentitySecret       = "meshscope-identity-issuer"
	TrustAnchorsConfig   = "meshscope-identity-trust-anchors"
	IdentityPort         = 8080
	trustDomain          = "identity.meshscope.cluster.local"
	anchorLifetime       = 10 * 365 * 24 * time.Hour
	issuerLifetime       = 365 * 24 * time.Hour
	trustAnchorsFile     = "ca.crt"
	issuerCertFile       = "issuer.crt"
	issuerKeyFile        = "issuer.key"
	issuerRenewBefore    = 60 * 24 * time.Hour
	identityServiceFiles = "/var/run/meshscope/identity"
)

// Identity is the mesh's trust: the trust anchor bundle every proxy verifies peers with, and the
// issuer's certificate and key, all PEM, as `proxy identity --generate` writes them.
type Identity struct {
	AnchorsPEM, IssuerCertPEM, IssuerKeyPEM []byte
}

// NewIdentity makes a root and an issuer signed by it. The root's key is not kept: rotating the
// issuer then means a new root too (or bring your own with ReadIdentity).
func NewIdentity(now time.Time) (*Identity, error) {
	root, rootKey, err := newCA(nil, nil, "root."+trustDomain, now, anchorLifetime, 1)
	if err != nil {
		return nil, err
	}
	issuer, issuerKey, err := newCA(root, rootKey, trustDomain, now, issuerLifetime, 0)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ecKeyPEM(issuerKey)
	if err != nil {
		return nil, err
	}
	return &Identity{AnchorsPEM: certPEM(root), IssuerCertPEM: certPEM(issuer), IssuerKeyPEM: keyPEM}, nil
}

// ReadIdentity reads ca.crt, issuer.crt and issuer.key from dir (`proxy identity --generate
// --dir DIR` writes them) and checks them at now.
func ReadIdentity(dir string, now time.Time) (*Identity, error) {
	var id Identity
	for name, dst := range map[string]*[]byte{trustAnchorsFile: &id.AnchorsPEM, issuerCertFile: &id.IssuerCertPEM, issuerKeyFile: &id.IssuerKeyPEM} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		*dst = b
	}
	if err := id.check(now); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return &id, nil
}

// check says why the issuer cannot sign at now, or nil.
func (id *Identity) check(now time.Time) error {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(id.AnchorsPEM) {
		return errors.New("no trust anchor certificate")
	}
	b, _ := pem.Decode(id.IssuerCertPEM)
	if b == nil {
		return errors.New("no issuer certificate")
	}
	issuer, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return fmt.Errorf("issuer certificate: %w", err)
	}
	if !issuer.IsCA {
		return errors.New("the issuer certificate is not a CA")
	}
	if now.Add(issuerRenewBefore).After(issuer.NotAfter) {
		return fmt.Errorf("the issuer expires %s", issuer.NotAfter.Format(time.DateOnly))
	}
	if _, err := issuer.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the issuer does not chain to the trust anchors: %w", err)
	}
	k, _ := pem.Decode(id.IssuerKeyPEM)
	if k == nil {
		return errors.New("no issuer key")
	}
	key, err := parseECKey(k)
	if err != nil {
		return fmt.Errorf("issuer key: %w", err)
	}
	if !key.PublicKey.Equal(issuer.PublicKey) {
		return errors.New("the issuer key does not match its certificate")
	}
	return nil
}

// ClusterIdentity returns the identity an earlier install left in the cluster, so that installing
// again keeps the mesh's trust (and prints the same bytes); nil when there is none or its issuer is
// about to expire.
func ClusterIdentity(ctx context.Context, client kubernetes.Interface, namespace string, now time.Time) (*Identity, error) {
	s, err := client.CoreV1().Secrets(namespace).Get(ctx, IdentitySecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", namespace, IdentitySecret, err)
	}
	id := &Identity{AnchorsPEM: s.Data[trustAnchorsFile], IssuerCertPEM: s.Data[issuerCertFile], IssuerKeyPEM: s.Data[issuerKeyFile]}
	if id.check(now) != nil {
		return nil, nil
	}
	return id, nil
}
