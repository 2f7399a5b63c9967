package release

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/config"
)

// retire drains and stops a release in the background (spec §3.2), with the
// config in force when it starts.
func (m *Manager) retire(rec *releaseRec) {
	// Mark it before the deploy replies, so status never shows the old
	// release still active next to the new one.
	if rec.getState() != relStopped {
		rec.setState(relDraining)
	}
	m.retiring.Add(1)
	go func() {
		defer m.retiring.Done()
		ctx := m.ctx
		if err := m.retireNow(ctx, rec); err != nil {
			m.events.Emit("release drain failed", map[string]any{"error": err.Error(), "releaseId": rec.id})
		} else {
			m.events.Emit("release drained", map[string]any{"releaseId": rec.id})
		}
		m.prune()
		if !m.isStopping() {
			m.onChange()
		}
	}()
}

func (m *Manager) retireNow(ctx context.Context, rec *releaseRec) error {
	if rec.getState() == relStopped {
		return nil
	}
	rec.setState(relDraining)
	cfg := m.config()
	// Re-apply definitions from the current config (spec §2.15): stop
	// signal, hooks, graceful window, nonBlockingDrain.
	for _, in := range rec.list() {
		if def := cfg.Process(in.def.Load().ID); def != nil {
			in.mu.Lock()
			in.def.Store(def)
			in.mu.Unlock()
		}
	}
	var nonBlocking, regular, handoff []*instance
	for _, in := range rec.list() {
		switch {
		case in.def.Load().NonBlockingDrain:
			nonBlocking = append(nonBlocking, in)
		case in.def.Load().Policy == config.Service:
			handoff = append(handoff, in)
		default:
			regular = append(regular, in)
		}
	}
	nbDone := make(chan error, 1)
	go func() { nbDone <- stopAll(ctx, nonBlocking) }()

	if h, ws := m.traffic.Connections(rec.id); h+ws > 0 {
		m.traffic.Drain(ctx, rec.id, m.now().Add(cfg.Proxy.DrainTimeout))
	}
	errs := []error{stopAll(ctx, regular), <-nbDone, stopAll(ctx, handoff)}
	rec.setState(relStopped)
	for _, in := range rec.list() {
		m.untrack(in.unit, in)
	}
	m.traffic.Forget(rec.id)
	return errors.Join(errs...)
}

// Stop stops a release (default: the active one) without draining (spec
// §3.4) and returns the status afterwards.
func (m *Manager) Stop(ctx context.Context, releaseID string) (Status, error) {
	if m.isStopping() {
		return Status{}, errShuttingDown
	}
	done, err := m.begin("a stop")
	if err != nil {
		return Status{}, err
	}
	defer done()
	m.mu.Lock()
	var rec *releaseRec
	if releaseID == "" {
		rec = m.active
	} else {
		for _, r := range m.releases {
			if r.id == releaseID {
				rec = r
			}
		}
	}
	if rec == nil {
		m.mu.Unlock()
		target := releaseID
		if target == "" {
			target = "active"
		}
		return Status{}, fmt.Errorf("Release not found: %s", target)
	}
	if rec == m.active {
		m.active = nil
		m.traffic.Clear()
	}
	m.mu.Unlock()
	rec.halt()
	stopErr := stopAll(ctx, rec.list())
	rec.setState(relStopped)
	for _, in := range rec.list() {
		m.untrack(in.unit, in)
	}
	m.events.Emit("release stopped", map[string]any{"releaseId": rec.id})
	m.prune()
	m.onChange()
	if stopErr != nil {
		return Status{}, stopErr
	}
	return m.Status(ctx), nil
}

// RestartResult is the restart reply.
type RestartResult struct {
	Restarted []string `json:"restarted"`
}

// Restart bounces processes in place, one at a time (spec §3.5). Unlike the
// original, handoff services of the active release can be targeted too.
func (m *Manager) Restart(ctx context.Context, processID, policy string) (RestartResult, error) {
	if m.isStopping() {
		return RestartResult{}, errShuttingDown
	}
	cfg := m.config()
	proxied := cfg.Proxied()
	if targetsProxied(proxied, processID, policy) {
		if proxied == nil || proxied.Replicas <= 1 {
			return RestartResult{}, errors.New(`The proxied process cannot be restarted in place; use "rollbridge deploy" for a zero-downtime replacement.`)
		}
		done, err := m.begin("a restart")
		if err != nil {
			return RestartResult{}, err
		}
		defer done()
		return m.restartReplicas(ctx, proxied, processID)
	}
	done, err := m.begin("a restart")
	if err != nil {
		return RestartResult{}, err
	}
	defer done()
	var targets []*instance
	for i := range cfg.Processes {
		def := &cfg.Processes[i]
		if def.Policy == config.Proxied || (policy != "" && string(def.Policy) != policy) {
			continue
		}
		for _, in := range m.instancesOf(def) {
			if processID == "" || processID == def.ID || processID == in.id {
				targets = append(targets, in)
			}
		}
	}
	if processID != "" && len(targets) == 0 {
		return RestartResult{}, fmt.Errorf("No managed process with id %q to restart.", processID)
	}
	res := RestartResult{Restarted: []string{}}
	for _, in := range targets {
		in.emit("process restart requested", map[string]any{"processId": in.id})
		if err := in.stop(ctx); err != nil {
			return res, err
		}
		if err := in.start(ctx, reasonManual); err != nil {
			return res, err
		}
		res.Restarted = append(res.Restarted, in.id)
	}
	return res, nil
}

// targetsProxied: the restart names the proxied process, one of its
// replicas, or its policy.
func targetsProxied(proxied *config.Process, processID, policy string) bool {
	if policy == string(config.Proxied) {
		return true
	}
	return proxied != nil && processID != "" && (processID == proxied.ID || strings.HasPrefix(processID, proxied.ID+"#"))
}

// restartReplicas replaces the active release's proxied replicas named by
// processID (all of them when it is the process id or empty), one at a
// time and start-first (replaceReplica), so the pool never shrinks. A
// replica that is the only one in rotation is never replaced.
func (m *Manager) restartReplicas(ctx context.Context, def *config.Process, processID string) (RestartResult, error) {
	m.mu.Lock()
	active := m.active
	m.mu.Unlock()
	var targets []*instance
	if active != nil {
		for _, in := range active.list() {
			if in.def.Load().ID == def.ID && (processID == "" || processID == def.ID || processID == in.id) {
				targets = append(targets, in)
			}
		}
	}
	sort.SliceStable(targets, func(i, j int) bool { return targets[i].replica < targets[j].replica })
	if len(targets) == 0 {
		return RestartResult{}, fmt.Errorf("No managed process with id %q to restart.", cmp.Or(processID, def.ID))
	}
	res := RestartResult{Restarted: []string{}}
	for _, in := range targets {
		if in.inPool() && active.othersInRotation(in) == 0 {
			return res, fmt.Errorf("Replica %s is the only replica of %q in rotation; it is not replaced while no other replica serves. Wait for the others to recover, or deploy a new release.", in.id, def.ID)
		}
		in.emit("process restart requested", map[string]any{"processId": in.id})
		if _, err := m.replaceReplica(ctx, in, reasonManual); err != nil {
			return res, err
		}
		res.Restarted = append(res.Restarted, in.id)
	}
	return res, nil
}

// othersInRotation counts r's proxied replicas in rotation other than in.
func (r *releaseRec) othersInRotation(in *instance) int {
	n := 0
	for _, x := range r.list() {
		if x != in && x.def.Load().Policy == config.Proxied && x.inPool() {
			n++
		}
	}
	return n
}

// instancesOf returns the restartable instances of def.
func (m *Manager) instancesOf(def *config.Process) []*instance {
	switch {
	case def.Policy == config.Service && def.DeployStrategy == config.Persistent:
		if s := m.service(def.ID); s != nil {
			return []*instance{s}
		}
	case def.Policy == config.Singleton:
		if s := m.singleton(def.ID); s != nil {
			return []*instance{s}
		}
	default: // companions and handoff services of the active release
		m.mu.Lock()
		active := m.active
		m.mu.Unlock()
		if active == nil {
			return nil
		}
		var out []*instance
		for _, in := range active.list() {
			if in.def.Load().ID == def.ID {
				out = append(out, in)
			}
		}
		return out
	}
	return nil
}

// Rollback re-deploys a retained release (spec §3.3).
func (m *Manager) Rollback(ctx context.Context, releaseID string) (DeployResult, error) {
	if m.isStopping() {
		return DeployResult{}, errShuttingDown
	}
	done, err := m.begin("a rollback")
	if err != nil {
		return DeployResult{}, err
	}
	defer done()
	target, err := m.rollbackTarget(releaseID)
	if err != nil {
		return DeployResult{}, err
	}
	if st := target.getState(); st != relStopped && st != relFailed {
		// Stop a still-draining target before its id is reused.
		target.halt()
		_ = stopAll(ctx, target.list())
		target.setState(relStopped)
		for _, in := range target.list() {
			m.untrack(in.unit, in)
		}
	}
	m.events.Emit("rollback starting", map[string]any{"releaseId": target.id, "releasePath": target.path})
	rev := target.revision
	if rev == target.id {
		rev = ""
	}
	return m.deploy(ctx, DeployRequest{ReleasePath: target.path, ReleaseID: target.id, Revision: rev}, target.id)
}

func (m *Manager) rollbackTarget(id string) (*releaseRec, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id != "" {
		for _, r := range m.releases {
			if r.id == id {
				if r == m.active {
					return nil, fmt.Errorf("Release %q is already active.", id)
				}
				return r, nil
			}
		}
		return nil, fmt.Errorf("No retained release %q to roll back to.", id)
	}
	var best *releaseRec
	for _, r := range m.releases {
		r.mu.Lock()
		at := r.activatedAt
		r.mu.Unlock()
		if r == m.active || at.IsZero() {
			continue
		}
		if best == nil || !at.Before(best.activatedAt) {
			best = r
		}
	}
	if best == nil {
		return nil, errors.New("No previous release to roll back to.")
	}
	return best, nil
}

// Shutdown stops every process the manager owns, in parallel and without
// draining (spec §3.6 step 5). It is idempotent: concurrent and repeated
// calls share one run.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.shutOnce.Do(func() {
		m.markStopping()
		m.mu.Lock()
		for r := range m.starting {
			r.halt()
		}
		for _, r := range m.releases {
			r.halt()
		}
		var all []*instance
		all = append(all, m.services...)
		all = append(all, m.singletons...)
		for r := range m.starting {
			all = append(all, r.list()...)
		}
		for _, r := range m.releases {
			all = append(all, r.list()...)
		}
		m.active = nil
		m.mu.Unlock()
		m.traffic.Clear()
		var failed int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, in := range all {
			wg.Go(func() {
				if err := in.stop(ctx); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
					m.log.Error("stop during shutdown", "instance", in.id, "error", err)
				}
			})
		}
		wg.Wait()
		for _, r := range m.releases {
			if r.getState() != relStopped {
				r.setState(relStopped)
			}
		}
		if failed > 0 {
			m.shutErr = fmt.Errorf("Shutdown failed to stop %d owned resource(s).", failed)
		}
	})
	// Retirements that were draining end as their processes stop.
	waitCtx(ctx, &m.retiring)
	return m.shutErr
}

func waitCtx(ctx context.Context, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// prune applies releaseRetention to stopped releases (spec §8.8) and
// reports whether it removed any.
func (m *Manager) prune() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	keep, maxAge := m.cfg.ReleaseRetention.Keep, m.cfg.ReleaseRetention.MaxAge
	type cand struct {
		r         *releaseRec
		idx       int
		stoppedAt time.Time
	}
	var stopped []cand
	for i, r := range m.releases {
		// stoppedAt is read with the state: a stop of a stopped release
		// (Stop by id) rewrites it concurrently.
		r.mu.Lock()
		if r.state == relStopped {
			stopped = append(stopped, cand{r, i, r.stoppedAt})
		}
		r.mu.Unlock()
	}
	sort.SliceStable(stopped, func(a, b int) bool {
		ta, tb := stopped[a].stoppedAt, stopped[b].stoppedAt
		if ta.Equal(tb) {
			return stopped[a].idx > stopped[b].idx
		}
		return ta.After(tb)
	})
	drop := map[*releaseRec]bool{}
	now := m.now()
	for i, c := range stopped {
		if i >= keep || (maxAge > 0 && now.Sub(c.stoppedAt) > maxAge) {
			drop[c.r] = true
		}
	}
	if len(drop) == 0 {
		return false
	}
	kept := m.releases[:0]
	for _, r := range m.releases {
		if !drop[r] {
			kept = append(kept, r)
		}
	}
	m.releases = kept
	return true
}

// pruneCheck is the longest interval of the periodic prune; it is also how
// often a config without maxAgeMs is re-read, as a deploy may set it.
const pruneCheck = time.Minute

// pruneLoop enforces releaseRetention.maxAgeMs on a quiet daemon: without
// it an old stopped release would only go at the next drain or stop. It
// runs every maxAgeMs/2 (at most pruneCheck), until ctx ends or the
// manager starts stopping.
func (m *Manager) pruneLoop(ctx context.Context) {
	t := time.NewTimer(pruneCheck)
	defer t.Stop()
	for {
		interval := pruneCheck
		if maxAge := m.config().ReleaseRetention.MaxAge; maxAge > 0 {
			// The floor keeps a sub-millisecond maxAgeMs from spinning.
			interval = max(min(maxAge/2, pruneCheck), 10*time.Millisecond)
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return
		case <-m.stopCh:
			return
		case <-t.C:
		}
		if m.config().ReleaseRetention.MaxAge > 0 && m.prune() && !m.isStopping() {
			m.onChange() // persist the smaller registry (spec §8.1)
		}
	}
}
