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
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		return n
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "meshscope-injector-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(certLifetime),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
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
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &TLS{
		CAPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
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
