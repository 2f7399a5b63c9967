package release

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/rollbridge/rollbridge/config"
)

// DeployRequest is the input of a deploy (spec §3.1).
type DeployRequest struct {
	ReleasePath string
	ReleaseID   string
	Revision    string
}

// DeployResult is the deploy/rollback reply.
type DeployResult struct {
	ActiveReleaseID   string  `json:"activeReleaseId"`
	PreviousReleaseID *string `json:"previousReleaseId"`
}

// Deploy runs the deploy flow of spec §3.1.
func (m *Manager) Deploy(ctx context.Context, req DeployRequest) (DeployResult, error) {
	if m.isStopping() {
		return DeployResult{}, errShuttingDown
	}
	done, err := m.begin("a deploy")
	if err != nil {
		return DeployResult{}, err
	}
	defer done()
	return m.deploy(ctx, req, "")
}

// deploy is the flow shared by deploy and rollback; the op lock is held.
func (m *Manager) deploy(ctx context.Context, req DeployRequest, rollbackOf string) (DeployResult, error) {
	if req.ReleasePath == "" {
		return DeployResult{}, errors.New("releasePath is required")
	}
	// A shutdown aborts the start (a health check would otherwise hold
	// it); cleanups keep the unaborted ctx so they always run to the end.
	actx, cancel := m.untilStopping(ctx)
	defer cancel()
	cfg, err := m.reload(ctx)
	if err != nil {
		return DeployResult{}, err
	}
	if err := config.CheckCompatible(m.config(), cfg); err != nil {
		return DeployResult{}, err
	}
	id := req.ReleaseID
	if id == "" {
		id = req.Revision
	}
	if id == "" {
		id = releaseIDFromTime(m.now())
	}
	revision := req.Revision
	if revision == "" {
		revision = id
	}
	if err := m.checkReusableID(id, rollbackOf); err != nil {
		return DeployResult{}, err
	}
	data := map[string]any{"releaseId": id, "releasePath": req.ReleasePath}
	if req.Revision != "" {
		data["revision"] = req.Revision
	}
	m.events.Emit("deploy starting", data)

	rec := &releaseRec{m: m, id: id, path: req.ReleasePath, revision: revision, cfg: cfg, state: relStarting}
	m.mu.Lock()
	if m.stopping {
		m.mu.Unlock()
		return DeployResult{}, m.deployFailed(id, errShuttingDown)
	}
	m.starting[rec] = struct{}{}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.starting, rec)
		m.mu.Unlock()
	}()

	alloc, err := allocatePorts(actx, cfg.Proxy.UpstreamHost, cfg.Processes, m.stablePorts())
	if err != nil {
		return DeployResult{}, m.deployFailed(id, err)
	}
	defer alloc.releaseAll()
	rec.ports = alloc.ports
	rc := cfg.ReleaseContext(id, req.ReleasePath, revision, alloc.ports, m.env)
	rc.ReplicaPorts = alloc.replicaPorts

	// On a failure, "deploy failed" comes before the persistent services
	// this deploy started are stopped (spec §3.1 step 9).
	started, err := m.startServices(actx, cfg, rc, alloc)
	if err != nil {
		err = m.deployFailed(id, err)
		m.stopServices(ctx, started)
		return DeployResult{}, err
	}
	if err := m.startRelease(actx, rec, rc, alloc); err != nil {
		if m.isStopping() {
			err = errShuttingDown
		}
		m.cleanupRelease(ctx, rec, err)
		err = m.deployFailed(id, err)
		m.stopServices(ctx, started)
		return DeployResult{}, err
	}

	// Success: adopt the config, register, activate, switch the whole pool.
	m.routeMu.Lock()
	rt := rec.route()
	m.mu.Lock()
	m.cfg = cfg
	prev := m.active
	m.registerLocked(rec)
	m.active = rec
	m.traffic.Switch(id, rt)
	m.mu.Unlock()
	m.routeMu.Unlock()
	rec.setState(relActive)
	var prevID *string
	if prev != nil && prev != rec {
		p := prev.id
		prevID = &p
	}
	m.events.Emit("traffic switched", map[string]any{"previousReleaseId": anyString(prevID), "releaseId": id})

	m.refreshServices(cfg, rc)
	singletonErr := m.replaceSingletons(ctx, cfg, rc, rec, alloc)
	if prev != nil && prev != rec {
		// Unlike the original (spec §11.2-2), a singleton failure does not
		// leave the previous release un-retired.
		m.retire(prev)
	}
	result := DeployResult{ActiveReleaseID: id, PreviousReleaseID: prevID}
	m.onChange()
	if singletonErr != nil {
		return result, singletonErr
	}
	return result, nil
}

func anyString(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

// checkReusableID refuses deploying an id that is active or draining (spec
// §11.2-3); a stopped id is replaced in place.
func (m *Manager) checkReusableID(id, rollbackOf string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.releases {
		if r.id != id {
			continue
		}
		switch r.getState() {
		case relActive:
			return fmt.Errorf("Release %q is already active. Deploy the new code under a different --release-id.", id)
		case relDraining:
			if rollbackOf == "" {
				return fmt.Errorf("Release %q is still draining; deploy under a different --release-id or wait until it has stopped.", id)
			}
		}
	}
	return nil
}

func (m *Manager) deployFailed(id string, err error) error {
	m.events.Emit("deploy failed", map[string]any{"error": err.Error(), "releaseId": id})
	return err
}

func (m *Manager) registerLocked(rec *releaseRec) {
	for i, r := range m.releases {
		if r.id == rec.id {
			m.releases[i] = rec
			return
		}
	}
	m.releases = append(m.releases, rec)
}

func (m *Manager) stablePorts() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for _, s := range m.services {
		s.mu.Lock()
		if s.built.HasPort {
			out[s.def.Load().ID] = s.built.Port
		}
		s.mu.Unlock()
	}
	return out
}

// orderByDeps orders defs so each comes after the processes of defs it
// depends on, otherwise keeping the given order (a stable topological
// sort; config validation rules out cycles). Starting in this order, each
// start returning only once the instance is ready (READY=1 with
// health.notify), is what makes dependsOn hold.
func orderByDeps(defs []*config.Process) []*config.Process {
	in := make(map[string]bool, len(defs))
	for _, d := range defs {
		in[d.ID] = true
	}
	placed := make(map[string]bool, len(defs))
	out := make([]*config.Process, 0, len(defs))
	for len(out) < len(defs) {
		progress := false
		for _, d := range defs {
			if placed[d.ID] {
				continue
			}
			ready := true
			for _, dep := range d.DependsOn {
				if in[dep] && !placed[dep] {
					ready = false
					break
				}
			}
			if ready {
				placed[d.ID] = true
				out = append(out, d)
				progress = true
				break // restart from the top: earlier entries keep priority
			}
		}
		if !progress {
			for _, d := range defs {
				if !placed[d.ID] {
					placed[d.ID] = true
					out = append(out, d)
				}
			}
		}
	}
	return out
}

// processesOf returns the definitions of cfg that match keep, in config
// order.
func processesOf(cfg *config.Config, keep func(*config.Process) bool) []*config.Process {
	var out []*config.Process
	for i := range cfg.Processes {
		if d := &cfg.Processes[i]; keep(d) {
			out = append(out, d)
		}
	}
	return out
}

// startServices starts every persistent service that is not registered, or
// that sits in failed (revived, unlike the original: spec §11.2-6).
func (m *Manager) startServices(ctx context.Context, cfg *config.Config, rc config.ReleaseContext, alloc *portAllocation) ([]*instance, error) {
	var started []*instance
	services := orderByDeps(processesOf(cfg, func(d *config.Process) bool {
		return d.Policy == config.Service && d.DeployStrategy == config.Persistent
	}))
	for _, def := range services {
		if m.isStopping() {
			return started, errShuttingDown
		}
		if existing := m.service(def.ID); existing != nil {
			existing.mu.Lock()
			revive := existing.state == stateFailed && existing.pid == 0
			existing.mu.Unlock()
			if revive {
				if err := existing.refresh(def, rc); err != nil {
					return started, err
				}
				if err := existing.start(ctx, reasonDeploy); err != nil {
					return started, err
				}
			}
			continue
		}
		in, err := newInstance(m, def, rc, 0, daemonScope{m})
		if err != nil {
			return started, err
		}
		m.mu.Lock()
		m.services = append(m.services, in)
		m.mu.Unlock()
		alloc.take(def.ID)
		if err := in.start(ctx, reasonDeploy); err != nil {
			m.removeService(in)
			return started, err
		}
		started = append(started, in)
	}
	return started, nil
}

func (m *Manager) service(id string) *instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.services {
		if s.def.Load().ID == id {
			return s
		}
	}
	return nil
}

func (m *Manager) removeService(in *instance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, s := range m.services {
		if s == in {
			m.services = append(m.services[:i], m.services[i+1:]...)
			return
		}
	}
}

// stopServices stops (sequentially) and unregisters the services a failed
// deploy started.
func (m *Manager) stopServices(ctx context.Context, ins []*instance) {
	for _, in := range ins {
		_ = in.stop(ctx)
		m.removeService(in)
	}
}

// startRelease starts handoff services, companions and the proxied process
// of rec (spec §3.1 step 8), in that order unless dependsOn asks for
// another, then health-checks every proxied replica.
func (m *Manager) startRelease(ctx context.Context, rec *releaseRec, rc config.ReleaseContext, alloc *portAllocation) error {
	cfg := rec.cfg
	rank := func(d *config.Process) int {
		switch {
		case d.Policy == config.Service && d.DeployStrategy == config.Handoff:
			return 0
		case d.Policy == config.Companion:
			return 1
		case d.Policy == config.Proxied:
			return 2
		}
		return -1
	}
	var defs []*config.Process
	for r := range 3 {
		defs = append(defs, processesOf(cfg, func(d *config.Process) bool { return rank(d) == r })...)
	}
	proxied := false
	for _, def := range orderByDeps(defs) {
		if m.isStopping() {
			return errShuttingDown
		}
		if def.Policy == config.Proxied {
			if err := m.startProxied(ctx, rec, def, rc, alloc); err != nil {
				return err
			}
			proxied = true
			continue
		}
		ins, err := m.newReplicas(rec, def, rc, alloc)
		if err != nil {
			return err
		}
		if err := startAll(ctx, ins, nil); err != nil {
			return err
		}
	}
	if !proxied {
		return errors.New("config has no proxied process")
	}
	return nil
}

// startProxied starts every replica of the proxied process at once and
// waits until each one passed its readiness checks (READY=1 and/or the
// HTTP probe), so the switch moves traffic to a complete, healthy pool. The
// first failure stops the wait and is returned.
func (m *Manager) startProxied(ctx context.Context, rec *releaseRec, def *config.Process, rc config.ReleaseContext, alloc *portAllocation) error {
	ins, err := m.newReplicas(rec, def, rc, alloc)
	if err != nil {
		return err
	}
	if err := startAll(ctx, ins, m.checkReady); err != nil {
		return err
	}
	for _, in := range ins {
		if !in.setInRotation(true) {
			return fmt.Errorf("proxied process %s exited before the switch", in.id)
		}
	}
	return nil
}

// newReplicas creates the instances of every replica of def and registers
// them with rec, so a failed deploy stops whichever of them started.
func (m *Manager) newReplicas(rec *releaseRec, def *config.Process, rc config.ReleaseContext, alloc *portAllocation) ([]*instance, error) {
	ins := make([]*instance, def.Replicas)
	for replica := range ins {
		in, err := newInstance(m, def, rc, replica, rec)
		if err != nil {
			return nil, err
		}
		ins[replica] = in
	}
	rec.mu.Lock()
	rec.instances = append(rec.instances, ins...)
	rec.mu.Unlock()
	alloc.take(def.ID)
	return ins, nil
}

// startAll starts the replicas of one process at once, as the original's
// non-blocking spawn did (systemd runs the starts in parallel), and, when
// ready is set, waits for each one to pass it. The first failure cancels the
// others' waits and is returned.
func startAll(ctx context.Context, ins []*instance, ready func(context.Context, *instance) error) error {
	if len(ins) == 1 {
		// The common case needs no goroutine.
		err := ins[0].start(ctx, reasonDeploy)
		if err == nil && ready != nil {
			err = ready(ctx, ins[0])
		}
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(ins))
	var wg sync.WaitGroup
	for i, in := range ins {
		wg.Go(func() {
			err := in.start(ctx, reasonDeploy)
			if err == nil && ready != nil {
				err = ready(ctx, in)
			}
			if err != nil && ctx.Err() == nil {
				errs[i] = err
				cancel()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}

// checkReady runs the HTTP health probe of a proxied instance, if it has
// one (READY=1 was already awaited by the start).
func (m *Manager) checkReady(ctx context.Context, in *instance) error {
	in.mu.Lock()
	h, port, host := in.def.Load().Health, in.port, in.rc.Proxy.UpstreamHost
	in.mu.Unlock()
	if h == nil || h.Path == "" || m.health == nil || port == 0 {
		return nil
	}
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + h.Path
	return m.health(ctx, url, *h)
}

// cleanupRelease stops everything a failed release start launched, with the
// before/after diagnostics of spec §3.1 step 9.
func (m *Manager) cleanupRelease(ctx context.Context, rec *releaseRec, cause error) {
	rec.setState(relFailed)
	m.startupDiagnostics(ctx, rec, cause, "before cleanup")
	_ = stopAll(ctx, rec.list())
	for _, in := range rec.list() {
		m.untrack(in.unit, in)
	}
	rec.setState(relStopped)
	m.startupDiagnostics(ctx, rec, cause, "after cleanup")
}

func (m *Manager) startupDiagnostics(ctx context.Context, rec *releaseRec, cause error, phase string) {
	m.events.Emit("release startup failed", map[string]any{"error": cause.Error(), "phase": phase, "releaseId": rec.id})
	for _, in := range rec.list() {
		st := m.processStatus(ctx, in, false)
		var pid any
		if st.PID != 0 {
			pid = st.PID
		}
		// No command (secret-free events); the output is kept, the state
		// file strips it.
		in.emitFor(rec.id, "release startup process status", map[string]any{
			"exitCode": st.ExitCode.value(), "exitSignal": st.ExitSignal.value(),
			"logs": m.instanceLogs(ctx, in), "phase": phase, "pid": pid, "state": st.State,
		})
	}
}

// refreshServices re-renders persistent services from the new release
// without restarting them (spec §3.1 step 11).
func (m *Manager) refreshServices(cfg *config.Config, rc config.ReleaseContext) {
	m.mu.Lock()
	services := append([]*instance(nil), m.services...)
	m.mu.Unlock()
	for _, s := range services {
		def := cfg.Process(s.def.Load().ID)
		if def == nil {
			continue
		}
		src := rc
		// A persistent service keeps its stable port.
		if err := s.refresh(def, src); err != nil {
			m.log.Warn("refresh service definition", "service", s.def.Load().ID, "error", err)
		}
	}
}

// replaceSingletons stops each old singleton completely before starting the
// new one (spec §3.1 step 12).
func (m *Manager) replaceSingletons(ctx context.Context, cfg *config.Config, rc config.ReleaseContext, rec *releaseRec, alloc *portAllocation) error {
	var errs []error
	singletons := orderByDeps(processesOf(cfg, func(d *config.Process) bool { return d.Policy == config.Singleton }))
	for _, def := range singletons {
		if old := m.singleton(def.ID); old != nil {
			if err := old.stop(ctx); err != nil {
				errs = append(errs, err)
				continue
			}
			m.untrack(old.unit, old)
		}
		in, err := newInstance(m, def, rc, 0, rec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.setSingleton(in)
		alloc.take(def.ID)
		if err := in.start(ctx, reasonDeploy); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) singleton(id string) *instance {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.singletons {
		if s.def.Load().ID == id {
			return s
		}
	}
	return nil
}

func (m *Manager) setSingleton(in *instance) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, s := range m.singletons {
		if s.def.Load().ID == in.def.Load().ID {
			m.singletons[i] = in
			return
		}
	}
	m.singletons = append(m.singletons, in)
}
