package release

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// Detach stops supervising so a new daemon process can take over the units
// (zero-downtime daemon re-exec): it waits for a running deploy, rollback,
// stop or restart to finish and then holds the operation lock, ignores exit
// events, and cancels pending crash restarts and memory samplers. Units keep
// running. resume undoes it (when the handover fails): supervision restarts
// and any instance that ended meanwhile is handled as a crash.
func (m *Manager) Detach(ctx context.Context) (resume func(), err error) {
	for {
		release, err := m.begin("a daemon reload")
		if err == nil {
			m.detach()
			return func() { m.reattach(); release() }, nil
		}
		if !errors.Is(err, ErrBusy) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *Manager) all() []*instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []*instance
	all = append(all, m.services...)
	all = append(all, m.singletons...)
	for _, r := range m.releases {
		all = append(all, r.list()...)
	}
	return all
}

func (m *Manager) detach() {
	m.mu.Lock()
	m.detached = true
	m.mu.Unlock()
	for _, in := range m.all() {
		in.mu.Lock()
		in.idleTimersLocked()
		in.mu.Unlock()
	}
}

func (m *Manager) reattach() {
	m.mu.Lock()
	m.detached = false
	m.mu.Unlock()
	for _, in := range m.all() {
		in.mu.Lock()
		unit, pid := in.unit, in.pid
		if pid != 0 {
			in.startSamplerLocked()
			in.armRecycleLocked()
		}
		in.mu.Unlock()
		if pid == 0 {
			continue
		}
		st, err := m.runner.Status(m.ctx, unit)
		if err != nil || st.MainPID == 0 {
			exit := units.Exit{Code: -1}
			if err == nil && st.Exit != nil {
				exit = *st.Exit
			}
			in.onExit(units.Event{Kind: units.EventExited, Name: unit, PID: pid, Exit: exit, At: m.now()})
		}
	}
}

// Quiesce prepares a retiring owner (spec §3.7 step 3): refuse further
// deploys, cancel pending restarts and memory samplers, mark every instance
// — services, singletons, registered releases and releases still starting —
// as stopping on request and run its quietCommand (bounded), in parallel.
// Shutdown then does the full graceful stop.
func (m *Manager) Quiesce(ctx context.Context) {
	m.markStopping()
	all := m.all()
	m.mu.Lock()
	for r := range m.starting {
		all = append(all, r.list()...)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, in := range all {
		in.mu.Lock()
		in.idleTimersLocked()
		in.stopRequested = true
		in.quieted = true
		live, def, env, cwd, pid := in.pid != 0, in.def.Load(), in.built.Env, in.built.Cwd, in.pid
		in.mu.Unlock()
		if !live || def.Lifecycle.QuietCommand == "" {
			continue
		}
		bound := def.GracefulStop.Timeout
		if def.GracefulStop.Indefinite {
			bound = 30 * time.Second
		}
		wg.Go(func() {
			newHookRunner(in, def, env, cwd, pid).run(ctx, "quiet command", def.Lifecycle.QuietCommand, bound)
		})
	}
	wg.Wait()
}
