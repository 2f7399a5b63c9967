package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/daemon"
	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/snapshot"
	"github.com/rollbridge/rollbridge/units"
)

// envRunner overrides the runner choice when --runner is not given.
const envRunner = "ROLLBRIDGE_RUNNER"

// envJournalDir points journalctl at another journal (the test sandbox's).
const envJournalDir = "ROLLBRIDGE_JOURNAL_DIR"

func (a *app) getenv(key string) string {
	for _, kv := range a.env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func (a *app) runnerDefault() string {
	if v := a.getenv(envRunner); v != "" {
		return v
	}
	return daemon.RunnerAuto
}

func (a *app) daemonCommand() *cobra.Command {
	var path, runner, metricsListen string
	var bf daemon.BootstrapFlags
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the Rollbridge daemon in the foreground",
		Long: `Run the daemon of one application in the foreground: bind the proxy (or take
it from systemd socket activation, fd name "proxy"), re-adopt running units,
bind the control socket, and supervise every managed process through the
selected runner. JSON log lines go to stdout. SIGINT/SIGTERM stop everything
and exit 0; SIGHUP re-executes the daemon without dropping a connection.

With --release-path, --release-id and --revision (all absolute/safe, and
--config absolute) the daemon first activates that exact release and only
then exposes its control socket; a failed activation exits 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Bootstrap flags are validated before the config is loaded
			// and before anything binds (spec §8.6).
			flags := cmd.Flags()
			bf.Config = path
			bf.ConfigSet, bf.PathSet, bf.IDSet = flags.Changed("config"), flags.Changed("release-path"), flags.Changed("release-id")
			bf.RevisionSet, bf.AttestationSet = flags.Changed("revision"), flags.Changed("boot-attestation")
			boot, err := daemon.ValidateBootstrap(bf)
			if err != nil {
				return err
			}
			resolved, err := config.ResolvePath(path, a.cwd)
			if err != nil {
				return err
			}
			return daemon.Run(cmd.Context(), daemon.Options{
				Bootstrap:     boot,
				MetricsListen: metricsListen,
				ConfigPath:    a.abs(resolved),
				Runner:        runner,
				JournalDir:    a.getenv(envJournalDir),
				Env:           a.env,
				Log:           a.stdout,
				Version:       buildVersion(),
			})
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&runner, "runner", a.runnerDefault(), "process runner: auto, systemd or exec (env "+envRunner+")")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", a.getenv("ROLLBRIDGE_METRICS_LISTEN"), "serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (env ROLLBRIDGE_METRICS_LISTEN)")
	cmd.Flags().StringVar(&bf.ReleasePath, "release-path", "", "bootstrap: activate this release before exposing the control socket (absolute)")
	cmd.Flags().StringVar(&bf.ReleaseID, "release-id", "", "bootstrap: release id")
	cmd.Flags().StringVar(&bf.Revision, "revision", "", "bootstrap: revision")
	cmd.Flags().StringVar(&bf.Attestation, "boot-attestation", "", "bootstrap: sha256:<64 hex> attestation reported in status")
	cmd.Flags().BoolVar(&bf.TakeoverOwner, "takeover-owner", false, "bootstrap: activate while the current owner serves, then retire it and take its listeners")
	return cmd
}

// ensureFlags are shared by ensure-daemon and deploy --ensure-daemon.
type ensureFlags struct {
	logPath, pidPath, runtimePath, timeoutMs, runner string
}

func (f *ensureFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.logPath, "daemon-log-path", "", "log file of a detached (non-systemd) daemon (default /tmp/rollbridge-<app>.log)")
	cmd.Flags().StringVar(&f.pidPath, "daemon-pid-path", "", "pid file of a detached (non-systemd) daemon (default /tmp/rollbridge-<app>.pid)")
	cmd.Flags().StringVar(&f.runtimePath, "daemon-runtime-path", "", "private directory for the daemon's runtime snapshot (default /tmp/rollbridge-<uid>-<hash>-runtime)")
	cmd.Flags().StringVar(&f.timeoutMs, "daemon-start-timeout-ms", "10000", "how long to wait for a started daemon to answer")
	cmd.Flags().StringVar(&f.runner, "runner", "", "process runner for a daemon started here: auto, systemd or exec (env "+envRunner+")")
}

func (a *app) ensureDaemonCommand() *cobra.Command {
	var path string
	var f ensureFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ensure-daemon",
		Short: "Start the daemon unless one already answers, then print its status",
		Long: `Probe the control socket; if no daemon answers, start one and wait until it
does. On a host with a reachable systemd manager the daemon is started as the
transient unit rollbridge-<app>.service (its output goes to the journal);
elsewhere it is started as a detached process (new session) whose output is
appended to --daemon-log-path and whose pid is written to --daemon-pid-path.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reply, err := a.ensureDaemon(cmd.Context(), path, f)
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, formatStatus)
		},
	}
	addConfigFlag(cmd, &path)
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	return cmd
}

// ensureDaemon implements ensure-daemon and returns the daemon's status.
func (a *app) ensureDaemon(ctx context.Context, explicit string, f ensureFlags) (json.RawMessage, error) {
	// A finite number ≥ 1 (spec §6.1): ParseFloat also accepts NaN and
	// Inf, which would end the wait at once.
	timeout, err := strconv.ParseFloat(f.timeoutMs, 64)
	if err != nil || math.IsNaN(timeout) || math.IsInf(timeout, 0) || timeout < 1 {
		return nil, errors.New("--daemon-start-timeout-ms must be a positive number")
	}
	resolved, err := config.ResolvePath(explicit, a.cwd)
	if err != nil {
		return nil, err
	}
	cfgPath := a.abs(resolved)
	cfg, err := config.Load(ctx, cfgPath, config.LoadOptions{Env: a.env})
	if err != nil {
		return nil, err
	}
	// The runtime snapshot comes first: a failure aborts before any daemon
	// is contacted or started (spec §8.5).
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the rollbridge binary: %w", err)
	}
	base := f.runtimePath
	if base == "" {
		base = snapshot.DefaultBase(os.Geteuid(), cfg.Application)
	}
	prepared, err := snapshot.Prepare(ctx, a.abs(base), exe, buildVersion())
	if err != nil {
		return nil, err
	}
	if reply, err := control.Call(ctx, cfg.Control.Path, control.Request{Command: control.CmdStatus}); err == nil {
		return reply, checkRuntime(reply, prepared)
	}
	runner := f.runner
	if runner == "" {
		runner = a.runnerDefault()
	}
	how, err := a.startDaemon(ctx, cfg, cfgPath, runner, prepared, f)
	if err != nil {
		return nil, err
	}
	// A timeout beyond time.Duration's range waits (practically) forever
	// instead of overflowing into a deadline in the past.
	wait := time.Duration(math.MaxInt64)
	if ns := timeout * float64(time.Millisecond); ns < float64(math.MaxInt64) {
		wait = time.Duration(ns)
	}
	deadline := time.Now().Add(wait)
	var last error
	for time.Now().Before(deadline) {
		reply, err := control.Call(ctx, cfg.Control.Path, control.Request{Command: control.CmdStatus})
		if err == nil {
			// A concurrent starter may have won with another runtime.
			return reply, checkRuntime(reply, prepared)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	msg := fmt.Sprintf("Rollbridge daemon did not become ready within %sms.", f.timeoutMs)
	if last != nil {
		msg += " Last error: " + last.Error()
	}
	return nil, errors.New(msg + " " + how)
}

// startDaemon starts a detached daemon: as a transient systemd unit when a
// manager answers (and the exec runner was not forced), else as a child in
// a new session. It returns where to look when the daemon does not answer.
func (a *app) startDaemon(ctx context.Context, cfg *config.Config, cfgPath, runner string, rt snapshot.Identity, f ensureFlags) (string, error) {
	// The daemon runs from the snapshot, so deleting or replacing the
	// release that shipped this binary does not affect it.
	argv := []string{filepath.Join(rt.Path, snapshot.BinaryName), "daemon", "--config", cfgPath, "--runner", runner}
	env := withEnv(a.env, snapshot.ManifestEnv, filepath.Join(rt.Path, snapshot.ManifestName))
	if runner != daemon.RunnerExec {
		if unit, err := a.startDaemonUnit(ctx, cfg, argv, env); err == nil {
			return fmt.Sprintf("Inspect it with: journalctl -u %s (or --user-unit for a user manager).", unit), nil
		} else if runner == daemon.RunnerSystemd {
			return "", err
		}
	}
	logPath := f.logPath
	if logPath == "" {
		logPath = "/tmp/rollbridge-" + cfg.Application + ".log"
	}
	pidPath := f.pidPath
	if pidPath == "" {
		pidPath = "/tmp/rollbridge-" + cfg.Application + ".pid"
	}
	for _, p := range []string{logPath, pidPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", fmt.Errorf("create directory for %s: %w", p, err)
		}
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return "", fmt.Errorf("open daemon log %s: %w", logPath, err)
	}
	defer logFile.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = a.cwd
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start daemon: %w", err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write daemon pid file %s: %w", pidPath, err)
	}
	return "Inspect its log: " + logPath, nil
}

// daemonUnitName is the transient unit ensure-daemon starts the daemon in.
// It does not match the instance pattern rollbridge-<app>-*.service.
func daemonUnitName(app string) string {
	return "rollbridge-" + units.EscapeComponent(app) + ".service"
}

func (a *app) startDaemonUnit(ctx context.Context, cfg *config.Config, argv, env []string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(dctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		return "", fmt.Errorf("connect to systemd: %w", err)
	}
	defer conn.Close()
	unit := daemonUnitName(cfg.Application)
	err = conn.StartTransient(dctx, dbusctl.TransientSpec{
		Name:             unit,
		Description:      "Rollbridge daemon for " + cfg.Application,
		Slice:            "rollbridge.slice",
		Argv:             argv,
		WorkingDirectory: a.cwd,
		Environment:      env,
		KillSignal:       syscall.SIGTERM,
		// The daemon stops every managed process on SIGTERM; give it time.
		TimeoutStop:      10 * time.Minute,
		SyslogIdentifier: strings.TrimSuffix(unit, ".service"),
		LogExtraFields:   []string{"ROLLBRIDGE_APP=" + cfg.Application},
	})
	if err != nil {
		return "", fmt.Errorf("start %s: %w", unit, err)
	}
	return unit, nil
}

// checkRuntime refuses a daemon whose runtime identity differs from the
// prepared snapshot (spec §8.5 step 2), including one that reports none.
func checkRuntime(reply json.RawMessage, prepared snapshot.Identity) error {
	var st struct {
		DaemonRuntime *snapshot.Identity `json:"daemonRuntime"`
	}
	if err := json.Unmarshal(reply, &st); err != nil || !snapshot.Compatible(st.DaemonRuntime, prepared) {
		return snapshot.ErrMismatch
	}
	return nil
}

// withEnv returns env with key set to value (replacing any earlier value).
func withEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}
