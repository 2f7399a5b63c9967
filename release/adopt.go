package release

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
)

// PriorState is what a previous daemon persisted in statePath (the status
// object plus the event history); it supplies what units cannot carry:
// which release was active, stopped releases kept for rollback, timestamps,
// restart counters and events.
type PriorState struct {
	ActiveReleaseID *string `json:"activeReleaseId"`
	Releases        []struct {
		ReleaseID      string         `json:"releaseId"`
		ReleasePath    string         `json:"releasePath"`
		Revision       string         `json:"revision"`
		State          string         `json:"state"`
		ActivatedAt    string         `json:"activatedAt"`
		DrainStartedAt string         `json:"drainStartedAt"`
		StoppedAt      string         `json:"stoppedAt"`
		Ports          map[string]int `json:"ports"`
		Processes      []priorProcess `json:"processes"`
	} `json:"releases"`
	Services   []struct{ Process priorProcess } `json:"services"`
	Singletons []struct{ Process priorProcess } `json:"singletons"`
	// Events is the previous daemon's (sanitized) event history.
	Events priorEvents `json:"events"`
}

// priorEvents decodes a persisted history leniently: an entry that cannot
// be read is skipped instead of making the whole state unreadable.
type priorEvents []Event

func (p *priorEvents) UnmarshalJSON(raw []byte) error {
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		*p = nil
		return nil
	}
	out := make([]Event, 0, len(list))
	for _, r := range list {
		var e Event
		if json.Unmarshal(r, &e) == nil {
			out = append(out, e)
		}
	}
	*p = out
	return nil
}

type priorProcess struct {
	ID                  string   `json:"id"`
	Restarts            int      `json:"restarts"`
	RestartTimes        []string `json:"restartTimes"`
	LastStartReason     string   `json:"lastStartReason"`
	MemoryRestarts      int      `json:"memoryRestarts"`
	LastMemoryRestartAt string   `json:"lastMemoryRestartAt"`
	// State, Unit and Port locate an instance whose unit is gone.
	State string `json:"state"`
	Unit  string `json:"unit"`
	Port  int    `json:"port"`
}

// Adopted summarizes a re-adoption.
type Adopted struct {
	// Instances lists the adopted instance units, PIDs their main pids.
	Instances []string
	PIDs      []int
	// Foreign are live units of this application that match no process of
	// the current config; they are left running and reported.
	Foreign []units.Status
	// Active is the release traffic was switched to ("" for none).
	Active string
	// Crashed lists the units of instances whose process ended while no
	// daemon ran; they go through the crash-restart policy.
	Crashed []string

	crashed []*instance
}

// Adopt rebuilds releases, services and singletons from the runner's live
// units after a daemon restart: running units keep running and keep their
// pids; nothing is started or duplicated. An instance the previous daemon
// supervised whose process ended while no daemon ran (see crashedUnits) is
// adopted as crashed and goes through the crash-restart policy. prior (may
// be nil) is the previous daemon's snapshot; its events are restored into
// the history. Call it after Run and before serving any command.
func (m *Manager) Adopt(ctx context.Context, prior *PriorState) (Adopted, error) {
	var res Adopted
	list, err := m.runner.List(ctx, m.config().Application)
	if err != nil {
		return res, fmt.Errorf("list units to re-adopt: %w", err)
	}
	if prior != nil {
		m.events.Restore(prior.Events)
	}
	cfg := m.config()
	byRelease := map[string][]units.Status{}
	var serviceUnits, singletonUnits, live, ended []units.Status
	for _, st := range list {
		if st.MainPID == 0 || st.State == units.StateExited || st.State == units.StateFailed {
			ended = append(ended, st)
			continue
		}
		live = append(live, st)
	}
	for _, st := range append(live, m.crashedUnits(cfg, prior, live, ended)...) {
		def := cfg.Process(st.Identity.Process)
		switch {
		case def == nil || st.Identity.Replica >= def.Replicas:
			res.Foreign = append(res.Foreign, st)
		case def.Policy == config.Service && def.DeployStrategy == config.Persistent:
			serviceUnits = append(serviceUnits, st)
		case def.Policy == config.Singleton:
			singletonUnits = append(singletonUnits, st)
		default:
			byRelease[st.Identity.Release] = append(byRelease[st.Identity.Release], st)
		}
	}
	recs := m.adoptReleases(cfg, prior, byRelease, &res)
	var stale []staleReplica
	for _, r := range recs {
		stale = append(stale, r.staleReplicas()...)
	}
	active := m.pickActive(prior, recs)

	m.mu.Lock()
	m.releases = append(m.releases, recs...)
	m.mu.Unlock()
	for _, st := range serviceUnits {
		if in := m.adoptInstance(cfg, st, daemonScope{m}, prior, &res); in != nil {
			m.mu.Lock()
			m.services = append(m.services, in)
			m.mu.Unlock()
		}
	}
	for _, st := range singletonUnits {
		var sc scope = daemonScope{m}
		for _, r := range recs {
			if r.id == st.Identity.Release {
				sc = r
			}
		}
		if in := m.adoptInstance(cfg, st, sc, prior, &res); in != nil {
			m.setSingleton(in)
		}
	}
	if active != nil {
		m.mu.Lock()
		m.active = active
		m.mu.Unlock()
		m.routeMu.Lock()
		rt := active.route()
		m.mu.Lock()
		if len(rt.Upstreams) > 0 {
			m.traffic.Switch(active.id, rt)
		}
		m.mu.Unlock()
		m.routeMu.Unlock()
		res.Active = active.id
	}
	for _, r := range recs {
		if r != active && r.getState() != relStopped {
			m.retire(r)
		}
	}
	for _, sr := range stale {
		if sr.rec.wantsRunning() {
			m.dropStale(sr)
		}
	}
	for _, st := range res.Foreign {
		m.events.Emit("unknown unit left running", map[string]any{"unit": st.Name, "pid": st.MainPID, "releaseId": st.Identity.Release,
			"hint": "No process of the current config matches this unit; stop it with systemctl stop if it is a leftover."})
	}
	m.events.Emit("units adopted", map[string]any{"count": len(res.Instances), "activeReleaseId": nilIfEmpty(res.Active)})
	// Crashed instances are handled once everything is wired, so a restart
	// that rejoins the pool finds its release active.
	for _, in := range res.crashed {
		m.adoptCrash(ctx, in)
	}
	return res, nil
}

// crashedUnits lists the instances the previous daemon supervised whose
// process ended while no daemon ran, as unit statuses without a main pid:
// an ended unit the runner still lists (systemd keeps a failed unit loaded),
// or, for runners whose units outlive the daemon, one that is gone
// altogether (a clean exit is collected at once) but that prior recorded
// as wanted. Only instances prior knows (the active release's, persistent
// services, singletons) qualify, and only when no live unit serves the
// same replica slot. Without prior nothing qualifies: which release was
// active, and whether the process was still wanted, is unknown.
func (m *Manager) crashedUnits(cfg *config.Config, prior *PriorState, live, ended []units.Status) []units.Status {
	if prior == nil {
		return nil
	}
	type slot struct {
		release, process string
		replica          int
	}
	slotOf := func(id units.Identity) slot { return slot{id.Release, id.Process, id.Replica} }
	taken := map[slot]bool{}
	for _, st := range live {
		taken[slotOf(st.Identity)] = true
	}
	// wanted maps a slot to the prior record of an instance the previous
	// daemon meant to keep running, with the release it was built from.
	type want struct {
		p   *priorProcess
		rel int // index in prior.Releases, -1: unknown
	}
	wanted := map[slot]want{}
	relIndex := func(id string) int {
		for i := range prior.Releases {
			if prior.Releases[i].ReleaseID == id {
				return i
			}
		}
		return -1
	}
	consider := func(p *priorProcess, onlyRelease string) {
		if p.State == stateStopped || p.Unit == "" {
			return // stopped on purpose, or nothing to address it by
		}
		_, rel, _, _, ok := units.ParseUnitNameGeneration(p.Unit)
		if !ok || onlyRelease != "" && rel != onlyRelease {
			return
		}
		def, replica := cfg.Instance(p.ID)
		if def == nil {
			return
		}
		s := slot{rel, def.ID, replica}
		if cur, ok := wanted[s]; ok && unitGeneration(cur.p.Unit) >= unitGeneration(p.Unit) {
			return
		}
		wanted[s] = want{p, relIndex(rel)}
	}
	if prior.ActiveReleaseID != nil {
		if i := relIndex(*prior.ActiveReleaseID); i >= 0 {
			for j := range prior.Releases[i].Processes {
				consider(&prior.Releases[i].Processes[j], prior.Releases[i].ReleaseID)
			}
		}
	}
	for i := range prior.Services {
		consider(&prior.Services[i].Process, "")
	}
	for i := range prior.Singletons {
		consider(&prior.Singletons[i].Process, "")
	}

	var out []units.Status
	found := map[slot]bool{}
	sort.Slice(ended, func(i, j int) bool { return ended[i].Identity.Generation > ended[j].Identity.Generation })
	for _, st := range ended {
		s := slotOf(st.Identity)
		if taken[s] || found[s] {
			continue
		}
		if _, ok := wanted[s]; !ok {
			continue
		}
		found[s] = true
		st.MainPID, st.PIDs = 0, nil
		if st.Exit == nil {
			st.Exit = &units.Exit{Code: -1}
		}
		out = append(out, st)
	}
	if m.runner.Kind() == execRunnerKind {
		// The exec runner's children do not survive the daemon as units:
		// what prior recorded is reported as advisory orphans instead.
		return out
	}
	var gone []slot
	for s := range wanted {
		if !taken[s] && !found[s] {
			gone = append(gone, s)
		}
	}
	sort.Slice(gone, func(i, j int) bool {
		a, b := gone[i], gone[j]
		if a.release != b.release {
			return a.release < b.release
		}
		if a.process != b.process {
			return a.process < b.process
		}
		return a.replica < b.replica
	})
	for _, s := range gone {
		w := wanted[s]
		if w.rel < 0 {
			continue // its release context is not known any more
		}
		pr := prior.Releases[w.rel]
		def := cfg.Process(s.process)
		id := def.Identity(cfg.Application, s.release, s.replica)
		id.Generation = unitGeneration(w.p.Unit)
		env := []string{config.EnvReleasePath + "=" + pr.ReleasePath, config.EnvRevision + "=" + pr.Revision}
		for pid, port := range pr.Ports {
			env = append(env, config.PortEnvName(pid)+"="+strconv.Itoa(port))
		}
		if w.p.Port != 0 {
			env = append(env, config.EnvPort+"="+strconv.Itoa(w.p.Port))
		}
		// No unit is left: the exit status is unknown. A prior "failed"
		// state means its exit was reported already.
		st := units.Status{Name: w.p.Unit, Identity: id, State: units.StateUnknown, Env: env}
		if w.p.State != stateFailed {
			st.Exit = &units.Exit{Code: -1}
		}
		out = append(out, st)
	}
	return out
}

// execRunnerKind is units/exec's Kind.
const execRunnerKind = "exec"

func unitGeneration(name string) int {
	_, _, _, g, _ := units.ParseUnitNameGeneration(name)
	return g
}

// adoptCrash handles an instance whose process ended while no daemon ran
// as onExit handles a crash: the leftover unit is cleared so its name is
// free, "process exited" is reported (unless prior had reported it) and the
// crash-restart policy applies with the restored restart budget. A proxied
// replica rejoins the pool only once its readiness checks pass.
func (m *Manager) adoptCrash(ctx context.Context, in *instance) {
	in.mu.Lock()
	unit, exited, exit := in.unit, in.exited, in.exit
	in.mu.Unlock()
	// Stop on an ended unit only resets it (systemd: reset-failed).
	if err := m.runner.Stop(ctx, unit, 0, units.Grace{}); err != nil {
		m.log.Warn("clear the ended unit of a crashed instance", "unit", unit, "error", err)
	}
	if exited {
		in.emit("process exited", map[string]any{"code": exitCode(exit), "id": in.id, "signal": exitSignal(exit)})
	}
	if in.scope.wantsRunning() && !m.isStopping() {
		in.scheduleRestart()
	}
}

// staleReplica is an older incarnation of a proxied replica slot found
// next to a newer one (the previous daemon ended during a replacement).
type staleReplica struct {
	rec *releaseRec
	in  *instance
}

// staleReplicas takes every incarnation but the newest generation of each
// proxied replica slot out of the pool and returns them.
func (r *releaseRec) staleReplicas() []staleReplica {
	newest := map[int]*instance{}
	ins := r.list()
	for _, in := range ins {
		if in.def.Load().Policy != config.Proxied {
			continue
		}
		if cur := newest[in.replica]; cur == nil || in.generation > cur.generation {
			newest[in.replica] = in
		}
	}
	var out []staleReplica
	for _, in := range ins {
		if in.def.Load().Policy == config.Proxied && newest[in.replica] != in {
			in.setInRotation(false)
			out = append(out, staleReplica{r, in})
		}
	}
	return out
}

// dropStale drains and stops a stale incarnation in the background, as a
// replacement would have finished.
func (m *Manager) dropStale(sr staleReplica) {
	m.retiring.Add(1)
	go func() {
		defer m.retiring.Done()
		ctx := m.ctx
		sr.in.mu.Lock()
		port, host, unit := sr.in.port, sr.in.rc.Proxy.UpstreamHost, sr.in.unit
		sr.in.mu.Unlock()
		if port != 0 {
			m.traffic.DrainUpstream(ctx, sr.rec.id, net.JoinHostPort(host, strconv.Itoa(port)), m.now().Add(m.config().Proxy.DrainTimeout))
		}
		err := sr.in.stop(ctx)
		m.untrack(unit, sr.in)
		sr.rec.remove(sr.in)
		data := map[string]any{"id": sr.in.id, "processId": sr.in.id, "releaseId": sr.rec.id, "unit": unit}
		if err != nil {
			data["error"] = err.Error()
		}
		m.events.Emit("stale replica stopped", data)
	}()
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// adoptReleases builds release records from prior releases (stopped ones
// are kept as rollback targets) and from live units.
func (m *Manager) adoptReleases(cfg *config.Config, prior *PriorState, byRelease map[string][]units.Status, res *Adopted) []*releaseRec {
	var recs []*releaseRec
	seen := map[string]bool{}
	if prior != nil {
		for _, pr := range prior.Releases {
			rec := &releaseRec{m: m, id: pr.ReleaseID, path: pr.ReleasePath, revision: pr.Revision, cfg: cfg, state: relStopped, ports: pr.Ports}
			rec.activatedAt, rec.drainStartedAt, rec.stoppedAt = parseStamp(pr.ActivatedAt), parseStamp(pr.DrainStartedAt), parseStamp(pr.StoppedAt)
			if live := byRelease[pr.ReleaseID]; len(live) > 0 {
				rec.state = pr.State
				if rec.state != relActive && rec.state != relDraining {
					rec.state = relDraining
				}
				m.adoptInto(rec, cfg, live, prior, res)
			} else if rec.stoppedAt.IsZero() {
				rec.stoppedAt = m.now()
			}
			seen[pr.ReleaseID] = true
			recs = append(recs, rec)
		}
	}
	// Releases only the units know about (no statePath, or written before
	// they started): rebuilt from the units' environment.
	var ids []string
	for id := range byRelease {
		if !seen[id] {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		live := byRelease[id]
		env := envMap(live[0].Env)
		rec := &releaseRec{m: m, id: id, path: env[config.EnvReleasePath], revision: env[config.EnvRevision], cfg: cfg, state: relDraining, ports: portsFromEnv(cfg, env)}
		rec.activatedAt = earliestStart(live)
		m.adoptInto(rec, cfg, live, prior, res)
		recs = append(recs, rec)
	}
	return recs
}

// pickActive: the prior active release if it still runs; without a prior
// state, the live release whose proxied unit started last.
func (m *Manager) pickActive(prior *PriorState, recs []*releaseRec) *releaseRec {
	hasProxied := func(r *releaseRec) bool {
		for _, in := range r.list() {
			if in.def.Load().Policy == config.Proxied {
				return true
			}
		}
		return false
	}
	if prior != nil && prior.ActiveReleaseID != nil {
		for _, r := range recs {
			if r.id == *prior.ActiveReleaseID && hasProxied(r) {
				r.setStateKeepTimes(relActive)
				return r
			}
		}
		return nil
	}
	var best *releaseRec
	var bestAt time.Time
	for _, r := range recs {
		for _, in := range r.list() {
			if in.def.Load().Policy == config.Proxied && in.startedAt.After(bestAt) {
				best, bestAt = r, in.startedAt
			}
		}
	}
	if best != nil {
		best.setStateKeepTimes(relActive)
	}
	return best
}

func (r *releaseRec) setStateKeepTimes(s string) {
	r.mu.Lock()
	r.state = s
	r.mu.Unlock()
}

func (m *Manager) adoptInto(rec *releaseRec, cfg *config.Config, live []units.Status, prior *PriorState, res *Adopted) {
	sort.Slice(live, func(i, j int) bool { return startOrder(cfg, live[i]) < startOrder(cfg, live[j]) })
	for _, st := range live {
		if in := m.adoptInstance(cfg, st, rec, prior, res); in != nil {
			rec.instances = append(rec.instances, in)
			if in.def.Load().Policy == config.Proxied {
				// A running replica of a live release was serving: it is
				// in the pool again. A crashed one rejoins after its
				// restart passes the readiness checks.
				in.inRotation = in.port != 0 && in.pid != 0
			}
		}
	}
}

// startOrder keeps a release's instances in deploy order: handoff services,
// companions, proxied; config order within a group.
func startOrder(cfg *config.Config, st units.Status) int {
	for i := range cfg.Processes {
		d := &cfg.Processes[i]
		if d.ID != st.Identity.Process {
			continue
		}
		group := 1
		switch {
		case d.Policy == config.Service:
			group = 0
		case d.Policy == config.Proxied:
			group = 2
		}
		return group*1_000_000 + i*1000 + st.Identity.Replica
	}
	return 3_000_000
}

// adoptInstance wraps a live unit in an instance without starting anything.
func (m *Manager) adoptInstance(cfg *config.Config, st units.Status, sc scope, prior *PriorState, res *Adopted) *instance {
	def := cfg.Process(st.Identity.Process)
	env := envMap(st.Env)
	rc := cfg.ReleaseContext(st.Identity.Release, env[config.EnvReleasePath], env[config.EnvRevision], portsFromEnv(cfg, env), m.env)
	ownPort, ownPortErr := strconv.Atoi(env[config.EnvPort])
	if def.Policy == config.Proxied && ownPortErr == nil {
		// Each replica has its own port: the unit's ROLLBRIDGE_PORT.
		ports := make([]int, st.Identity.Replica+1)
		ports[st.Identity.Replica] = ownPort
		rc.ReplicaPorts = map[string][]int{def.ID: ports}
	}
	gen := st.Identity.Generation
	in, err := newInstanceGen(m, def, rc, st.Identity.Replica, gen, sc)
	if err != nil {
		// The current config no longer renders for this release (e.g. a new
		// {{env.X}}); keep supervising the unit with what it runs.
		in = &instance{m: m, id: def.InstanceID(st.Identity.Replica), replica: st.Identity.Replica, generation: gen, scope: sc, rc: rc}
		in.def.Store(def)
		if ownPortErr == nil {
			in.port = ownPort
		}
	}
	in.unit = st.Name
	in.pid = st.MainPID
	in.state = stateRunning
	in.startedAt = st.StartedAt
	if p := findPrior(prior, st.Identity.Release, in.id, def); p != nil {
		in.restarts, in.lastStartReason, in.memoryRestarts = p.Restarts, p.LastStartReason, p.MemoryRestarts
		in.lastMemoryRestartAt = parseStamp(p.LastMemoryRestartAt)
		for _, s := range p.RestartTimes {
			if t := parseStamp(s); !t.IsZero() {
				in.restartTimes = append(in.restartTimes, t)
			}
		}
	}
	m.track(st.Name, in)
	if st.MainPID == 0 {
		// Ended while no daemon ran (crashedUnits): Adopt hands it to
		// adoptCrash once everything is wired.
		in.state = stateFailed
		if st.Exit != nil {
			in.exited, in.exit = true, *st.Exit
		}
		res.Crashed = append(res.Crashed, st.Name)
		res.crashed = append(res.crashed, in)
		return in
	}
	in.mu.Lock()
	in.startSamplerLocked()
	in.armRecycleLocked()
	in.mu.Unlock()
	res.Instances = append(res.Instances, st.Name)
	res.PIDs = append(res.PIDs, st.MainPID)
	return in
}

func findPrior(prior *PriorState, release, id string, def *config.Process) *priorProcess {
	if prior == nil {
		return nil
	}
	switch def.Policy {
	case config.Singleton:
		for i := range prior.Singletons {
			if prior.Singletons[i].Process.ID == id {
				return &prior.Singletons[i].Process
			}
		}
	case config.Service:
		for i := range prior.Services {
			if prior.Services[i].Process.ID == id {
				return &prior.Services[i].Process
			}
		}
	}
	for _, r := range prior.Releases {
		if r.ReleaseID != release {
			continue
		}
		for i := range r.Processes {
			if r.Processes[i].ID == id {
				return &r.Processes[i]
			}
		}
	}
	return nil
}

func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// portsFromEnv recovers a release's ports from ROLLBRIDGE_<ID>_PORT.
func portsFromEnv(cfg *config.Config, env map[string]string) map[string]int {
	ports := map[string]int{}
	for i := range cfg.Processes {
		d := &cfg.Processes[i]
		if d.Port == nil {
			continue
		}
		if v, err := strconv.Atoi(env[config.PortEnvName(d.ID)]); err == nil {
			ports[d.ID] = v
		}
	}
	return ports
}

func earliestStart(live []units.Status) time.Time {
	var t time.Time
	for _, st := range live {
		if t.IsZero() || st.StartedAt.Before(t) {
			t = st.StartedAt
		}
	}
	return t
}

func parseStamp(s string) time.Time {
	t, _ := time.Parse("2006-01-02T15:04:05.000Z", s)
	return t
}
