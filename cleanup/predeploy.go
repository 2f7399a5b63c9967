package cleanup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// Timing of predeploy-cleanup (spec Appendix C).
const (
	// ShutdownTimeout bounds the wait for a stopped daemon's socket to go
	// quiet after its shutdown reply.
	ShutdownTimeout = 30 * time.Second
	// ShutdownPoll is how often the socket is probed meanwhile.
	ShutdownPoll = 250 * time.Millisecond
	// versionTimeout bounds `<release>/bin/rollbridge version --json`.
	versionTimeout = 10 * time.Second
)

// Predeploy actions (spec §8.4 step 5).
const (
	// ActionDaemonActive: a daemon of this application with an active
	// release owns the app; nothing was done.
	ActionDaemonActive = "daemon-active"
	// ActionDaemonStopped: a daemon was shut down, then the host cleaned.
	ActionDaemonStopped = "daemon-stopped"
	// ActionNoDaemonCleaned: no daemon answered; the host was cleaned.
	ActionNoDaemonCleaned = "no-daemon-cleaned"
)

// PredeployOptions configure Predeploy.
type PredeployOptions struct {
	Options
	// ReleasePath is the pending release's absolute directory ("" = not
	// given): its bin/rollbridge is compared with the running daemon's
	// version.
	ReleasePath string
	// ReleaseVersion reports the Rollbridge version installed in a release
	// ("" = unknown); nil = BinaryVersion.
	ReleaseVersion func(ctx context.Context, releasePath string) string
	// ShutdownTimeout and ShutdownPoll override the defaults (tests).
	ShutdownTimeout, ShutdownPoll time.Duration
	// Self is the pid whose ancestors (and itself) are never legacy
	// processes; 0 = this process.
	Self int
	// Screen is the GNU screen program; "" = "screen" from PATH (skipped
	// when not installed).
	Screen string
}

// PredeployResult is the outcome of Predeploy (the original's internal
// result, spec §8.4 step 5).
type PredeployResult struct {
	Action string `json:"action"`
	// Recovered counts the stopped leftover units and processes.
	Recovered int `json:"recoveredOrphans"`
	// LegacyProcesses are the legacy processes found and stopped.
	LegacyProcesses []LegacyProcess `json:"legacyProcesses"`
}

// RecoverError: the forced recovery left units or processes running.
type RecoverError struct {
	Remaining Leftovers
}

func (e *RecoverError) Error() string {
	return fmt.Sprintf("Could not stop %d Rollbridge orphaned process(es).", e.Remaining.Len())
}

// Predeploy is `rollbridge predeploy-cleanup` (spec §8.4): make way for the
// first Rollbridge deploy of an application that ran under another
// supervisor. In order: a running daemon of this application that already
// serves an active release with the configured proxy settings (and the
// same Rollbridge version as the pending release) ends it as a no-op;
// any other daemon of this application is shut down; the forced recovery
// stops what a previous daemon left (units and, with statePath, recorded
// processes); finally legacyTakeover's processes are stopped.
func Predeploy(ctx context.Context, opts PredeployOptions) (PredeployResult, error) {
	res := PredeployResult{Action: ActionNoDaemonCleaned, LegacyProcesses: []LegacyProcess{}}
	cfg := opts.Config
	if cfg == nil {
		return res, errors.New("predeploy-cleanup: no config given")
	}
	path := cfg.Control.Path
	probe, err := control.Probe(ctx, path)
	if err != nil {
		return res, fmt.Errorf("probe control socket %s: %w", path, err)
	}
	if probe.Alive {
		switch {
		case !probe.Rollbridge:
			return res, fmt.Errorf("A non-Rollbridge process is using %s; refusing predeploy cleanup.", path)
		case probe.Application != cfg.Application:
			return res, fmt.Errorf("A Rollbridge daemon for %q is using %s; expected %q.", probe.Application, path, cfg.Application)
		}
		keep, err := daemonCurrent(ctx, opts)
		if err != nil {
			return res, err
		}
		if keep {
			res.Action = ActionDaemonActive
			return res, nil
		}
		if err := shutdownDaemon(ctx, opts); err != nil {
			return res, err
		}
		res.Action = ActionDaemonStopped
	}
	recoverOpts := opts.Options
	recoverOpts.KeepAdoptable = true
	n, err := forceRecover(ctx, recoverOpts)
	res.Recovered = n
	if err != nil {
		return res, err
	}
	if lt := cfg.LegacyTakeover; lt != nil {
		found, err := takeover(ctx, lt, opts)
		if found != nil {
			res.LegacyProcesses = found
		}
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// daemonStatus is the part of the status reply the no-op decision reads.
type daemonStatus struct {
	ActiveReleaseID *string `json:"activeReleaseId"`
	DaemonRuntime   struct {
		Version string `json:"version"`
	} `json:"daemonRuntime"`
	Proxy struct {
		Host         string `json:"host"`
		Port         int    `json:"port"`
		UpstreamHost string `json:"upstreamHost"`
	} `json:"proxy"`
}

// daemonCurrent fetches the running daemon's status and reports whether
// it already owns the application as configured: an active release, the
// configured proxy host, port and upstream host, and — with a release path
// — the same Rollbridge version as the release ships (unknown on either
// side counts as the same). A configured port 0 (OS-assigned) matches the
// port the daemon bound.
func daemonCurrent(ctx context.Context, opts PredeployOptions) (bool, error) {
	cfg := opts.Config
	raw, err := control.Call(ctx, cfg.Control.Path, control.Request{Command: control.CmdStatus})
	if err != nil {
		return false, fmt.Errorf("status of the Rollbridge daemon at %s: %w", cfg.Control.Path, err)
	}
	var st daemonStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return false, fmt.Errorf("decode status of the Rollbridge daemon at %s: %w", cfg.Control.Path, err)
	}
	if st.ActiveReleaseID == nil || !sameProxy(cfg.Proxy, st) {
		return false, nil
	}
	if opts.ReleasePath == "" {
		return true, nil
	}
	versionOf := opts.ReleaseVersion
	if versionOf == nil {
		versionOf = BinaryVersion
	}
	pending, running := versionOf(ctx, opts.ReleasePath), st.DaemonRuntime.Version
	return pending == "" || running == "" || pending == running, nil
}

func sameProxy(p config.Proxy, st daemonStatus) bool {
	return p.Host == st.Proxy.Host && p.UpstreamHost == st.Proxy.UpstreamHost &&
		(p.Port == st.Proxy.Port || p.Port == 0)
}

// BinaryVersion is the version `<releasePath>/bin/rollbridge version --json`
// prints, or "" when the release ships no such binary or it does not
// answer (unknown).
func BinaryVersion(ctx context.Context, releasePath string) string {
	bin := filepath.Join(releasePath, "bin", "rollbridge")
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		return ""
	}
	vctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(vctx, bin, "version", "--json").Output()
	if err != nil {
		return ""
	}
	var v struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(out, &v) != nil {
		return ""
	}
	return v.Version
}

// shutdownDaemon sends shutdown — whose reply the daemon sends only after
// every process stopped — then probes every ShutdownPoll, for up to
// ShutdownTimeout, until nothing answers. Losing the connection instead of
// a reply is fine; an error reply (e.g. permission denied) is not.
func shutdownDaemon(ctx context.Context, opts PredeployOptions) error {
	path := opts.Config.Control.Path
	_, err := control.Call(ctx, path, control.Request{Command: control.CmdShutdown})
	var remote *control.RemoteError
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &remote):
		return fmt.Errorf("shut down the Rollbridge daemon at %s: %w", path, err)
	}
	timeout, poll := opts.ShutdownTimeout, opts.ShutdownPoll
	if timeout <= 0 {
		timeout = ShutdownTimeout
	}
	if poll <= 0 {
		poll = ShutdownPoll
	}
	deadline := time.Now().Add(timeout)
	for {
		// A probe that cannot tell counts as still answering.
		if res, err := control.Probe(ctx, path); err == nil && !res.Alive {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("Timed out waiting for Rollbridge daemon at %s to shut down.", path)
		}
		if err := sleep(ctx, min(poll, time.Until(deadline))); err != nil {
			return err
		}
	}
}

// forceRecover runs the recover --force logic without its socket probe
// (the caller knows no daemon answers) and returns how many leftovers it
// stopped. It does nothing without statePath and without a systemd
// manager to list units with.
func forceRecover(ctx context.Context, opts Options) (int, error) {
	conn, closeFn, err := findManager(ctx, opts)
	if err != nil {
		return 0, fmt.Errorf("recover Rollbridge orphaned processes: %w", err)
	}
	defer closeFn()
	if conn == nil && opts.statePath() == "" {
		return 0, nil
	}
	rep, err := sweep(ctx, opts, conn, true)
	n := rep.Stopped.Len()
	if err != nil {
		return n, fmt.Errorf("recover Rollbridge orphaned processes: %w", err)
	}
	if rep.Remaining.Len() > 0 {
		return n, &RecoverError{Remaining: rep.Remaining}
	}
	return n, nil
}
