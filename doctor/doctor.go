// Package doctor implements `rollbridge doctor`: it checks that a daemon
// could start with a config (spec §6.8) — the config validates, the control
// socket path is free or held by this application's own daemon, its
// directory is writable, the proxy port can be bound, the state file's
// directory is writable and no processes of a previous daemon are left, and,
// for a release directory, that every template renders and every working
// directory exists — and then that the systemd side is sound: which runner
// the daemon would pick, whether transient units can be started, whether
// journald can be read back, socket activation, leftover units, the
// application's slice and memory accounting.
//
// Doctor only probes: it never binds anything for longer than a test bind,
// starts no unit and signals no process.
package doctor

import (
	"context"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/dbusctl"
)

// Check names, in the order Run reports them. The first nine are the
// spec's; the rest are the systemd checks of the Go version.
const (
	CheckConfig           = "config"
	CheckControlSocket    = "control socket"
	CheckControlDir       = "control socket directory"
	CheckProxyPort        = "proxy port"
	CheckStateDir         = "state path directory"
	CheckOrphans          = "orphaned processes"
	CheckReleasePath      = "release path"
	CheckTemplates        = "process templates"
	CheckWorkingDirs      = "process working directories"
	CheckSystemdManager   = "systemd manager"
	CheckTransientUnits   = "transient units"
	CheckJournald         = "journald"
	CheckSocketActivation = "socket activation"
	CheckLeftoverUnits    = "leftover units"
	CheckSlice            = "application slice"
	CheckMemoryAccounting = "memory accounting"
)

// Runner kinds (the daemon's --runner / ROLLBRIDGE_RUNNER values).
const (
	RunnerAuto    = "auto"
	RunnerSystemd = "systemd"
	RunnerExec    = "exec"
)

// ManagerProbeTimeout bounds finding a systemd manager; it is the daemon's
// own auto-detection bound, so doctor predicts the same runner choice.
const ManagerProbeTimeout = 3 * time.Second

// Check is one line of the report. The field order is the JSON key order of
// the original (alphabetical).
type Check struct {
	Detail string `json:"detail"`
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
}

// Report is the result of Run: `doctor --json` prints it as is.
type Report struct {
	Checks []Check `json:"checks"`
	// OK is true when every check passed.
	OK bool `json:"ok"`
}

// Failed returns the number of failed checks.
func (r Report) Failed() int {
	n := 0
	for _, c := range r.Checks {
		if !c.OK {
			n++
		}
	}
	return n
}

// Failure is the report of a run that could not even find its config (no
// --config and no ./rollbridge.js): a single failed `config` check.
func Failure(err error) Report {
	return Report{Checks: []Check{{Name: CheckConfig, Detail: err.Error()}}}
}

// Options say what to check.
type Options struct {
	// ConfigPath is the path of rollbridge.js (relative to WorkDir).
	ConfigPath string
	// WorkDir resolves relative paths (ConfigPath, ReleasePath, a relative
	// statePath); "" means the process's working directory.
	WorkDir string
	// Env is the environment the daemon would see: the config's
	// process.env, the base of {{env.NAME}} and where LISTEN_FDS,
	// LISTEN_PID and LISTEN_FDNAMES are read. nil means an empty one.
	Env []string

	// ReleasePath enables the release checks. ReleaseID defaults to
	// Revision, else the release path's basename; Revision defaults to the
	// release id.
	ReleasePath, ReleaseID, Revision string

	// Runner is the runner the daemon would be started with: auto (also
	// ""), systemd or exec.
	Runner string
	// Manager, when set, is the systemd manager to check instead of dialing
	// one (it is not closed). Otherwise Dial selects the manager; its zero
	// value is the daemon's choice (dbusctl.BusAuto) within
	// ManagerProbeTimeout.
	Manager *dbusctl.Conn
	Dial    dbusctl.Options
	// JournalDir is read by journalctl --directory; "" = the default journal.
	JournalDir string
	// Journalctl overrides the journalctl program ("" = from PATH).
	Journalctl string

	// procDir replaces /proc (tests of the VmRSS fallback).
	procDir string
	// authorize replaces the polkit question (nil = askPolkit).
	authorize authorizeFunc
}

// doctor collects the checks of one run.
type doctor struct {
	opts   Options
	cfg    *config.Config
	checks []Check
	// probe is what answers on the control socket; probeErr is set when
	// the probe could not tell.
	probe    control.ProbeResult
	probeErr error
}

func (d *doctor) add(name string, ok bool, detail string) {
	d.checks = append(d.checks, Check{Detail: detail, Name: name, OK: ok})
}

// sameDaemon reports whether this application's daemon answers on the
// control socket.
func (d *doctor) sameDaemon() bool {
	return d.probeErr == nil && d.probe.Rollbridge && d.probe.Application == d.cfg.Application
}

// Run performs every check and returns the report. It never fails: every
// problem is a failed check. An invalid config ends the run after the
// `config` check.
func Run(ctx context.Context, opts Options) Report {
	d := &doctor{opts: opts}
	if d.checkConfig(ctx) {
		// The manager is asked first: the units it runs are re-adopted by
		// the next daemon, so their processes are not orphans.
		m := d.findManager(ctx)
		defer m.close()
		m.listUnits(ctx, d.cfg)
		d.checkControlSocket(ctx)
		d.checkControlDir()
		d.checkProxyPort(ctx)
		if d.cfg.StatePath != "" {
			d.checkStateDir()
			d.checkOrphans(m)
		}
		if opts.ReleasePath != "" {
			d.checkRelease()
		}
		d.checkSystemd(ctx, m)
	}
	r := Report{Checks: d.checks, OK: true}
	for _, c := range r.Checks {
		r.OK = r.OK && c.OK
	}
	return r
}
