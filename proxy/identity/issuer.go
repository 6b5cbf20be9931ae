package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshscope/meshscope/api/meshid"
)

// DefaultLifetime is how long a workload certificate is valid: a day, renewed at 70% of it by the proxy.
const DefaultLifetime = 24 * time.Hour

// clockSkew backdates every certificate's NotBefore, so a peer whose clock is a little behind accepts it.
const clockSkew = time.Minute

// Issuer signs workload certificates with the issuer certificate and key of two PEM files, re-reading them
// when they change (Reload), so that the issuer is rotated without restarting anything: certificates
// already issued stay valid, since they chain to the same trust anchors.
type Issuer struct {
	certPath, keyPath string
	anchors           *x509.CertPool
	// Lifetime of the certificates signed; zero means DefaultLifetime.
	Lifetime time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	cur    atomic.Pointer[issuerState]
	mu     sync.Mutex // serialises Reload
	failed fileStamp  // the files' stamp when they last failed to load: not retried (or logged) until they change
}

// issuerState is one loaded issuer.
type issuerState struct {
	cert  *x509.Certificate
	key   crypto.Signer
	stamp fileStamp

	servingOnce sync.Once
	serving     *tls.Certificate
	servingErr  error
}

// fileStamp tells whether the issuer's files changed since they were read: a file replaced (renamed over,
// as Generate and Kubernetes' secret volumes do) is a new file even within the file system's timestamp
// granularity.
type fileStamp struct {
	cert, key os.FileInfo
}

func (a fileStamp) same(b fileStamp) bool {
	same := func(x, y os.FileInfo) bool {
		return x != nil && y != nil && os.SameFile(x, y) && x.ModTime().Equal(y.ModTime()) && x.Size() == y.Size()
	}
	return same(a.cert, b.cert) && same(a.key, b.key)
}

// NewIssuer loads the issuer's certificate and key and checks that the certificate is a CA chaining to
// one of anchors.
func NewIssuer(certPath, keyPath string, anchors *x509.CertPool) (*Issuer, error) {
	is := &Issuer{certPath: certPath, keyPath: keyPath, anchors: anchors}
	if _, err := is.Reload(); err != nil {
		return nil, err
	}
	return is, nil
}

func (is *Issuer) now() time.Time {
	if is.Now != nil {
		return is.Now()
	}
	return time.Now()
}

func (is *Issuer) lifetime() time.Duration {
	if is.Lifetime > 0 {
		return is.Lifetime
	}
	return DefaultLifetime
}

// Reload reads the issuer's files again when they changed since the last read, and reports whether it
// switched to a new issuer. Files that fail to load (half written, a key that does not match its
// certificate, not chaining to the trust anchors) leave the current issuer in place; the error is reported
// once per change of the files.
func (is *Issuer) Reload() (bool, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	stamp, err := stampOf(is.certPath, is.keyPath)
	if err != nil {
		return false, err
	}
	if cur := is.cur.Load(); (cur != nil && cur.stamp.same(stamp)) || is.failed.same(stamp) {
		return false, nil
	}
	st, err := is.load(stamp)
	if err != nil {
		is.failed = stamp
		return false, err
	}
	is.failed = fileStamp{}
	is.cur.Store(st)
	return true, nil
}

func stampOf(certPath, keyPath string) (fileStamp, error) {
	ci, err := os.Stat(certPath)
	if err != nil {
		return fileStamp{}, err
	}
	ki, err := os.Stat(keyPath)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{cert: ci, key: ki}, nil
}

func (is *Issuer) load(stamp fileStamp) (*issuerState, error) {
	cert, key, err := loadPair(is.certPath, is.keyPath)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s: %q is not a CA certificate that may sign certificates", is.certPath, cert.Subject.CommonName)
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: is.anchors, CurrentTime: is.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, fmt.Errorf("%s: does not chain to the trust anchors: %w", is.certPath, err)
	}
	return &issuerState{cert: cert, key: key, stamp: stamp}, nil
}

// Certificate returns the issuer certificate in use.
func (is *Issuer) Certificate() *x509.Certificate { return is.cur.Load().cert }

// Sign returns the certificate chain (leaf, issuer) for pub with name as its only identity, valid for the
// issuer's lifetime but never past the issuer certificate's own end.
func (is *Issuer) Sign(pub crypto.PublicKey, name string) ([]*x509.Certificate, error) {
	return is.cur.Load().sign(pub, name, is.now(), is.lifetime())
}

func (st *issuerState) sign(pub crypto.PublicKey, name string, now time.Time, life time.Duration) ([]*x509.Certificate, error) {
	notAfter := now.Add(life)
	if notAfter.After(st.cert.NotAfter) {
		notAfter = st.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, errors.New("the issuer certificate has expired")
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     usage,
		// Both: a proxy presents the same certificate as a server (inbound) and as a client (outbound).
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, st.cert, pub, st.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, st.cert}, nil
}

// servingCertificate is the issuer service's own TLS certificate, for meshid.IssuerName, signed by the issuer in
// use (made once per issuer, so a rotation changes it too).
func (is *Issuer) servingCertificate() (*tls.Certificate, error) {
	st := is.cur.Load()
	st.servingOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			st.servingErr = err
			return
		}
		// The service's certificate lives as long as the issuer: it is re-made only when the issuer changes.
		chain, err := st.sign(key.Public(), meshid.IssuerName, is.now(), st.cert.NotAfter.Sub(is.now()))
		if err != nil {
			st.servingErr = err
			return
		}
		st.serving = &tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
	})
	return st.serving, st.servingErr
}

// checkPublicKey accepts the key types and sizes a workload certificate may carry.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s: want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("key type %T: want ECDSA, RSA or Ed25519", pub)
	}
	return nil
}

// logger returns log, or a logger that discards when log is nil.
func logger(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
