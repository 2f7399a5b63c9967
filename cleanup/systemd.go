package cleanup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

// Runner kinds, as accepted by `rollbridge daemon --runner` and
// ROLLBRIDGE_RUNNER.
const (
	RunnerAuto    = "auto"
	RunnerSystemd = "systemd"
	RunnerExec    = "exec"
)

// ManagerProbeTimeout bounds finding the systemd manager (the daemon's
// auto-detection uses the same bound).
const ManagerProbeTimeout = 3 * time.Second

// listTimeout bounds listing the application's units.
const listTimeout = 10 * time.Second

// Unit is a live instance unit of the application.
type Unit struct {
	// Name is the unit name, e.g. rollbridge-shop-v1-web.service.
	Name string
	// Instance and Release come from the unit's environment, or from its
	// name when the environment does not carry them.
	Instance string
	Release  string
	// PID is the main pid (0 when the main process already exited and the
	// rest of the cgroup lingers).
	PID int
	// Problem says why the unit could not be stopped ("" otherwise).
	Problem string
}

// String renders the list entry: `<instance> (pid <pid>, release <id>, unit <name>)`.
func (u Unit) String() string {
	return fmt.Sprintf("%s (pid %d, release %s, unit %s)", u.Instance, u.PID, u.Release, u.Name)
}

// findManager applies the daemon's runner rule: exec never asks systemd;
// auto uses the manager when one answers within ManagerProbeTimeout;
// systemd fails without one. conn is nil when no manager is used; close
// releases a connection opened here.
func findManager(ctx context.Context, opts Options) (conn *dbusctl.Conn, closeFn func(), err error) {
	kind := opts.Runner
	switch kind {
	case "":
		kind = RunnerAuto
	case RunnerAuto, RunnerSystemd:
	case RunnerExec:
		return nil, func() {}, nil
	default:
		return nil, nil, fmt.Errorf("unknown runner %q (ROLLBRIDGE_RUNNER): use auto, systemd or exec", kind)
	}
	if opts.Manager != nil {
		return opts.Manager, func() {}, nil
	}
	pctx, cancel := context.WithTimeout(ctx, ManagerProbeTimeout)
	defer cancel()
	dial := opts.Dial
	if dial.ConnectTimeout == 0 {
		dial.ConnectTimeout = ManagerProbeTimeout
	}
	c, err := dbusctl.Dial(pctx, dial)
	if err == nil {
		// A bus without a manager fails on the first call, not on dial.
		if _, err = c.SystemState(pctx); err != nil {
			c.Close()
		}
	}
	switch {
	case err == nil:
		return c, func() { c.Close() }, nil
	case kind == RunnerSystemd:
		return nil, nil, fmt.Errorf("systemd runner: no systemd manager answers: %w (run under a systemd manager, or set ROLLBRIDGE_RUNNER=exec)", err)
	case ctx.Err() != nil:
		return nil, nil, ctx.Err()
	}
	return nil, func() {}, nil
}

// listUnits returns the application's running instance units, sorted by
// name. Failed units hold no process; the runner resets such a name before
// reusing it, so they are not leftovers.
func listUnits(ctx context.Context, conn *dbusctl.Conn, app string) ([]Unit, error) {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	pattern := units.AppUnitPattern(app)
	list, err := conn.ListUnits(lctx, pattern)
	if err != nil {
		return nil, fmt.Errorf("list %s units: %w", pattern, err)
	}
	var out []Unit
	for _, info := range list {
		nameApp, release, instance, ok := units.ParseUnitName(info.Name)
		if !ok || nameApp != app {
			continue // the glob also matches names that are not ours
		}
		p, err := conn.Properties(lctx, info.Name)
		if errors.Is(err, dbusctl.ErrNoSuchUnit) {
			continue // collected meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list %s units: %w", pattern, err)
		}
		if !p.Running() {
			continue
		}
		u := Unit{Name: info.Name, Instance: instance, Release: release, PID: p.MainPID}
		if id, ok := units.IdentityFromEnv(p.Environment); ok && id.App == app {
			u.Instance, u.Release = id.InstanceID(), id.Release
		}
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b Unit) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// stopUnits stops every unit concurrently and returns the stopped and the
// remaining ones, each in the input order.
func stopUnits(ctx context.Context, conn *dbusctl.Conn, list []Unit, grace time.Duration) (stopped, remaining []Unit) {
	problems := make([]string, len(list))
	var wg sync.WaitGroup
	for i, u := range list {
		wg.Go(func() { problems[i] = stopUnit(ctx, conn, u.Name, grace) })
	}
	wg.Wait()
	for i, u := range list {
		if problems[i] == "" {
			stopped = append(stopped, u)
		} else {
			u.Problem = problems[i]
			remaining = append(remaining, u)
		}
	}
	return stopped, remaining
}

// stopUnit stops one unit through its manager: a stop job (the unit's
// KillSignal to the whole cgroup, escalated by the manager after the unit's
// own TimeoutStopSec) waited for up to grace — the recover window,
// proxy.forceStopTimeoutMs — then SIGKILL to the whole cgroup and
// KillConfirm to see it end; finally the failed state is reset so nothing
// lingers. It returns "" when the unit ended, else why not.
func stopUnit(ctx context.Context, conn *dbusctl.Conn, name string, grace time.Duration) string {
	sctx, cancel := context.WithTimeout(ctx, grace)
	err := conn.Stop(sctx, name)
	cancel()
	if err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		if ctx.Err() != nil {
			return ctx.Err().Error()
		}
		var jerr *dbusctl.JobError
		if sctx.Err() == nil && !errors.As(err, &jerr) {
			// Refused (permissions, a broken manager): do not escalate
			// behind the manager's back.
			return err.Error()
		}
		// The window passed, or the stop job ended badly (a unit that
		// never sends SIGKILL timed out): kill what is left.
		if kerr := conn.Kill(ctx, name, syscall.SIGKILL); kerr != nil &&
			!errors.Is(kerr, dbusctl.ErrNoSuchUnit) && !errors.Is(kerr, dbusctl.ErrNoSuchProcess) {
			return kerr.Error()
		}
		if !waitUnitEnded(ctx, conn, name, KillConfirm) {
			return fmt.Sprintf("still running %v after SIGKILL", KillConfirm)
		}
	}
	if err := conn.ResetFailed(ctx, name); err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		return err.Error()
	}
	return ""
}

// waitUnitEnded polls the unit's state every PollInterval for up to d.
func waitUnitEnded(ctx context.Context, conn *dbusctl.Conn, name string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		st, err := conn.State(ctx, name)
		if errors.Is(err, dbusctl.ErrNoSuchUnit) || (err == nil && !st.Running()) {
			return true
		}
		if time.Now().After(deadline) || sleep(ctx, PollInterval) != nil {
			return false
		}
	}
}

// inUnit reports whether pid runs inside one of the named units, read from
// /proc/<pid>/cgroup (any hierarchy: the unit's cgroup is the path segment
// named after it, sub-cgroups included).
func inUnit(procDir string, pid int, names map[string]bool) bool {
	if len(names) == 0 {
		return false
	}
	f, err := os.Open(filepath.Join(procDir, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for seg := range strings.SplitSeq(parts[2], "/") {
			if names[seg] {
				return true
			}
		}
	}
	return false
}
