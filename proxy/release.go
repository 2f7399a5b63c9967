package proxy

import (
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// release is the per-release bookkeeping: the in-flight exchanges routed to
// it and the keep-alive pools to its upstreams. A release id can outlive one
// release object: once a drain has cut a release, a later Switch to the same
// id starts a fresh object, and stragglers finish on the old one.
type release struct {
	p  *Proxy
	id string

	mu    sync.Mutex
	head  *exchange // in-flight exchanges, a doubly linked list
	nHTTP int
	nWS   int
	cut   bool          // the drain deadline passed; new exchanges are cut at once
	idle  chan struct{} // made by a waiting Drain, closed when the counts reach zero
	// pools holds one keep-alive pool per upstream address, so a connection
	// is never reused across releases that happen to get the same port.
	pools map[string]*connPool
	// activations counts Switches to this release (guarded by Proxy.mu): a
	// Drain only cuts if the release was not re-activated since it began.
	activations int
	// stats are cumulative figures for metrics (atomics, no lock).
	stats releaseStats
}

func (r *release) poolFor(addr string) *connPool {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp := r.pools[addr]
	if cp == nil {
		cp = newConnPool(r.p, addr)
		r.pools[addr] = cp
	}
	return cp
}

// closeIdle closes the idle upstream connections of every pool.
func (r *release) closeIdle(forever bool) {
	r.mu.Lock()
	pools := make([]*connPool, 0, len(r.pools))
	for _, cp := range r.pools {
		pools = append(pools, cp)
	}
	r.mu.Unlock()
	for _, cp := range pools {
		cp.closeIdle(forever)
	}
}

// exchange is one routed HTTP request or WebSocket, from routing until it is
// finished. Each client connection embeds one and reuses it per request.
type exchange struct {
	prev, next *exchange // in rel's list, guarded by rel.mu
	rel        *release
	tgt        *target
	up         *upstream
	ws         bool
	cc         *clientConn
	tun        *tunnel // set once a WebSocket is established (guarded by rel.mu)

	// stop records why the exchange was interrupted from another goroutine
	// (stopCut, stopGone); 0 while it runs normally.
	stop atomic.Int32
	// upc is the upstream connection in use, so an interrupt can unblock
	// it. It is cleared before the connection goes back to its pool.
	upc      atomic.Pointer[upConn]
	headSent atomic.Bool // the response status line went to the client

	watching  bool // the client watcher runs (owned by the serving goroutine)
	finishing bool // the exchange is ending; guarded by cc.watchMu

	// start and status feed the per-release stats (serving goroutine only).
	start  time.Time
	status int32

	// Several upstreams only (serving goroutine): the request (for
	// affinity on failover), the affinity cookie value to set on the
	// response, and the upstreams that already failed this exchange.
	req       *http.Request
	setCookie string
	tried     [4]*upstream
	ntried    int
}

const (
	stopCut  = 1 // drain deadline
	stopGone = 2 // the client connection closed
)

// reset prepares the connection's exchange for its next request.
func (x *exchange) reset(ws bool) {
	*x = exchange{cc: x.cc, ws: ws, start: time.Now()}
}

// interrupted returns why the exchange was interrupted, or nil.
func (x *exchange) interrupted() error {
	switch x.stop.Load() {
	case stopCut:
		return errCutAtDeadline
	case stopGone:
		return errClientGone
	}
	return nil
}

// interrupt stops the exchange from another goroutine: it records why, then
// unblocks the upstream connection (and, for a cut response that is already
// streaming, the client write) with a past deadline. The serving goroutine
// sees the reason through interrupted. Only the first reason counts.
func (x *exchange) interrupt(why int32) {
	if !x.stop.CompareAndSwap(0, why) {
		return
	}
	if uc := x.upc.Load(); uc != nil {
		uc.conn.SetDeadline(aLongTimeAgo)
	}
	if why == stopCut && x.headSent.Load() {
		x.cc.conn.SetWriteDeadline(aLongTimeAgo)
	}
}

// register adds x to r's in-flight list. It reports false if the release was
// already cut by a drain deadline; x is then registered anyway (so finish
// stays symmetric) and the caller cuts it.
func (r *release) register(x *exchange) bool {
	r.mu.Lock()
	x.rel = r
	x.prev = nil
	x.next = r.head
	if r.head != nil {
		r.head.prev = x
	}
	r.head = x
	if x.ws {
		r.nWS++
	} else {
		r.nHTTP++
	}
	cut := r.cut
	r.mu.Unlock()
	return !cut
}

// unregister removes x; exactly once per register.
func (r *release) unregister(x *exchange) {
	r.mu.Lock()
	if x.prev != nil {
		x.prev.next = x.next
	} else {
		r.head = x.next
	}
	if x.next != nil {
		x.next.prev = x.prev
	}
	x.prev, x.next = nil, nil
	if x.ws {
		r.nWS--
	} else {
		r.nHTTP--
	}
	if r.nHTTP+r.nWS == 0 && r.idle != nil {
		close(r.idle)
		r.idle = nil
	}
	r.mu.Unlock()
}

// attach records the established tunnel of a WebSocket exchange, so a drain
// deadline closes it with a close frame instead of interrupting it. It reports
// false if the release was cut meanwhile.
func (r *release) attach(x *exchange, t *tunnel) bool {
	r.mu.Lock()
	x.tun = t
	cut := r.cut
	r.mu.Unlock()
	return !cut
}

// idleChan returns a channel closed when no exchange is in flight, or nil
// if none is in flight now.
func (r *release) idleChan() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nHTTP+r.nWS == 0 {
		return nil
	}
	if r.idle == nil {
		r.idle = make(chan struct{})
	}
	return r.idle
}

func (r *release) counts() (httpN, wsN int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nHTTP, r.nWS
}

// Counts is a number of in-flight exchanges.
type Counts struct {
	HTTP      int `json:"http"`
	WebSocket int `json:"websocket"`
}

// Total is HTTP + WebSocket (the original's connectionCount).
func (c Counts) Total() int { return c.HTTP + c.WebSocket }

// UpstreamCounts is the in-flight count of one upstream address.
type UpstreamCounts struct {
	Upstream string `json:"upstream"`
	Counts
}

// ReleaseConnections is one release's entry in a Snapshot.
type ReleaseConnections struct {
	Release string `json:"release"`
	Active  bool   `json:"active"`
	Counts
	// Upstreams lists the addresses with exchanges in flight, sorted.
	Upstreams []UpstreamCounts `json:"upstreams,omitempty"`
}

func (r *release) snapshot(active bool) ReleaseConnections {
	rc := ReleaseConnections{Release: r.id, Active: active}
	byAddr := map[string]*Counts{}
	r.mu.Lock()
	rc.HTTP, rc.WebSocket = r.nHTTP, r.nWS
	for x := r.head; x != nil; x = x.next {
		if x.up == nil {
			continue
		}
		c := byAddr[x.up.addr]
		if c == nil {
			c = &Counts{}
			byAddr[x.up.addr] = c
		}
		if x.ws {
			c.WebSocket++
		} else {
			c.HTTP++
		}
	}
	r.mu.Unlock()
	for addr, c := range byAddr {
		rc.Upstreams = append(rc.Upstreams, UpstreamCounts{Upstream: addr, Counts: *c})
	}
	sort.Slice(rc.Upstreams, func(i, j int) bool { return rc.Upstreams[i].Upstream < rc.Upstreams[j].Upstream })
	return rc
}

// Connections returns the in-flight HTTP exchanges and open WebSockets of a
// release (zero for an unknown release). Idle keep-alive client connections
// are not counted: they follow the active release on their next request.
func (p *Proxy) Connections(release string) (http, websocket int) {
	p.mu.Lock()
	r := p.releases[release]
	p.mu.Unlock()
	if r == nil {
		return 0, 0
	}
	return r.counts()
}

// Snapshot returns the counts of every known release (active, draining, or
// switched away from and not yet forgotten), sorted by release id, with
// per-upstream counts.
func (p *Proxy) Snapshot() []ReleaseConnections {
	p.mu.Lock()
	rels := make([]*release, 0, len(p.releases))
	for _, r := range p.releases {
		rels = append(rels, r)
	}
	var activeRel *release
	if t := p.active.Load(); t != nil {
		activeRel = t.rel
	}
	p.mu.Unlock()
	out := make([]ReleaseConnections, 0, len(rels))
	for _, r := range rels {
		out = append(out, r.snapshot(r == activeRel))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Release < out[j].Release })
	return out
}

// Forget drops the bookkeeping of a release that has stopped and closes its
// idle upstream connections. Exchanges still in flight finish normally; they
// are no longer counted anywhere. Forgetting the active release is refused
// (it reports false), as is an unknown one.
func (p *Proxy) Forget(release string) bool {
	p.mu.Lock()
	r := p.releases[release]
	if r == nil || p.activeRelease() == r {
		p.mu.Unlock()
		return false
	}
	delete(p.releases, release)
	p.mu.Unlock()
	r.closeIdle(true)
	return true
}

// activeRelease returns the release of the active target, or nil.
func (p *Proxy) activeRelease() *release {
	if t := p.active.Load(); t != nil {
		return t.rel
	}
	return nil
}
