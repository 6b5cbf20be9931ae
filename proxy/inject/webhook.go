package inject

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxReviewBytes bounds an AdmissionReview's body: the API server refuses objects over 3 MiB, so a
// larger review is not one it sent.
const maxReviewBytes = 4 << 20

// Webhook is the mutating admission webhook: the API server sends it every Pod it is about to
// create, and it answers with the patch that injects the proxy when the Pod or its namespace is
// annotated meshscope.io/inject: enabled. It never refuses a Pod: a Pod it cannot inject is
// admitted as it came, with a warning that says why.
type Webhook struct {
	Config Config
	// NamespaceAnnotations returns a namespace's annotations (from the API server).
	NamespaceAnnotations func(ctx context.Context, name string) (map[string]string, error)
	Log                  *slog.Logger
}

// ServeHTTP answers one AdmissionReview (admission.k8s.io/v1).
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		http.Error(w, "read review: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "want an AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	resp := h.Review(r.Context(), review.Request)
	resp.UID = review.Request.UID
	review.Request, review.Response = nil, resp
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(&review)
}

// Review decides one admission request.
func (h *Webhook) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create {
		return resp
	}
	var pod map[string]any
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		resp.Warnings = []string{"meshscope: not injected: pod: " + err.Error()}
		return resp
	}
	meta, _ := pod["metadata"].(map[string]any)
	annotations, _ := meta["annotations"].(map[string]any)
	want, _ := annotations[InjectAnnotation].(string)
	if want == "" {
		nsAnnotations, err := h.NamespaceAnnotations(ctx, req.Namespace)
		if err != nil {
			h.Log.Warn("namespace lookup failed; pod admitted without proxy", "namespace", req.Namespace, "err", err)
			resp.Warnings = []string{"meshscope: not injected: namespace " + req.Namespace + ": " + err.Error()}
			return resp
		}
		want = nsAnnotations[InjectAnnotation]
	}
	if want != "enabled" {
		return resp
	}
	injected := deepCopy(pod)
	err := h.Config.Template(injected, workloadOf(req.Name, meta))
	var skip SkipError
	switch {
	case errors.As(err, &skip):
		resp.Warnings = []string{"meshscope: not injected: " + skip.Reason}
		return resp
	case err != nil:
		resp.Warnings = []string{"meshscope: not injected: " + err.Error()}
		return resp
	}
	patch, err := json.Marshal(diff(pod, injected))
	if err != nil {
		resp.Warnings = []string{"meshscope: not injected: " + err.Error()}
		return resp
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp
}

// workloadOf names a pod's workload from its controller: a ReplicaSet's pod-template-hash suffix is
// dropped to name its Deployment, as the Deployment controller added it.
func workloadOf(podName string, meta map[string]any) Workload {
	var owners []metav1.OwnerReference
	if raw, err := json.Marshal(meta["ownerReferences"]); err == nil {
		json.Unmarshal(raw, &owners)
	}
	for _, o := range owners {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		labels, _ := meta["labels"].(map[string]any)
		if hash, _ := labels["pod-template-hash"].(string); o.Kind == "ReplicaSet" && hash != "" && strings.HasSuffix(o.Name, "-"+hash) {
			return Workload{Kind: "deployment", Name: strings.TrimSuffix(o.Name, "-"+hash)}
		}
		return Workload{Kind: strings.ToLower(o.Kind), Name: o.Name}
	}
	return Workload{Kind: "pod", Name: podName}
}

// patchOp is one RFC 6902 JSON Patch operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// diff is the JSON Patch from a pod to its injected self: the injector changes only fields one level
// under metadata and spec, so whole fields there are added, replaced or removed.
func diff(before, after map[string]any) []patchOp {
	var ops []patchOp
	for _, top := range []string{"metadata", "spec"} {
		b, _ := before[top].(map[string]any)
		a, _ := after[top].(map[string]any)
		keys := make([]string, 0, len(a)+len(b))
		for k := range a {
			keys = append(keys, k)
		}
		for k := range b {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range slices.Compact(keys) {
			path := "/" + top + "/" + escapePointer(k)
			av, inAfter := a[k]
			bv, inBefore := b[k]
			switch {
			case inAfter && !inBefore:
				ops = append(ops, patchOp{Op: "add", Path: path, Value: av})
			case inBefore && !inAfter:
				ops = append(ops, patchOp{Op: "remove", Path: path})
			case !reflect.DeepEqual(av, bv):
				ops = append(ops, patchOp{Op: "replace", Path: path, Value: av})
			}
		}
	}
	return ops
}

// escapePointer escapes a key for a JSON Pointer (RFC 6901 §3).
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func deepCopy(m map[string]any) map[string]any {
	raw, _ := json.Marshal(m)
	var out map[string]any
	json.Unmarshal(raw, &out)
	return out
}

// Serve answers admission reviews on ln over TLS with cert until ctx ends, then shuts down
// gracefully.
func (h *Webhook) Serve(ctx context.Context, ln net.Listener, cert tls.Certificate) error {
	mux := http.NewServeMux()
	mux.Handle("/inject", h)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(h.Log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("webhook: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	<-done
	return err
}
