package meshid

import (
	"crypto/x509"
	"errors"
	"net"
	"strings"
)

// Reasons a mutual TLS handshake is refused (RefusalReason).
const (
	RefusedUnknownAuthority = "unknown_authority"     // the peer's certificate does not chain to the trust anchors
	RefusedExpired          = "expired"               // the peer's certificate expired (or is not valid yet)
	RefusedNoClientCert     = "no_client_certificate" // a TLS client presented no certificate
	RefusedIdentityMismatch = "identity_mismatch"     // the peer proved another identity than the one expected
	RefusedNoLocalIdentity  = "no_local_identity"     // this side has no certificate to present
	RefusedByPeer           = "refused_by_peer"       // the peer refused this side's certificate
	RefusedHandshake        = "handshake_failed"      // anything else: a malformed handshake, a timeout
)

// RefusalReason names why a mutual TLS handshake failed, on either side, as identity_tls_refused_total and
// the tap refusals count it.
func RefusalReason(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var op *net.OpError
	switch {
	case errors.As(err, &unknown):
		return RefusedUnknownAuthority
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return RefusedExpired
	case errors.As(err, &hostname):
		return RefusedIdentityMismatch
	case errors.Is(err, ErrNoIdentity):
		return RefusedNoLocalIdentity
	case errors.As(err, &op) && op.Op == "remote error":
		return RefusedByPeer
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		// crypto/tls has no error value for it, only this message.
		return RefusedNoClientCert
	}
	return RefusedHandshake
}
