package main

import (
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(Config) bool
		wantErr string // a substring of the one-line error; empty for success
	}{
		{"defaults", []string{"--inbound-forward", "127.0.0.1:8080"}, nil, func(c Config) bool {
			return c.InboundListen == "0.0.0.0:4143" && c.OutboundListen == "127.0.0.1:4140" && c.AdminListen == "0.0.0.0:4191" &&
				c.DetectTimeout == 10*time.Second && c.ShutdownGrace == 10*time.Second && c.LogLevel == slog.LevelInfo
		}, ""},
		{"environment twins fill flags not given", []string{"--inbound-forward", "127.0.0.1:8080"}, map[string]string{
			"MESHSCOPE_PROXY_NAMESPACE": "shop", "MESHSCOPE_PROXY_POD": "web-0", "MESHSCOPE_PROXY_DETECT_TIMEOUT": "2s",
			"MESHSCOPE_PROXY_OPAQUE_PORTS": "3306, 5432", "MESHSCOPE_PROXY_LOG_LEVEL": "debug", "MESHSCOPE_PROXY_TAP_TOKEN": "secret",
			"MESHSCOPE_PROXY_OUTBOUND_ROUTE": "127.0.0.1:4150=a.b:80,127.0.0.1:4151=c.d:5432",
		}, func(c Config) bool {
			return c.Namespace == "shop" && c.Pod == "web-0" && c.DetectTimeout == 2*time.Second && c.TapToken == "secret" &&
				reflect.DeepEqual(c.OpaquePorts, []int{3306, 5432}) && c.LogLevel == slog.LevelDebug &&
				reflect.DeepEqual(c.OutboundRoutes, []Route{{"127.0.0.1:4150", "a.b:80"}, {"127.0.0.1:4151", "c.d:5432"}})
		}, ""},
		{"flags win over environment", []string{"--inbound-forward", "127.0.0.1:8080", "--deployment", "flag"},
			map[string]string{"MESHSCOPE_PROXY_DEPLOYMENT": "env", "MESHSCOPE_PROXY_INBOUND_FORWARD": "127.0.0.1:9"},
			func(c Config) bool { return c.Deployment == "flag" && c.InboundForward == "127.0.0.1:8080" }, ""},
		{"repeated routes", []string{"--inbound-listen=", "--outbound-route", "127.0.0.1:1=a:1", "--outbound-route", "127.0.0.1:2=b:2"}, nil,
			func(c Config) bool { return len(c.OutboundRoutes) == 2 && c.OutboundRoutes[1].Authority == "b:2" }, ""},
		{"empty inbound listen disables it and needs no forward", []string{"--inbound-listen="}, nil,
			func(c Config) bool { return c.InboundListen == "" }, ""},
		{"without a forward inbound goes to original destinations; Linkerd's opaque ports by default", nil, nil,
			func(c Config) bool {
				return c.InboundListen == "0.0.0.0:4143" && c.InboundForward == "" && reflect.DeepEqual(c.OpaquePorts, []int{25, 587, 3306, 4444, 5432, 6379, 9300, 11211})
			}, ""},
		{"no opaque ports", []string{"--opaque-ports="}, nil, func(c Config) bool { return len(c.OpaquePorts) == 0 }, ""},
		{"unknown flag", []string{"--bogus"}, nil, nil, "flag provided but not defined: -bogus"},
		{"stray argument", []string{"--inbound-forward", "127.0.0.1:1", "extra"}, nil, nil, `unexpected argument "extra"`},
		{"bad listen address", []string{"--inbound-forward", "127.0.0.1:1", "--admin-listen", "nowhere"}, nil, nil, `--admin-listen "nowhere": want host:port`},
		{"bad port", []string{"--inbound-forward", "127.0.0.1:1", "--outbound-listen", "127.0.0.1:70000"}, nil, nil, `port "70000"`},
		{"same address twice", []string{"--inbound-forward", "127.0.0.1:1", "--inbound-listen", "127.0.0.1:5000", "--admin-listen", "127.0.0.1:5000"}, nil, nil, "same address as --inbound-listen"},
		{"bad route", []string{"--inbound-forward", "127.0.0.1:1", "--outbound-route", "127.0.0.1:4150"}, nil, nil, "want LISTEN=AUTHORITY"},
		{"route without port", []string{"--inbound-forward", "127.0.0.1:1", "--outbound-route", "127.0.0.1:4150=svc"}, nil, nil, "authority: want host:port"},
		{"bad opaque port", []string{"--inbound-forward", "127.0.0.1:1", "--opaque-ports", "3306,x"}, nil, nil, `port "x"`},
		{"bad log level", []string{"--inbound-forward", "127.0.0.1:1", "--log-level", "loud"}, nil, nil, "log-level"},
		{"bad environment value names the variable", []string{"--inbound-forward", "127.0.0.1:1"}, map[string]string{"MESHSCOPE_PROXY_SHUTDOWN_GRACE": "soon"}, nil, "invalid MESHSCOPE_PROXY_SHUTDOWN_GRACE"},
		{"non-positive detect timeout", []string{"--inbound-forward", "127.0.0.1:1", "--detect-timeout", "0s"}, nil, nil, "--detect-timeout 0s: must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error spans lines: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(cfg) {
				t.Fatalf("unexpected config %+v", cfg)
			}
		})
	}
}

func TestHelpExplainsEveryFlagAndItsEnvironmentTwin(t *testing.T) {
	var out strings.Builder
	if _, err := parseConfig([]string{"--help"}, func(string) string { return "" }, &out); err == nil {
		t.Fatal("--help returned no error")
	}
	for _, want := range []string{"-inbound-listen", "-inbound-forward", "-outbound-listen", "-outbound-route", "-admin-listen",
		"-namespace", "-deployment", "-pod", "-destinations", "-opaque-ports", "-detect-timeout", "-tap-token", "-log-level",
		"-shutdown-grace", "MESHSCOPE_PROXY_", "Example:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestStartErrorsNameTheProblem(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct {
		name    string
		cfg     func(*Config)
		wantErr string
	}{
		{"port already in use", func(c *Config) { c.OutboundListen = taken.Addr().String() }, "--outbound-listen " + taken.Addr().String() + ": bind: address already in use"},
		{"missing destinations file", func(c *Config) { c.Destinations = "/nonexistent/dest.yaml" }, "--destinations: read destinations file"},
		{"invalid destinations file", func(c *Config) {
			c.Destinations = writeDestinations(t, "services:\n  - authority: nope\n")
		}, "--destinations: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig("127.0.0.1:1")
			cfg.AdminListen = freeAddr(t)
			tt.cfg(&cfg)
			_, err := newProxy(cfg, slog.New(slog.DiscardHandler), new(slog.LevelVar))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line containing %q", err, tt.wantErr)
			}
			// Nothing stays bound: the admin address, bound first, is free again.
			ln, err := net.Listen("tcp", cfg.AdminListen)
			if err != nil {
				t.Fatalf("admin address still bound after the failed start: %v", err)
			}
			ln.Close()
		})
	}
}
