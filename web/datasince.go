package main

import (
	"sync"
	"time"
)

// sinceTTL is how long a learned start of the data spares pages the query
// for it. The start of the data only moves when Prometheus loses its data
// (a restart on an empty disk) or its retention passes: then pages learn it
// again within this long.
const sinceTTL = 10 * time.Minute

// sinceCache remembers the earliest data a page's window query saw, so that
// a window that starts after it is known full without asking again: at
// scale the query reads every proxy's "up" series (10,000 pods: seconds on a
// loaded Prometheus), and nearly every page of an established mesh has a
// full window.
type sinceCache struct {
	mu      sync.Mutex
	since   time.Time // the earliest data seen: data exists from at least then
	learned time.Time // when since was learned; zero: nothing known
}

// full reports whether a window of w ending at now is known to be full.
func (c *sinceCache) full(now time.Time, w time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.learned.IsZero() && now.Sub(c.learned) < sinceTTL && !c.since.After(now.Add(-w))
}

// learn records that data exists since since, as a query at now found.
func (c *sinceCache) learn(now, since time.Time) {
	if since.IsZero() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.learned.IsZero() || now.Sub(c.learned) >= sinceTTL || since.Before(c.since) {
		c.since = since
	}
	c.learned = now
}
