package proxy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrDrained is the cause of exchanges cut at a drain deadline. Errors passed
// to Options.OnError for them satisfy errors.Is(err, ErrDrained).
var ErrDrained = errors.New("release drained")

// ErrActive is returned (in DrainResult.Err) when asked to drain the release
// that is receiving traffic.
var ErrActive = errors.New("release is active")

// errCutAtDeadline is what an exchange cut by Drain fails with.
var errCutAtDeadline = fmt.Errorf("cut at the drain deadline: %w", ErrDrained)

// Proxy is the HTTP/1.1 and WebSocket reverse proxy. It routes every request
// and WebSocket upgrade to the release active when it arrives (see Switch),
// counts what is in flight per release and drains retired releases. Create
// it with New and serve listeners with Serve; it is safe for concurrent use.
type Proxy struct {
	opts   Options
	dialer *net.Dialer
	bufs   sync.Pool // *[]byte of copyBufferSize, for response bodies

	active atomic.Pointer[target]

	mu       sync.Mutex // guards releases; orders Switch/Clear/Forget/Drain
	releases map[string]*release
}

const copyBufferSize = 32 << 10

// New returns a Proxy with no active release (requests get 503 until
// Switch). It returns an error for invalid options.
func New(opts Options) (*Proxy, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		opts:     o,
		dialer:   &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second},
		releases: map[string]*release{},
	}
	p.bufs.New = func() any { b := make([]byte, copyBufferSize); return &b }
	return p, nil
}

// Switch makes release the active target: every request and WebSocket
// upgrade arriving after Switch returns goes to one of upstreams
// ("host:port"). In-flight exchanges are untouched and finish against the
// release they were routed to; keep-alive client connections follow on
// their next request. The swap is one atomic store: it never fails or
// delays a request. Switch returns an error, and changes nothing, only for
// an empty release id or a malformed upstream list.
func (p *Proxy) Switch(releaseID string, upstreams []string) error {
	if err := validateUpstreams(releaseID, upstreams); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.releases[releaseID]
	if r == nil || r.isCut() {
		// A release cut by a drain deadline starts over: its stragglers
		// finish on the old object.
		r = &release{p: p, id: releaseID, pools: map[string]*connPool{}}
		p.releases[releaseID] = r
	}
	r.activations++
	p.active.Store(newTarget(r, slices.Clone(upstreams), p.opts.Balance))
	p.logDebug("proxy switched", "release", releaseID, "upstreams", upstreams)
	return nil
}

// Clear removes the active target: new requests get 503 "No active
// release" (spec §4.7). In-flight exchanges are untouched.
func (p *Proxy) Clear() {
	p.mu.Lock()
	p.active.Store(nil)
	p.mu.Unlock()
	p.logDebug("proxy cleared")
}

// Active returns the active release and its upstreams; ok is false when
// there is none.
func (p *Proxy) Active() (release string, upstreams []string, ok bool) {
	t := p.active.Load()
	if t == nil {
		return "", nil, false
	}
	for _, u := range t.upstreams {
		upstreams = append(upstreams, u.addr)
	}
	return t.rel.id, upstreams, true
}

func (r *release) isCut() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cut
}

// route registers x on the active release and picks its upstream; it
// returns false if there is no active release. Registering first and then
// re-checking the active target closes the race with a concurrent Switch:
// either the exchange is counted before Drain can see the old release idle,
// or it is routed again to the new target.
func (p *Proxy) route(x *exchange) bool {
	for {
		t := p.active.Load()
		if t == nil {
			return false
		}
		ok := t.rel.register(x)
		if p.active.Load() != t {
			t.rel.unregister(x)
			continue
		}
		x.tgt = t
		x.up = t.pick()
		if !ok {
			x.interrupt(stopCut)
		}
		return true
	}
}

// finish ends a routed exchange: exactly once per successful route.
func (p *Proxy) finish(x *exchange) {
	x.rel.stats.record(x, time.Since(x.start))
	x.tgt.done(x.up) // first, so a count seen dropping implies this too
	x.rel.unregister(x)
}

// report passes an upstream failure to OnError and the logger.
func (p *Proxy) report(x *exchange, err error) {
	x.rel.stats.errors.Add(1)
	if p.opts.OnError != nil {
		p.opts.OnError(x.rel.id, err)
	}
	if p.opts.Logger != nil {
		p.opts.Logger.Warn("proxy error", "release", x.rel.id, "upstream", x.up.addr, "error", err.Error())
	}
}

func (p *Proxy) logDebug(msg string, args ...any) {
	if p.opts.Logger != nil {
		p.opts.Logger.Debug(msg, args...)
	}
}
