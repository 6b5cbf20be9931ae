package taphub

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/meshscope/meshscope/api/meshid"
	"github.com/meshscope/meshscope/api/tap"
)

// maxBatch bounds how many events one write carries before a flush, so a
// busy stream still reaches its reader in steady pieces.
const maxBatch = 512

// linger is how long the first event of a batch waits for others to join it:
// a busy stream then costs one write (and one wakeup of its reader) per
// batch instead of one per event, for a delay no one watching can see.
const linger = 5 * time.Millisecond

// writeTimeout is how long one write to a reader may wait: a client that
// stops reading altogether is cut off after it, freeing its goroutine, while
// a slow one that keeps reading keeps its stream however long a batch takes.
const writeTimeout = 10 * time.Second

// Handler serves GET /tap: the NDJSON stream of the hub's events that pass
// the filters in the query (tap.ParseFilter), until the client goes away or
// the hub closes.
//
// A request over mutual TLS (the admin port's TLS side, which accepts only
// TLSClient's certificate) may tap when its peer is TLSClient. In plain text,
// with Token set, a client must send "Authorization: Bearer <Token>"; with
// Token empty only loopback clients may tap. A client that fails gets 401 (a
// wrong or missing token) or 403 and nothing else, and Refused hears of it.
type Handler struct {
	Hub   *Hub
	Token string
	// TLSClient is the identity that may tap over mutual TLS; empty: nobody.
	TLSClient string
	// Refused, when set, is told each refused request and why: a reason of
	// RefusedToken, RefusedNotLoopback or RefusedIdentity.
	Refused func(reason string, r *http.Request, why string)
	Log     *slog.Logger // nil: slog.Default()
}

// Reasons a tap request is refused, as Handler.Refused hears them.
const (
	RefusedToken       = "token"             // plain text, a missing or wrong bearer token
	RefusedNotLoopback = "not_loopback"      // plain text, no token configured, a peer not on loopback
	RefusedIdentity    = "identity_mismatch" // mutual TLS, a peer proving another identity than TLSClient
)

func (h *Handler) log() *slog.Logger {
	if h.Log == nil {
		return slog.Default()
	}
	return h.Log
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		plain(w, http.StatusMethodNotAllowed, "tap: only GET")
		return
	}
	if status, reason, msg := h.authorize(r); status != 0 {
		if h.Refused != nil {
			h.Refused(reason, r, msg)
		}
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshscope-tap"`)
		}
		plain(w, status, msg)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		plain(w, http.StatusBadRequest, "tap: malformed query string: "+err.Error())
		return
	}
	filter, err := tap.ParseFilter(q)
	if err != nil {
		plain(w, http.StatusBadRequest, err.Error())
		return
	}
	sub, err := h.Hub.Subscribe(filter)
	if errors.Is(err, ErrTooManySubscribers) {
		w.Header().Set("Retry-After", "10")
		plain(w, http.StatusServiceUnavailable, fmt.Sprintf("tap: %d tap streams are open on this proxy, the most it serves; close one and retry", h.Hub.maxSubs))
		return
	}
	if err != nil {
		plain(w, http.StatusServiceUnavailable, "tap: the proxy is shutting down")
		return
	}
	defer sub.Unsubscribe()

	rc := http.NewResponseController(w)
	// The admin server's read and write timeouts suit its short requests,
	// not a stream: lift them (a background read past ReadTimeout would
	// cancel the request) and bound each write instead (progressWriter).
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", tap.ContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}

	log := h.log().With("peer", r.RemoteAddr, "filter", q.Encode())
	log.Debug("tap stream started")
	st := &stream{sub: sub, enc: tap.NewEncoder(progressWriter{w, rc}), rc: rc, now: h.Hub.now}
	err = st.run(r.Context())
	switch {
	case err == nil:
		log.Debug("tap stream ended: proxy shutting down")
	case errors.Is(err, context.Canceled):
		log.Debug("tap stream ended: client went away")
	default:
		log.Debug("tap stream ended", "err", err)
	}
}

// authorize returns 0 for a request allowed to tap, else the status, the
// reason (for Refused) and the message to answer with.
func (h *Handler) authorize(r *http.Request) (int, string, string) {
	if r.TLS != nil {
		if name, err := meshid.PeerName(*r.TLS); err != nil || name != h.TLSClient {
			return http.StatusForbidden, RefusedIdentity, fmt.Sprintf("tap: over mutual TLS only %s may tap (--tap-client-identity)", h.TLSClient)
		}
		return 0, "", ""
	}
	if h.Token == "" {
		if !Loopback(r.RemoteAddr) {
			return http.StatusForbidden, RefusedNotLoopback, "tap: this proxy has no --tap-token, so only loopback clients may tap in plain text"
		}
		return 0, "", ""
	}
	if !BearerIs(r, h.Token) {
		return http.StatusUnauthorized, RefusedToken, "tap: missing or wrong bearer token"
	}
	return 0, "", ""
}

// BearerIs reports whether r carries "Authorization: Bearer <token>", comparing in constant time.
func BearerIs(r *http.Request, token string) bool {
	scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	// Hashing first makes the comparison's time independent of the lengths.
	a, b := sha256.Sum256([]byte(strings.TrimSpace(got))), sha256.Sum256([]byte(token))
	return strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// Loopback reports whether the peer address host:port is a loopback address.
func Loopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func plain(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write([]byte(msg + "\n"))
}

// stream writes one subscription to one client.
type stream struct {
	sub *Subscription
	enc *tap.Encoder
	rc  *http.ResponseController
	now func() time.Time
}

// run writes events in batches until ctx ends (the client went away; its
// error is returned), a write fails, or the hub closes (nil, after writing
// what was buffered).
func (st *stream) run(ctx context.Context) error {
	events := st.sub.Events()
	wait := time.NewTimer(linger)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-st.sub.Done():
			return st.batch(nil)
		case ev := <-events:
			st.sub.Took(ev)
			if len(events) < maxBatch {
				wait.Reset(linger)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-st.sub.Done():
				case <-wait.C:
				}
			}
			if err := st.batch(ev); err != nil {
				return err
			}
		}
	}
}

// batch writes first (when not nil), the events buffered behind it up to
// maxBatch, a dropped event if any were lost, and flushes.
func (st *stream) batch(first *tap.Event) error {
	if first != nil {
		if err := st.enc.Encode(first); err != nil {
			return err
		}
	}
	events := st.sub.Events()
drain:
	for range maxBatch {
		select {
		case ev := <-events:
			st.sub.Took(ev)
			if err := st.enc.Encode(ev); err != nil {
				return err
			}
		default:
			break drain
		}
	}
	if n := st.sub.TakeDropped(); n > 0 {
		ev := tap.Event{V: tap.Version, Type: tap.TypeDropped, TS: st.now(), Count: n}
		if err := st.enc.Encode(&ev); err != nil {
			return err
		}
	}
	if err := st.enc.Flush(); err != nil {
		return err
	}
	return st.rc.Flush()
}

// progressWriter gives each write to the client writeTimeout of its own: a
// deadline per batch would cut off a reader that is slow but never stops
// (a batch is up to maxBatch events), and leave it half a line.
type progressWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (p progressWriter) Write(b []byte) (int, error) {
	_ = p.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	return p.w.Write(b)
}
