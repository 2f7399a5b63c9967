package unitstest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// FakePIDBase is the first pid a Fake hands out. It is above the kernel's
// largest pid_max (2^22), so no real process ever has a fake pid and a
// stray kill(2) on one fails harmlessly.
const FakePIDBase = 1 << 23

// Fake is an in-memory units.Runner for orchestration tests: no process is
// started. Instances run until the test ends them with Exit, or until Stop
// or Signal does. Every call is recorded (Calls). It works inside
// testing/synctest bubbles when created there (grace windows are timers).
//
// Stop semantics: an instance exits on the stop signal at once (Exit{-1,
// sig}), unless IgnoreStop was set or sig is 0; then Stop waits for an Exit
// call up to the grace window and "SIGKILLs" it (Exit{-1, SIGKILL}), or with
// Grace.Indefinite until ctx ends. Signal ends an instance on SIGKILL, and
// on SIGTERM, SIGINT, SIGHUP and SIGQUIT unless it ignores stops; other
// signals are only recorded.
//
// A Fake does not model process trees, PIDs beyond MainPID, memory or
// setsid escapees.
type Fake struct {
	app string
	w   *fakeWorld
}

// fakeWorld is the state that Reopen shares, as a systemd manager outlives
// a daemon.
type fakeWorld struct {
	mu         sync.Mutex
	insts      map[string]*fakeInst
	nextPID    int
	startErr   map[string]error
	ignoreStop map[string]bool
	calls      []FakeCall
	subs       map[*fakeSub]struct{}
}

type fakeInst struct {
	name     string
	id       units.Identity
	env      []string // the environment as started (Status.Env)
	pid      int
	started  time.Time
	stopping bool
	stopSig  syscall.Signal
	exit     *units.Exit
	done     chan struct{} // closed on exit; replaced on start
	logs     []units.LogLine
	capacity int
	seq      int           // lines ever added
	grew     chan struct{} // closed and replaced when lines are added
}

// FakeCall is one recorded Start, Stop or Signal.
type FakeCall struct {
	Op     string // "start", "stop" or "signal"
	Name   string
	Spec   units.Spec // for "start"
	Signal syscall.Signal
	Grace  units.Grace // for "stop"
	At     time.Time
}

var _ units.Runner = (*Fake)(nil)

// NewFake returns an empty fake runner for app.
func NewFake(app string) *Fake {
	return &Fake{app: app, w: &fakeWorld{
		insts:      make(map[string]*fakeInst),
		nextPID:    FakePIDBase,
		startErr:   make(map[string]error),
		ignoreStop: make(map[string]bool),
		subs:       make(map[*fakeSub]struct{}),
	}}
}

// Reopen returns a second runner over the same instances, as after a daemon
// restart with the systemd runner (re-adoption).
func (f *Fake) Reopen() *Fake { return &Fake{app: f.app, w: f.w} }

// FailStart makes every Start of name fail with err (wrapped) and start
// nothing; nil clears it.
func (f *Fake) FailStart(name string, err error) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	if err == nil {
		delete(f.w.startErr, name)
	} else {
		f.w.startErr[name] = err
	}
}

// IgnoreStop makes name ignore stop signals (see Fake).
func (f *Fake) IgnoreStop(name string, ignore bool) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	f.w.ignoreStop[name] = ignore
}

// Exit ends the running instance name with e, as if its main process had
// exited, and emits EventExited.
func (f *Fake) Exit(name string, e units.Exit) error {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	in := f.w.insts[name]
	if in == nil || in.exit != nil {
		return fmt.Errorf("fake exit %s: not running", name)
	}
	f.w.exitLocked(in, e)
	return nil
}

// SendStatus emits EventStatus for the running instance name, as if it had
// sent sd_notify STATUS=text.
func (f *Fake) SendStatus(name, text string) error {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	in := f.w.insts[name]
	if in == nil || in.exit != nil {
		return fmt.Errorf("fake status %s: not running", name)
	}
	f.w.publishLocked(units.Event{Kind: units.EventStatus, Name: name, Identity: in.id, PID: in.pid, At: time.Now(), Status: text})
	return nil
}

// Output appends lines to the instance's log.
func (f *Fake) Output(name string, stream units.Stream, lines ...string) error {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	in := f.w.insts[name]
	if in == nil {
		return fmt.Errorf("fake output %s: %w", name, units.ErrNotFound)
	}
	now := time.Now()
	for _, l := range lines {
		in.logs = append(in.logs, units.LogLine{At: now, Line: l, Stream: stream})
	}
	in.seq += len(lines)
	if over := len(in.logs) - in.capacity; over > 0 {
		in.logs = slices.Delete(in.logs, 0, over)
	}
	close(in.grew)
	in.grew = make(chan struct{})
	return nil
}

// Calls returns the recorded calls, oldest first.
func (f *Fake) Calls() []FakeCall {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return slices.Clone(f.w.calls)
}

// Kind returns "fake".
func (f *Fake) Kind() string { return "fake" }

// Start records the call and starts the instance (no process).
func (f *Fake) Start(ctx context.Context, spec units.Spec) (units.Status, error) {
	if spec.Identity.Replicas < 1 {
		spec.Identity.Replicas = 1
	}
	name := spec.Identity.UnitName()
	if err := ctx.Err(); err != nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}
	if spec.Identity.App != f.app {
		return units.Status{}, fmt.Errorf("start %s: Identity.App %q is not %q", name, spec.Identity.App, f.app)
	}
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	w.calls = append(w.calls, FakeCall{Op: "start", Name: name, Spec: spec, At: now})
	if err := w.startErr[name]; err != nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}
	in := w.insts[name]
	if in != nil && in.exit == nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, units.ErrAlreadyRunning)
	}
	if in == nil {
		in = &fakeInst{name: name, grew: make(chan struct{})}
		w.insts[name] = in
	}
	in.capacity = spec.OutputLines
	if in.capacity <= 0 {
		in.capacity = 50
	}
	in.id, in.pid, in.started = spec.Identity, w.nextPID, now
	in.env = units.WithIdentityEnv(spec.Env, spec.Identity)
	in.stopping, in.stopSig, in.exit, in.done = false, 0, nil, make(chan struct{})
	w.nextPID++
	w.publishLocked(units.Event{Kind: units.EventStarted, Name: name, Identity: in.id, PID: in.pid, At: now})
	return in.statusLocked(), nil
}

// Stop records the call and ends the instance (see Fake).
func (f *Fake) Stop(ctx context.Context, name string, sig syscall.Signal, grace units.Grace) error {
	w := f.w
	w.mu.Lock()
	w.calls = append(w.calls, FakeCall{Op: "stop", Name: name, Signal: sig, Grace: grace, At: time.Now()})
	in := w.insts[name]
	if in == nil || in.exit != nil {
		w.mu.Unlock()
		return nil
	}
	in.stopping, in.stopSig = true, sig
	if sig != 0 && !w.ignoreStop[name] {
		w.exitLocked(in, units.Exit{Code: -1, Signal: sig})
		w.mu.Unlock()
		return nil
	}
	done := in.done
	w.mu.Unlock()

	var timeout <-chan time.Time
	if !grace.Indefinite {
		t := time.NewTimer(grace.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", name, ctx.Err())
	case <-timeout:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if in.exit == nil && in.done == done {
		w.exitLocked(in, units.Exit{Code: -1, Signal: syscall.SIGKILL})
	}
	return nil
}

// Signal records the call and may end the instance (see Fake).
func (f *Fake) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, FakeCall{Op: "signal", Name: name, Signal: sig, At: time.Now()})
	in := w.insts[name]
	if in == nil {
		return fmt.Errorf("signal %s: %w", name, units.ErrNotFound)
	}
	if in.exit != nil {
		return fmt.Errorf("signal %s: not running", name)
	}
	fatal := sig == syscall.SIGTERM || sig == syscall.SIGINT || sig == syscall.SIGHUP || sig == syscall.SIGQUIT
	if sig == syscall.SIGKILL || fatal && !w.ignoreStop[name] {
		w.exitLocked(in, units.Exit{Code: -1, Signal: sig})
	}
	return nil
}

// Status reports one instance.
func (f *Fake) Status(ctx context.Context, name string) (units.Status, error) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	in := f.w.insts[name]
	if in == nil {
		return units.Status{}, fmt.Errorf("status %s: %w", name, units.ErrNotFound)
	}
	return in.statusLocked(), nil
}

// List returns app's instances sorted by name.
func (f *Fake) List(ctx context.Context, app string) ([]units.Status, error) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	var out []units.Status
	for _, in := range f.w.insts {
		if in.id.App == app {
			out = append(out, in.statusLocked())
		}
	}
	slices.SortFunc(out, func(a, b units.Status) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Watch streams this application's events until ctx ends; events are never
// dropped (an unbounded queue per subscriber).
func (f *Fake) Watch(ctx context.Context) (<-chan units.Event, error) {
	s := &fakeSub{app: f.app, wake: make(chan struct{}, 1)}
	f.w.mu.Lock()
	f.w.subs[s] = struct{}{}
	f.w.mu.Unlock()
	out := make(chan units.Event)
	go func() {
		defer close(out)
		defer func() {
			f.w.mu.Lock()
			delete(f.w.subs, s)
			f.w.mu.Unlock()
		}()
		for {
			f.w.mu.Lock()
			batch := s.queue
			s.queue = nil
			f.w.mu.Unlock()
			for _, ev := range batch {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-s.wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Logs returns up to n newest lines (n <= 0: all).
func (f *Fake) Logs(ctx context.Context, name string, n int) ([]units.LogLine, error) {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	in := f.w.insts[name]
	if in == nil {
		return nil, fmt.Errorf("logs %s: %w", name, units.ErrNotFound)
	}
	if n <= 0 || n > len(in.logs) {
		n = len(in.logs)
	}
	return slices.Clone(in.logs[len(in.logs)-n:]), nil
}

// Follow calls fn for each line added by Output from now on until ctx ends.
func (f *Fake) Follow(ctx context.Context, name string, fn func(units.LogLine)) error {
	f.w.mu.Lock()
	in := f.w.insts[name]
	if in == nil {
		f.w.mu.Unlock()
		return fmt.Errorf("follow %s: %w", name, units.ErrNotFound)
	}
	seq, grew := in.seq, in.grew
	f.w.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-grew:
		}
		f.w.mu.Lock()
		n := min(in.seq-seq, len(in.logs)) // lines trimmed meanwhile are lost
		fresh := slices.Clone(in.logs[len(in.logs)-n:])
		seq, grew = in.seq, in.grew
		f.w.mu.Unlock()
		for _, l := range fresh {
			fn(l)
		}
	}
}

// Close does nothing: like systemd units, fake instances outlive the
// runner (see Reopen).
func (f *Fake) Close() error { return nil }

type fakeSub struct {
	app   string
	queue []units.Event // guarded by fakeWorld.mu
	wake  chan struct{}
}

func (w *fakeWorld) publishLocked(ev units.Event) {
	for s := range w.subs {
		if s.app != ev.Identity.App {
			continue
		}
		s.queue = append(s.queue, ev)
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (w *fakeWorld) exitLocked(in *fakeInst, e units.Exit) {
	in.exit = &e
	close(in.done)
	w.publishLocked(units.Event{Kind: units.EventExited, Name: in.name, Identity: in.id, PID: in.pid, Exit: e, At: time.Now()})
}

func (in *fakeInst) statusLocked() units.Status {
	st := units.Status{Name: in.name, Identity: in.id, StartedAt: in.started, Env: slices.Clone(in.env)}
	switch {
	case in.exit != nil:
		e := *in.exit
		st.Exit = &e
		st.State = units.StateFailed
		if e.Signal == 0 && e.Code == 0 || in.stopping && e.Signal != 0 && e.Signal == in.stopSig {
			st.State = units.StateExited
		}
	case in.stopping:
		st.State, st.MainPID, st.PIDs = units.StateStopping, in.pid, []int{in.pid}
	default:
		st.State, st.MainPID, st.PIDs = units.StateRunning, in.pid, []int{in.pid}
	}
	return st
}

// ErrFakeStart is a ready-made error for FailStart.
var ErrFakeStart = errors.New("fake start failure")
