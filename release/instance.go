package release

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
)

// Process instance states (spec §1.7).
const (
	stateStopped  = "stopped"
	stateStarting = "starting"
	stateRunning  = "running"
	stateStopping = "stopping"
	stateFailed   = "failed"
)

// Start reasons (spec §1.6).
const (
	reasonDeploy = "deploy"
	reasonCrash  = "crash"
	reasonManual = "manual"
	reasonMemory = "memory"
)

// scope is what an instance belongs to: it decides whether a crash may be
// restarted and which release id tags its events.
type scope interface {
	// wantsRunning reports whether the supervising context still wants the
	// process (release starting/active, daemon not stopping).
	wantsRunning() bool
}

// instance supervises one managed process instance through the runner. Its
// fields are guarded by mu; the runner's exit events, restart timers and the
// manager's calls all go through its methods.
type instance struct {
	m       *Manager
	id      string // user-visible instance id ("worker#0")
	replica int
	scope   scope

	mu sync.Mutex
	// def is the current definition; refresh swaps it without touching the
	// running process (spec §1.4 persistent services, §2.15).
	def atomic.Pointer[config.Process]
	// rc is the release context the instance is rendered in.
	rc config.ReleaseContext
	// built is the rendered command/cwd/env of the current definition.
	built config.Instance
	// unit is the runner name of the current (or last) incarnation.
	unit string
	// port is the instance's own port (0: none). generation numbers the
	// incarnations of a proxied replica slot that were started side by side
	// (replacements: recycle, requested restarts); it is part of the unit
	// name, so old and new can run at once.
	port       int
	generation int
	// inRotation: a proxied replica that passed its readiness checks and
	// has not exited since; only those are in the release's pool.
	inRotation bool

	state           string
	pid             int
	startedAt       time.Time
	lastStartReason string
	exited          bool
	exit            units.Exit
	restarts        int
	restartTimes    []time.Time
	restartTimer    *time.Timer
	stopRequested   bool
	// stopDone is closed when the stop in progress finishes; concurrent
	// stops share it (spec §5.5 step 1: shared quiesce).
	stopDone chan struct{}
	// earlyExit holds an exit event that arrived before Start returned the
	// pid (a command that dies at once).
	earlyExit *units.Event
	// pidUnknown: the current incarnation started but ended before the
	// runner could report its pid (systemd: the unit was gone when the
	// start job completed). Its exit event still belongs to it.
	pidUnknown bool
	// exitSeen is closed once the current incarnation's exit has been
	// handled (and "process exited" emitted), so a stop can wait for it.
	exitSeen chan struct{}

	// quieted: Quiesce already ran the quiet hook of this incarnation.
	quieted bool

	// recycleTimer fires the next scheduled recycle (config recycle).
	recycleTimer *time.Timer
	// replaceRequested: this incarnation asked to be replaced (sd_notify
	// STATUS=rollbridge:replace) and that is being handled.
	replaceRequested bool

	// Memory supervision (memory.go).
	samplerCancel       context.CancelFunc
	memoryRestarting    bool
	warned              bool
	rssBytes            uint64
	children            []Child
	memoryRestarts      int
	lastMemoryRestartAt time.Time
}

func newInstance(m *Manager, def *config.Process, rc config.ReleaseContext, replica int, sc scope) (*instance, error) {
	return newInstanceGen(m, def, rc, replica, 0, sc)
}

// newInstanceGen builds generation gen of a replica slot (see
// instance.generation).
func newInstanceGen(m *Manager, def *config.Process, rc config.ReleaseContext, replica, gen int, sc scope) (*instance, error) {
	in := &instance{m: m, id: def.InstanceID(replica), replica: replica, generation: gen, scope: sc, rc: rc, state: stateStopped}
	in.def.Store(def)
	if err := in.render(); err != nil {
		return nil, err
	}
	return in, nil
}

// render builds command/cwd/env from the current definition and context.
func (in *instance) render() error {
	built, err := in.def.Load().Build(in.rc, in.replica)
	if err != nil {
		return err
	}
	in.built = built
	in.port = 0
	if built.HasPort {
		in.port = built.Port
	}
	in.unit = in.identity().UnitName()
	return nil
}

func (in *instance) identity() units.Identity {
	id := in.def.Load().Identity(in.rc.Application, in.rc.ReleaseID, in.replica)
	id.Generation = in.generation
	return id
}

// upstream is the proxy address of a proxied replica in rotation.
func (in *instance) upstream() (string, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.inRotation || in.port == 0 {
		return "", false
	}
	return net.JoinHostPort(in.rc.Proxy.UpstreamHost, strconv.Itoa(in.port)), true
}

// inPool reports whether a proxied replica is in its release's pool.
func (in *instance) inPool() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.inRotation
}

// setInRotation marks a proxied replica ready (or not) for traffic; it
// reports whether that changed anything. A replica whose process is gone
// cannot join.
func (in *instance) setInRotation(on bool) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if on && in.pid == 0 && !in.pidUnknown {
		return false
	}
	changed := in.inRotation != on
	in.inRotation = on
	return changed
}

// release returns the release a proxied replica belongs to, or nil.
func (in *instance) release() *releaseRec {
	if in.def.Load().Policy != config.Proxied {
		return nil
	}
	rec, _ := in.scope.(*releaseRec)
	return rec
}

// rejoin puts a proxied replica that was (re)started outside a deploy back
// into its release's pool once it passes its readiness checks. One that
// fails them is stopped and handled like a crash.
func (in *instance) rejoin(ctx context.Context) {
	rec := in.release()
	if rec == nil {
		return
	}
	if err := in.m.checkReady(ctx, in); err != nil {
		in.emit("replica health check failed", map[string]any{"error": err.Error(), "id": in.id})
		_ = in.stop(ctx)
		in.mu.Lock()
		in.stopRequested = false
		in.mu.Unlock()
		if rec.wantsRunning() && !in.m.isStopping() {
			in.scheduleRestart()
		}
		return
	}
	if in.setInRotation(true) {
		in.m.reroute(rec)
		if in.def.Load().Replicas > 1 {
			in.emit("replica in rotation", map[string]any{"id": in.id})
		}
	}
}

// refresh replaces the definition (and release context) used by the next
// start; the running process is left alone.
func (in *instance) refresh(def *config.Process, rc config.ReleaseContext) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	oldDef, oldRC, oldBuilt, oldUnit := in.def.Load(), in.rc, in.built, in.unit
	in.def.Store(def)
	in.rc = rc
	if err := in.render(); err != nil {
		in.def.Store(oldDef)
		in.rc, in.built, in.unit = oldRC, oldBuilt, oldUnit
		return err
	}
	if in.pid != 0 {
		// Keep addressing the running incarnation until it exits.
		in.unit = oldUnit
	}
	return nil
}

// releaseID is the release that tags this instance's events.
func (in *instance) releaseID() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.rc.ReleaseID
}

func (in *instance) emit(message string, data map[string]any) {
	in.mu.Lock()
	rel := in.rc.ReleaseID
	in.mu.Unlock()
	in.emitFor(rel, message, data)
}

func (in *instance) emitFor(rel, message string, data map[string]any) {
	if data == nil {
		data = map[string]any{}
	}
	data["processId"] = in.id
	data["releaseId"] = rel
	in.m.events.Emit(message, data)
}

// start launches the instance with reason. Starting an instance that has a
// live process is a no-op (spec §5.1).
func (in *instance) start(ctx context.Context, reason string) error {
	in.mu.Lock()
	if in.pid != 0 || in.state == stateStarting {
		in.mu.Unlock()
		return nil
	}
	if in.pid == 0 {
		// A new incarnation is addressed by the current definition's unit.
		in.unit = in.identity().UnitName()
	}
	in.state = stateStarting
	if reason == reasonDeploy {
		// A deploy reviving a failed persistent service (a Go addition,
		// spec §11.2-6) gives it a fresh crash budget: the crashes that
		// exhausted the old one must not fail it again at its first new
		// crash. A manual restart keeps the history (spec §6.7).
		in.restartTimes = nil
	}
	in.stopRequested = false
	in.replaceRequested = false
	in.quieted = false
	in.earlyExit = nil
	spec := in.specLocked()
	unit := in.unit
	in.m.track(unit, in)
	in.mu.Unlock()

	st, err := in.m.runner.Start(ctx, spec)
	in.mu.Lock()
	if err != nil {
		// No start reason is recorded for a spawn failure (spec §5.1); a
		// later start tries again (unlike the original, §11.2-5).
		in.state = stateFailed
		in.mu.Unlock()
		in.m.untrack(unit, in)
		return fmt.Errorf("start %s (unit %s): %w", in.id, unit, err)
	}
	in.pid = st.MainPID
	in.pidUnknown = st.MainPID == 0
	in.exitSeen = make(chan struct{})
	in.startedAt = in.m.now()
	in.lastStartReason = reason
	in.state = stateRunning
	in.startSamplerLocked()
	in.armRecycleLocked()
	early := in.earlyExit
	in.earlyExit = nil
	pid := in.pid
	in.mu.Unlock()
	// No command: events must not carry secrets (it may embed env values);
	// status shows the current definition's command.
	in.emit("process started", map[string]any{"id": in.id, "pid": pid, "reason": reason})
	if early != nil && (early.PID == 0 || pid == 0 || early.PID == pid) {
		in.onExit(*early)
	}
	return nil
}

func (in *instance) specLocked() units.Spec {
	spec := units.Spec{
		Identity:    in.identity(),
		Command:     in.built.Command,
		Dir:         in.built.Cwd,
		Env:         in.built.Env,
		StopSignal:  in.def.Load().StopSignal,
		Grace:       in.def.Load().GracefulStop,
		OutputLines: in.def.Load().OutputLines,
		User:        in.def.Load().User,
		Group:       in.def.Load().Group,
	}
	if m := in.def.Load().Memory; m != nil {
		spec.MemoryMax = m.MaxBytes
	}
	if h := in.def.Load().Health; h != nil && h.Notify {
		// health.startDelayMs + timeoutMs bound the wait for READY=1.
		spec.Notify, spec.StartTimeout = true, max(h.StartDelay+h.Timeout, time.Second)
	}
	return spec
}

// onExit handles the runner's exit event for this instance's unit.
func (in *instance) onExit(ev units.Event) {
	in.mu.Lock()
	if in.state == stateStarting {
		// Start has not returned the pid yet; let it handle the exit.
		e := ev
		in.earlyExit = &e
		in.mu.Unlock()
		return
	}
	if (in.pid == 0 && !in.pidUnknown) || (in.pid != 0 && ev.PID != 0 && ev.PID != in.pid) {
		// An exit of an earlier incarnation, or one already handled.
		in.mu.Unlock()
		return
	}
	in.pid, in.pidUnknown = 0, false
	leftRotation := in.inRotation
	in.inRotation = false
	seen := in.exitSeen
	in.exitSeen = nil
	in.exited = true
	in.exit = ev.Exit
	in.stopSamplerLocked()
	in.disarmRecycleLocked()
	in.rssBytes, in.children = 0, nil
	requested := in.stopRequested
	if requested {
		in.state = stateStopped
	} else {
		in.state = stateFailed
	}
	in.mu.Unlock()

	in.emit("process exited", map[string]any{"code": exitCode(ev.Exit), "id": in.id, "signal": exitSignal(ev.Exit)})
	if rec := in.release(); leftRotation && rec != nil {
		// Out of the pool at once: new requests go to the live replicas.
		in.m.reroute(rec)
		if in.def.Load().Replicas > 1 {
			in.emit("replica out of rotation", map[string]any{"id": in.id})
		}
	}
	if seen != nil {
		close(seen)
	}
	if !requested && in.scope.wantsRunning() && !in.m.isStopping() {
		in.scheduleRestart()
	}
}

func exitCode(e units.Exit) any {
	if e.Signal != 0 || e.Code < 0 {
		return nil
	}
	return e.Code
}

func exitSignal(e units.Exit) any {
	if e.Signal == 0 {
		return nil
	}
	return e.SignalName()
}

// restartDelay implements spec §5.4 delayFor(n).
func restartDelay(def *config.Process, n int) time.Duration {
	d := float64(def.RestartDelay) * math.Pow(def.Restart.BackoffFactor, float64(n))
	if def.Restart.MaxDelay > 0 && d > float64(def.Restart.MaxDelay) {
		return def.Restart.MaxDelay
	}
	if d > float64(math.MaxInt64) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

// scheduleRestart applies the crash-restart policy (spec §5.4).
func (in *instance) scheduleRestart() {
	in.mu.Lock()
	def := in.def.Load()
	var delay time.Duration
	fast := def.Restart.MaxRestarts == nil && def.Restart.BackoffFactor == 1
	if fast {
		delay = restartDelay(def, 0)
	} else {
		now := in.m.now()
		if def.Restart.Window > 0 {
			kept := in.restartTimes[:0]
			for _, t := range in.restartTimes {
				if t.After(now.Add(-def.Restart.Window)) {
					kept = append(kept, t)
				}
			}
			in.restartTimes = kept
		}
		if def.Restart.MaxRestarts != nil && len(in.restartTimes) >= *def.Restart.MaxRestarts {
			in.mu.Unlock()
			in.emit("restart limit reached", map[string]any{
				"id": in.id, "maxRestarts": *def.Restart.MaxRestarts, "windowMs": def.Restart.Window.Milliseconds(),
			})
			return
		}
		delay = restartDelay(def, len(in.restartTimes))
		in.restartTimes = append(in.restartTimes, now)
	}
	if in.restartTimer != nil {
		in.restartTimer.Stop()
	}
	in.restartTimer = time.AfterFunc(delay, in.crashRestart)
	in.mu.Unlock()
}

func (in *instance) crashRestart() {
	in.mu.Lock()
	in.restartTimer = nil
	if in.stopRequested || in.pid != 0 {
		in.mu.Unlock()
		return
	}
	in.restarts++
	in.mu.Unlock()
	if !in.scope.wantsRunning() || in.m.isStopping() {
		return
	}
	ctx, cancel := context.WithTimeout(in.m.ctx, in.startBound())
	defer cancel()
	if err := in.start(ctx, reasonCrash); err != nil {
		in.emit("process restart failed", map[string]any{"error": err.Error(), "id": in.id})
		return
	}
	in.rejoin(in.m.ctx)
}

// exitEventWait bounds how long a finished stop waits for the runner's
// exit event.
const exitEventWait = 2 * time.Second

// startTimeout bounds one start job (the runner returns once exec happened).
const startTimeout = 60 * time.Second

// startBound bounds a start outside a deploy: startTimeout, or longer when
// the start waits for READY=1 (the runner enforces the readiness bound).
func (in *instance) startBound() time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	if h := in.def.Load().Health; h != nil && h.Notify {
		return max(startTimeout, h.StartDelay+h.Timeout+30*time.Second)
	}
	return startTimeout
}

// stop runs the graceful stop sequence (spec §5.5): hooks, then the stop
// signal (or stopCommand) to every process of the instance, the
// gracefulStopMs window, then SIGKILL. Concurrent stops share one run.
func (in *instance) stop(ctx context.Context) error {
	in.mu.Lock()
	in.stopRequested = true
	in.idleTimersLocked()
	if in.stopDone != nil {
		done := in.stopDone
		in.mu.Unlock()
		select {
		case <-done:
			// The stop we joined may have failed (its ctx ended); stop
			// again, which returns at once if the process is gone.
			return in.stop(ctx)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if in.pid == 0 {
		// Nothing runs; an exit event still in flight is the one asked for.
		in.pidUnknown = false
		if in.state != stateFailed || in.exited {
			in.state = stateStopped
		}
		in.mu.Unlock()
		return nil
	}
	in.state = stateStopping
	done := make(chan struct{})
	in.stopDone = done
	unit, pid := in.unit, in.pid
	def := in.def.Load()
	env := in.built.Env
	cwd := in.built.Cwd
	seen := in.exitSeen
	in.mu.Unlock()

	err := in.stopSequence(ctx, unit, pid, def, env, cwd)
	if err == nil && seen != nil {
		// The runner's exit event trails its Stop; let onExit record the
		// exit and emit "process exited" (spec §5.2: requested stops too)
		// before the state is settled below.
		t := time.NewTimer(exitEventWait)
		select {
		case <-seen:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}

	in.mu.Lock()
	if err == nil {
		// The runner has seen the unit go; the exit event may still be in
		// flight, so settle the state here.
		if in.pid == pid {
			in.pid = 0
		}
		in.state = stateStopped
		in.rssBytes, in.children = 0, nil
	}
	in.stopDone = nil
	in.mu.Unlock()
	close(done)
	if err != nil {
		return fmt.Errorf("stop %s (unit %s): %w", in.id, unit, err)
	}
	return nil
}

func (in *instance) stopSequence(ctx context.Context, unit string, pid int, def *config.Process, env []string, cwd string) error {
	hookTimeout := def.GracefulStop.Timeout
	if def.GracefulStop.Indefinite {
		hookTimeout = 30 * time.Second
	}
	hooks := newHookRunner(in, def, env, cwd, pid)
	in.mu.Lock()
	quieted := in.quieted
	in.mu.Unlock()
	if def.Lifecycle.QuietCommand != "" && !quieted {
		hooks.run(ctx, "quiet command", def.Lifecycle.QuietCommand, hookTimeout)
	}
	if def.Lifecycle.DrainTimeout > 0 && in.alive(ctx, unit) {
		if def.Lifecycle.DrainCommand != "" {
			hooks.run(ctx, "drain command", def.Lifecycle.DrainCommand, def.Lifecycle.DrainTimeout)
		} else {
			in.waitGone(ctx, unit, def.Lifecycle.DrainTimeout)
		}
	}
	sig := def.StopSignal
	if def.Lifecycle.StopCommand != "" {
		sig = 0
		if in.alive(ctx, unit) {
			hooks.run(ctx, "stop command", def.Lifecycle.StopCommand, hookTimeout)
		}
	}
	if !in.alive(ctx, unit) {
		sig = 0 // nothing left to signal (spec: no signal if the group already exited)
	}
	if def.GracefulStop.Indefinite {
		return in.m.runner.Stop(ctx, unit, sig, def.GracefulStop)
	}
	// Rollbridge owns the window so it can report the escalation (spec
	// §5.5 step 5) even when the runner would have escalated by itself.
	wctx, cancel := context.WithTimeout(ctx, def.GracefulStop.Timeout)
	err := in.m.runner.Stop(wctx, unit, sig, units.Grace{Indefinite: true})
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return err
	}
	in.emit("process stop timed out; sending SIGKILL", map[string]any{"id": in.id, "pid": pid})
	return in.m.runner.Stop(ctx, unit, syscall.SIGKILL, units.Grace{Timeout: units.KillWait})
}

// alive reports whether the unit still has a process.
func (in *instance) alive(ctx context.Context, unit string) bool {
	st, err := in.m.runner.Status(ctx, unit)
	if err != nil {
		return false
	}
	return len(st.PIDs) > 0 || st.MainPID != 0
}

// waitGone waits up to d for the unit's processes to exit by themselves.
func (in *instance) waitGone(ctx context.Context, unit string, d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for in.alive(ctx, unit) {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// isLive reports whether the instance has a running process.
func (in *instance) isLive() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.pid != 0
}

// idleTimersLocked stops what runs on a timer for a live instance: the
// memory sampler, the recycle timer and a pending crash restart.
func (in *instance) idleTimersLocked() {
	in.stopSamplerLocked()
	in.disarmRecycleLocked()
	if in.restartTimer != nil {
		in.restartTimer.Stop()
		in.restartTimer = nil
	}
}
