package tap

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func grpcStatus(code int) *int { return &code }

var ts = time.Date(2026, 11, 22, 18, 4, 5, 123456789, time.UTC)

// sampleEvents covers every event type and the awkward values JSON must escape.
var sampleEvents = map[string]Event{
	"request": {
		V: Version, Type: TypeRequest, ID: 7, TS: ts, Direction: DirectionOutbound,
		Source: Endpoint{Addr: "127.0.0.1:50312", Labels: map[string]string{"namespace": "shop", "deployment": "web", "pod": "web-0"}},
		Destination: Endpoint{Addr: "127.0.0.1:14143", Labels: map[string]string{"namespace": "shop", "deployment": "voting"},
			Identity: "voting.shop.serviceaccount.identity.meshscope.cluster.local"},
		Method: "GET", Authority: "voting.shop:8080", Path: "/api/vote?choice=🍩",
		Headers: map[string][]string{"accept": {"*/*"}, "authorization": {RedactedValue}, "x-two": {"a", "b"}},
	},
	"response": {
		V: Version, Type: TypeResponse, ID: 7, TS: ts, Direction: DirectionInbound,
		Source:      Endpoint{Identity: "web.shop.serviceaccount.identity.meshscope.cluster.local"},
		Destination: Endpoint{Addr: "127.0.0.1:8080"},
		Status:      503, LatencyMS: 1.234,
	},
	"end of grpc request with OK status": {
		V: Version, Type: TypeEnd, ID: 7, TS: ts, Direction: DirectionInbound,
		GRPCStatus: grpcStatus(0), DurationMS: 12.5, Bytes: 1 << 40,
	},
	"end with stream error": {
		V: Version, Type: TypeEnd, ID: 1<<64 - 1, TS: ts,
		GRPCStatus: grpcStatus(14), DurationMS: 0.000001, Error: "upstream reset: \"RST_STREAM\"\n",
	},
	"dropped": {V: Version, Type: TypeDropped, TS: ts, Count: 42},
	"truncated request": {
		V: Version, Type: TypeRequest, ID: 3, TS: ts, Path: "/cut", Headers: map[string][]string{"x-big": {"vvv"}}, Truncated: true,
	},
	"strings needing escapes": {
		V: Version, Type: TypeRequest, ID: 1, TS: ts,
		Path:    "/\x00\x1f\t\r\n\\\"<>&\u2028\x7f",
		Headers: map[string][]string{"x-\"quoted\"": {"\xff\xfeinvalid utf-8", "é"}},
	},
	"huge and tiny durations": {V: Version, Type: TypeEnd, ID: 2, TS: ts, DurationMS: 1e22, LatencyMS: 3e-7},
}

func TestAppendJSONDecodesLikeEncodingJSON(t *testing.T) {
	for name, ev := range sampleEvents {
		t.Run(name, func(t *testing.T) {
			ours, err := AppendJSON(nil, &ev)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(ours) {
				t.Fatalf("invalid JSON: %s", ours)
			}
			var a Event
			if err := json.Unmarshal(ours, &a); err != nil {
				t.Fatal(err)
			}
			if b := viaEncodingJSON(t, ev); !reflect.DeepEqual(a, b) {
				t.Errorf("ours decodes to %+v\nencoding/json's to %+v", a, b)
			}
		})
	}
}

// viaEncodingJSON returns ev after a round trip through encoding/json.
func viaEncodingJSON(t testing.TB, ev Event) Event {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var out Event
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAppendJSONWritesTheDocumentedWireFormat(t *testing.T) {
	ev := sampleEvents["request"]
	got, err := AppendJSON(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"type":"request","id":7,"ts":"2026-11-22T18:04:05.123456789Z","direction":"outbound",` +
		`"source":{"addr":"127.0.0.1:50312","labels":{"deployment":"web","namespace":"shop","pod":"web-0"}},` +
		`"destination":{"addr":"127.0.0.1:14143","labels":{"deployment":"voting","namespace":"shop"},` +
		`"identity":"voting.shop.serviceaccount.identity.meshscope.cluster.local"},` +
		`"method":"GET","authority":"voting.shop:8080","path":"/api/vote?choice=🍩",` +
		`"headers":{"accept":["*/*"],"authorization":["REDACTED"],"x-two":["a","b"]}}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAppendJSONRejectsNonFiniteDurations(t *testing.T) {
	ev := Event{V: Version, Type: TypeEnd, DurationMS: inf()}
	if _, err := AppendJSON(nil, &ev); err == nil {
		t.Error("no error for an infinite duration")
	}
}

func inf() float64 { zero := 0.0; return 1 / zero }

func TestEncoderThenDecoderGivesBackEveryEvent(t *testing.T) {
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	var want []Event
	for _, ev := range sampleEvents {
		if err := enc.Encode(&ev); err != nil {
			t.Fatal(err)
		}
		want = append(want, ev)
	}
	if buf.Len() != 0 {
		t.Error("encoder wrote before Flush")
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != len(want) {
		t.Fatalf("%d lines for %d events", n, len(want))
	}
	dec := NewDecoder(&buf, 0)
	for i := range want {
		var got Event
		if err := dec.Decode(&got); err != nil {
			t.Fatal(err)
		}
		// encoding/json's round trip as the reference: it too turns invalid
		// UTF-8 into U+FFFD.
		if w := viaEncodingJSON(t, want[i]); !reflect.DeepEqual(got, w) {
			t.Errorf("event %d:\ngot  %+v\nwant %+v", i, got, w)
		}
	}
	var ev Event
	if err := dec.Decode(&ev); err != io.EOF {
		t.Errorf("after the last event: %v, want io.EOF", err)
	}
}

func TestDecoder(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		maxLine int
		want    []Event
		wantErr error // nil: the stream ends with io.EOF
		errText string
		// skipTooLong reads on past ErrLineTooLong, as a reader that drops oversized events does.
		skipTooLong bool
	}{
		{
			name:  "skips blank lines and accepts CRLF",
			input: "\n{\"v\":1,\"type\":\"dropped\",\"ts\":\"2026-11-22T18:04:05Z\",\"count\":3}\r\n\r\n  \n",
			want:  []Event{{V: 1, Type: TypeDropped, TS: ts.Truncate(time.Second), Count: 3}},
		},
		{
			name:  "ignores unknown fields for forward compatibility",
			input: `{"v":1,"type":"end","id":5,"ts":"2026-11-22T18:04:05Z","new_field":{"x":1}}`,
			want:  []Event{{V: 1, Type: TypeEnd, ID: 5, TS: ts.Truncate(time.Second)}},
		},
		{
			name:    "rejects a line over the limit",
			input:   `{"v":1,"type":"request","path":"/` + strings.Repeat("a", 100) + `"}`,
			maxLine: 64,
			wantErr: ErrLineTooLong,
		},
		{
			name:        "skips a line over the limit and reads on",
			input:       `{"v":1,"type":"request","path":"/` + strings.Repeat("a", 100<<10) + "\"}\n" + `{"v":1,"type":"end","id":5,"ts":"2026-11-22T18:04:05Z"}`,
			maxLine:     64,
			want:        []Event{{V: 1, Type: TypeEnd, ID: 5, TS: ts.Truncate(time.Second)}},
			skipTooLong: true,
		},
		{name: "rejects another version", input: `{"v":2,"type":"request"}`, wantErr: ErrVersion},
		{name: "rejects an object without version", input: `{"type":"request"}`, wantErr: ErrVersion},
		{name: "rejects an event without type", input: `{"v":1}`, errText: "no type"},
		{name: "rejects a line that is not JSON", input: `<html>`, errText: "malformed event"},
		{name: "rejects a wrongly typed field", input: `{"v":1,"type":"end","id":"x"}`, errText: "malformed event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec := NewDecoder(strings.NewReader(tt.input), tt.maxLine)
			var got []Event
			var err error
			for {
				var ev Event
				if err = dec.Decode(&ev); tt.skipTooLong && errors.Is(err, ErrLineTooLong) {
					continue
				}
				if err != nil {
					break
				}
				got = append(got, ev)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("events %+v, want %+v", got, tt.want)
			}
			switch {
			case tt.wantErr == nil && tt.errText == "":
				if err != io.EOF {
					t.Errorf("error %v, want io.EOF", err)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("error %v, want %v", err, tt.wantErr)
				}
			default:
				if err == nil || !strings.Contains(err.Error(), tt.errText) {
					t.Errorf("error %v, want one containing %q", err, tt.errText)
				}
			}
		})
	}
}

func TestHeadersLowerCasesNamesAndRedactsCredentials(t *testing.T) {
	in := map[string][]string{
		"Authorization":       {"Bearer secret"},
		"Cookie":              {"session=secret", "b=c"},
		"Set-Cookie":          {"id=secret"},
		"Proxy-Authorization": {"Basic secret"},
		"Content-Type":        {"application/grpc"},
		"X-Request-Id":        {"abc"},
		"x-request-id":        {"def"},
	}
	got := Headers(in)
	want := map[string][]string{
		"authorization":       {RedactedValue},
		"cookie":              {RedactedValue, RedactedValue},
		"set-cookie":          {RedactedValue},
		"proxy-authorization": {RedactedValue},
		"content-type":        {"application/grpc"},
	}
	for name, values := range want {
		if !reflect.DeepEqual(got[name], values) {
			t.Errorf("%s: %q, want %q", name, got[name], values)
		}
	}
	if ids := got["x-request-id"]; len(ids) != 2 {
		t.Errorf("x-request-id spelled twice: %q, want both values", ids)
	}
	if in["Authorization"][0] != "Bearer secret" {
		t.Error("Headers modified its input")
	}
	if Headers(nil) != nil {
		t.Error("Headers(nil) is not nil")
	}
}

func BenchmarkEncode(b *testing.B) {
	ev := sampleEvents["request"]
	enc := NewEncoder(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if err := enc.Encode(&ev); err != nil {
			b.Fatal(err)
		}
	}
}
