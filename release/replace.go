package release

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/rollbridge/rollbridge/config"
)

// Start reasons of replacements (spec §1.6 plus issue 9).
const (
	reasonRecycle = "recycle"
	// reasonRequested: the instance asked to be replaced (sd_notify
	// STATUS=rollbridge:replace).
	reasonRequested = "requested"
)

// ReplaceRequest is the sd_notify STATUS= text with which an instance asks
// to be replaced gracefully ("STATUS=rollbridge:replace", optionally
// followed by a space and a reason). It needs health.notify (the runner's
// notify socket).
const ReplaceRequest = "rollbridge:replace"

func isReplaceRequest(status string) bool {
	rest, ok := strings.CutPrefix(status, ReplaceRequest)
	return ok && (rest == "" || rest[0] == ' ')
}

// requestedReplace acts on an instance's replacement request: a proxied
// replica is replaced start-first (the requester serves until its
// replacement is ready), any other instance is stopped gracefully and
// started again. Repeated requests of one incarnation count once.
func (m *Manager) requestedReplace(in *instance, status string) {
	in.mu.Lock()
	if in.replaceRequested || in.pid == 0 {
		in.mu.Unlock()
		return
	}
	in.replaceRequested = true
	in.mu.Unlock()
	in.emit("process replacement requested", map[string]any{"id": in.id, "status": status})
	if !in.scope.wantsRunning() || m.isStopping() {
		return
	}
	ctx := m.ctx
	if in.release() != nil {
		if _, err := m.replaceReplica(ctx, in, reasonRequested); err != nil {
			in.emit("process replacement failed", map[string]any{"error": err.Error(), "id": in.id})
			in.mu.Lock()
			in.replaceRequested = false // the incarnation keeps serving: it may ask again
			in.mu.Unlock()
		}
		return
	}
	if err := in.stop(ctx); err != nil {
		in.emit("process replacement failed", map[string]any{"error": err.Error(), "id": in.id})
		return
	}
	if !in.scope.wantsRunning() || m.isStopping() {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, in.startBound())
	defer cancel()
	if err := in.start(sctx, reasonRequested); err != nil {
		in.emit("process replacement failed", map[string]any{"error": err.Error(), "id": in.id})
	}
}

// errNotWanted: the release (or the daemon) stopped wanting the replica
// while its replacement was being prepared.
var errNotWanted = errors.New("the release is no longer running")

// replaceReplica replaces one proxied replica without ever shrinking its
// release's pool: the new incarnation (the next generation of the replica
// slot, so both units can exist at once) starts on a fresh port from the
// process's range, must pass its readiness checks, joins the pool as the
// old one leaves it, and only then is the old one drained (its in-flight
// requests finish, bounded by proxy.drainTimeoutMs) and stopped gracefully.
// If the new one fails, it is stopped and the old one keeps serving.
// Replacements of one release run one at a time.
func (m *Manager) replaceReplica(ctx context.Context, old *instance, reason string) (*instance, error) {
	rec := old.release()
	if rec == nil {
		return nil, fmt.Errorf("replace %s: not a proxied replica", old.id)
	}
	rec.replacing.Lock()
	defer rec.replacing.Unlock()
	if !rec.wantsRunning() || m.isStopping() {
		return nil, fmt.Errorf("replace %s: %w", old.id, errNotWanted)
	}
	if !rec.has(old) {
		return nil, fmt.Errorf("replace %s: it was replaced meanwhile", old.id)
	}
	old.mu.Lock()
	def, rc, replica, oldPort, oldPID, oldUnit := old.def.Load(), old.rc, old.replica, old.port, old.pid, old.unit
	restarts, memRestarts, memAt := old.restarts, old.memoryRestarts, old.lastMemoryRestartAt
	old.mu.Unlock()
	if def.Port == nil {
		return nil, fmt.Errorf("replace %s: the process has no port range", old.id)
	}
	port, hold, err := allocateReplacementPort(ctx, rc.Proxy.UpstreamHost, *def.Port, rec.proxiedPorts())
	if err != nil {
		return nil, fmt.Errorf("replace %s: %w", old.id, err)
	}
	nu, err := newInstanceGen(m, def, replacementContext(rc, def, replica, port), replica, rec.nextGeneration(replica), rec)
	if err != nil {
		hold.Close()
		return nil, fmt.Errorf("replace %s: %w", old.id, err)
	}
	nu.restarts, nu.memoryRestarts, nu.lastMemoryRestartAt = restarts, memRestarts, memAt
	if !rec.addAfter(old, nu) {
		hold.Close()
		return nil, fmt.Errorf("replace %s: %w", old.id, errNotWanted)
	}
	hold.Close()
	m.events.Emit("replica replacement starting", map[string]any{"id": old.id, "processId": old.id, "releaseId": rec.id,
		"reason": reason, "previousPid": oldPID, "port": port})

	sctx, cancel := context.WithTimeout(ctx, nu.startBound())
	err = nu.start(sctx, reason)
	cancel()
	if err == nil {
		err = m.checkReady(ctx, nu)
	}
	if err == nil && (!rec.wantsRunning() || m.isStopping()) {
		err = errNotWanted
	}
	// One switch: the new incarnation joins as the old one leaves (a new
	// one that already exited cannot join).
	if err == nil && !nu.setInRotation(true) {
		err = fmt.Errorf("%s exited before joining the pool", nu.unit)
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		_ = nu.stop(cctx)
		cancel()
		m.untrack(nu.unit, nu)
		rec.remove(nu)
		m.events.Emit("replica replacement failed", map[string]any{"id": old.id, "processId": old.id, "releaseId": rec.id,
			"reason": reason, "error": err.Error()})
		return nil, fmt.Errorf("replace %s: %w", old.id, err)
	}

	old.setInRotation(false)
	m.reroute(rec)
	if !nu.inPool() {
		// The new incarnation died right after joining: keep the old one.
		old.setInRotation(true)
		m.reroute(rec)
		_ = nu.stop(ctx) // cancels a crash restart its exit may have scheduled
		m.untrack(nu.unit, nu)
		rec.remove(nu)
		return nil, fmt.Errorf("replace %s: %s exited right after joining the pool", old.id, nu.unit)
	}
	if replica == 0 {
		rec.mu.Lock()
		ports := maps.Clone(rec.ports)
		ports[def.ID] = port
		rec.ports = ports
		rec.mu.Unlock()
	}
	if oldPort != 0 {
		addr := net.JoinHostPort(rc.Proxy.UpstreamHost, strconv.Itoa(oldPort))
		m.traffic.DrainUpstream(ctx, rec.id, addr, m.now().Add(m.config().Proxy.DrainTimeout))
	}
	stopErr := old.stop(ctx)
	m.untrack(old.unit, old)
	rec.remove(old)
	nu.mu.Lock()
	newPID, newUnit := nu.pid, nu.unit
	nu.mu.Unlock()
	m.events.Emit("replica replaced", map[string]any{"id": old.id, "processId": old.id, "releaseId": rec.id, "reason": reason,
		"previousPid": oldPID, "pid": newPID, "previousUnit": oldUnit, "unit": newUnit})
	m.onChange()
	if stopErr != nil {
		return nu, fmt.Errorf("replace %s: the replacement serves, but stopping the old instance failed: %w", old.id, stopErr)
	}
	return nu, nil
}

// replacementContext is rc with the replica's port set to port (and, for
// replica 0, {{ports.<id>}} too, which means replica 0's port).
func replacementContext(rc config.ReleaseContext, def *config.Process, replica, port int) config.ReleaseContext {
	rp := make([]int, max(def.Replicas, replica+1))
	copy(rp, rc.ReplicaPorts[def.ID])
	rp[replica] = port
	rc.ReplicaPorts = maps.Clone(rc.ReplicaPorts)
	if rc.ReplicaPorts == nil {
		rc.ReplicaPorts = map[string][]int{}
	}
	rc.ReplicaPorts[def.ID] = rp
	if replica == 0 {
		rc.Ports = maps.Clone(rc.Ports)
		if rc.Ports == nil {
			rc.Ports = map[string]int{}
		}
		rc.Ports[def.ID] = port
	}
	return rc
}

// has reports whether in is one of r's instances.
func (r *releaseRec) has(in *instance) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.instances {
		if x == in {
			return true
		}
	}
	return false
}

// addAfter inserts nu right after old, only while r still wants its
// processes (a retirement or stop that began lists the instances after
// marking the release, so nu is either seen by it or never added).
func (r *releaseRec) addAfter(old, nu *instance) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != relStarting && r.state != relActive || r.halted {
		return false
	}
	for i, x := range r.instances {
		if x == old {
			r.instances = append(r.instances[:i+1], append([]*instance{nu}, r.instances[i+1:]...)...)
			return true
		}
	}
	return false
}

// remove drops in from r's instances.
func (r *releaseRec) remove(in *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.instances {
		if x == in {
			r.instances = append(r.instances[:i], r.instances[i+1:]...)
			return
		}
	}
}

// proxiedPorts lists the ports r's proxied instances use.
func (r *releaseRec) proxiedPorts() []int {
	var out []int
	for _, in := range r.list() {
		if in.def.Load().Policy == config.Proxied {
			in.mu.Lock()
			if in.port != 0 {
				out = append(out, in.port)
			}
			in.mu.Unlock()
		}
	}
	return out
}

// nextGeneration is one more than the highest generation of the replica
// slot among r's instances.
func (r *releaseRec) nextGeneration(replica int) int {
	g := 0
	for _, in := range r.list() {
		if in.def.Load().Policy == config.Proxied && in.replica == replica {
			in.mu.Lock()
			g = max(g, in.generation+1)
			in.mu.Unlock()
		}
	}
	return g
}

// armRecycleLocked schedules the next recycle of the running incarnation
// (recycle.everyMs plus a random part of jitterMs); the caller holds in.mu.
func (in *instance) armRecycleLocked() {
	r := in.def.Load().Recycle
	if r == nil || in.recycleTimer != nil {
		return
	}
	d := r.Every
	if r.Jitter > 0 {
		d += rand.N(r.Jitter)
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		in.mu.Lock()
		mine := in.recycleTimer == t
		if mine {
			in.recycleTimer = nil
		}
		in.mu.Unlock()
		if mine {
			in.m.recycle(in)
		}
	})
	in.recycleTimer = t
}

func (in *instance) disarmRecycleLocked() {
	if in.recycleTimer != nil {
		in.recycleTimer.Stop()
		in.recycleTimer = nil
	}
}

// recycle replaces an instance on its schedule (config recycle): a proxied
// replica start-first (replaceReplica), anything else by a graceful stop
// and a start, like `rollbridge restart`. Both start with reason recycle.
func (m *Manager) recycle(in *instance) {
	m.mu.Lock()
	detached := m.detached
	m.mu.Unlock()
	if detached || m.isStopping() || !in.scope.wantsRunning() || !in.isLive() {
		return
	}
	in.emit("process recycling", map[string]any{"id": in.id, "reason": reasonRecycle})
	ctx := m.ctx
	if in.release() != nil {
		if _, err := m.replaceReplica(ctx, in, reasonRecycle); err != nil {
			in.emit("process recycle failed", map[string]any{"error": err.Error(), "id": in.id})
			in.mu.Lock()
			if in.pid != 0 {
				in.armRecycleLocked() // try again next period
			}
			in.mu.Unlock()
		}
		return
	}
	if err := in.stop(ctx); err != nil {
		in.emit("process recycle failed", map[string]any{"error": err.Error(), "id": in.id})
		return
	}
	if !in.scope.wantsRunning() || m.isStopping() {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, in.startBound())
	defer cancel()
	if err := in.start(sctx, reasonRecycle); err != nil {
		in.emit("process recycle failed", map[string]any{"error": err.Error(), "id": in.id})
	}
}
