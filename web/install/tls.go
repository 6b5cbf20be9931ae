package install

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"

	"github.com/meshscope/meshscope/api/kube"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TLS is the injector's serving certificate and the CA the API server trusts it by (the webhook
// configuration's caBundle), all PEM.
type TLS struct {
	CAPEM, CertPEM, KeyPEM []byte
}

// certLifetime is how long a generated certificate lasts; running `web install` again within the
// last renewBefore of it issues a new one.
const (
	certLifetime = 2 * 365 * 24 * time.Hour
	renewBefore  = 60 * 24 * time.Hour
)

// serviceNames are the names the API server may dial the injector's Service by.
func serviceNames(namespace string) []string {
	base := kube.Injector + "." + namespace + ".svc"
	return []string{base, base + ".cluster.local"}
}

// NewTLS makes a CA and a serving certificate for the injector's Service in namespace.
func NewTLS(namespace string, now time.Time) (*TLS, error) {
	return NewTLSFor(now, serviceNames(namespace)...)
}

// NewTLSFor makes a CA and a serving certificate for hosts (DNS names or IP addresses), e.g. a
// webhook served on loopback outside a cluster.
func NewTLSFor(now time.Time, hosts ...string) (*TLS, error) {
	var names []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, h)
		}
	}
	ca, caKey, err := newCA(nil, nil, "meshscope-injector-ca", now, certLifetime, 0)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: hosts[0]}, DNSNames: names, IPAddresses: ips,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(certLifetime),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ecKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &TLS{CAPEM: certPEM(ca), CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: keyPEM}, nil
}

// newCA makes a CA certificate and its P-256 key, signed by parent (self-signed when parent is nil).
func newCA(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, now time.Time, life time.Duration, maxPathLen int) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(life),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: maxPathLen, MaxPathLenZero: maxPathLen == 0,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func ecKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// parseECKey reads a P-256 key in the PEM forms `proxy identity --generate` and openssl write.
func parseECKey(b *pem.Block) (*ecdsa.PrivateKey, error) {
	if b.Type == "EC PRIVATE KEY" {
		return x509.ParseECPrivateKey(b.Bytes)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T key, want ECDSA", k)
	}
	return ec, nil
}

// check says why t cannot serve the injector of namespace at now, or nil when it can.
func (t *TLS) check(namespace string, now time.Time) error {
	pair, err := tls.X509KeyPair(t.CertPEM, t.KeyPEM)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	if now.Add(renewBefore).After(leaf.NotAfter) {
		return fmt.Errorf("certificate expires %s", leaf.NotAfter.Format(time.DateOnly))
	}
	if !slices.Equal(leaf.DNSNames, serviceNames(namespace)) {
		return fmt.Errorf("certificate names %v, not this namespace's injector", leaf.DNSNames)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(t.CAPEM) {
		return fmt.Errorf("no CA certificate")
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: serviceNames(namespace)[0], CurrentTime: now})
	return err
}

// ClusterTLS returns the webhook certificate an earlier install left in the cluster, so that
// installing again prints the same bytes and the running injector keeps its certificate; nil when
// there is none or it cannot serve any more (expiring, another namespace's, broken).
func ClusterTLS(ctx context.Context, client kubernetes.Interface, namespace string, now time.Time) (*TLS, error) {
	s, err := client.CoreV1().Secrets(namespace).Get(ctx, WebhookSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", namespace, WebhookSecret, err)
	}
	t := &TLS{CAPEM: s.Data["ca.crt"], CertPEM: s.Data["tls.crt"], KeyPEM: s.Data["tls.key"]}
	if t.check(namespace, now) != nil {
		return nil, nil
	}
	return t, nil
}
