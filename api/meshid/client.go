package meshid

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// renewAt is the share of a certificate's life after which the proxy asks for the next one.
const renewAt = 0.7

// Retry bounds of a failed certificate request: doubling from the first to the last, with jitter.
const (
	minRetry = time.Second
	maxRetry = time.Minute
)

// ClientConfig configures a workload's Client.
type ClientConfig struct {
	// Addr is the issuer service, host:port.
	Addr string
	// ServerName is the issuer service's identity; empty means IssuerName.
	ServerName string
	// Anchors verify the issuer service and every peer proxy.
	Anchors *x509.CertPool
	// TokenFile holds the ServiceAccount token, read again for each request (Kubernetes rotates it).
	TokenFile string
	Log       *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Client is a workload's identity (a proxy's, or the dashboard's): a P-256 key made in memory and never
// written anywhere, and the certificate the issuer signed for it, fetched at start and renewed at 70% of
// its life (Run).
type Client struct {
	cfg  ClientConfig
	key  *ecdsa.PrivateKey
	http *http.Client
	log  *slog.Logger

	cert     atomic.Pointer[tls.Certificate]
	sessions tls.ClientSessionCache
	configs  sync.Map // server name -> *tls.Config, the client side of mutual TLS
	server   *tls.Config
	expiry   prometheus.GaugeFunc
}

// NewClient makes the proxy's key. Nothing is fetched until Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if cfg.ServerName == "" {
		cfg.ServerName = IssuerName
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, key: key, log: cfg.Log, sessions: tls.NewLRUClientSessionCache(1024)}
	c.http = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: cfg.Anchors, ServerName: cfg.ServerName},
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConns:          1,
			IdleConnTimeout:       time.Minute,
		},
	}
	c.server = &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.current() },
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        cfg.Anchors,
		VerifyConnection: verifyPeerName,
	}
	c.expiry = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "identity_cert_expiration_timestamp_seconds",
		Help: "When the proxy's identity certificate expires, in seconds since the Unix epoch; 0 without one.",
	}, func() float64 {
		if cert := c.cert.Load(); cert != nil {
			return float64(cert.Leaf.NotAfter.Unix())
		}
		return 0
	})
	return c, nil
}

// Collector is the expiry gauge, identity_cert_expiration_timestamp_seconds, for the proxy's registry.
func (c *Client) Collector() prometheus.Collector { return c.expiry }

func (c *Client) now() time.Time {
	if c.cfg.Now != nil {
		return c.cfg.Now()
	}
	return time.Now()
}

// ErrNoIdentity is returned while the proxy has no valid certificate.
var ErrNoIdentity = errors.New("no identity certificate yet")

// current returns the certificate, unless there is none or it expired.
func (c *Client) current() (*tls.Certificate, error) {
	cert := c.cert.Load()
	if cert == nil || !c.now().Before(cert.Leaf.NotAfter) {
		return nil, ErrNoIdentity
	}
	return cert, nil
}

// Certificate is the proxy's certificate and chain; nil without a valid one.
func (c *Client) Certificate() *tls.Certificate {
	cert, _ := c.current()
	return cert
}

// Ready reports whether the proxy holds a valid certificate.
func (c *Client) Ready() bool {
	_, err := c.current()
	return err == nil
}

// Name is the proxy's identity, once it has a certificate; "" before.
func (c *Client) Name() string {
	if cert := c.cert.Load(); cert != nil {
		return cert.Leaf.DNSNames[0]
	}
	return ""
}

// ServerConfig is the inbound side of mutual TLS: it presents the proxy's certificate and requires a client
// certificate chaining to the trust anchors that names an identity.
func (c *Client) ServerConfig() *tls.Config { return c.server }

// ClientConfig is the outbound side of mutual TLS to a peer whose identity must be name: TLS 1.3, the
// peer's certificate chaining to the trust anchors and naming name (crypto/tls's hostname check), the
// proxy's own certificate presented. Sessions are resumed across connections.
func (c *Client) ClientConfig(name string) *tls.Config {
	if v, ok := c.configs.Load(name); ok {
		return v.(*tls.Config)
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		RootCAs:            c.cfg.Anchors,
		ServerName:         name,
		ClientSessionCache: c.sessions,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.current()
		},
	}
	v, _ := c.configs.LoadOrStore(name, cfg)
	return v.(*tls.Config)
}

// ServerConfigFor is the server side of mutual TLS for one client identity only (the dashboard's, on a
// proxy's admin port): it presents this workload's certificate and accepts a client whose certificate
// chains to the trust anchors and names client, and nobody else. refused, when set, is told each refused
// client's address and why, before the handshake fails: a client without a certificate ("didn't provide
// a certificate"), from another trust anchor (x509.UnknownAuthorityError), expired
// (x509.CertificateInvalidError) or naming another identity (x509.HostnameError); RefusalReason names it.
func (c *Client) ServerConfigFor(client string, refused func(peer net.Addr, err error)) *tls.Config {
	base := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.current() },
		// Requested, not required: the verification is ours, so that a client without a certificate is
		// refused in VerifyConnection, where refused hears of it, like every other refusal.
		ClientAuth: tls.RequestClientCert,
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// One configuration per connection, to tell refused which peer it was.
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cfg := base.Clone()
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				err := c.verifyClient(cs, client)
				if err != nil && refused != nil {
					refused(hello.Conn.RemoteAddr(), err)
				}
				return err
			}
			return cfg, nil
		},
	}
}

// verifyClient checks a client certificate as crypto/tls would, then that it names want and nothing else.
func (c *Client) verifyClient(cs tls.ConnectionState, want string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: client didn't provide a certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.cfg.Anchors, Intermediates: inter, CurrentTime: c.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return err
	}
	if name, err := PeerName(cs); err != nil || name != want {
		return x509.HostnameError{Certificate: leaf, Host: want}
	}
	return nil
}

// verifyPeerName accepts a verified peer certificate only when it names exactly one identity.
func verifyPeerName(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: client didn't provide a certificate")
	}
	if _, err := PeerName(cs); err != nil {
		return err
	}
	return nil
}

// PeerName is the identity of a connection's verified peer.
func PeerName(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("no peer certificate")
	}
	leaf := cs.PeerCertificates[0]
	if len(leaf.DNSNames) != 1 {
		return "", fmt.Errorf("peer certificate names %d identities: want one", len(leaf.DNSNames))
	}
	if _, _, err := ParseName(leaf.DNSNames[0]); err != nil {
		return "", err
	}
	return leaf.DNSNames[0], nil
}

// Run fetches the certificate and renews it at 70% of its life until ctx is done. A failed request is
// retried with backoff (1s doubling to 1m, with jitter); the certificate held stays in use until it
// expires.
func (c *Client) Run(ctx context.Context) {
	retry := time.Duration(0)
	for {
		var wait time.Duration
		cert, err := c.Fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			retry = min(max(2*retry, minRetry), maxRetry)
			wait = retry/2 + mrand.N(retry/2+1)
			held := "none"
			if cur := c.cert.Load(); cur != nil {
				held = "valid until " + cur.Leaf.NotAfter.UTC().Format(time.RFC3339)
			}
			c.log.Warn("identity certificate request failed", "issuer", c.cfg.Addr, "err", err, "retry_in", wait.Round(time.Millisecond), "certificate", held)
		} else {
			retry = 0
			c.cert.Store(cert)
			// 70% of the life left from now, not from NotBefore: the issuer backdates that by a minute
			// for clock skew, which would make a short-lived certificate due for renewal at once.
			wait = time.Duration(renewAt * float64(cert.Leaf.NotAfter.Sub(c.now())))
			c.log.Info("identity certificate issued", "identity", cert.Leaf.DNSNames[0], "expires", cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "renew_in", wait.Round(time.Second))
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// maxTokenFileBytes bounds the ServiceAccount token file.
const maxTokenFileBytes = MaxTokenBytes

// Fetch asks the issuer once for a certificate for the client's key and returns it, without holding it
// (Run does that, and asks again before it expires).
func (c *Client) Fetch(ctx context.Context) (*tls.Certificate, error) {
	token, err := readToken(c.cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, c.key)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(CertifyRequest{Token: token, CSR: csr})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+c.cfg.Addr+CertifyPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var out CertifyResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, MaxRequestBytes)).Decode(&out); err != nil {
		return nil, fmt.Errorf("issuer answered %s: %v", res.Status, err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("issuer answered %s: %s", res.Status, out.Error)
	}
	return c.checkChain(out.Chain)
}

// checkChain verifies what the issuer sent: a chain to the trust anchors, for the proxy's own key, naming
// one identity, usable by both sides of a connection.
func (c *Client) checkChain(chain [][]byte) (*tls.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("issuer sent no certificate")
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("issuer sent a bad certificate: %v", err)
		}
		certs[i] = cert
	}
	leaf := certs[0]
	if !c.key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("issuer sent a certificate for another key")
	}
	inter := x509.NewCertPool()
	for _, ic := range certs[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.cfg.Anchors, Intermediates: inter, CurrentTime: c.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("issuer sent a certificate that does not verify: %v", err)
	}
	if _, err := PeerName(tls.ConnectionState{PeerCertificates: certs}); err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: c.key, Leaf: leaf}, nil
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("token %s: %w", path, err)
	}
	if len(data) > maxTokenFileBytes {
		return "", fmt.Errorf("token %s: larger than %d bytes", path, maxTokenFileBytes)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("token %s: empty", path)
	}
	return token, nil
}
