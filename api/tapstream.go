package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
)

// ErrTapTokenRejected is a proxy's 401: the tap token is missing or wrong.
var ErrTapTokenRejected = errors.New("tap token rejected")

// NewTapClient returns an HTTP client for tap streams: a connection must open
// within connect and answer headers within header, then the body may stream for
// as long as it lasts.
func NewTapClient(connect, header time.Duration) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: connect, KeepAlive: 15 * time.Second}).DialContext,
			ResponseHeaderTimeout: header,
			MaxIdleConnsPerHost:   1,
			IdleConnTimeout:       30 * time.Second,
			DisableCompression:    true,
		},
		// A redirect from a proxy's admin port would carry the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// peerIdentityKey carries, in a tap request's context, the identity its proxy must prove.
type peerIdentityKey struct{}

// NewMeshTapClient returns an HTTP client for tap streams over mutual TLS (OpenMeshTap): each connection
// presents id's certificate and checks that the proxy proves the identity its request names, within
// connect (TCP and handshake); headers must come within header. Connections are never reused: one
// verified for one identity must not carry a request meant for another (a pod's address is reused).
func NewMeshTapClient(id MeshTLS, connect, header time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 15 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				name, _ := ctx.Value(peerIdentityKey{}).(string)
				if name == "" {
					return nil, errors.New("no identity to check the proxy against")
				}
				ctx, cancel := context.WithTimeout(ctx, connect)
				defer cancel()
				return (&tls.Dialer{NetDialer: dialer, Config: id.ClientConfig(name)}).DialContext(ctx, network, addr)
			},
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: header,
			DisableCompression:    true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// OpenMeshTap is OpenTap over mutual TLS with a client of NewMeshTapClient: the proxy at admin must prove
// identity before the request is sent, and accept the client's. A handshake either side refused is a
// refusal (counted and logged once by the fan-in), its error saying which identity was expected.
func OpenMeshTap(ctx context.Context, client *http.Client, admin, identity string, filter tap.Filter, maxLine int) (*TapStream, error) {
	s, err := openTap(context.WithValue(ctx, peerIdentityKey{}, identity), client, "https", admin, "", filter, maxLine)
	if err == nil || ctx.Err() != nil {
		return s, err
	}
	reason := meshid.RefusalReason(err)
	switch reason {
	case meshid.RefusedHandshake:
		// Not refused for who either side is: the proxy is down, or did not answer with a tap stream.
		return nil, err
	case meshid.RefusedIdentityMismatch:
		err = fmt.Errorf("%w: the proxy does not prove %s, the identity of its pod's ServiceAccount: not tapped", err, identity)
	case meshid.RefusedByPeer:
		err = fmt.Errorf("%w: the proxy refused the dashboard's identity (is its --tap-client-identity the dashboard's?)", err)
	}
	return nil, &refusedError{reason, err}
}

// TapStream is one proxy's open tap stream.
type TapStream struct {
	admin string
	body  io.ReadCloser
	dec   *tap.Decoder
}

// OpenTap asks the proxy whose admin port is at admin for its tap stream of
// the requests filter matches, sending token as a bearer token when it is set.
// maxLine caps one NDJSON line (0: tap.DefaultMaxLine). A 401 is
// ErrTapTokenRejected; another refusal carries the proxy's message.
func OpenTap(ctx context.Context, client *http.Client, admin, token string, filter tap.Filter, maxLine int) (*TapStream, error) {
	return openTap(ctx, client, "http", admin, token, filter, maxLine)
}

func openTap(ctx context.Context, client *http.Client, scheme, admin, token string, filter tap.Filter, maxLine int) (*TapStream, error) {
	u := url.URL{Scheme: scheme, Host: admin, Path: "/tap", RawQuery: filter.Values().Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", admin, err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		// The cause is what matters; the URL would only repeat the address.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("tap %s: %w", admin, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized {
			return nil, fmt.Errorf("tap %s: %s: %w", admin, resp.Status, ErrTapTokenRejected)
		}
		return nil, fmt.Errorf("tap %s: %s: %s", admin, resp.Status, strings.TrimSpace(string(msg)))
	}
	if ct := resp.Header.Get("Content-Type"); ct != tap.ContentType {
		resp.Body.Close()
		return nil, fmt.Errorf("tap %s: answered %q, not a tap stream: is this a proxy's admin address?", admin, ct)
	}
	return &TapStream{admin: admin, body: resp.Body, dec: tap.NewDecoder(resp.Body, maxLine)}, nil
}

// Next returns the stream's next event. When the proxy ends the stream (it
// shut down) or sends a line that is not an event, the error says so.
func (s *TapStream) Next() (*tap.Event, error) {
	ev := new(tap.Event)
	if err := s.dec.Decode(ev); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("tap %s: stream ended (proxy shut down)", s.admin)
		}
		return nil, fmt.Errorf("tap %s: %w", s.admin, err)
	}
	return ev, nil
}

// Close ends the stream.
func (s *TapStream) Close() error { return s.body.Close() }
