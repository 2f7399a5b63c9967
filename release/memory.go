package release

import (
	"context"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// Memory supervision (spec §5.7): while an instance with a memory block
// runs, sample it every checkInterval. The figure is the runner's
// Status.MemoryBytes — the unit cgroup's MemoryCurrent where the manager
// accounts memory, else the sum of VmRSS over every process of the instance
// (so a setsid or daemonized child counts too). Above limitBytes the
// instance gets a graceful memory restart; above warnBytes a warning, once
// per crossing.

// startSampler begins sampling the current incarnation; the caller holds
// in.mu. The sampler ends with cancel (stop, exit) or its context.
func (in *instance) startSamplerLocked() {
	if in.def.Load().Memory == nil || in.samplerCancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(in.m.ctx)
	in.samplerCancel = cancel
	interval, unit := in.def.Load().Memory.CheckInterval, in.unit
	go in.sampleLoop(ctx, interval, unit)
}

func (in *instance) stopSamplerLocked() {
	if in.samplerCancel != nil {
		in.samplerCancel()
		in.samplerCancel = nil
	}
}

func (in *instance) sampleLoop(ctx context.Context, interval time.Duration, unit string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if in.sample(ctx, unit) {
				return
			}
		}
	}
}

// sample takes one measurement; it returns true when it started a memory
// restart (which ends this sampler).
func (in *instance) sample(ctx context.Context, unit string) bool {
	st, err := in.m.runner.Status(ctx, unit)
	if err != nil || len(st.PIDs) == 0 {
		return false
	}
	children := readChildren(st.PIDs)
	rss := st.MemoryBytes
	in.mu.Lock()
	if in.pid == 0 || in.unit != unit || in.memoryRestarting {
		in.mu.Unlock()
		return false
	}
	in.rssBytes, in.children = rss, children
	mem := in.def.Load().Memory
	if mem == nil {
		in.mu.Unlock()
		return false
	}
	if rss > mem.LimitBytes {
		in.memoryRestarting = true
		in.mu.Unlock()
		in.emit("memory limit exceeded", map[string]any{"id": in.id, "limitBytes": mem.LimitBytes, "rssBytes": rss})
		go in.memoryRestart()
		return true
	}
	warn := false
	switch {
	case mem.WarnBytes > 0 && rss > mem.WarnBytes && !in.warned:
		in.warned, warn = true, true
	case rss <= mem.WarnBytes:
		in.warned = false
	}
	in.mu.Unlock()
	if warn {
		in.emit("memory warning", map[string]any{"id": in.id, "rssBytes": rss, "warnBytes": mem.WarnBytes})
	}
	return false
}

// memoryRestart stops the instance gracefully (hooks included) and starts it
// again with reason memory, if its context still wants it.
func (in *instance) memoryRestart() {
	defer func() {
		in.mu.Lock()
		in.memoryRestarting = false
		in.mu.Unlock()
	}()
	ctx := in.m.ctx
	if in.release() != nil && in.scope.wantsRunning() {
		// A proxied replica is replaced start-first, so the pool keeps its
		// size; if that fails (no free port), it restarts in place.
		nu, err := in.m.replaceReplica(ctx, in, reasonMemory)
		if nu != nil {
			nu.mu.Lock()
			nu.memoryRestarts++
			nu.lastMemoryRestartAt = in.m.now()
			nu.mu.Unlock()
		}
		if err == nil || nu != nil || !in.isLive() {
			return
		}
		// Fall through: restart in place.
	}
	if err := in.stop(ctx); err != nil {
		in.emit("memory restart failed", map[string]any{"error": err.Error(), "id": in.id})
		return
	}
	if !in.scope.wantsRunning() || in.m.isStopping() {
		return
	}
	in.mu.Lock()
	in.memoryRestarts++
	in.lastMemoryRestartAt = in.m.now()
	in.warned = false
	in.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, in.startBound())
	defer cancel()
	if err := in.start(sctx, reasonMemory); err != nil {
		in.emit("memory restart failed", map[string]any{"error": err.Error(), "id": in.id})
		return
	}
	in.rejoin(ctx)
}

// readChildren describes each pid: command (comm) and VmRSS, sorted by pid.
func readChildren(pids []int) []Child {
	out := make([]Child, 0, len(pids))
	for _, pid := range pids {
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err != nil {
			continue
		}
		out = append(out, Child{Command: strings.TrimSpace(string(comm)), PID: pid, RSSBytes: units.RSSBytes(pid)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}
