package systemd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

// Status reports one instance. An instance that ended and was collected by
// the manager is still reported (with its Exit) if this runner saw the end.
func (r *Runner) Status(ctx context.Context, name string) (units.Status, error) {
	if !r.owns(name) {
		return units.Status{}, r.notOurs("status", name)
	}
	// The identity is cached for units this runner started or listed; only
	// others need the (slower) full property read for their environment.
	id, known := r.mon.knownIdentity(name)
	var st dbusctl.UnitState
	var err error
	if known {
		st, err = r.conn.State(ctx, name)
	} else {
		var p dbusctl.UnitProperties
		p, err = r.conn.Properties(ctx, name)
		if err == nil {
			st = p.UnitState
			if pid, ok := identityFromProps(name, p); ok {
				id = pid
				r.mon.remember(name, id)
			} else {
				id = identityFromName(name)
			}
		}
	}
	if errors.Is(err, dbusctl.ErrNoSuchUnit) {
		if rec, ok := r.mon.lastExit(name); ok {
			exit := rec.exit
			return units.Status{Name: name, Identity: rec.id, State: rec.state, StartedAt: rec.startedAt, Exit: &exit}, nil
		}
		return units.Status{}, fmt.Errorf("status %s: %w", name, units.ErrNotFound)
	}
	if err != nil {
		return units.Status{}, fmt.Errorf("status %s: %w", name, err)
	}
	return r.statusFromState(name, id, st), nil
}

// List returns every instance unit of app the manager has loaded (running,
// stopping or failed), including ones started by an earlier runner. The
// identity comes from each unit's environment and must agree with its name.
func (r *Runner) List(ctx context.Context, app string) ([]units.Status, error) {
	list, err := r.conn.ListUnits(ctx, units.AppUnitPattern(app))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", app, err)
	}
	out := make([]units.Status, 0, len(list))
	for _, u := range list {
		p, err := r.conn.Properties(ctx, u.Name)
		if errors.Is(err, dbusctl.ErrNoSuchUnit) {
			continue // collected meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", app, err)
		}
		id, ok := identityFromProps(u.Name, p)
		if !ok || id.App != app {
			if r.log != nil {
				r.log.Warn("skipping unit whose environment does not match its name", "unit", u.Name)
			}
			continue
		}
		if app == r.app {
			r.mon.remember(u.Name, id)
		}
		st := r.statusFromState(u.Name, id, p.UnitState)
		st.Env = p.Environment
		out = append(out, st)
	}
	return out, nil
}

// identityFromProps rebuilds the Identity from the unit's environment and
// checks it against the unit name.
func identityFromProps(name string, p dbusctl.UnitProperties) (units.Identity, bool) {
	id, ok := units.IdentityFromEnv(p.Environment)
	if !ok {
		return units.Identity{}, false
	}
	if id.UnitName() != name {
		return units.Identity{}, false
	}
	return id, true
}

// identityFromName is the fallback for units whose environment is no longer
// readable: the replica count of "worker#2" is unknown, so it is reported
// as the smallest consistent value.
func identityFromName(name string) units.Identity {
	app, release, instance, generation, _ := units.ParseUnitNameGeneration(name)
	id := units.Identity{App: app, Release: release, Process: instance, Replicas: 1, Generation: generation}
	if i := strings.LastIndexByte(instance, '#'); i > 0 {
		if n, err := strconv.Atoi(instance[i+1:]); err == nil {
			id.Process, id.Replica, id.Replicas = instance[:i], n, max(n+1, 2)
		}
	}
	return id
}

func (r *Runner) statusFromState(name string, id units.Identity, p dbusctl.UnitState) units.Status {
	st := units.Status{Name: name, Identity: id, MainPID: p.MainPID, StartedAt: p.ExecMainStartTimestamp}
	stopping := r.mon.isStopping(name)
	switch p.ActiveState {
	case "active", "reloading":
		st.State = units.StateRunning
		if stopping {
			st.State = units.StateStopping
		}
	case "activating":
		st.State = units.StateStarting
	case "deactivating":
		st.State = units.StateStopping
	default: // inactive, failed
		st.MainPID = 0
		if e, ok := p.Exit(); ok {
			exit := toExit(e)
			st.Exit, st.State = &exit, exitState(exit, stopping)
		} else if rec, ok := r.mon.lastExit(name); ok {
			exit := rec.exit
			st.Exit, st.State = &exit, rec.state
		} else {
			st.State = units.StateUnknown
		}
		return st
	}
	if p.ControlGroup != "" {
		st.PIDs = cgroupPIDs(p.ControlGroup)
	}
	if p.MemoryCurrent != dbusctl.MemoryUnknown {
		st.MemoryBytes = p.MemoryCurrent
	} else {
		st.MemoryBytes = sumRSS(st.PIDs)
	}
	return st
}

// cgroupRoots are where a unit's ControlGroup may be mounted: cgroup2 on a
// hybrid host, the name=systemd v1 hierarchy, a pure cgroup2 host.
var cgroupRoots = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"}

// cgroupPIDs lists every process in the cgroup and its children, sorted.
func cgroupPIDs(cg string) []int {
	for _, root := range cgroupRoots {
		dir := filepath.Join(root, cg)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			continue
		}
		var pids []int
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
		slices.Sort(pids)
		return slices.Compact(pids)
	}
	return nil
}

// sumRSS adds VmRSS of pids (the fallback when the manager has no memory
// accounting, e.g. a user manager on a hybrid-cgroup host).
func sumRSS(pids []int) uint64 {
	var total uint64
	for _, pid := range pids {
		total += units.RSSBytes(pid)
	}
	return total
}
