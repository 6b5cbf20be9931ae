// Package democonfig is the file through which the running demo tells the
// terminal twins (web stat, top, tap) where it is: its Prometheus and its tap
// token, which is random per run. "go run ./dev" writes it once the demo is up
// and removes it when it stops; the twins read it when neither a flag nor its
// environment twin says otherwise, so "web top" works right after "go run ./dev".
package democonfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Demo is what the file holds.
type Demo struct {
	DashboardURL  string `json:"dashboard_url"`
	PrometheusURL string `json:"prometheus_url"`
	TapToken      string `json:"tap_token"`
	// PID is the launcher's, so that a file left by a killed demo can be told
	// from a live one.
	PID int `json:"pid"`
}

// DefaultPath is $XDG_CONFIG_HOME/meshscope/demo.json (~/.config/... on
// Linux), or "" when the user has no configuration directory.
func DefaultPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "meshscope", "demo.json")
}

// Write saves d at path, readable by the user alone (it holds a token).
func Write(path string, d Demo) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Read loads the file at path. A missing file is (Demo{}, false, nil); a file
// whose demo is no longer running is reported as an error naming it.
func Read(path string) (Demo, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Demo{}, false, nil
	}
	if err != nil {
		return Demo{}, false, err
	}
	var d Demo
	if err := json.Unmarshal(b, &d); err != nil {
		return Demo{}, false, fmt.Errorf("demo file %s: %w", path, err)
	}
	if d.PID > 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", d.PID)); err != nil {
			return Demo{}, false, fmt.Errorf("demo file %s: its demo (pid %d) is not running; remove the file or start the demo", path, d.PID)
		}
	}
	return d, true, nil
}

// Remove deletes the file at path if it still describes the demo of pid.
func Remove(path string, pid int) {
	if d, ok, _ := Read(path); ok && d.PID == pid {
		os.Remove(path)
	}
}
