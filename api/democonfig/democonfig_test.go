package democonfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTheFileLivesAsLongAsItsDemo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshscope", "demo.json")
	if _, ok, err := Read(path); ok || err != nil {
		t.Fatalf("no file: ok %v, err %v; want neither", ok, err)
	}
	d := Demo{DashboardURL: "http://127.0.0.1:8084/", PrometheusURL: "http://127.0.0.1:9090", TapToken: "T0KEN", PID: os.Getpid()}
	if err := Write(path, d); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v (%v), want 0600: it holds a token", st.Mode(), err)
	}
	got, ok, err := Read(path)
	if !ok || err != nil || got != d {
		t.Fatalf("read %+v ok %v err %v, want %+v", got, ok, err, d)
	}
	Remove(path, os.Getpid()+1) // another demo's stop leaves this one's file alone
	if _, ok, _ := Read(path); !ok {
		t.Fatal("a stop of another demo removed the file")
	}
	Remove(path, os.Getpid())
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file still there after its demo stopped: %v", err)
	}
}

func TestAFileLeftByAKilledDemoSaysSo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "demo.json")
	if err := Write(path, Demo{PrometheusURL: "http://127.0.0.1:9090", PID: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := Read(path); ok || err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("ok %v err %v: want an error saying its demo is not running", ok, err)
	}
}
