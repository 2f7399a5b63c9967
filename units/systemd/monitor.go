package systemd

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

// monitor turns the dbusctl watch of this runner's units into units.Events.
// One goroutine (loop) owns event delivery, the buffers of starts in flight
// and the subscriber set; requests reach it as closures. Plain data read by
// Status and Stop (last exits, stop flags, identities, waiters) is guarded
// by mu.
type monitor struct {
	r      *Runner
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when loop returns
	reqs   chan func()

	// Owned by loop.
	pending map[string]*pendingStart
	drop    map[string]time.Time // start timestamp of a failed spawn whose late events are dropped
	subs    map[*subscriber]struct{}

	mu       sync.Mutex
	exits    map[string]exitRecord
	stopping map[string]bool
	idents   map[string]units.Identity
	waiters  map[string][]chan struct{}
}

// pendingStart buffers a unit's events while Start runs: if the start job
// fails (a spawn failure), the Started/Exited pair systemd still signals is
// dropped, so watchers never see an instance that did not start.
type pendingStart struct {
	starts int
	events []dbusctl.UnitEvent
}

type exitRecord struct {
	id        units.Identity
	exit      units.Exit
	state     units.State
	startedAt time.Time
}

func startMonitor(r *Runner) (*monitor, error) {
	ctx, cancel := context.WithCancel(context.Background())
	events, err := r.conn.Watch(ctx, r.owns)
	if err != nil {
		cancel()
		return nil, err
	}
	m := &monitor{
		r: r, ctx: ctx, cancel: cancel,
		done:     make(chan struct{}),
		reqs:     make(chan func()),
		pending:  map[string]*pendingStart{},
		drop:     map[string]time.Time{},
		subs:     map[*subscriber]struct{}{},
		exits:    map[string]exitRecord{},
		stopping: map[string]bool{},
		idents:   map[string]units.Identity{},
		waiters:  map[string][]chan struct{}{},
	}
	go m.loop(events)
	return m, nil
}

func (m *monitor) stop() {
	m.cancel()
	<-m.done
}

func (m *monitor) loop(events <-chan dbusctl.UnitEvent) {
	defer close(m.done)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			m.handle(ev)
		case fn := <-m.reqs:
			fn()
		case <-m.ctx.Done():
			return
		}
	}
}

// call runs fn on the loop goroutine and waits for it; after Close it is a
// no-op.
func (m *monitor) call(fn func()) {
	finished := make(chan struct{})
	select {
	case m.reqs <- func() { fn(); close(finished) }:
		<-finished
	case <-m.done:
	}
}

func (m *monitor) handle(ev dbusctl.UnitEvent) {
	switch ev.Kind {
	case dbusctl.UnitStateChanged:
		if ev.ActiveState == "inactive" || ev.ActiveState == "failed" {
			m.wake(ev.Unit)
		}
	case dbusctl.UnitRemoved:
		m.wake(ev.Unit)
	case dbusctl.UnitStatus:
		if p, ok := m.pending[ev.Unit]; ok {
			p.events = append(p.events, ev)
			return
		}
		m.deliver(ev)
	case dbusctl.UnitStarted, dbusctl.UnitExited:
		if t, ok := m.drop[ev.Unit]; ok && ev.Start.Equal(t) {
			return
		}
		if p, ok := m.pending[ev.Unit]; ok {
			p.events = append(p.events, ev)
			return
		}
		m.deliver(ev)
	}
}

func (m *monitor) deliver(ev dbusctl.UnitEvent) {
	id := m.identityFor(ev.Unit)
	switch ev.Kind {
	case dbusctl.UnitStatus:
		m.broadcast(units.Event{Kind: units.EventStatus, Name: ev.Unit, Identity: id, PID: ev.PID, At: ev.At, Status: ev.Status})
	case dbusctl.UnitStarted:
		m.broadcast(units.Event{Kind: units.EventStarted, Name: ev.Unit, Identity: id, PID: ev.PID, At: ev.At})
	case dbusctl.UnitExited:
		exit := toExit(ev.Exit)
		if ev.ExitUnknown {
			exit = units.Exit{Code: -1}
		}
		m.mu.Lock()
		state := exitState(exit, m.stopping[ev.Unit])
		m.exits[ev.Unit] = exitRecord{id: id, exit: exit, state: state, startedAt: ev.Start}
		m.mu.Unlock()
		m.broadcast(units.Event{Kind: units.EventExited, Name: ev.Unit, Identity: id, PID: ev.PID, Exit: exit, At: ev.At})
		m.wake(ev.Unit)
		if ev.ActiveState == "failed" {
			// The exit is recorded; a failed unit would otherwise stay
			// loaded (CollectMode=inactive) until the next start or stop.
			ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
			_ = m.r.conn.ResetFailed(ctx, ev.Unit)
			cancel()
		}
	}
}

func (m *monitor) broadcast(e units.Event) {
	for s := range m.subs {
		s.push(e)
	}
}

// identityFor returns the cached identity, else reads the unit's
// environment, else derives it from the name.
func (m *monitor) identityFor(name string) units.Identity {
	m.mu.Lock()
	id, ok := m.idents[name]
	m.mu.Unlock()
	if ok {
		return id
	}
	ctx, cancel := context.WithTimeout(m.ctx, 2*time.Second)
	defer cancel()
	if p, err := m.r.conn.Properties(ctx, name); err == nil {
		if id, ok := identityFromProps(name, p); ok {
			m.remember(name, id)
			return id
		}
	}
	return identityFromName(name)
}

func (m *monitor) beginStart(name string, id units.Identity) {
	m.mu.Lock()
	m.idents[name] = id
	delete(m.exits, name)
	delete(m.stopping, name)
	// Replacements start each incarnation under a new name: forget the
	// ended ones of the same replica slot so these maps do not grow.
	for n, o := range m.idents {
		if _, ended := m.exits[n]; ended && n != name && o.App == id.App && o.Release == id.Release &&
			o.Process == id.Process && o.Replica == id.Replica && o.Generation != id.Generation {
			delete(m.idents, n)
			delete(m.exits, n)
			delete(m.stopping, n)
		}
	}
	m.mu.Unlock()
	m.call(func() {
		delete(m.drop, name)
		p := m.pending[name]
		if p == nil {
			p = &pendingStart{}
			m.pending[name] = p
		}
		p.starts++
	})
}

// endStart releases the events buffered for name. jerr is the failed start
// job, if any: events of the process it forked are dropped, now and later.
func (m *monitor) endStart(name string, jerr *dbusctl.JobError) {
	m.call(func() {
		p := m.pending[name]
		if p == nil {
			return
		}
		var failed time.Time
		if jerr != nil && !jerr.StartedAt.IsZero() {
			failed = jerr.StartedAt
			m.drop[name] = failed
		}
		kept := p.events[:0]
		for _, ev := range p.events {
			if failed.IsZero() || !ev.Start.Equal(failed) && ev.Kind != dbusctl.UnitStatus {
				kept = append(kept, ev)
			}
		}
		p.events = kept
		if p.starts--; p.starts > 0 {
			return
		}
		delete(m.pending, name)
		for _, ev := range p.events {
			m.deliver(ev)
		}
	})
}

func (m *monitor) subscribe(ctx context.Context) (<-chan units.Event, error) {
	s := &subscriber{wake: make(chan struct{}, 1), out: make(chan units.Event)}
	registered := false
	m.call(func() {
		m.subs[s] = struct{}{}
		registered = true
	})
	if !registered {
		return nil, errRunnerClosed
	}
	go func() {
		s.run(ctx, m.done)
		m.call(func() { delete(m.subs, s) })
	}()
	return s.out, nil
}

func (m *monitor) markStopping(name string) {
	m.mu.Lock()
	m.stopping[name] = true
	m.mu.Unlock()
}

func (m *monitor) isStopping(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopping[name]
}

func (m *monitor) lastExit(name string) (exitRecord, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.exits[name]
	return rec, ok
}

func (m *monitor) remember(name string, id units.Identity) {
	m.mu.Lock()
	m.idents[name] = id
	m.mu.Unlock()
}

// knownIdentity returns the cached identity of name.
func (m *monitor) knownIdentity(name string) (units.Identity, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.idents[name]
	return id, ok
}

// waitTerminal returns a channel closed when name is next seen inactive,
// failed, exited or removed, and a func to withdraw the wait.
func (m *monitor) waitTerminal(name string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	m.mu.Lock()
	m.waiters[name] = append(m.waiters[name], ch)
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		ws := m.waiters[name]
		for i, w := range ws {
			if w == ch {
				m.waiters[name] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(m.waiters[name]) == 0 {
			delete(m.waiters, name)
		}
	}
}

func (m *monitor) wake(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ch := range m.waiters[name] {
		close(ch)
	}
	delete(m.waiters, name)
}

// subscriber queues events for one Watch without bound, so a slow reader
// never stalls the monitor (and with it Stop's wake-ups).
type subscriber struct {
	mu    sync.Mutex
	queue []units.Event
	wake  chan struct{}
	out   chan units.Event
}

func (s *subscriber) push(e units.Event) {
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) run(ctx context.Context, closed <-chan struct{}) {
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			select {
			case s.out <- e:
				continue
			case <-ctx.Done():
				return
			case <-closed:
				return
			}
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		case <-closed:
			return
		}
	}
}

var errRunnerClosed = errors.New("systemd runner: closed")
