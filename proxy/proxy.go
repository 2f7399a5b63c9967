package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
	// Client connection buffers, returned by idle keep-alive connections.
	readers sync.Pool // *bufio.Reader of connBufferSize
	writers sync.Pool // *bufio.Writer of connBufferSize

	active atomic.Pointer[target]

	mu       sync.Mutex // guards releases; orders Switch/Clear/Forget/Drain
	releases map[string]*release
}

const (
	copyBufferSize = 32 << 10
	connBufferSize = 4 << 10
)

func (p *Proxy) getReader(r io.Reader) *bufio.Reader {
	if br, ok := p.readers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, connBufferSize)
}

func (p *Proxy) putReader(br *bufio.Reader) {
	br.Reset(nil)
	p.readers.Put(br)
}

func (p *Proxy) getWriter(w io.Writer) *bufio.Writer {
	if bw, ok := p.writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, connBufferSize)
}

func (p *Proxy) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	p.writers.Put(bw)
}

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
// ("host:port"), chosen by Options.Balance. It is SwitchRoute without
// affinity.
func (p *Proxy) Switch(releaseID string, upstreams []string) error {
	return p.SwitchRoute(releaseID, Route{Upstreams: upstreams, Balance: p.opts.Balance})
}

// SwitchRoute makes release the active target with the given route. In-flight
// exchanges are untouched and finish against the release and upstream they
// were routed to; keep-alive client connections follow on their next
// request. The swap is one atomic store: it never fails or delays a request.
//
// Switching again to the release that is already active only changes its
// route (a replica joined or left): its connection counts, keep-alive pools
// and the in-flight counts of the upstreams it keeps are kept, and nothing
// is drained. SwitchRoute returns an error, and changes nothing, only for an
// empty release id or an invalid route.
func (p *Proxy) SwitchRoute(releaseID string, rt Route) error {
	if err := validateRoute(releaseID, rt); err != nil {
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
	prev := p.active.Load()
	if prev == nil || prev.rel != r {
		r.activations++
	}
	rt.Upstreams = slices.Clone(rt.Upstreams)
	p.active.Store(newTarget(r, prev, rt))
	p.logDebug("proxy switched", "release", releaseID, "upstreams", rt.Upstreams)
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

// route picks the upstream of x on the active target and registers x on its
// release; it returns false if there is no active release. Registering
// and then re-checking the active target closes the race with a concurrent
// Switch: either the exchange is counted before Drain can see the old
// release idle, or it is routed again to the new target. The upstream is
// picked before registering, so readers of the in-flight list (Snapshot)
// always see it.
func (p *Proxy) route(x *exchange, req *http.Request) bool {
	for {
		t := p.active.Load()
		if t == nil {
			return false
		}
		x.tgt = t
		if t.single != nil {
			x.up = t.single
		} else {
			x.req = req
			x.up = t.pickFor(x, req)
		}
		ok := t.rel.register(x)
		if p.active.Load() != t {
			t.rel.unregister(x)
			t.done(x.up)
			x.setCookie = ""
			continue
		}
		if !ok {
			x.interrupt(stopCut)
		}
		return true
	}
}

// failover moves an exchange whose upstream failed before anything was
// relayed to another upstream of its target (several upstreams only). It
// reports false when there is none left to try.
func (p *Proxy) failover(x *exchange) bool {
	if x.tgt.single != nil || x.interrupted() != nil {
		return false
	}
	u := x.tgt.another(x)
	if u == nil {
		return false
	}
	old := x.up
	x.rel.mu.Lock()
	x.up = u
	x.rel.mu.Unlock()
	x.tgt.done(old)
	return true
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
