package meshid

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// MaxAnchors bounds the trust bundle: the current root, and the next during a root rotation.
const MaxAnchors = 2

// LoadCertificates reads every certificate of a PEM file, at least one.
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q: want CERTIFICATE", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return certs, nil
}

// LoadTrustAnchors reads the trust anchor bundle: one or two (MaxAnchors) self-signed CA certificates.
func LoadTrustAnchors(path string) (*x509.CertPool, []*x509.Certificate, error) {
	certs, err := LoadCertificates(path)
	if err != nil {
		return nil, nil, err
	}
	if len(certs) > MaxAnchors {
		return nil, nil, fmt.Errorf("%s: %d certificates: a trust bundle holds at most %d roots (the current and the next)", path, len(certs), MaxAnchors)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return nil, nil, fmt.Errorf("%s: %q is not a CA certificate", path, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, certs, nil
}
