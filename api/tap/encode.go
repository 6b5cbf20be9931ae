package tap

import (
	"bufio"
	"errors"
	"io"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Encoder writes events as NDJSON to a buffered writer. It appends JSON by
// hand into one reused buffer, so encoding an event allocates nothing (but
// for sorting the names of more than 32 headers).
//
// An Encoder is not safe for concurrent use.
type Encoder struct {
	w   *bufio.Writer
	buf []byte
}

// NewEncoder returns an Encoder writing to w through a buffer: call Flush to
// send what was encoded.
func NewEncoder(w io.Writer) *Encoder {
	return &Encoder{w: bufio.NewWriterSize(w, 32<<10), buf: make([]byte, 0, 1024)}
}

// Encode writes ev as one line. It fails only on an event that has no JSON
// form (a NaN or infinite duration, a timestamp beyond year 9999) or when
// the writer fails.
func (e *Encoder) Encode(ev *Event) error {
	b, err := AppendJSON(e.buf[:0], ev)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	e.buf = b
	_, err = e.w.Write(b)
	return err
}

// Flush writes buffered events to the underlying writer.
func (e *Encoder) Flush() error { return e.w.Flush() }

// Errors for events that have no JSON form.
var (
	errNonFinite = errors.New("tap: cannot encode a NaN or infinite duration")
	errTimeRange = errors.New("tap: cannot encode a timestamp outside years 0 to 9999 UTC")
)

// AppendJSON appends the JSON object of ev (no newline) to b. The result
// decodes to the same event as encoding/json's encoding of ev would.
func AppendJSON(b []byte, ev *Event) ([]byte, error) {
	if !finite(ev.LatencyMS) || !finite(ev.DurationMS) {
		return b, errNonFinite
	}
	if !validTime(ev.TS) {
		return b, errTimeRange
	}
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(ev.V), 10)
	b = append(b, `,"type":`...)
	b = appendString(b, string(ev.Type))
	if ev.ID != 0 {
		b = append(b, `,"id":`...)
		b = strconv.AppendUint(b, ev.ID, 10)
	}
	b = append(b, `,"ts":"`...)
	b = ev.TS.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if ev.Direction != "" {
		b = append(b, `,"direction":`...)
		b = appendString(b, ev.Direction)
	}
	b = appendEndpoint(b, `,"source":`, ev.Source)
	b = appendEndpoint(b, `,"destination":`, ev.Destination)
	b = appendField(b, `,"method":`, ev.Method)
	b = appendField(b, `,"authority":`, ev.Authority)
	b = appendField(b, `,"path":`, ev.Path)
	b = appendField(b, `,"query":`, ev.Query)
	if len(ev.Headers) > 0 {
		b = append(b, `,"headers":{`...)
		var buf [32]string
		for i, name := range sortedKeys(ev.Headers, buf[:0]) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, name)
			b = append(b, `:[`...)
			for j, v := range ev.Headers[name] {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendString(b, v)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	if ev.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	if ev.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(ev.Status), 10)
	}
	b = appendFloat(b, `,"latency_ms":`, ev.LatencyMS)
	if ev.GRPCStatus != nil {
		b = append(b, `,"grpc_status":`...)
		b = strconv.AppendInt(b, int64(*ev.GRPCStatus), 10)
	}
	b = appendFloat(b, `,"duration_ms":`, ev.DurationMS)
	if ev.Bytes != 0 {
		b = append(b, `,"bytes":`...)
		b = strconv.AppendInt(b, ev.Bytes, 10)
	}
	b = appendField(b, `,"error":`, ev.Error)
	if ev.Count != 0 {
		b = append(b, `,"count":`...)
		b = strconv.AppendUint(b, ev.Count, 10)
	}
	return append(b, '}'), nil
}

// appendEndpoint appends key and the endpoint, or nothing for a zero endpoint.
func appendEndpoint(b []byte, key string, ep Endpoint) []byte {
	if ep.Addr == "" && ep.Labels == nil && ep.Identity == "" {
		return b
	}
	b = append(b, key...)
	b = append(b, `{"addr":`...)
	b = appendString(b, ep.Addr)
	if len(ep.Labels) > 0 {
		b = append(b, `,"labels":{`...)
		var buf [8]string
		for i, k := range sortedKeys(ep.Labels, buf[:0]) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, ep.Labels[k])
		}
		b = append(b, '}')
	}
	if ep.Identity != "" {
		b = append(b, `,"identity":`...)
		b = appendString(b, ep.Identity)
	}
	return append(b, '}')
}

// appendField appends key and the string s, or nothing when s is empty.
func appendField(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

// appendFloat appends key and f, or nothing when f is zero. It formats like
// encoding/json: plain decimals, exponent form for very small or large values.
func appendFloat(b []byte, key string, f float64) []byte {
	if f == 0 {
		return b
	}
	b = append(b, key...)
	format := byte('f')
	if abs := math.Abs(f); abs < 1e-6 || abs >= 1e21 {
		format = 'e'
	}
	return strconv.AppendFloat(b, f, format, -1, 64)
}

// validTime reports whether t has an RFC 3339 form (a four-digit UTC year).
func validTime(t time.Time) bool {
	y := t.UTC().Year()
	return 0 <= y && y <= 9999
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// sortedKeys appends the keys of m to keys (pass a stack array's slice to
// spare an allocation) and sorts them.
func sortedKeys[V any](m map[string]V, keys []string) []string {
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string (RFC 8259 section 7): quotes,
// backslashes and control characters escaped, invalid UTF-8 replaced by
// U+FFFD as encoding/json does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
