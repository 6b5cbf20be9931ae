// Package tap is the wire contract of Meshscope's tap: the live stream of
// individual requests a proxy serves on GET /tap of its admin port, shared by
// the proxy (which publishes it) and the dashboard and CLI (which read it).
//
// A stream is NDJSON: one JSON object per line, each an [Event]. A request is
// told as up to three events tied by one id: "request" when its headers are
// read, "response" when the response headers are written, "end" when the
// response stream ends. A "dropped" event says how many events a slow reader
// lost. The filters a client sends are URL query parameters, parsed by
// [ParseFilter].
//
// This package uses the standard library only, so every side can import it.
package tap

import (
	"net/url"
	"strings"
	"time"
)

// Version is the version of the event format this package writes and reads.
// Every event carries it in its "v" field; a reader rejects events of a
// version it does not know (see [Decoder]).
const Version = 1

// ContentType is the media type of a tap stream.
const ContentType = "application/x-ndjson"

// Type says what an [Event] reports.
type Type string

// The event types of a tap stream.
const (
	// TypeRequest: request headers were read. Carries method, authority,
	// path and (redacted) headers.
	TypeRequest Type = "request"
	// TypeResponse: response headers were written. Carries status, latency
	// and (redacted) headers.
	TypeResponse Type = "response"
	// TypeEnd: the response stream ended. Carries the gRPC status where the
	// request was gRPC, the duration, the response body length and the stream
	// error, if any.
	TypeEnd Type = "end"
	// TypeDropped: the reader was too slow; Count events were lost just
	// before this one. Carries no id, addresses or labels.
	TypeDropped Type = "dropped"
)

// Directions of a request as the proxy sees it.
const (
	// DirectionInbound: from another workload to the proxy's own app.
	DirectionInbound = "inbound"
	// DirectionOutbound: from the proxy's own app to another service.
	DirectionOutbound = "outbound"
)

// Label keys of an [Endpoint]'s workload identity.
const (
	LabelNamespace  = "namespace"
	LabelDeployment = "deployment"
	LabelPod        = "pod"
	// LabelServiceAccount is the ServiceAccount an inbound source's identity
	// names (with its namespace), when it came over mutual TLS.
	LabelServiceAccount = "serviceaccount"
)

// RedactedValue replaces the value of every sensitive header (see
// [IsSensitiveHeader]) in a tap event.
const RedactedValue = "REDACTED"

// Endpoint is one side of a request: its network address and the labels of
// its workload identity (keys such as [LabelNamespace], [LabelDeployment],
// [LabelPod]; unprefixed, also for the destination, whose labels are the
// dst_* labels of the proxy's metrics without the prefix).
type Endpoint struct {
	// Addr is host:port; empty when unknown.
	Addr string `json:"addr"`
	// Labels is nil when the workload is unknown. Publishers share these
	// maps between events: treat them as read-only.
	Labels map[string]string `json:"labels,omitempty"`
	// Identity is the endpoint's identity proven over mutual TLS (e.g.
	// web.shop.serviceaccount.identity.meshscope.cluster.local); empty when
	// the request did not travel over mutual TLS.
	Identity string `json:"identity,omitempty"`
}

// Event is one line of a tap stream. Which fields are set depends on Type;
// the rest hold their zero value and are left out of the JSON.
type Event struct {
	// V is the format version, [Version] for events of this package.
	V    int  `json:"v"`
	Type Type `json:"type"`
	// ID ties the request, response and end events of one request. It is
	// unique within one proxy process (readers that merge the streams of
	// several proxies key by proxy and id). Zero for dropped events.
	ID uint64 `json:"id,omitempty"`
	// TS is when the event happened, in UTC.
	TS time.Time `json:"ts"`

	// Direction is [DirectionInbound] or [DirectionOutbound].
	Direction   string   `json:"direction,omitempty"`
	Source      Endpoint `json:"source,omitzero"`
	Destination Endpoint `json:"destination,omitzero"`

	// Request events.
	Method    string `json:"method,omitempty"`
	Authority string `json:"authority,omitempty"`
	Path      string `json:"path,omitempty"`
	// Route is the outbound route the request took; empty for a service's
	// default route and where there are no routes.
	Route string `json:"route,omitempty"`
	// Query is the request's query string, without "?", the values of
	// parameters whose names look secret replaced by [RedactedValue] (see
	// [RedactQuery]).
	Query string `json:"query,omitempty"`
	// Headers of the request (request events) or of the response (response
	// events): lower-case names, sensitive values replaced by
	// [RedactedValue].
	Headers map[string][]string `json:"headers,omitempty"`
	// Truncated says the publisher cut this event's path, authority or
	// headers to bound its size (see [Event.Trim]): what is shown is a
	// prefix, and headers may be missing.
	Truncated bool `json:"truncated,omitempty"`

	// Response events.
	Status int `json:"status,omitempty"`
	// LatencyMS is the time from request headers read to response headers
	// written, in milliseconds.
	LatencyMS float64 `json:"latency_ms,omitempty"`

	// End events.
	// GRPCStatus is the numeric gRPC status (from the grpc-status trailer or
	// a trailers-only response); nil when the request was not gRPC.
	GRPCStatus *int `json:"grpc_status,omitempty"`
	// DurationMS is the time from request headers read to the end of the
	// response stream, in milliseconds.
	DurationMS float64 `json:"duration_ms,omitempty"`
	// Bytes is the length of the response body as sent.
	Bytes int64 `json:"bytes,omitempty"`
	// Error is the stream error that ended the response early; empty when
	// the response completed.
	Error string `json:"error,omitempty"`

	// Dropped events: how many events were lost.
	Count uint64 `json:"count,omitempty"`
}

// sensitiveHeaders are the header names (lower case) whose values tap never
// shows: they carry credentials.
var sensitiveHeaders = [...]string{"authorization", "cookie", "set-cookie", "proxy-authorization"}

// IsSensitiveHeader reports whether the values of the header named name
// (any case) must be redacted in tap events.
func IsSensitiveHeader(name string) bool {
	for _, s := range sensitiveHeaders {
		if len(name) == len(s) && equalFoldASCII(name, s) {
			return true
		}
	}
	return false
}

// equalFoldASCII reports whether a equals the lower-case b, ignoring ASCII case.
func equalFoldASCII(a, lowerB string) bool {
	for i := 0; i < len(a); i++ {
		c := a[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lowerB[i] {
			return false
		}
	}
	return true
}

// commonLower maps the canonical form of common header names to their lower
// case, sparing Headers an allocation per name. Read-only.
var commonLower = func() map[string]string {
	m := map[string]string{}
	for _, name := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control", "Connection",
		"Content-Encoding", "Content-Length", "Content-Type", "Cookie", "Date", "Etag", "Grpc-Accept-Encoding",
		"Grpc-Encoding", "Grpc-Message", "Grpc-Status", "Grpc-Timeout", "Host", "Last-Modified", "Location",
		"Origin", "Proxy-Authorization", "Referer", "Server", "Set-Cookie", "Te", "Trailer", "Transfer-Encoding",
		"User-Agent", "Vary", "X-Forwarded-For", "X-Request-Id",
	} {
		m[name] = strings.ToLower(name)
	}
	return m
}()

// Headers returns a copy of h fit for an event: names in lower case (as in
// HTTP/2), values of sensitive headers replaced by [RedactedValue]. It
// returns nil for an empty h. The value slices of other headers are shared
// with h, which the caller must therefore not modify in place afterwards.
func Headers(h map[string][]string) map[string][]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string][]string, len(h))
	for name, values := range h {
		lower, ok := commonLower[name]
		if !ok {
			lower = strings.ToLower(name)
		}
		if IsSensitiveHeader(lower) {
			redacted := make([]string, len(values))
			for i := range redacted {
				redacted[i] = RedactedValue
			}
			values = redacted
		}
		if prev, ok := out[lower]; ok {
			// Two spellings of one name: merge, copying so h stays untouched.
			values = append(prev[:len(prev):len(prev)], values...)
		}
		out[lower] = values
	}
	return out
}

// MaxQuery bounds a tap event's query string; a longer one is cut and ends in "…".
const MaxQuery = 2048

// secretParams are fragments of query parameter names whose values are
// redacted like sensitive headers: credentials passed in URLs.
var secretParams = []string{"token", "secret", "password", "passwd", "pwd", "key", "auth", "sig", "credential", "session", "cookie", "code"}

// RedactQuery returns the raw query string q with the value of every parameter
// whose name (unescaped, any case) contains one of secretParams replaced by
// [RedactedValue], the rest as sent, cut at [MaxQuery].
func RedactQuery(q string) string {
	if q == "" {
		return ""
	}
	var b strings.Builder
	for i, part := range strings.Split(q, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		name, _, hasValue := strings.Cut(part, "=")
		if hasValue && secretParam(name) {
			b.WriteString(name)
			b.WriteString("=" + RedactedValue)
		} else {
			b.WriteString(part)
		}
		if b.Len() > MaxQuery {
			break
		}
	}
	if out := b.String(); len(out) > MaxQuery {
		return out[:MaxQuery] + "…"
	}
	return b.String()
}

func secretParam(name string) bool {
	if n, err := url.QueryUnescape(name); err == nil {
		name = n
	}
	name = strings.ToLower(name)
	for _, s := range secretParams {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}
