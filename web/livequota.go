package main

import (
	"fmt"
	"sync"
)

// liveQuota shares the live sockets (each taps every proxy it selects) among their clients, so that no
// one client can take them all: a page's sockets count against their client's address, at most a quarter
// of the total each; sockets without an Origin (no browser page sends none) share an eighth of the total
// between them, whoever opens them. A socket counts from its handshake, while it waits for its filter
// message too (an idle client holds its own share, not everybody's).
type liveQuota struct {
	mu       sync.Mutex
	total    int
	noOrigin int
	byClient map[string]int
}

// Reasons a socket is refused: the label of meshscope_web_live_sockets_refused_total.
const (
	quotaTotal    = "total"
	quotaClient   = "client"
	quotaNoOrigin = "no-origin"
)

// take counts one socket of client (its address), with or without an Origin, against max sockets in
// all; it returns the reason and the message to close with when the socket is one too many.
func (q *liveQuota) take(client string, browser bool, max int) (reason, msg string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.total >= max:
		return quotaTotal, fmt.Sprintf("too many live views open at once (%d); close some and retry", max)
	case !browser && q.noOrigin >= noOriginShare(max):
		return quotaNoOrigin, fmt.Sprintf("too many live sockets without an Origin (%d); close some and retry", noOriginShare(max))
	case browser && q.byClient[client] >= clientShare(max):
		return quotaClient, fmt.Sprintf("too many live views from %s (%d); close some and retry", client, clientShare(max))
	}
	q.total++
	if !browser {
		q.noOrigin++
		return "", ""
	}
	if q.byClient == nil {
		q.byClient = map[string]int{}
	}
	q.byClient[client]++
	return "", ""
}

// give returns a socket that take counted.
func (q *liveQuota) give(client string, browser bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.total--
	if !browser {
		q.noOrigin--
		return
	}
	if q.byClient[client]--; q.byClient[client] <= 0 {
		delete(q.byClient, client)
	}
}

func clientShare(max int) int   { return (max + 3) / 4 }
func noOriginShare(max int) int { return (max + 7) / 8 }
