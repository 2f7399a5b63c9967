package cleanup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/dbusctl"
)

// Timing of a forced stop (spec Appendix C).
const (
	// PollInterval is how often a stopping process (or unit) is checked.
	PollInterval = 50 * time.Millisecond
	// KillConfirm is how long a SIGKILLed process may take to disappear.
	KillConfirm = 500 * time.Millisecond
)

// ErrNoStatePath: recover has nothing to look at — no statePath, and no
// systemd manager to list units with (the exec runner is selected or none
// answers).
var ErrNoStatePath = errors.New("No statePath is configured; set statePath in the config to enable recovery.")

// InUseError: something answers on the control socket (or the probe could
// not tell), so recover refuses: the processes may be a live daemon's.
type InUseError struct {
	Path string
	// Err is the probe's error when it could not tell; nil when something
	// answered.
	Err error
}

func (e *InUseError) Error() string {
	return "A daemon (or another process) is using " + e.Path + "; stop it before recovering — recover is for cleaning up after a crash."
}

func (e *InUseError) Unwrap() error { return e.Err }

// Options are shared by Recover and Predeploy.
type Options struct {
	// Config is the loaded application config (required).
	Config *config.Config
	// WorkDir resolves a relative statePath (the CLI's working directory,
	// as the daemon resolves it against its own); "" = the process's.
	WorkDir string
	// Runner is auto, systemd or exec (ROLLBRIDGE_RUNNER); "" = auto. exec
	// never asks systemd; auto asks the manager found from the environment
	// (DBUS_SESSION_BUS_ADDRESS / XDG_RUNTIME_DIR, else the system manager
	// as root) for ManagerProbeTimeout.
	Runner string
	// Manager, when set, is used instead of dialing (tests); not closed.
	Manager *dbusctl.Conn
	// Dial configures the connection to the manager when Manager is nil.
	Dial dbusctl.Options
	// Signal sends signals (kill(2) semantics, negative pid = group);
	// nil = Kill. Tests replace it to simulate EPERM.
	Signal func(pid int, sig syscall.Signal) error
	// ProcDir is the proc filesystem; "" = /proc.
	ProcDir string
	// KeepAdoptable leaves alone the units a new daemon would re-adopt (a
	// configured process, replica within the count) and keeps the state
	// file for it; predeploy-cleanup uses it so a crashed daemon's release
	// keeps serving until the next deploy re-adopts it.
	KeepAdoptable bool
}

func (o Options) kill() func(int, syscall.Signal) error {
	if o.Signal != nil {
		return o.Signal
	}
	return Kill
}

func (o Options) procDir() string {
	if o.ProcDir != "" {
		return o.ProcDir
	}
	return "/proc"
}

// statePath is the absolute state file path, "" when none is configured.
func (o Options) statePath() string {
	p := o.Config.StatePath
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	if o.WorkDir != "" {
		return filepath.Join(o.WorkDir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// Leftovers are what a previous daemon left running.
type Leftovers struct {
	Units     []Unit
	Processes []Process
}

// Len is the number of units and processes.
func (l Leftovers) Len() int { return len(l.Units) + len(l.Processes) }

// Lines renders one entry per unit, then per process (without indent).
func (l Leftovers) Lines() []string {
	out := make([]string, 0, l.Len())
	for _, u := range l.Units {
		out = append(out, u.String())
	}
	for _, p := range l.Processes {
		out = append(out, p.String())
	}
	return out
}

// Report is the outcome of Recover.
type Report struct {
	// Found is everything listed; Stopped and Remaining split it after a
	// forced run (both empty in a dry run).
	Found, Stopped, Remaining Leftovers
	Forced                    bool
	// StateFile is the state file's absolute path ("" without statePath);
	// StateCleared reports that a forced run removed it (or it was absent).
	StateFile    string
	StateCleared bool
	// Kept are units left running for re-adoption (Options.KeepAdoptable).
	Kept []Unit
}

// Recover is `rollbridge recover` (spec §8.3, systemd design): refuse while
// something answers on the control socket, list the leftovers and, when
// force is set, stop them and delete the state file if nothing remains.
// Leftovers that could not be stopped are reported in Remaining (with a nil
// error); the caller exits 1.
func Recover(ctx context.Context, opts Options, force bool) (Report, error) {
	if opts.Config == nil {
		return Report{}, errors.New("recover: no config given")
	}
	var conn *dbusctl.Conn
	found := false
	if opts.statePath() == "" {
		c, closeFn, err := findManager(ctx, opts)
		if err != nil {
			return Report{}, err
		}
		defer closeFn()
		if c == nil {
			return Report{}, ErrNoStatePath
		}
		conn, found = c, true
	}
	if err := refuseIfInUse(ctx, opts.Config.Control.Path); err != nil {
		return Report{}, err
	}
	if !found {
		c, closeFn, err := findManager(ctx, opts)
		if err != nil {
			return Report{}, err
		}
		defer closeFn()
		conn = c
	}
	return sweep(ctx, opts, conn, force)
}

func refuseIfInUse(ctx context.Context, path string) error {
	res, err := control.Probe(ctx, path)
	if err != nil || res.Alive {
		return &InUseError{Path: path, Err: err}
	}
	return nil
}

// sweep lists the leftovers (units through conn when it is not nil,
// processes from the state file) and, with force, stops them.
func sweep(ctx context.Context, opts Options, conn *dbusctl.Conn, force bool) (Report, error) {
	rep := Report{StateFile: opts.statePath(), Forced: force}
	if conn != nil {
		list, err := listUnits(ctx, conn, opts.Config.Application)
		if err != nil {
			return rep, err
		}
		for _, u := range list {
			if opts.KeepAdoptable && adoptable(opts.Config, u) {
				rep.Kept = append(rep.Kept, u)
			} else {
				rep.Found.Units = append(rep.Found.Units, u)
			}
		}
	}
	if rep.StateFile != "" {
		names := map[string]bool{}
		mains := map[int]bool{}
		for _, u := range append(rep.Found.Units, rep.Kept...) {
			names[u.Name] = true
			mains[u.PID] = true
		}
		// A process inside a unit goes with its unit.
		for _, p := range StateProcesses(rep.StateFile, aliveWith(opts.kill())) {
			if !mains[p.PID] && !inUnit(opts.procDir(), p.PID, names) {
				rep.Found.Processes = append(rep.Found.Processes, p)
			}
		}
	}
	if !force {
		return rep, nil
	}
	grace := opts.Config.Proxy.ForceStopTimeout
	if len(rep.Found.Units) > 0 {
		rep.Stopped.Units, rep.Remaining.Units = stopUnits(ctx, conn, rep.Found.Units, grace)
	}
	rep.Stopped.Processes, rep.Remaining.Processes = stopProcesses(ctx, opts, rep.Found.Processes, grace)
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	if rep.Remaining.Len() == 0 && len(rep.Kept) == 0 && rep.StateFile != "" {
		if err := os.Remove(rep.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("remove state file: %w", err)
		}
		rep.StateCleared = true
	}
	return rep, nil
}

// stopProcesses stops every process concurrently and returns the stopped
// and the remaining ones, each in the input order.
func stopProcesses(ctx context.Context, opts Options, list []Process, grace time.Duration) (stopped, remaining []Process) {
	ok := make([]bool, len(list))
	var wg sync.WaitGroup
	for i, p := range list {
		wg.Go(func() { ok[i] = stopProcess(ctx, opts.kill(), opts.procDir(), p.PID, grace) })
	}
	wg.Wait()
	for i, p := range list {
		if ok[i] {
			stopped = append(stopped, p)
		} else {
			remaining = append(remaining, p)
		}
	}
	return stopped, remaining
}

// stopProcess is the spec's forced stop of one recorded process: SIGTERM to
// its process group (ESRCH: already gone, stopped; any other refusal such
// as EPERM: cannot stop), then poll every PollInterval for up to grace,
// then SIGKILL the group and confirm within KillConfirm that the pid is
// gone. Two refinements: a pid that leads no group (ESRCH for the group
// while the pid lives) is signalled itself, and the wait lasts until the
// group is gone too, so members that outlive the leader are SIGKILLed
// instead of left behind (spec §11.2-19).
func stopProcess(ctx context.Context, kill func(int, syscall.Signal) error, procDir string, pid int, grace time.Duration) bool {
	signal := func(sig syscall.Signal) error {
		err := kill(-pid, sig)
		if errors.Is(err, syscall.ESRCH) {
			err = kill(pid, sig)
		}
		return err
	}
	pidGone := func() bool { return !running(kill, procDir, pid) }
	groupGone := func() bool { return pidGone() && errors.Is(kill(-pid, 0), syscall.ESRCH) }
	switch err := signal(syscall.SIGTERM); {
	case errors.Is(err, syscall.ESRCH):
		return true
	case err != nil:
		return false
	}
	if waitUntil(ctx, groupGone, grace) {
		return true
	}
	if err := signal(syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false
	}
	return waitUntil(ctx, pidGone, KillConfirm)
}

// running is alive, except that a zombie (exited, not yet reaped by its
// parent) counts as gone: there is nothing left to stop.
func running(kill func(int, syscall.Signal) error, procDir string, pid int) bool {
	if !aliveWith(kill)(pid) {
		return false
	}
	raw, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

// waitUntil polls cond every PollInterval until it holds (true) or d has
// passed (false, after one last look).
func waitUntil(ctx context.Context, cond func() bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) || sleep(ctx, min(PollInterval, time.Until(deadline))) != nil {
			return cond()
		}
	}
}

// sleep waits d or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// adoptable reports whether a daemon started with cfg would re-adopt u (the
// rule of release.Manager.Adopt).
func adoptable(cfg *config.Config, u Unit) bool {
	id, replica := u.Instance, 0
	if i := strings.LastIndexByte(id, '#'); i > 0 {
		n, err := strconv.Atoi(id[i+1:])
		if err != nil {
			return false
		}
		id, replica = id[:i], n
	}
	def := cfg.Process(id)
	return def != nil && replica < def.Replicas
}
