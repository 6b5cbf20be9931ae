package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/meshscope/meshscope/api/meshid"
)

// File names in a directory that --generate writes and the issuer reads by default.
const (
	TrustAnchorsFile = "ca.crt"     // the trust anchor bundle: every proxy gets it
	TrustAnchorKey   = "ca.key"     // the root's key: keep it offline; only --generate reads it
	IssuerCertFile   = "issuer.crt" // the issuer's certificate, signed by a trust anchor
	IssuerKeyFile    = "issuer.key" // the issuer's key
)

// Lifetimes of what Generate makes. A trust anchor outlives many issuers; an issuer is rotated well within
// its year (Linkerd's defaults).
const (
	AnchorLifetime = 10 * 365 * 24 * time.Hour
	IssuerLifetime = 365 * 24 * time.Hour
)

// Generate writes a new issuer certificate and key into dir, signed by the trust anchor there (ca.crt
// and ca.key), which it first creates when dir has neither. Run on a directory that already holds a mesh's
// root, it rotates the issuer: a running issuer service re-reads the new files. Files are replaced
// atomically (written aside, then renamed) with keys readable by their owner only. It returns the paths
// written.
func Generate(dir string, now time.Time) ([]string, error) {
	anchorPath, keyPath := filepath.Join(dir, TrustAnchorsFile), filepath.Join(dir, TrustAnchorKey)
	var written []string
	root, rootKey, err := loadPair(anchorPath, keyPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, aerr := os.Stat(anchorPath); aerr == nil {
			return nil, fmt.Errorf("%s exists without %s: cannot sign a new issuer (bring the root's key, or generate in an empty directory)", anchorPath, keyPath)
		}
		var key *ecdsa.PrivateKey
		if root, key, err = newCA(nil, nil, "root."+meshid.TrustDomain, now, AnchorLifetime, 1); err != nil {
			return nil, err
		}
		rootKey = key
		if err := writeFile(keyPath, keyPEM(key), 0o600); err != nil {
			return nil, err
		}
		if err := writeFile(anchorPath, certPEM(root), 0o644); err != nil {
			return nil, err
		}
		written = append(written, anchorPath, keyPath)
	case err != nil:
		return nil, err
	}
	issuer, issuerKey, err := newCA(root, rootKey, meshid.TrustDomain, now, min(IssuerLifetime, root.NotAfter.Sub(now)), 0)
	if err != nil {
		return nil, err
	}
	// The key first: an issuer service reading between the two renames sees a key that does not match the
	// certificate, keeps what it has and reads again on the next change.
	ik, ic := filepath.Join(dir, IssuerKeyFile), filepath.Join(dir, IssuerCertFile)
	if err := writeFile(ik, keyPEM(issuerKey), 0o600); err != nil {
		return nil, err
	}
	if err := writeFile(ic, certPEM(issuer), 0o644); err != nil {
		return nil, err
	}
	return append(written, ic, ik), nil
}

// newCA makes a CA certificate and its P-256 key, signed by parent (self-signed when parent is nil).
func newCA(parent *x509.Certificate, parentKey crypto.Signer, cn string, now time.Time, life time.Duration, maxPathLen int) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(life),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

// loadPair reads a certificate and its key; the error names the file and says when they do not match.
func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certs, err := meshid.LoadCertificates(certPath)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := parseKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !publicKeysEqual(certs[0].PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("%s does not match the certificate in %s", keyPath, certPath)
	}
	return certs[0], key, nil
}

// parseKey reads a PEM private key: PKCS#8, SEC 1 (EC PRIVATE KEY) or PKCS#1 (RSA).
func parseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM private key block")
	}
	var key any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q: want a private key", b.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", key)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func certPEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func keyPEM(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err) // a P-256 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// writeFile replaces path atomically: a reader sees the old content or the new, never half of it.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
