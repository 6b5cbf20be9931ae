package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestHandlerAnswersTheConfiguredBodySize(t *testing.T) {
	for _, size := range []int{0, 13, 100} {
		rec := httptest.NewRecorder()
		handler(size).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/anything", nil))
		if rec.Code != http.StatusOK || rec.Body.Len() != size {
			t.Errorf("size %d: got %d with %d bytes", size, rec.Code, rec.Body.Len())
		}
		if got := rec.Header().Get("Content-Type"); got != "text/plain" {
			t.Errorf("size %d: content type %q", size, got)
		}
	}
}
