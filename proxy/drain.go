package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DrainResult says how a Drain ended.
type DrainResult struct {
	// Drained is true when the release had nothing in flight by the
	// deadline (or at once).
	Drained bool
	// Elapsed is how long Drain waited.
	Elapsed time.Duration
	// CutHTTP and CutWebSocket count the exchanges still open at the
	// deadline: requests interrupted with cause ErrDrained and WebSockets
	// sent a 1001 close frame.
	CutHTTP, CutWebSocket int
	// Err is set when Drain gave up without waiting or cutting: ctx ended
	// (ctx's error) or the release is the active one (ErrActive).
	Err error
}

// Drain waits until the release has no in-flight HTTP exchange and no open
// WebSocket, or until deadline. It is meant for a release that was switched
// away from: it keeps serving what it already has while new traffic goes to
// the active release (spec §4.6). Idle keep-alive client connections do not
// hold a drain open; their next request goes to the active release.
//
// At the deadline, whatever is left is cut with cause ErrDrained: requests
// are interrupted (answered 504 if no response started, else the client
// connection is aborted) and
// WebSockets get a 1001 "going away" close frame, then both sockets close
// within Options.WebSocketCloseGrace. Drain does not wait for the cut
// exchanges to finish. If the release becomes active again before the
// deadline, nothing is cut and Err is ErrActive, even if it was switched
// away from again meanwhile (that retirement needs its own Drain). An
// unknown release is already drained.
func (p *Proxy) Drain(ctx context.Context, release string, deadline time.Time) DrainResult {
	start := time.Now()
	p.mu.Lock()
	r := p.releases[release]
	active := r != nil && p.activeRelease() == r
	var activations int
	if r != nil {
		activations = r.activations
	}
	p.mu.Unlock()
	if r == nil {
		return DrainResult{Drained: true}
	}
	if active {
		return DrainResult{Err: fmt.Errorf("drain %s: %w", release, ErrActive)}
	}
	idle := r.idleChan()
	if idle == nil {
		r.closeIdle(false)
		return DrainResult{Drained: true, Elapsed: time.Since(start)}
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-idle:
		// The old upstream's idle keep-alive connections are of no more use.
		r.closeIdle(false)
		return DrainResult{Drained: true, Elapsed: time.Since(start)}
	case <-ctx.Done():
		return DrainResult{Elapsed: time.Since(start), Err: fmt.Errorf("drain %s: %w", release, ctx.Err())}
	case <-timer.C:
	}
	res := p.cut(r, activations)
	res.Elapsed = time.Since(start)
	return res
}

// cut interrupts everything in flight on r, unless r was switched to again
// since the drain began (its activation count changed). The interrupts run
// under r.mu, so each reaches the exchange it was meant for (client
// connections reuse their exchange for the next request).
func (p *Proxy) cut(r *release, activations int) DrainResult {
	p.mu.Lock()
	if r.activations != activations {
		p.mu.Unlock()
		return DrainResult{Err: fmt.Errorf("drain %s: %w", r.id, ErrActive)}
	}
	r.mu.Lock()
	p.mu.Unlock()
	r.cut = true
	res := p.cutLocked(r, "")
	r.mu.Unlock()
	r.closeIdle(false)
	if p.opts.Logger != nil && !res.Drained {
		p.opts.Logger.Info("proxy drain deadline: cut remaining connections", "release", r.id, "http", res.CutHTTP, "websocket", res.CutWebSocket)
	}
	return res
}

// ErrRouted is returned (in DrainResult.Err) when asked to drain an
// upstream that the active route still sends new traffic to.
var ErrRouted = errors.New("upstream is still routed")

// drainPoll is how often DrainUpstream looks at the in-flight list.
const drainPoll = 20 * time.Millisecond

// DrainUpstream waits until no exchange of release is in flight on the
// upstream addr, or until deadline: it retires one replica of a release
// that keeps serving through its other upstreams (a replica being replaced).
// Switch the release to a route without addr first; while the active route
// still contains addr, Err is ErrRouted and nothing is waited for or cut.
// At the deadline the exchanges left on addr are cut like Drain cuts a
// release (504 or abort, WebSockets a 1001 close frame). Afterwards the
// idle keep-alive connections to addr are closed. An unknown release or an
// upstream with nothing in flight is drained at once.
func (p *Proxy) DrainUpstream(ctx context.Context, release, addr string, deadline time.Time) DrainResult {
	start := time.Now()
	p.mu.Lock()
	r := p.releases[release]
	routed := false
	if t := p.active.Load(); t != nil && t.rel == r && r != nil {
		for _, u := range t.upstreams {
			routed = routed || u.addr == addr
		}
	}
	p.mu.Unlock()
	if r == nil {
		return DrainResult{Drained: true}
	}
	if routed {
		return DrainResult{Err: fmt.Errorf("drain %s of %s: %w", addr, release, ErrRouted)}
	}
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for r.inFlightOn(addr) > 0 {
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
			return DrainResult{Elapsed: time.Since(start), Err: fmt.Errorf("drain %s of %s: %w", addr, release, ctx.Err())}
		case <-timer.C:
		}
		res := p.cutUpstream(r, addr)
		res.Elapsed = time.Since(start)
		r.dropPool(addr)
		return res
	}
	r.dropPool(addr)
	return DrainResult{Drained: true, Elapsed: time.Since(start)}
}

// inFlightOn counts r's exchanges routed to addr.
func (r *release) inFlightOn(addr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for x := r.head; x != nil; x = x.next {
		if x.up != nil && x.up.addr == addr {
			n++
		}
	}
	return n
}

// cutUpstream interrupts r's exchanges on addr (see cut).
func (p *Proxy) cutUpstream(r *release, addr string) DrainResult {
	r.mu.Lock()
	res := p.cutLocked(r, addr)
	r.mu.Unlock()
	if p.opts.Logger != nil && !res.Drained {
		p.opts.Logger.Info("proxy upstream drain deadline: cut remaining connections", "release", r.id, "upstream", addr,
			"http", res.CutHTTP, "websocket", res.CutWebSocket)
	}
	return res
}

// dropPool closes addr's idle keep-alive connections and forgets its pool
// (a later route to the same address starts a new one).
func (r *release) dropPool(addr string) {
	r.mu.Lock()
	cp := r.pools[addr]
	delete(r.pools, addr)
	r.mu.Unlock()
	if cp != nil {
		cp.closeIdle(true)
	}
}

// UpstreamConnections returns the in-flight counts of release per upstream
// address (addresses with nothing in flight are absent).
func (p *Proxy) UpstreamConnections(release string) map[string]Counts {
	p.mu.Lock()
	r := p.releases[release]
	p.mu.Unlock()
	out := map[string]Counts{}
	if r == nil {
		return out
	}
	for _, u := range r.snapshot(false).Upstreams {
		out[u.Upstream] = u.Counts
	}
	return out
}

// cutLocked interrupts r's exchanges (only those on upstream addr unless
// addr is empty) and counts them; Drained is set when there were none (the
// last one finished just now). r.mu is held.
func (p *Proxy) cutLocked(r *release, addr string) DrainResult {
	var res DrainResult
	for x := r.head; x != nil; x = x.next {
		if addr != "" && (x.up == nil || x.up.addr != addr) {
			continue
		}
		if x.ws {
			res.CutWebSocket++
		} else {
			res.CutHTTP++
		}
		if x.tun != nil {
			go x.tun.goingAway(p.opts.WebSocketCloseGrace, errCutAtDeadline)
		} else {
			x.interrupt(stopCut)
		}
	}
	res.Drained = res.CutHTTP+res.CutWebSocket == 0
	return res
}
