// Package units is the process runtime's domain: what a managed process
// instance is (Spec), what a runner reports about it (Status, Event, LogLine)
// and the Runner interface every backend implements. Backends live in
// sub-packages: units/systemd (transient systemd units over D-Bus) and
// units/exec (plain child processes, the fallback where no systemd manager
// answers). This package imports only the standard library.
package units

import (
	"context"
	"errors"
	"syscall"
	"time"
)

// Identity names one managed instance. It is carried by the unit itself
// (unit name and environment) so a runner can rebuild it without any file.
type Identity struct {
	// App is the application name (config "application").
	App string
	// Release is the release id the instance was started for. Daemon-wide
	// instances (persistent services, singletons) carry the release that
	// built them.
	Release string
	// Process is the base process id from the config (never "#n").
	Process string
	// Replica is the replica index, 0 for single processes.
	Replica int
	// Replicas is the replica count, 1 for single processes.
	Replicas int
	// Generation numbers incarnations of one replica slot that may run side
	// by side (a replacement starts before the instance it replaces stops);
	// 0 for the first. It is part of the unit name, not of the instance id.
	Generation int
}

// Grace is a graceful-stop window: after the stop signal the runner waits
// this long for the whole process tree to exit before sending SIGKILL.
// Indefinite means never send SIGKILL (config gracefulStopMs: "indefinite").
type Grace struct {
	Timeout    time.Duration
	Indefinite bool
}

// Spec is everything a runner needs to start one instance.
type Spec struct {
	Identity Identity
	// Command is run as /bin/sh -c Command unless Argv is set.
	Command string
	// Argv, when non-empty, is executed directly (Argv[0] is the program).
	Argv []string
	// Dir is the working directory; it must exist.
	Dir string
	// Env is the complete environment as KEY=VALUE pairs. Runners add the
	// identity variables (see IdentityEnv) if they are missing.
	Env []string
	// StopSignal is sent to every process of the instance on Stop
	// (default SIGTERM).
	StopSignal syscall.Signal
	// Grace bounds Stop; see Grace.
	Grace Grace
	// OutputLines bounds the exec runner's in-memory log ring (default 50).
	// The systemd runner keeps logs in journald instead.
	OutputLines int
	// User and Group run the instance as another account. Only the system
	// manager (and the exec runner when running as root) can honour them.
	User, Group string
	// MemoryMax is an optional hard cgroup limit in bytes (0 = none); only
	// managers with memory accounting enforce it.
	MemoryMax uint64
	// Notify makes the instance report readiness itself with the sd_notify
	// protocol: the runner passes NOTIFY_SOCKET (systemd: Type=notify,
	// NotifyAccess=all, so any process of the instance may send), and Start
	// returns only once READY=1 arrived. An instance that exits first, or
	// stays silent for StartTimeout, is stopped and Start fails.
	Notify bool
	// StartTimeout bounds the wait for READY=1 (0: DefaultStartTimeout).
	StartTimeout time.Duration
}

// DefaultStartTimeout bounds the wait for READY=1 when Spec.StartTimeout
// is 0.
const DefaultStartTimeout = 90 * time.Second

// ErrNotReady is matched (errors.Is) by the error of a Start with Notify
// whose instance exited or timed out before sending READY=1.
var ErrNotReady = errors.New("instance did not report READY=1")

// State is an instance's coarse lifecycle state as a runner sees it.
type State string

const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	// StateExited means the instance ended with exit code 0 or on the
	// requested stop signal; StateFailed means any other end.
	StateExited State = "exited"
	StateFailed State = "failed"
	// StateUnknown is reported for units the runner cannot (or no longer)
	// see, for example after systemd garbage-collected them.
	StateUnknown State = "unknown"
)

// Exit describes how an instance's main process ended.
type Exit struct {
	// Code is the exit code, or -1 when the process was killed by a signal.
	Code int
	// Signal is the terminating signal, 0 when the process exited normally.
	Signal syscall.Signal
}

// SignalName returns e.g. "SIGTERM", or "" when no signal ended the process.
func (e Exit) SignalName() string {
	if e.Signal == 0 {
		return ""
	}
	return SignalName(e.Signal)
}

// Status is a snapshot of one instance.
type Status struct {
	Name     string // unit name (also the exec runner's key)
	Identity Identity
	State    State
	MainPID  int
	// PIDs are every process of the instance (the unit's cgroup, or the
	// exec runner's process group), sorted ascending.
	PIDs      []int
	StartedAt time.Time
	// Exit is set once the instance has ended.
	Exit *Exit
	// MemoryBytes is the manager's cgroup memory figure (MemoryCurrent) when
	// available, else the sum of VmRSS over PIDs; 0 when unmeasurable.
	MemoryBytes uint64
	// Env is the instance's environment as the runner can read it back (the
	// systemd unit's Environment=); filled by List, used for re-adoption
	// after a daemon restart. nil when unknown.
	Env []string
}

// EventKind classifies a state change reported by Watch.
type EventKind string

const (
	EventStarted EventKind = "started"
	// EventExited: the instance ended (any cause, requested or not). The
	// caller decides whether it was a crash: a runner does not know.
	EventExited EventKind = "exited"
	// EventStatus: a Notify instance sent sd_notify STATUS=<text>
	// (Event.Status).
	EventStatus EventKind = "status"
)

// Event is one state change of one instance.
type Event struct {
	Kind     EventKind
	Name     string
	Identity Identity
	PID      int
	Exit     Exit // for EventExited
	At       time.Time
	// Status is the STATUS= text (EventStatus only).
	Status string
}

// Stream tells which output stream a log line came from. journald does not
// record it, so the systemd runner maps stderr by syslog priority (see
// docs/runtime.md).
type Stream string

const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// LogLine is one line of an instance's output.
type LogLine struct {
	At     time.Time
	Line   string
	Stream Stream
}

// Runner starts and supervises instances. Implementations are safe for
// concurrent use. Every blocking method honours ctx.
type Runner interface {
	// Kind names the backend: "systemd" or "exec".
	Kind() string
	// Start launches the instance and returns once its main process has been
	// executed (systemd Type=exec semantics), or, with Spec.Notify, once it
	// sent READY=1. A spawn failure (missing directory, unexecutable
	// program) or, with Notify, an exit or timeout before READY=1
	// (ErrNotReady) is returned as an error and leaves nothing running.
	// Starting a name that is already running fails with ErrAlreadyRunning.
	Start(ctx context.Context, spec Spec) (Status, error)
	// Stop ends the instance gracefully: send sig (0 = do not signal, e.g.
	// because a stop hook already asked the process to leave) to every
	// process of the instance, wait up to grace for all of them to exit, then
	// SIGKILL whatever is left (never with grace.Indefinite) and wait up to
	// KillWait more. Stopping an instance that is not running returns nil.
	Stop(ctx context.Context, name string, sig syscall.Signal, grace Grace) error
	// Signal sends sig to every process of the instance.
	Signal(ctx context.Context, name string, sig syscall.Signal) error
	// Status reports one instance; ErrNotFound if the runner has no record.
	Status(ctx context.Context, name string) (Status, error)
	// List returns every instance of app the runner can see, including ones
	// started by an earlier runner (re-adoption after a daemon restart).
	List(ctx context.Context, app string) ([]Status, error)
	// Watch streams Started/Exited events (and Status events of Notify
	// instances) for every instance of this runner's application until ctx
	// ends; the channel is closed then.
	Watch(ctx context.Context) (<-chan Event, error)
	// Logs returns up to n most recent lines of the instance (oldest first).
	Logs(ctx context.Context, name string, n int) ([]LogLine, error)
	// Follow calls fn for each new line of the instance from now until ctx
	// ends; it returns ctx's error or a read error.
	Follow(ctx context.Context, name string, fn func(LogLine)) error
	// Close releases the runner's resources. Running instances are left
	// alone (systemd units keep running; the exec runner's children are
	// stopped because they cannot outlive it safely).
	Close() error
}

// KillWait is how long Stop waits after SIGKILL (spec §5.5: 5000 ms).
const KillWait = 5 * time.Second

var (
	// ErrNotFound: the runner has no instance by that name.
	ErrNotFound = errors.New("instance not found")
	// ErrAlreadyRunning: Start was called for a name that is running.
	ErrAlreadyRunning = errors.New("instance already running")
	// ErrUnavailable: the backend cannot be used on this host (no systemd
	// manager answers, for example).
	ErrUnavailable = errors.New("runner unavailable")
)
