// Package systemd is the units.Runner that runs every instance as a
// transient systemd service unit, driven over D-Bus through dbusctl.
//
// One unit per instance, named by units.Identity.UnitName, in the
// application's slice, with the identity in its Environment: the units
// outlive the daemon, and a fresh Runner re-adopts them (List, Status, Stop,
// Watch) with their original pids. KillMode=control-group makes "the whole
// process tree" exact: a setsid or double-forked child stays in the cgroup
// and is stopped with the rest. Exits are captured from D-Bus
// PropertiesChanged signals, not by polling. Output goes to journald and is
// read back with units/journal. See docs/runtime.md, "Systemd runner".
package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/account"
	"github.com/rollbridge/rollbridge/units/journal"
)

// Options configure New.
type Options struct {
	// Bus selects the manager (dbusctl.BusAuto by default: the user manager
	// when the environment names one, else the system manager as root).
	Bus dbusctl.Bus
	// Conn, when set, is used instead of dialing; Close leaves it open.
	Conn *dbusctl.Conn
	// JournalDir is passed to journalctl --directory (tests: the sandbox's
	// $SYSTEMD_SANDBOX_JOURNAL_DIR); "" reads the default journal.
	JournalDir string
	// Journalctl overrides the journalctl program.
	Journalctl string
	// SystemdCat overrides the systemd-cat program used to give stderr its
	// own journal stream; NoStderrSplit disables that (every line is then
	// reported as stdout).
	SystemdCat    string
	NoStderrSplit bool
	// Logger receives notices (stop escalations, reconnects); nil = silent.
	Logger *slog.Logger
}

// versionStderrPriority is the systemd release whose systemd-cat gained
// --stderr-priority.
const versionStderrPriority = 241

// Runner implements units.Runner on a systemd manager.
type Runner struct {
	app     string
	conn    *dbusctl.Conn
	ownConn bool
	user    bool
	cat     string // systemd-cat path, "" = no stderr split
	journal journal.Reader
	log     *slog.Logger
	mon     *monitor
}

var _ units.Runner = (*Runner)(nil)

// New connects to the manager and starts watching app's units. It fails
// with an error matching units.ErrUnavailable when no manager answers.
func New(ctx context.Context, app string, opts Options) (*Runner, error) {
	if app == "" {
		return nil, errors.New("systemd runner: empty application name")
	}
	r := &Runner{
		app:     app,
		conn:    opts.Conn,
		journal: journal.Reader{Dir: opts.JournalDir, Journalctl: opts.Journalctl},
		log:     opts.Logger,
	}
	if r.conn == nil {
		c, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: opts.Bus, Logger: opts.Logger})
		if err != nil {
			return nil, fmt.Errorf("systemd runner: %w: %w", units.ErrUnavailable, err)
		}
		r.conn, r.ownConn = c, true
	}
	fail := func(err error) (*Runner, error) {
		if r.ownConn {
			r.conn.Close()
		}
		return nil, fmt.Errorf("systemd runner: %w: %w", units.ErrUnavailable, err)
	}
	// A bus without a manager fails on the first call, not on dial.
	if _, err := r.conn.SystemState(ctx); err != nil {
		return fail(err)
	}
	version, err := r.conn.Version(ctx)
	if err != nil {
		return fail(err)
	}
	r.user = r.conn.UserManager()
	if !opts.NoStderrSplit && version >= versionStderrPriority {
		r.cat = opts.SystemdCat
		if r.cat == "" {
			r.cat, _ = exec.LookPath("systemd-cat")
		}
	}
	r.mon, err = startMonitor(r)
	if err != nil {
		return fail(err)
	}
	return r, nil
}

// Kind returns "systemd".
func (r *Runner) Kind() string { return "systemd" }

// Close stops watching and closes the connection it dialed. Units keep
// running.
func (r *Runner) Close() error {
	r.mon.stop()
	if r.ownConn {
		return r.conn.Close()
	}
	return nil
}

// StopSlice stops the application's slice (rollbridge-<app>.slice) once
// no instance unit of the app is loaded any more: systemd leaves an
// implicitly created slice active after its last unit ended. It does
// nothing while units remain. Called after a full shutdown.
func (r *Runner) StopSlice(ctx context.Context) error {
	left, err := r.conn.ListUnits(ctx, units.AppUnitPattern(r.app))
	if err != nil {
		return fmt.Errorf("stop slice of %s: %w", r.app, err)
	}
	if len(left) > 0 {
		return nil
	}
	slice := units.AppSlice(r.app)
	if err := r.conn.Stop(ctx, slice); err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		return fmt.Errorf("stop %s: %w", slice, err)
	}
	return nil
}

// owns reports whether name is an instance unit of this runner's app.
func (r *Runner) owns(name string) bool {
	app, _, _, ok := units.ParseUnitName(name)
	return ok && app == r.app
}

func (r *Runner) notOurs(op, name string) error {
	return fmt.Errorf("%s %s: not an instance unit of application %q: %w", op, name, r.app, units.ErrNotFound)
}

// Start launches spec as a transient service and returns when the start
// job is done (Type=exec: the program was executed).
func (r *Runner) Start(ctx context.Context, spec units.Spec) (units.Status, error) {
	id := spec.Identity
	name := id.UnitName()
	if err := r.checkSpec(spec); err != nil {
		return units.Status{}, fmt.Errorf("start %s: %w", name, err)
	}
	ts := r.transientSpec(spec)

	r.mon.beginStart(name, id)
	err := r.conn.StartTransient(ctx, ts)
	var jerr *dbusctl.JobError
	switch {
	case err == nil:
		r.mon.endStart(name, nil)
	case spec.Notify && errors.As(err, &jerr) && jerr.Spawned():
		// With Type=notify a process that ran but failed the job ended (or
		// was stopped at TimeoutStartSec) before READY=1: a failed start.
		r.mon.endStart(name, jerr)
		why := "exited before sending READY=1"
		if jerr.UnitResult == "timeout" {
			why = fmt.Sprintf("sent no READY=1 within %v", startTimeout(spec))
		}
		return units.Status{}, fmt.Errorf("start %s: %s (systemd: %s): %w", name, why, jerr.Reason(), units.ErrNotReady)
	case errors.As(err, &jerr) && jerr.Spawned():
		// The program ran and ended before systemd saw the exec complete:
		// a start followed by an immediate exit, reported through Watch.
		r.mon.endStart(name, nil)
		exit := toExit(dbusctl.ExitStatus{Code: jerr.ExitCode, Status: jerr.ExitStatus})
		return units.Status{Name: name, Identity: id, State: exitState(exit, false),
			StartedAt: jerr.StartedAt, Exit: &exit}, nil
	default:
		r.mon.endStart(name, jerr)
		return units.Status{}, r.startError(name, spec, err, jerr)
	}

	// The common case, a running unit, needs only the light read (a quarter
	// of a start's D-Bus traffic otherwise); an exit already needs State.
	if p, err := r.conn.StartedState(ctx, name); err == nil {
		switch p.ActiveState {
		case "active", "reloading", "activating":
			return r.statusFromState(name, id, p), nil
		}
	}
	st, err := r.Status(ctx, name)
	if errors.Is(err, units.ErrNotFound) {
		// Ran, exited cleanly and was collected already; Watch reports it.
		return units.Status{Name: name, Identity: id, State: units.StateUnknown}, nil
	}
	if err != nil {
		return units.Status{}, fmt.Errorf("start %s: started, but reading its status failed: %w", name, err)
	}
	return st, nil
}

func (r *Runner) startError(name string, spec units.Spec, err error, jerr *dbusctl.JobError) error {
	switch {
	case errors.Is(err, dbusctl.ErrUnitExists):
		return fmt.Errorf("start %s: %w", name, units.ErrAlreadyRunning)
	case jerr != nil && jerr.ExitCode == dbusctl.CLDExited && jerr.ExitStatus == 200:
		return &startError{err: jerr, msg: fmt.Sprintf("start %s: working directory %q does not exist or is not accessible%s (systemd: %s)",
			name, spec.Dir, asUser(spec), jerr.Reason())}
	case jerr != nil && jerr.ExitCode == dbusctl.CLDExited && jerr.ExitStatus == 203:
		return &startError{err: jerr, msg: fmt.Sprintf("start %s: program %q could not be executed%s (systemd: %s)",
			name, r.program(spec), asUser(spec), jerr.Reason())}
	case jerr != nil && jerr.ExitCode == dbusctl.CLDExited && (jerr.ExitStatus == exitUser || jerr.ExitStatus == exitGroup):
		// systemd resolves User=/Group= in the forked child: an unknown
		// account is a spawn failure, not a config error it could report.
		return &startError{err: jerr, msg: fmt.Sprintf("start %s: %s: no such account on this machine, or it could not be switched to (systemd: %s); "+
			"create the account or fix user/group of the process in the config", name, account.Text(spec.User, spec.Group), jerr.Reason())}
	case jerr != nil:
		return jerr // already names the unit and systemd's account
	}
	return fmt.Errorf("start %s: %w", name, err)
}

// systemd's spawn exit statuses for a User=/Group= that cannot be resolved
// or applied (EXIT_USER, EXIT_GROUP).
const (
	exitGroup = 216
	exitUser  = 217
)

// asUser is " as user X" when the instance runs as another account (a
// program or directory may be unreadable for it but not for root).
func asUser(spec units.Spec) string {
	if spec.User == "" {
		return ""
	}
	return fmt.Sprintf(" as user %q", spec.User)
}

// startError rewords a *dbusctl.JobError for the user while keeping it
// reachable with errors.As.
type startError struct {
	msg string
	err error
}

func (e *startError) Error() string { return e.msg }
func (e *startError) Unwrap() error { return e.err }

func (r *Runner) checkSpec(spec units.Spec) error {
	id := spec.Identity
	var errs []error
	if id.App != r.app {
		errs = append(errs, fmt.Errorf("Identity.App %q: this runner manages application %q", id.App, r.app))
	}
	if id.Release == "" || id.Process == "" {
		errs = append(errs, errors.New("Identity.Release and Identity.Process must be set"))
	}
	if spec.Command == "" && len(spec.Argv) == 0 {
		errs = append(errs, errors.New("neither Command nor Argv is set"))
	}
	if spec.Dir != "" && !filepath.IsAbs(spec.Dir) {
		errs = append(errs, fmt.Errorf("Dir %q: must be an absolute path", spec.Dir))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if r.user && (spec.User != "" || spec.Group != "") {
		// dbusctl refuses this too, but in terms of unit properties; name
		// the config fields and the way out instead.
		return fmt.Errorf("%w: %s: a systemd user manager cannot run a process as another account; "+
			"remove user/group from the process in the config or run the daemon under the system manager (rollbridge@.service as root)",
			dbusctl.ErrNotSupported, account.Text(spec.User, spec.Group))
	}

	// With the systemd-cat wrapper systemd only sees systemd-cat being
	// executed, so check the program ourselves to keep "missing program"
	// a start failure.
	if r.cat != "" && len(spec.Argv) > 0 {
		prog := spec.Argv[0]
		if strings.Contains(prog, "/") && !filepath.IsAbs(prog) && spec.Dir != "" {
			prog = filepath.Join(spec.Dir, prog) // execvp resolves it in the working directory
		}
		return checkProgram(prog, spec.Env)
	}
	return nil
}

// checkProgram resolves prog like execvp would (PATH from env) and checks
// it is an executable regular file.
func checkProgram(prog string, env []string) error {
	path := prog
	if !strings.Contains(prog, "/") {
		dirs := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				dirs = v
			}
		}
		path = ""
		for _, d := range filepath.SplitList(dirs) {
			if d == "" {
				d = "."
			}
			p := filepath.Join(d, prog)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				path = p
				break
			}
		}
		if path == "" {
			return fmt.Errorf("program %q not found in PATH %s", prog, dirs)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("program %q: %w", prog, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("program %q is not an executable file", prog)
	}
	return nil
}

func (r *Runner) program(spec units.Spec) string {
	if len(spec.Argv) > 0 {
		return spec.Argv[0]
	}
	return "/bin/sh"
}

// transientSpec maps a units.Spec to the unit's properties.
func (r *Runner) transientSpec(spec units.Spec) dbusctl.TransientSpec {
	id := spec.Identity
	ident := id.SyslogIdentifier()
	argv := spec.Argv
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-c", spec.Command}
	}
	if r.cat != "" {
		// systemd-cat connects stdout (info) and stderr (err) as two journal
		// streams and execs the command: same pid, nothing extra in the
		// cgroup, and stderr lines are recognisable by priority.
		argv = append([]string{r.cat, "--identifier=" + ident, "--priority=info",
			"--stderr-priority=err", "--"}, argv...)
	}
	ts := dbusctl.TransientSpec{
		Name:             id.UnitName(),
		Description:      fmt.Sprintf("rollbridge %s %s %s", id.App, id.Release, id.UnitInstance()),
		Slice:            id.Slice(),
		Argv:             argv,
		WorkingDirectory: spec.Dir,
		Environment:      withoutNotifySocket(units.WithIdentityEnv(spec.Env, id)),
		KillSignal:       spec.StopSignal,
		SyslogIdentifier: ident,
		LogExtraFields: []string{
			"ROLLBRIDGE_APP=" + id.App,
			"ROLLBRIDGE_RELEASE=" + id.Release,
			"ROLLBRIDGE_INSTANCE=" + id.InstanceID(),
		},
		User:      spec.User,
		Group:     spec.Group,
		MemoryMax: spec.MemoryMax,
	}
	if r.user {
		// The hard backstop is optional (memory.maxBytes applies where the
		// manager supports it); a user manager refuses MemoryMax=, and the
		// graceful memory.limitBytes restart still applies.
		ts.MemoryMax = 0
	}
	if spec.Notify {
		ts.Notify, ts.TimeoutStart = true, startTimeout(spec)
	}
	// TimeoutStopSec/SendSIGKILL govern the manager's own stop (after the
	// main process exits on its own, or a StopUnit); Stop enforces the
	// grace it is given itself.
	switch {
	case spec.Grace.Indefinite:
		ts.TimeoutStop, ts.NoSIGKILL = dbusctl.Infinity, true
	case spec.Grace.Timeout > 0:
		ts.TimeoutStop = spec.Grace.Timeout
	}
	return ts
}

// withoutNotifySocket drops NOTIFY_SOCKET from an instance environment: the
// daemon's own value (when it runs as a Type=notify service) would point
// the instance at the daemon's manager socket, and for a Type=notify unit an
// Environment= entry would even override the socket systemd sets.
func withoutNotifySocket(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			out = append(out, kv)
		}
	}
	return out
}

// startTimeout is the READY=1 bound of a Notify spec.
func startTimeout(spec units.Spec) time.Duration {
	if spec.StartTimeout > 0 {
		return spec.StartTimeout
	}
	return units.DefaultStartTimeout
}

// Signal sends sig to every process of the instance.
func (r *Runner) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	if !r.owns(name) {
		return r.notOurs("signal", name)
	}
	err := r.conn.Kill(ctx, name, sig)
	if errors.Is(err, dbusctl.ErrNoSuchUnit) || errors.Is(err, dbusctl.ErrNoSuchProcess) {
		return fmt.Errorf("signal %s: %w (%w)", name, units.ErrNotFound, err)
	}
	return err
}

// Stop signals the instance, waits up to grace for its cgroup to empty,
// then SIGKILLs what is left (never with grace.Indefinite) and waits up to
// units.KillWait. A unit that is gone or ended returns nil.
func (r *Runner) Stop(ctx context.Context, name string, sig syscall.Signal, grace units.Grace) error {
	if !r.owns(name) {
		return r.notOurs("stop", name)
	}
	p, err := r.conn.State(ctx, name)
	if errors.Is(err, dbusctl.ErrNoSuchUnit) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if !p.Running() {
		r.cleanup(ctx, name)
		return nil
	}
	r.mon.markStopping(name)
	if sig != 0 {
		if err := r.conn.Kill(ctx, name, sig); err != nil && !gone(err) {
			return fmt.Errorf("stop %s: %w", name, err)
		}
	}
	limit := grace.Timeout
	if grace.Indefinite {
		limit = -1
	}
	done, err := r.waitStopped(ctx, name, limit)
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if !done {
		if r.log != nil {
			r.log.Warn("process stop timed out; sending SIGKILL", "unit", name, "pid", p.MainPID, "grace", grace.Timeout)
		}
		if err := r.conn.Kill(ctx, name, syscall.SIGKILL); err != nil && !gone(err) {
			return fmt.Errorf("stop %s: %w", name, err)
		}
		done, err = r.waitStopped(ctx, name, units.KillWait)
		if err != nil {
			return fmt.Errorf("stop %s: %w", name, err)
		}
		if !done {
			// Processes stuck in the kernel (D state): hand the unit to the
			// manager's own stop and report.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = r.conn.Stop(cctx, name)
			return fmt.Errorf("stop %s: processes still present %v after SIGKILL", name, units.KillWait)
		}
	}
	r.cleanup(ctx, name)
	return nil
}

// gone reports errors meaning there is nothing left to signal.
func gone(err error) bool {
	return errors.Is(err, dbusctl.ErrNoSuchUnit) || errors.Is(err, dbusctl.ErrNoSuchProcess)
}

// cleanup resets a failed unit so it is collected; best effort.
func (r *Runner) cleanup(ctx context.Context, name string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = r.conn.ResetFailed(cctx, name)
}

// waitStopped waits until the unit is inactive, failed or gone, for up to
// limit (<0: no limit). It wakes on the monitor's state signals and
// re-checks every second in case a signal was lost. It returns false when
// limit passed, and ctx's error when ctx ended first.
func (r *Runner) waitStopped(ctx context.Context, name string, limit time.Duration) (bool, error) {
	var deadline <-chan time.Time
	if limit >= 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		deadline = t.C
	}
	for {
		wake, cancel := r.mon.waitTerminal(name)
		p, err := r.conn.State(ctx, name)
		if errors.Is(err, dbusctl.ErrNoSuchUnit) || err == nil && !p.Running() {
			cancel()
			return true, nil
		}
		select {
		case <-wake:
		case <-time.After(time.Second):
		case <-deadline:
			cancel()
			return false, nil
		case <-ctx.Done():
			cancel()
			return false, ctx.Err()
		}
		cancel()
	}
}

// Logs returns up to n most recent lines of the instance from journald.
func (r *Runner) Logs(ctx context.Context, name string, n int) ([]units.LogLine, error) {
	if !r.owns(name) {
		return nil, r.notOurs("logs", name)
	}
	lines, err := r.journal.Last(ctx, strings.TrimSuffix(name, ".service"), n)
	if err != nil {
		return nil, fmt.Errorf("logs %s: %w", name, err)
	}
	return lines, nil
}

// Follow calls fn for each line the instance logs from now until ctx ends.
func (r *Runner) Follow(ctx context.Context, name string, fn func(units.LogLine)) error {
	if !r.owns(name) {
		return r.notOurs("follow", name)
	}
	return r.journal.Follow(ctx, strings.TrimSuffix(name, ".service"), time.Now(), fn)
}

// Watch streams Started/Exited events of this runner's application until
// ctx ends or the runner is closed.
func (r *Runner) Watch(ctx context.Context) (<-chan units.Event, error) {
	return r.mon.subscribe(ctx)
}

// toExit converts systemd's ExecMainCode/Status.
func toExit(e dbusctl.ExitStatus) units.Exit {
	code, sig := e.ExitCodeOrSignal()
	return units.Exit{Code: code, Signal: sig}
}

// exitState: a requested stop or exit code 0 is "exited", anything else
// "failed".
func exitState(e units.Exit, stopRequested bool) units.State {
	if stopRequested || e.Signal == 0 && e.Code == 0 {
		return units.StateExited
	}
	return units.StateFailed
}
