// Package release is Rollbridge's orchestration: the deploy, rollback,
// stop, restart and shutdown flows of spec §3, the release registry, the
// four process policies and crash supervision. It drives processes through
// a units.Runner and traffic through the Traffic interface (implemented by
// the proxy), and knows nothing about sockets or the CLI.
package release

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
)

// Traffic is what the manager needs from the proxy.
type Traffic interface {
	// Switch routes new requests to the upstreams (host:port) of release.
	// Switching again to the active release only changes its pool (a
	// replica joined or left): nothing in flight is affected.
	Switch(release string, route Route)
	// Clear leaves the proxy without an active release (503s).
	Clear()
	// Connections reports in-flight HTTP exchanges and open WebSockets.
	Connections(release string) (http, websocket int)
	// UpstreamConnections reports them per upstream address.
	UpstreamConnections(release string) map[string]Connections
	// Drain waits until release has no connections or deadline passes.
	Drain(ctx context.Context, release string, deadline time.Time)
	// DrainUpstream waits until release has nothing in flight on upstream,
	// which the route no longer contains, or deadline passes (then what is
	// left is cut).
	DrainUpstream(ctx context.Context, release, upstream string, deadline time.Time)
	// Forget drops a stopped release's counters.
	Forget(release string)
}

// Route is a release's pool of proxied replicas and how the proxy picks
// among them.
type Route struct {
	Upstreams  []string
	Balance    config.Balance
	Stickiness *config.Stickiness
}

// HealthChecker probes url until healthy per h (spec §4.10).
type HealthChecker func(ctx context.Context, url string, h config.Health) error

// Options wires a Manager.
type Options struct {
	// Config is the config the daemon started with.
	Config *config.Config
	// Reload re-evaluates the config file before every deploy/rollback.
	Reload  func(ctx context.Context) (*config.Config, error)
	Runner  units.Runner
	Traffic Traffic
	Health  HealthChecker
	Events  *Events
	// Env is the daemon's environment, the base of every instance's.
	Env []string
	// OnChange is called after a successful deploy, a stop and a finished
	// drain (the daemon persists its state then, spec §8.1).
	OnChange func()
	Logger   *slog.Logger
	Now      func() time.Time
}

// Manager owns the releases, services and singletons of one application.
type Manager struct {
	runner   units.Runner
	traffic  Traffic
	health   HealthChecker
	reload   func(ctx context.Context) (*config.Config, error)
	events   *Events
	env      []string
	onChange func()
	log      *slog.Logger
	now      func() time.Time

	// ctx lives as long as Run; restarts started by timers use it.
	ctx context.Context

	// op serializes deploy/rollback/stop/restart (spec §11.2-1).
	op     chan struct{}
	opMu   sync.Mutex
	opDesc string

	// routeMu orders every traffic switch, so a pool computed from the
	// instances is never overtaken by an older one.
	routeMu sync.Mutex

	mu         sync.Mutex
	cfg        *config.Config
	releases   []*releaseRec
	active     *releaseRec
	starting   map[*releaseRec]struct{}
	services   []*instance // persistent services, first-start order
	singletons []*instance // current instance per singleton id, config order
	byUnit     map[string]*instance
	stopping   bool
	// detached: a new daemon process is taking over; exits are not acted on.
	detached bool
	// stopCh is closed when the manager starts stopping, aborting a deploy
	// that waits (health check) so shutdown is not held up by it.
	stopCh   chan struct{}
	stopOnce sync.Once

	// retiring tracks background retirements so Shutdown can wait.
	retiring sync.WaitGroup
	shutOnce sync.Once
	shutErr  error
}

// New returns a Manager. Call Run before any operation.
func New(opts Options) (*Manager, error) {
	if opts.Config == nil || opts.Runner == nil || opts.Traffic == nil {
		return nil, errors.New("release manager needs a config, a runner and a traffic switcher")
	}
	m := &Manager{
		runner: opts.Runner, traffic: opts.Traffic, health: opts.Health, reload: opts.Reload,
		events: opts.Events, env: opts.Env, onChange: opts.OnChange, log: opts.Logger, now: opts.Now,
		op: make(chan struct{}, 1), cfg: opts.Config,
		starting: map[*releaseRec]struct{}{}, byUnit: map[string]*instance{}, stopCh: make(chan struct{}),
		ctx: context.Background(),
	}
	if m.events == nil {
		m.events = NewEvents(nil, nil)
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.onChange == nil {
		m.onChange = func() {}
	}
	if m.reload == nil {
		m.reload = func(context.Context) (*config.Config, error) { return m.config(), nil }
	}
	return m, nil
}

// Run dispatches the runner's exit events to instances until ctx ends, and
// prunes releases past releaseRetention.maxAgeMs until ctx ends or Shutdown
// begins. It returns once the watch is established (both loops run in the
// background, owned by ctx).
func (m *Manager) Run(ctx context.Context) error {
	events, err := m.runner.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watch %s runner: %w", m.runner.Kind(), err)
	}
	m.ctx = ctx
	go m.pruneLoop(ctx)
	go func() {
		for ev := range events {
			if ev.Kind != units.EventExited && ev.Kind != units.EventStatus {
				continue
			}
			m.mu.Lock()
			in := m.byUnit[ev.Name]
			detached := m.detached
			m.mu.Unlock()
			if in == nil || detached {
				continue
			}
			switch {
			case ev.Kind == units.EventExited:
				in.onExit(ev)
			case isReplaceRequest(ev.Status):
				go m.requestedReplace(in, ev.Status)
			}
		}
	}()
	return nil
}

// Events returns the event history.
func (m *Manager) Events() *Events { return m.events }

func (m *Manager) config() *config.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}

func (m *Manager) isStopping() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopping
}

func (m *Manager) track(unit string, in *instance) {
	m.mu.Lock()
	m.byUnit[unit] = in
	m.mu.Unlock()
}

func (m *Manager) untrack(unit string, in *instance) {
	m.mu.Lock()
	if m.byUnit[unit] == in {
		delete(m.byUnit, unit)
	}
	m.mu.Unlock()
}

// ErrBusy is returned when another deploy, rollback, stop or restart runs.
var ErrBusy = errors.New("deploy in progress")

// begin takes the operation lock or fails at once with ErrBusy.
func (m *Manager) begin(desc string) (func(), error) {
	select {
	case m.op <- struct{}{}:
	default:
		m.opMu.Lock()
		cur := m.opDesc
		m.opMu.Unlock()
		return nil, fmt.Errorf("%w: %s is running; wait for it to finish and retry", ErrBusy, cur)
	}
	m.opMu.Lock()
	m.opDesc = desc
	m.opMu.Unlock()
	return func() { <-m.op }, nil
}

// errShuttingDown is the spec's text for operations refused during shutdown.
var errShuttingDown = errors.New("Rollbridge is shutting down")

// daemonScope keeps persistent services wanted until shutdown.
type daemonScope struct{ m *Manager }

func (d daemonScope) wantsRunning() bool { return !d.m.isStopping() }

// releaseRec is one release in the registry (spec §1.2).
type releaseRec struct {
	m        *Manager
	id       string
	path     string
	revision string
	cfg      *config.Config

	mu             sync.Mutex
	state          string
	activatedAt    time.Time
	drainStartedAt time.Time
	stoppedAt      time.Time
	ports          map[string]int
	// instances in start order: handoff services, companions, proxied.
	instances []*instance
	// replacing serializes replica replacements (recycle, requested
	// restarts), so the pool never loses more than the one being replaced.
	replacing sync.Mutex
	// halted: a stop or shutdown of the release began; nothing of it may
	// start any more (guarded by mu).
	halted bool
}

// halt marks the release as being stopped before its instances are listed
// for stopping, so a replacement being prepared cannot add one unseen.
func (r *releaseRec) halt() {
	r.mu.Lock()
	r.halted = true
	r.mu.Unlock()
}

// route is the pool of rec's proxied replicas that are in rotation, in
// replica order.
func (r *releaseRec) route() Route {
	rt := Route{}
	if p := r.cfg.Proxied(); p != nil {
		rt.Balance, rt.Stickiness = p.Balance, p.Stickiness
	}
	var ins []*instance
	for _, in := range r.list() {
		if in.def.Load().Policy == config.Proxied {
			ins = append(ins, in)
		}
	}
	sort.SliceStable(ins, func(i, j int) bool { return ins[i].replica < ins[j].replica })
	for _, in := range ins {
		if u, ok := in.upstream(); ok {
			rt.Upstreams = append(rt.Upstreams, u)
		}
	}
	return rt
}

// reroute gives the proxy rec's current pool, if rec is the active release
// and some replica is in rotation (an empty pool keeps the last one: its
// requests fail either way, and a replica coming back restores it).
func (m *Manager) reroute(rec *releaseRec) {
	m.routeMu.Lock()
	defer m.routeMu.Unlock()
	rt := rec.route() // before m.mu: instances lock in.mu, which is taken before m.mu elsewhere
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active != rec || m.stopping || len(rt.Upstreams) == 0 {
		return
	}
	m.traffic.Switch(rec.id, rt)
}

const (
	relStarting = "starting"
	relActive   = "active"
	relDraining = "draining"
	relStopped  = "stopped"
	relFailed   = "failed"
)

func (r *releaseRec) wantsRunning() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return (r.state == relStarting || r.state == relActive) && !r.halted
}

func (r *releaseRec) getState() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *releaseRec) setState(s string) {
	r.mu.Lock()
	r.state = s
	switch s {
	case relActive:
		r.activatedAt = r.m.now()
	case relDraining:
		r.drainStartedAt = r.m.now()
	case relStopped:
		r.stoppedAt = r.m.now()
	}
	r.mu.Unlock()
}

func (r *releaseRec) list() []*instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*instance(nil), r.instances...)
}

// stopAll stops instances in parallel (all-settled) and joins the errors.
func stopAll(ctx context.Context, ins []*instance) error {
	errs := make([]error, len(ins))
	var wg sync.WaitGroup
	for i, in := range ins {
		wg.Go(func() { errs[i] = in.stop(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// releaseIDFromTime is the spec's default id: the UTC ISO timestamp with
// every non-digit removed (17 digits).
func releaseIDFromTime(t time.Time) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, Timestamp(t))
}

// markStopping refuses further operations and aborts a waiting deploy.
func (m *Manager) markStopping() {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	m.stopOnce.Do(func() { close(m.stopCh) })
}

// untilStopping derives a context that ends when the manager starts
// stopping.
func (m *Manager) untilStopping(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-m.stopCh:
			cancel(errShuttingDown)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}
