package tap

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParseFilter(t *testing.T) {
	tests := []struct {
		name      string
		query     string
		want      Filter
		wantParam string // the parameter the error names; empty: no error
	}{
		{name: "no parameters select everything", query: "", want: Filter{}},
		{name: "empty values count as absent", query: "method=&status=&max_rps=", want: Filter{}},
		{
			name:  "every filter at once",
			query: "direction=outbound&method=post&authority=Web.shop:8080&path=/api&dst_deployment=voting&dst_namespace=shop&status=5xx&max_rps=10000",
			want: Filter{Direction: "outbound", Method: "POST", Authority: "Web.shop:8080", Path: "/api",
				DstDeployment: "voting", DstNamespace: "shop", Status: Status{500, 599}, MaxRPS: 10000},
		},
		{name: "one status code", query: "status=404", want: Filter{Status: Status{404, 404}}},
		{name: "status class in capitals", query: "status=2XX", want: Filter{Status: Status{200, 299}}},
		{name: "max_rps of one", query: "max_rps=1", want: Filter{MaxRPS: 1}},
		{name: "deployment with dots", query: "dst_deployment=web.v2", want: Filter{DstDeployment: "web.v2"}},
		{name: "failed", query: "failed=true", want: Filter{Failed: true}},
		{name: "gRPC status by name, any case", query: "grpc_status=unavailable", want: Filter{GRPCStatus: "UNAVAILABLE"}},
		{name: "gRPC status by number", query: "grpc_status=14", want: Filter{GRPCStatus: "UNAVAILABLE"}},
		{name: "failed other than true", query: "failed=yes", wantParam: "failed"},
		{name: "gRPC status beyond 16", query: "grpc_status=17", wantParam: "grpc_status"},
		{name: "route by name", query: "route=place-order", want: Filter{Route: "place-order"}},
		{name: "route that is no name", query: "route=Place_Order", wantParam: "route"},
		{name: "gRPC status unknown name", query: "grpc_status=BROKEN", wantParam: "grpc_status"},
		{name: "unknown parameter", query: "pth=/x", wantParam: "pth"},
		{name: "parameter given twice", query: "method=GET&method=POST", wantParam: "method"},
		{name: "max_rps zero", query: "max_rps=0", wantParam: "max_rps"},
		{name: "max_rps above the ceiling", query: "max_rps=10001", wantParam: "max_rps"},
		{name: "max_rps not a number", query: "max_rps=fast", wantParam: "max_rps"},
		{name: "direction unknown", query: "direction=sideways", wantParam: "direction"},
		{name: "method with a space", query: "method=GET%20X", wantParam: "method"},
		{name: "authority with a path", query: "authority=web/x", wantParam: "authority"},
		{name: "authority with userinfo", query: "authority=u@web", wantParam: "authority"},
		{name: "path without leading slash", query: "path=api", wantParam: "path"},
		{name: "path with a control character", query: "path=/a%0Ab", wantParam: "path"},
		{name: "namespace with capitals", query: "dst_namespace=Shop", wantParam: "dst_namespace"},
		{name: "namespace with a dot", query: "dst_namespace=a.b", wantParam: "dst_namespace"},
		{name: "deployment ending in a dash", query: "dst_deployment=web-", wantParam: "dst_deployment"},
		{name: "status class 6xx", query: "status=6xx", wantParam: "status"},
		{name: "status of two digits", query: "status=50", wantParam: "status"},
		{name: "status mixing digit and x", query: "status=50x", wantParam: "status"},
		{name: "first bad parameter in sorted order", query: "status=9&max_rps=0", wantParam: "max_rps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseFilter(q)
			if tt.wantParam != "" {
				var fe *FilterError
				if !errors.As(err, &fe) || fe.Param != tt.wantParam {
					t.Fatalf("error %v, want one naming %q", err, tt.wantParam)
				}
				if !strings.Contains(err.Error(), `"`+tt.wantParam+`"`) {
					t.Errorf("message %q does not name the parameter", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			back, err := ParseFilter(got.Values())
			if err != nil || back != got {
				t.Errorf("Values() %q parses back to %+v, %v", got.Values().Encode(), back, err)
			}
		})
	}
}

func TestFilterRPSDefaultsTo100(t *testing.T) {
	if got := (Filter{}).RPS(); got != DefaultMaxRPS || DefaultMaxRPS != 100 {
		t.Errorf("RPS() = %d, want 100", got)
	}
	if got := (Filter{MaxRPS: 7}).RPS(); got != 7 {
		t.Errorf("RPS() = %d, want 7", got)
	}
}

func TestFilterMatches(t *testing.T) {
	req := &Event{
		V: Version, Type: TypeRequest, ID: 1, Direction: DirectionOutbound,
		Destination: Endpoint{Addr: "127.0.0.1:14143", Labels: map[string]string{LabelNamespace: "shop", LabelDeployment: "voting"}},
		Method:      "GET", Authority: "voting.shop:8080", Path: "/api/vote", Route: "vote",
	}
	tests := []struct {
		name        string
		query       string
		status      int
		wantRequest bool
		wantStatus  bool
	}{
		{"no filter", "", 200, true, true},
		{"direction same", "direction=outbound", 200, true, true},
		{"direction other", "direction=inbound", 200, false, true},
		{"method same in lower case", "method=get", 200, true, true},
		{"method other", "method=POST", 200, false, true},
		{"authority ignoring case", "authority=VOTING.shop:8080", 200, true, true},
		{"authority other port", "authority=voting.shop:80", 200, false, true},
		{"path prefix", "path=/api", 200, true, true},
		{"path whole", "path=/api/vote", 200, true, true},
		{"path longer than the request's", "path=/api/vote/x", 200, false, true},
		{"path other", "path=/admin", 200, false, true},
		{"dst_deployment same", "dst_deployment=voting", 200, true, true},
		{"dst_deployment other", "dst_deployment=web", 200, false, true},
		{"dst_namespace same", "dst_namespace=shop", 200, true, true},
		{"dst_namespace other", "dst_namespace=default", 200, false, true},
		{"route same", "route=vote", 200, true, true},
		{"route other", "route=place-order", 200, false, true},
		{"status class hit", "status=5xx", 503, true, true},
		{"status class miss", "status=5xx", 404, true, false},
		{"status class edge", "status=4xx", 499, true, true},
		{"status code hit", "status=200", 200, true, true},
		{"status code miss", "status=200", 201, true, false},
		{"all matching", "direction=outbound&method=GET&authority=voting.shop:8080&path=/api&dst_deployment=voting&dst_namespace=shop&status=2xx", 204, true, true},
		{"all but one matching", "direction=outbound&method=GET&authority=voting.shop:8080&path=/api&dst_deployment=voting&dst_namespace=prod", 204, false, true},
		{"request matching, status not", "method=GET&status=5xx", 200, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			f, err := ParseFilter(q)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.MatchRequest(req); got != tt.wantRequest {
				t.Errorf("MatchRequest = %v, want %v", got, tt.wantRequest)
			}
			if got := f.MatchStatus(tt.status); got != tt.wantStatus {
				t.Errorf("MatchStatus(%d) = %v, want %v", tt.status, got, tt.wantStatus)
			}
			if got := f.NeedsResponse(); got != strings.Contains(tt.query, "status=") {
				t.Errorf("NeedsResponse = %v", got)
			}
		})
	}
}

func TestFilterWithoutLabelsMatchesOnlyWithoutLabelFilters(t *testing.T) {
	req := &Event{V: Version, Type: TypeRequest, Method: "GET", Path: "/"}
	if !(&Filter{}).MatchRequest(req) {
		t.Error("zero filter rejects a request without destination labels")
	}
	if (&Filter{DstNamespace: "shop"}).MatchRequest(req) {
		t.Error("dst_namespace filter selects a request without destination labels")
	}
}

func TestRedactQueryHidesSecretLookingValues(t *testing.T) {
	for q, want := range map[string]string{
		"":                              "",
		"page=2&sort=price":             "page=2&sort=price",
		"id=7&access_token=abc&x=1":     "id=7&access_token=REDACTED&x=1",
		"API%5FKey=k&Password=p&q=shoe": "API%5FKey=REDACTED&Password=REDACTED&q=shoe",
		"sig=deadbeef&flag":             "sig=REDACTED&flag",
	} {
		if got := RedactQuery(q); got != want {
			t.Errorf("RedactQuery(%q) = %q, want %q", q, got, want)
		}
	}
	if got := RedactQuery(strings.Repeat("a=b&", 1000)); len(got) > MaxQuery+len("…") || !strings.HasSuffix(got, "…") {
		t.Errorf("long query: %d bytes, want at most %d ending in …", len(got), MaxQuery)
	}
}
