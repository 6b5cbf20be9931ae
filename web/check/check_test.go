package check

import "testing"

// TestVersionResult: the test API server's version cannot be changed, so the version rule is
// checked on its own.
func TestVersionResult(t *testing.T) {
	for _, tc := range []struct {
		version string
		status  Status
		detail  string
	}{
		{"v1.37.2", OK, "Kubernetes v1.37.2"},
		{"v1.29.0", OK, "Kubernetes v1.29.0"},
		{"v1.30.4-eks-a737599", OK, "Kubernetes v1.30.4-eks-a737599"},
		{"v1.28.9", Fail, "Kubernetes v1.28.9 is older than v1.29.0, the first with native sidecars on by default"},
		{"banana", Fail, `the API server reports version "banana", which is not a Kubernetes version`},
	} {
		r := versionResult(tc.version)
		if r.Status != tc.status || r.Detail != tc.detail {
			t.Errorf("%s: %+v, want %s %q", tc.version, r, tc.status, tc.detail)
		}
		if r.Status == Fail && tc.version == "v1.28.9" && r.Hint == "" {
			t.Errorf("%s: no hint", tc.version)
		}
	}
}
