package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestMain lets tests run the real binary: the test executable re-runs itself as the proxy when asked.
func TestMain(m *testing.M) {
	if os.Getenv("MESHSCOPE_PROXY_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"proxy"}, strings.Fields(os.Getenv("MESHSCOPE_PROXY_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func proxyCommand(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MESHSCOPE_PROXY_TEST_RUN_MAIN=1", "MESHSCOPE_PROXY_TEST_ARGS="+strings.Join(args, " "))
	return cmd
}

func TestBinaryExitsWithOneLineOnBadConfiguration(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantLine string
	}{
		{"bad flag", []string{"--inbound-forward", "127.0.0.1:1", "--detect-timeout", "soon"}, 2, `proxy: invalid value "soon" for flag -detect-timeout: invalid duration "soon"`},
		{"unknown flag", []string{"--inbound-forwrad", "127.0.0.1:1"}, 2, "proxy: flag provided but not defined: -inbound-forwrad"},
		{"missing destinations file", []string{"--inbound-forward", "127.0.0.1:1", "--inbound-listen", "127.0.0.1:0", "--outbound-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--destinations", "/nonexistent.yaml"}, 1,
			"proxy: --destinations: read destinations file: open /nonexistent.yaml: no such file or directory"},
		{"init: bad port list", []string{"init", "--outbound-ports-to-ignore", "25,smtp"}, 2, `proxy init: invalid value "25,smtp" for flag -outbound-ports-to-ignore: port "smtp" is not a number in 1..65535`},
		{"init: no such namespace", []string{"init", "--netns", "/nonexistent/ns"}, 1, "proxy init: network namespace: open /nonexistent/ns: no such file or directory"},
		{"identity flags without trust anchors", []string{"--inbound-forward", "127.0.0.1:1", "--identity-addr", "127.0.0.1:8080"}, 2,
			"proxy: --identity-trust-anchors is required with --identity-addr: the PEM file of the mesh's roots"},
		{"identity: two ways to review tokens", []string{"identity", "--kubeconfig", "k", "--token-file", "t"}, 2,
			"proxy identity: --kubeconfig and --token-file exclude each other: tokens are reviewed by the API server or by the file"},
		{"identity: no trust anchors", []string{"identity", "--dir", "/nonexistent", "--token-file", "t"}, 1,
			"proxy identity: --trust-anchors: open /nonexistent/ca.crt: no such file or directory"},
		{"destination: bad listen address", []string{"destination", "--listen", "8086"}, 2, `proxy destination: --listen "8086": want host:port`},
		{"destination: no kubeconfig file", []string{"destination", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "proxy destination: kubeconfig: stat /nonexistent/kubeconfig: no such file or directory"},
		{"bad discovery address", []string{"--inbound-forward", "127.0.0.1:1", "--destination-addr", "destination"}, 2, `proxy: --destination-addr "destination": want host:port`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := proxyCommand(t, tt.args...).CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tt.wantCode {
				t.Fatalf("exit %v, want code %d; output %q", err, tt.wantCode, out)
			}
			if got := strings.TrimSuffix(string(out), "\n"); got != tt.wantLine {
				t.Fatalf("output %q, want the one line %q", got, tt.wantLine)
			}
		})
	}
}

func TestBinaryExitsZeroOnSIGTERM(t *testing.T) {
	cmd := proxyCommand(t, "--inbound-forward", "127.0.0.1:1", "--inbound-listen", "127.0.0.1:0", "--outbound-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until it serves: its log names the admin address.
	sc := bufio.NewScanner(stderr)
	for sc.Scan() && !strings.Contains(sc.Text(), "admin listening") {
	}
	cmd.Process.Signal(syscall.SIGTERM)
	go func() {
		for sc.Scan() {
		}
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGTERM: %v, want exit 0", err)
	}
}
