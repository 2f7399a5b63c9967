package dbusctl

import (
	"errors"
	"fmt"
	"time"

	godbus "github.com/godbus/dbus/v5"
)

// Sentinel errors. Match them with errors.Is; the concrete errors carry the
// unit name and systemd's own wording.
var (
	// ErrJobFailed: the job ended with result "failed" (for a start job: the
	// process could not be spawned or exited during start-up).
	ErrJobFailed = errors.New("job failed")
	// ErrJobCanceled: the job was canceled before it finished (result "canceled").
	ErrJobCanceled = errors.New("job canceled")
	// ErrJobTimeout: the unit's job timeout was reached (result "timeout").
	ErrJobTimeout = errors.New("job timed out")
	// ErrJobDependency: a job the unit depended on failed (result "dependency").
	ErrJobDependency = errors.New("job dependency failed")
	// ErrJobSkipped: the job did not apply to the unit's state (result "skipped").
	ErrJobSkipped = errors.New("job skipped")
	// ErrJobUnknown: any other job result.
	ErrJobUnknown = errors.New("job ended with an unknown result")
	// ErrUnitExists: a unit with that name is already loaded and a reset of a
	// failed leftover did not free the name, i.e. it is running.
	ErrUnitExists = errors.New("unit already exists")
	// ErrNoSuchUnit: the manager has no unit by that name (never started or
	// already garbage-collected).
	ErrNoSuchUnit = errors.New("no such unit")
	// ErrNoSuchProcess: the unit has no process to signal.
	ErrNoSuchProcess = errors.New("unit has no process to signal")
	// ErrNotSupported: the setting needs a feature this manager lacks (for
	// example User= on a user manager).
	ErrNotSupported = errors.New("not supported by this manager")
	// ErrInvalid: a TransientSpec field is invalid.
	ErrInvalid = errors.New("invalid unit spec")
)

// D-Bus error names systemd returns (src/libsystemd/sd-bus/bus-common-errors.h).
const (
	busErrUnitExists    = "org.freedesktop.systemd1.UnitExists"
	busErrNoSuchUnit    = "org.freedesktop.systemd1.NoSuchUnit"
	busErrNoSuchProcess = "org.freedesktop.systemd1.NoSuchProcess"
	busErrUnknownObject = "org.freedesktop.DBus.Error.UnknownObject"
)

// JobError reports a job that finished with a result other than "done".
type JobError struct {
	Unit   string
	Op     string // "start" or "stop"
	Result string // systemd's job result: failed, canceled, timeout, dependency, skipped
	// Detail is the unit's own account when it could be read before the
	// reset, e.g. "Result=exit-code, status=200/CHDIR".
	Detail string
	// UnitResult is the unit's Result property then ("exit-code",
	// "timeout", …; "" when unknown).
	UnitResult string
	// ExitCode and ExitStatus are the unit's ExecMainCode (CLDExited,
	// CLDKilled, CLDDumped; 0 when unknown) and ExecMainStatus. Status 200
	// (CHDIR) means the working directory is missing, 203 (EXEC) that the
	// program could not be executed.
	ExitCode, ExitStatus int
	// PID and StartedAt identify the main process the failed job forked
	// (ExecMainPID, ExecMainStartTimestamp); zero when unknown.
	PID       int
	StartedAt time.Time
}

// Spawned reports whether the program itself ran before the job failed.
// systemd fails a Type=exec start job when the main process exits before
// the manager has processed the completed exec, so a command that exits
// within a millisecond or two yields a failed job although it was
// executed. Exit statuses 200–245 are systemd's own spawn failures
// (systemd.exec(5), "Process Exit Codes": CHDIR, EXEC, USER, …); any other
// exit, or death by a signal, came from the program.
func (e *JobError) Spawned() bool {
	switch e.ExitCode {
	case CLDKilled, CLDDumped:
		return true
	case CLDExited:
		return e.ExitStatus < 200 || e.ExitStatus > 245
	}
	return false
}

func (e *JobError) Error() string { return e.Op + " " + e.Unit + ": " + e.Reason() }

// Reason is the error without the operation and unit, e.g.
// "job failed (Result=exit-code, status=200/CHDIR: …)".
func (e *JobError) Reason() string {
	msg := "job " + e.Result
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	return msg
}

// Unwrap maps the job result to its sentinel.
func (e *JobError) Unwrap() error { return jobResultErr(e.Result) }

func jobResultErr(result string) error {
	switch result {
	case "failed":
		return ErrJobFailed
	case "canceled":
		return ErrJobCanceled
	case "timeout":
		return ErrJobTimeout
	case "dependency":
		return ErrJobDependency
	case "skipped":
		return ErrJobSkipped
	}
	return ErrJobUnknown
}

// dbusErrorName returns the D-Bus error name carried by err, or "".
func dbusErrorName(err error) string {
	var v godbus.Error
	if errors.As(err, &v) {
		return v.Name
	}
	var p *godbus.Error
	if errors.As(err, &p) && p != nil {
		return p.Name
	}
	return ""
}

// classify wraps well-known systemd D-Bus errors with their sentinel so
// callers can use errors.Is, keeping systemd's message.
func classify(err error) error {
	if err == nil {
		return nil
	}
	switch dbusErrorName(err) {
	case busErrNoSuchUnit, busErrUnknownObject:
		return fmt.Errorf("%w: %w", ErrNoSuchUnit, err)
	case busErrUnitExists:
		return fmt.Errorf("%w: %w", ErrUnitExists, err)
	case busErrNoSuchProcess:
		return fmt.Errorf("%w: %w", ErrNoSuchProcess, err)
	}
	return err
}
