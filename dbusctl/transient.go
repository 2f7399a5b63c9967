package dbusctl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Infinity as a TimeoutStop means "never time out" (TimeoutStopSec=infinity).
const Infinity = time.Duration(math.MaxInt64)

// TransientSpec describes one transient service unit. The unit it becomes is
// equivalent to this unit file (see also doc.go):
//
//	[Service]
//	Type=exec
//	ExecStart=/bin/sh -c '…'            # every "$" doubled: no $VAR expansion by systemd
//	WorkingDirectory=/srv/app/releases/r1
//	Environment=PORT=3000 …
//	KillMode=control-group
//	KillSignal=SIGTERM
//	TimeoutStopSec=30s                  # infinity when TimeoutStop == Infinity
//	SendSIGKILL=yes                     # no when NoSIGKILL
//	SyslogIdentifier=rollbridge-demo-r1-web
//	LogExtraFields=ROLLBRIDGE_APP=demo …
//	Slice=rollbridge-demo.slice
//	CollectMode=inactive
//	StandardOutput=journal
//	StandardError=journal
type TransientSpec struct {
	// Name is the unit name including ".service".
	Name        string
	Description string
	// Slice places the unit, e.g. "rollbridge-demo.slice" (created on demand).
	Slice string
	// Argv is the command; Argv[0] is an absolute path or a bare file name
	// systemd looks up in its own PATH. It reaches the process verbatim:
	// every "$" is sent doubled, so systemd does not expand $VAR in it.
	Argv []string
	// WorkingDirectory must be absolute. A missing directory makes the start
	// job fail (status 200/CHDIR).
	WorkingDirectory string
	// Environment is the complete environment as KEY=VALUE pairs; a user
	// manager adds only its own minimal set.
	Environment []string
	// KillSignal is sent to every process on stop (default SIGTERM).
	KillSignal syscall.Signal
	// TimeoutStop bounds the manager's own stop (after the main process
	// exits, or on StopUnit) before SIGKILL; 0 keeps the manager default,
	// Infinity disables it.
	TimeoutStop time.Duration
	// NoSIGKILL sets SendSIGKILL=no: the manager never escalates.
	NoSIGKILL bool
	// SyslogIdentifier tags every journal line of the unit; unique per
	// instance so logs can be selected with SYSLOG_IDENTIFIER= (which works
	// on user managers too, unlike LogExtraFields).
	SyslogIdentifier string
	// LogExtraFields are KEY=VALUE journal fields added to each line. Only
	// the system manager's journald applies them.
	LogExtraFields []string
	// User, Group and MemoryMax (bytes, 0 = none) need the system manager;
	// setting them on a user manager fails with ErrNotSupported.
	User, Group string
	MemoryMax   uint64
	// Notify sets Type=notify and NotifyAccess=all: the start job completes
	// only once a process of the unit sent READY=1 to $NOTIFY_SOCKET.
	Notify bool
	// TimeoutStart bounds that wait (TimeoutStartSec; 0 keeps the manager
	// default). When it passes, the manager stops the unit and the start
	// job fails with the unit's Result=timeout.
	TimeoutStart time.Duration
}

// Property versions (systemd NEWS): Type=exec 240.
const versionTypeExec = 240

// execCommand is one ExecStart entry, D-Bus signature (sasb). The boolean
// is systemd's "ignore failure" ("-" prefix in unit files): false, so a
// non-zero exit fails the unit and its status is kept.
type execCommand struct {
	Path          string
	Argv          []string
	IgnoreFailure bool
}

func prop(name string, v any) sd.Property {
	return sd.Property{Name: name, Value: godbus.MakeVariant(v)}
}

func (s TransientSpec) validate(userManager bool) error {
	var errs []error
	if !strings.HasSuffix(s.Name, ".service") || len(s.Name) <= len(".service") {
		errs = append(errs, fmt.Errorf("Name %q: must be a unit name ending in .service", s.Name))
	}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		errs = append(errs, errors.New("Argv: the command is empty"))
	}
	if s.WorkingDirectory != "" && !filepath.IsAbs(s.WorkingDirectory) {
		errs = append(errs, fmt.Errorf("WorkingDirectory %q: must be an absolute path", s.WorkingDirectory))
	}
	for _, kv := range s.Environment {
		if err := checkEnvAssignment(kv); err != nil {
			errs = append(errs, fmt.Errorf("Environment entry %q: %w", kv, err))
		}
	}
	for _, kv := range s.LogExtraFields {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			errs = append(errs, fmt.Errorf("LogExtraFields entry %q: want KEY=VALUE", kv))
		}
	}
	if s.TimeoutStop < 0 {
		errs = append(errs, fmt.Errorf("TimeoutStop %v: must not be negative (use Infinity)", s.TimeoutStop))
	}
	if s.TimeoutStart < 0 {
		errs = append(errs, fmt.Errorf("TimeoutStart %v: must not be negative", s.TimeoutStart))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if userManager {
		var fields []string
		if s.User != "" {
			fields = append(fields, "User")
		}
		if s.Group != "" {
			fields = append(fields, "Group")
		}
		if s.MemoryMax != 0 {
			fields = append(fields, "MemoryMax")
		}
		if len(fields) > 0 {
			return fmt.Errorf("%w: %s need the system manager (a user manager cannot switch users and has no memory controller); unset them or run with the system bus", ErrNotSupported, strings.Join(fields, ", "))
		}
	}
	return nil
}

// properties translates the spec for a manager of the given version. Each
// choice below is what makes Rollbridge's supervision exact.
func (s TransientSpec) properties(version int) []sd.Property {
	sig := s.KillSignal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	desc := s.Description
	if desc == "" {
		desc = s.Name
	}
	props := []sd.Property{
		sd.PropDescription(desc),
		// KillMode=control-group: every process in the cgroup gets the stop
		// signal, so setsid/double-forked children cannot escape a stop.
		prop("KillMode", "control-group"),
		prop("KillSignal", int32(sig)),
		prop("SendSIGKILL", !s.NoSIGKILL),
		// CollectMode=inactive (systemd's default, set explicitly): a unit
		// that exits cleanly is garbage-collected at once, a failed unit stays
		// (with ExecMainStatus/Result readable) until ResetFailed. Watch
		// captures the exit from the Service PropertiesChanged signal either
		// way; failed leftovers are reset by the start retry or the runner.
		prop("CollectMode", "inactive"),
		prop("StandardOutput", "journal"),
		prop("StandardError", "journal"),
	}
	// Type=exec: the start job is done only once execve() succeeded, so a
	// missing binary or directory fails the start instead of "succeeding".
	// Type=notify waits further, for READY=1.
	if s.Notify {
		props = append(props, prop("Type", "notify"), prop("NotifyAccess", "all"))
	} else if version == 0 || version >= versionTypeExec {
		props = append(props, prop("Type", "exec"))
	} else {
		props = append(props, prop("Type", "simple"))
	}
	// ExecStart with every "$" doubled: systemd expands $VAR and $$ in argv
	// (even for transient units), and the shell must see them verbatim.
	// ExecStartEx with its no-env-expand flag would say this directly, but
	// systemd 252 persists it into /run/systemd/transient as an
	// "ExecStartEx=" line its own unit parser rejects, so after any
	// daemon-reload the running unit turns "bad-setting".
	argv := make([]string, len(s.Argv))
	for i, a := range s.Argv {
		argv[i] = strings.ReplaceAll(a, "$", "$$")
	}
	props = append(props, prop("ExecStart", []execCommand{{
		Path: s.Argv[0], Argv: argv,
	}}))
	if s.Slice != "" {
		props = append(props, sd.PropSlice(s.Slice))
	}
	if s.WorkingDirectory != "" {
		props = append(props, prop("WorkingDirectory", s.WorkingDirectory))
	}
	if len(s.Environment) > 0 {
		props = append(props, prop("Environment", s.Environment))
	}
	if s.TimeoutStart > 0 {
		props = append(props, prop("TimeoutStartUSec", uint64(s.TimeoutStart/time.Microsecond)))
	}
	switch {
	case s.TimeoutStop == Infinity:
		props = append(props, prop("TimeoutStopUSec", uint64(math.MaxUint64)))
	case s.TimeoutStop > 0:
		props = append(props, prop("TimeoutStopUSec", uint64(s.TimeoutStop/time.Microsecond)))
	}
	if s.SyslogIdentifier != "" {
		props = append(props, prop("SyslogIdentifier", s.SyslogIdentifier))
	}
	if len(s.LogExtraFields) > 0 {
		fields := make([][]byte, len(s.LogExtraFields))
		for i, f := range s.LogExtraFields {
			fields[i] = []byte(f)
		}
		props = append(props, prop("LogExtraFields", fields))
	}
	if s.User != "" {
		props = append(props, prop("User", s.User))
	}
	if s.Group != "" {
		props = append(props, prop("Group", s.Group))
	}
	if s.MemoryMax != 0 {
		props = append(props, prop("MemoryAccounting", true), prop("MemoryMax", s.MemoryMax))
	}
	return props
}

// StartTransient creates and starts the unit, returning once the start job
// is done: with Type=exec that means the main process has been executed.
//
// The job discipline follows runc's systemd driver: the job result channel
// is buffered (a blocked channel would stall the whole go-systemd Conn), the
// wait runs under ctx, any result but "done" becomes a *JobError (match with
// errors.Is(err, ErrJobFailed) etc.) after which the unit is reset so
// nothing is left behind, and a name still held by a failed leftover
// (org.freedesktop.systemd1.UnitExists) is reset and retried once. If the
// name belongs to a running unit, the error matches ErrUnitExists. If ctx
// ends while the job runs, the unit is stopped (best effort).
func (c *Conn) StartTransient(ctx context.Context, spec TransientSpec) error {
	if err := spec.validate(c.UserManager()); err != nil {
		return fmt.Errorf("start %s: %w", spec.Name, err)
	}
	version, err := c.Version(ctx)
	if err != nil {
		return fmt.Errorf("start %s: %w", spec.Name, err)
	}
	props := spec.properties(version)
	err = c.startOnce(ctx, spec.Name, props)
	if errors.Is(err, ErrUnitExists) {
		// CollectMode=inactive keeps a failed unit loaded until reset.
		if rerr := c.ResetFailed(ctx, spec.Name); rerr == nil || errors.Is(rerr, ErrNoSuchUnit) {
			err = c.startOnce(ctx, spec.Name, props)
		}
	}
	return err
}

func (c *Conn) startOnce(ctx context.Context, name string, props []sd.Property) error {
	ch := make(chan string, 1)
	var used *generation
	err := c.do(ctx, func(g *generation) error {
		used = g
		_, err := g.sd.StartTransientUnitContext(ctx, name, "fail", props, ch)
		return classify(err)
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	result, err := c.waitJob(ctx, used, name, ch, true)
	if err != nil {
		c.abandon(ctx, name)
		return fmt.Errorf("start %s: waiting for the start job: %w", name, err)
	}
	if result == "done" {
		return nil
	}
	jerr := &JobError{Unit: name, Op: "start", Result: result}
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	if p, perr := c.State(cctx, name); perr == nil {
		jerr.Detail = p.failureDetail()
		jerr.UnitResult = p.Result
		jerr.ExitCode, jerr.ExitStatus = p.ExecMainCode, p.ExecMainStatus
		jerr.PID, jerr.StartedAt = p.ExecMainPID, p.ExecMainStartTimestamp
	}
	// Reset so the failed unit does not linger (and the name is free again).
	_ = c.ResetFailed(cctx, name)
	return jerr
}

// cleanupContext gives best-effort cleanup a few seconds even when the
// caller's ctx has ended.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

// abandon stops and resets a unit whose start job the caller gave up on.
func (c *Conn) abandon(ctx context.Context, name string) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	_ = c.Stop(cctx, name)
	_ = c.ResetFailed(cctx, name)
}

// waitJob waits for the job result on ch. If the connection carrying the
// JobRemoved signal drops meanwhile, the result can no longer arrive; the
// outcome is then read from the unit's state instead.
func (c *Conn) waitJob(ctx context.Context, g *generation, name string, ch <-chan string, start bool) (string, error) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-ch:
			return r, nil
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
			if g.connected() {
				continue
			}
			return c.pollJobOutcome(ctx, name, start)
		}
	}
}

// pollJobOutcome infers a job result from unit state after a lost connection.
func (c *Conn) pollJobOutcome(ctx context.Context, name string, start bool) (string, error) {
	for {
		p, err := c.State(ctx, name)
		switch {
		case errors.Is(err, ErrNoSuchUnit):
			// Gone: a start that ran and exited cleanly, or a finished stop.
			return "done", nil
		case err != nil:
			return "", err
		case start && (p.ActiveState == "active" || p.ActiveState == "reloading" || p.ActiveState == "deactivating"):
			return "done", nil
		case p.ActiveState == "failed":
			if start {
				return "failed", nil
			}
			return "done", nil
		case p.ActiveState == "inactive" && (!start || !p.ExecMainExitTimestamp.IsZero()):
			// A new unit is inactive before it activates; only an inactive
			// unit whose main process already ran and exited is done.
			return "done", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkEnvAssignment applies systemd's rules for Environment= entries
// (env_assignment_is_valid): the manager rejects the whole unit otherwise.
func checkEnvAssignment(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return errors.New("want KEY=VALUE")
	}
	if k == "" || k[0] >= '0' && k[0] <= '9' {
		return errors.New("variable name must not be empty or start with a digit")
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("variable name may only contain letters, digits and underscores")
		}
	}
	if !utf8.ValidString(v) {
		return errors.New("value is not valid UTF-8")
	}
	for _, r := range v {
		if r < 0x20 && r != '\t' && r != '\n' || r == 0x7f {
			return fmt.Errorf("value contains control character %U", r)
		}
	}
	return nil
}
