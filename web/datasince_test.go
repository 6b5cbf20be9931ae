package main

import (
	"testing"
	"time"
)

func TestSinceCacheKnowsAFullWindowWithoutAskingAgain(t *testing.T) {
	var c sinceCache
	t0 := time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC)
	if c.full(t0, time.Minute) {
		t.Fatal("nothing learned yet, yet a window is known full")
	}
	c.learn(t0, t0.Add(-30*time.Second)) // a young mesh: data since 30 s ago
	for _, tc := range []struct {
		at   time.Duration // after t0
		w    time.Duration
		want bool
	}{
		{0, time.Minute, false},               // 30 s of a 1m window
		{30 * time.Second, time.Minute, true}, // the minute has filled since
		{30 * time.Second, 5 * time.Minute, false},
		{sinceTTL, time.Minute, false}, // too old to trust: ask again
	} {
		if got := c.full(t0.Add(tc.at), tc.w); got != tc.want {
			t.Errorf("at +%v, window %v: full %v, want %v", tc.at, tc.w, got, tc.want)
		}
	}
	c.learn(t0.Add(time.Minute), t0.Add(-2*time.Hour)) // a 1h query saw older data
	if !c.full(t0.Add(time.Minute), time.Hour) {
		t.Error("data since two hours ago, yet the hour is not known full")
	}
}
