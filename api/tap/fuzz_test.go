package tap

import (
	"bytes"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseFilter: no query string panics the parser, and every filter it
// accepts is within bounds and survives the round trip through Values.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"", "status=5xx&max_rps=10", "method=get&path=/a", "dst_namespace=shop&dst_deployment=web.v1",
		"direction=inbound&authority=web:80", "max_rps=10001", "x=1", "status=2XX&status=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		filter, err := ParseFilter(q)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "tap filter ") {
				t.Fatalf("error without the parameter: %v", err)
			}
			return
		}
		if filter.MaxRPS < 0 || filter.MaxRPS > MaxMaxRPS || filter.RPS() < 1 {
			t.Fatalf("max_rps out of range: %d", filter.MaxRPS)
		}
		if s := filter.Status; s != (Status{}) && (s.Min < 100 || s.Max > 599 || s.Min > s.Max) {
			t.Fatalf("status out of range: %+v", s)
		}
		for _, v := range []string{filter.Method, filter.Authority, filter.Path, filter.DstDeployment, filter.DstNamespace} {
			if strings.ContainsAny(v, "\x00\n\r ") || !utf8.ValidString(v) {
				t.Fatalf("accepted unsafe value %q", v)
			}
		}
		back, err := ParseFilter(filter.Values())
		if err != nil || back != filter {
			t.Fatalf("round trip of %+v gave %+v, %v", filter, back, err)
		}
	})
}

// FuzzDecode: no input panics the decoder, and every event it accepts
// encodes to JSON that decodes to the same event.
func FuzzDecode(f *testing.F) {
	var seed bytes.Buffer
	enc := NewEncoder(&seed)
	for _, ev := range sampleEvents {
		enc.Encode(&ev)
	}
	enc.Flush()
	f.Add(seed.Bytes())
	f.Add([]byte(`{"v":1,"type":"end","ts":"2026-01-02T03:04:05+02:00","grpc_status":-3,"bytes":-1}`))
	f.Add([]byte("\n\r\n{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := NewDecoder(bytes.NewReader(data), 4096)
		for {
			var ev Event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			b, err := AppendJSON(nil, &ev)
			if err != nil {
				t.Fatalf("decoded event does not encode: %v", err)
			}
			var again Event
			if err := NewDecoder(bytes.NewReader(b), 0).Decode(&again); err != nil {
				t.Fatalf("re-decoding %s: %v", b, err)
			}
			if !again.TS.Equal(ev.TS) {
				t.Fatalf("ts %v became %v", ev.TS, again.TS)
			}
			again.TS = ev.TS
			if !reflect.DeepEqual(normalize(ev), normalize(again)) {
				t.Fatalf("event %+v\nre-encoded as %s\ndecoded to %+v", ev, b, again)
			}
		}
	})
}

// normalize maps values the encoding does not tell apart (an empty map or
// list and an absent one) to one form.
func normalize(ev Event) Event {
	if len(ev.Headers) == 0 {
		ev.Headers = nil
	}
	for name, values := range ev.Headers {
		if len(values) == 0 {
			ev.Headers[name] = nil
		}
	}
	for _, ep := range []*Endpoint{&ev.Source, &ev.Destination} {
		if len(ep.Labels) == 0 {
			ep.Labels = nil
		}
	}
	return ev
}
