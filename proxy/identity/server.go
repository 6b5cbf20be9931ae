package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/time/rate"

	"github.com/meshscope/meshscope/api/meshid"
)

// reviewTimeout bounds the TokenReview of one request.
const reviewTimeout = 5 * time.Second

// Service is the issuer service: it signs a proxy's certificate request for the identity its
// ServiceAccount token proves, and for no other name.
type Service struct {
	Issuer   *Issuer
	Reviewer TokenReviewer
	// Limiter bounds how many requests per second are signed (a burst above it is answered 429); nil
	// means no bound.
	Limiter *rate.Limiter
	Log     *slog.Logger
}

// Certify validates token and csr and returns the signed chain. Its errors wrap ErrNotProven when the
// token proves no identity, or not the one the request names.
func (s *Service) Certify(ctx context.Context, token string, csrDER []byte) ([]*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, badRequest{fmt.Errorf("certificate request: %v", err)}
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, badRequest{fmt.Errorf("certificate request signature: %v", err)}
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, badRequest{err}
	}
	if token == "" || len(token) > meshid.MaxTokenBytes {
		return nil, badRequest{fmt.Errorf("token: want 1 to %d bytes", meshid.MaxTokenBytes)}
	}
	rctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	review, err := s.Reviewer.Review(rctx, token, []string{meshid.Audience})
	if err != nil {
		return nil, err
	}
	name, err := prove(review)
	if err != nil {
		return nil, err
	}
	// The certificate names the proven identity only. A request that asks for anything else is refused
	// rather than quietly corrected: it is a misconfigured proxy, or someone trying.
	if err := requestedOnly(csr, name); err != nil {
		return nil, err
	}
	return s.Issuer.Sign(csr.PublicKey, name)
}

// requestedOnly checks that csr names no identity other than name (naming none is allowed).
func requestedOnly(csr *x509.CertificateRequest, name string) error {
	if len(csr.IPAddresses) > 0 || len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("%w: the request names IP addresses, URIs or e-mail addresses; only %s may be signed", ErrNotProven, name)
	}
	for _, n := range append([]string{csr.Subject.CommonName}, csr.DNSNames...) {
		if n != "" && n != name {
			return fmt.Errorf("%w: the request names %q; the token proves %s", ErrNotProven, n, name)
		}
	}
	return nil
}

// badRequest marks a malformed request (400).
type badRequest struct{ err error }

func (b badRequest) Error() string { return b.err.Error() }

// ServeHTTP answers POST /v1/certify.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := logger(s.Log).With("peer", r.RemoteAddr)
	if r.URL.Path != meshid.CertifyPath {
		writeJSON(w, http.StatusNotFound, meshid.CertifyResponse{Error: "not found: POST " + meshid.CertifyPath})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, meshid.CertifyResponse{Error: "method not allowed: POST " + meshid.CertifyPath})
		return
	}
	if s.Limiter != nil && !s.Limiter.Allow() {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusTooManyRequests, meshid.CertifyResponse{Error: "too many requests"})
		return
	}
	var req meshid.CertifyRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, meshid.MaxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, meshid.CertifyResponse{Error: "request body: " + err.Error()})
		return
	}
	chain, err := s.Certify(r.Context(), req.Token, req.CSR)
	var bad badRequest
	switch {
	case err == nil:
	case errors.As(err, &bad):
		log.Info("certificate request refused", "reason", err)
		writeJSON(w, http.StatusBadRequest, meshid.CertifyResponse{Error: err.Error()})
		return
	case errors.Is(err, ErrNotProven):
		log.Info("certificate request refused", "reason", err)
		writeJSON(w, http.StatusForbidden, meshid.CertifyResponse{Error: err.Error()})
		return
	default:
		log.Warn("certificate request failed", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, meshid.CertifyResponse{Error: err.Error()})
		return
	}
	log.Info("certificate issued", "identity", chain[0].DNSNames[0], "expires", chain[0].NotAfter.UTC().Format(time.RFC3339))
	res := meshid.CertifyResponse{}
	for _, c := range chain {
		res.Chain = append(res.Chain, c.Raw)
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Serve runs the service on ln over TLS until ctx is done, then shuts down gracefully. It re-reads the
// issuer's files every poll (rotation), so proxies get certificates from the new issuer from then on.
func (s *Service) Serve(ctx context.Context, ln net.Listener, poll time.Duration) error {
	log := logger(s.Log)
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS13,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.Issuer.servingCertificate() },
		},
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			switch changed, err := s.Issuer.Reload(); {
			case err != nil:
				log.Error("issuer files not loaded: still signing with the previous issuer", "err", err)
			case changed:
				c := s.Issuer.Certificate()
				log.Info("issuer rotated", "issuer", c.Subject.CommonName, "serial", c.SerialNumber.Text(16), "expires", c.NotAfter.UTC().Format(time.RFC3339))
			}
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			return nil
		}
	}
}
