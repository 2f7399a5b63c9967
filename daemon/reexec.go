package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/rollbridge/rollbridge/proxy"
	"github.com/rollbridge/rollbridge/snapshot"
)

// Zero-downtime daemon restart (`systemctl reload` → SIGHUP), tableflip
// style: the running daemon starts the installed binary again, handing it
// the proxy, control and (when it serves one) metrics listening sockets as
// systemd-style passed fds (LISTEN_FDS /
// LISTEN_FDNAMES=proxy:control[:metrics]), so the kernel keeps accepting
// throughout. The new process re-adopts the units, serves on the inherited
// sockets and reports ready over a pipe; only then does the old process stop
// accepting, finish its in-flight proxied requests (bounded by
// proxy.drainTimeoutMs) and exit 0 — without stopping any unit. If the new
// process does not get ready, it is killed (SIGKILL: it must not stop the
// units) and the old daemon resumes supervising.
const (
	envReexec  = "ROLLBRIDGE_REEXEC"
	envReadyFD = "ROLLBRIDGE_READY_FD"
	// reloadReadyTimeout bounds the new process's start (adoption included).
	reloadReadyTimeout = 60 * time.Second
)

// processEnvOnly are variables that describe this daemon process and must
// not leak into managed instances or a re-executed daemon.
var processEnvOnly = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", envReexec, envReadyFD, snapshot.ManifestEnv}

func cleanEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, drop := range processEnvOnly {
			if k == drop {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

// inheritedListeners collects sockets passed by systemd socket activation or
// by a reloading predecessor (which cannot know our pid in advance, so it
// asks us to claim LISTEN_PID ourselves).
func inheritedListeners() (map[string][]net.Listener, error) {
	if os.Getenv(envReexec) == "1" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	passed, err := activation.ListenersWithNames()
	if err != nil {
		return nil, fmt.Errorf("take passed listening sockets: %w", err)
	}
	return passed, nil
}

// controlListener takes a passed "control" socket, or binds control.path.
func (d *daemon) controlListener(ctx context.Context, passed map[string][]net.Listener) (net.Listener, error) {
	if ls := passed["control"]; len(ls) > 0 {
		for _, extra := range ls[1:] {
			extra.Close()
		}
		return ls[0], nil
	}
	return listenControl(ctx, d.cfg.Control)
}

// announceReady tells systemd (and a reloading predecessor) that this
// daemon serves.
func (d *daemon) announceReady() {
	state := sddaemon.SdNotifyReady
	if os.Getenv(envReexec) == "1" {
		// The service's main process changes; needs NotifyAccess=all.
		state += "\nMAINPID=" + strconv.Itoa(os.Getpid())
	}
	_, _ = sddaemon.SdNotify(false, state)
	if fd, err := strconv.Atoi(os.Getenv(envReadyFD)); err == nil && fd > 2 {
		f := os.NewFile(uintptr(fd), "ready")
		_, _ = f.Write([]byte("ready\n"))
		f.Close()
	}
	os.Unsetenv(envReexec)
	os.Unsetenv(envReadyFD)
}

// reload hands this daemon's sockets and units to a new daemon process.
func (d *daemon) reload(ctx context.Context) error {
	if d.runner.Kind() != RunnerSystemd {
		return fmt.Errorf("reload needs the systemd runner: %s-runner processes are children of this daemon and cannot be handed over (restart the daemon instead)", d.runner.Kind())
	}
	d.events.Emit("daemon reload starting", map[string]any{"pid": os.Getpid()})
	_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyReloading)
	resume, err := d.mgr.Detach(ctx)
	if err != nil {
		return fmt.Errorf("wait for the running operation: %w", err)
	}
	if d.state != nil {
		d.state.write(ctx) // the successor reads the active release from it
	}
	child, err := d.startSuccessor(ctx)
	if err != nil {
		resume()
		_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
		return err
	}
	d.events.Emit("daemon reload handed over", map[string]any{"pid": child})
	d.handOver(ctx)
	return nil
}

func (d *daemon) startSuccessor(ctx context.Context) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find the installed rollbridge binary: %w", err)
	}
	lns := []namedListener{{proxy.DefaultFDName, d.proxyLn}, {"control", d.ctlLn}}
	if d.metricsLn != nil {
		lns = append(lns, namedListener{metricsFDName, d.metricsLn})
	}
	files := make([]*os.File, 0, len(lns))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, nl := range lns {
		f, err := listenerFile(nl.ln)
		if err != nil {
			return 0, fmt.Errorf("pass the %s listener on: %w", nl.name, err)
		}
		files = append(files, f)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("create the readiness pipe: %w", err)
	}
	defer r.Close()
	cmd := d.successorCmd(exe, lns, files, w)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if f, ok := d.opts.Log.(*os.File); ok {
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		w.Close()
		return 0, fmt.Errorf("start %s: %w", exe, err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected readiness message %q", line)
		}
		ready <- err
	}()
	timer := time.NewTimer(reloadReadyTimeout)
	defer timer.Stop()
	fail := func(err error) (int, error) {
		// SIGKILL, not SIGTERM: a terminated daemon would stop the units.
		_ = cmd.Process.Kill()
		return 0, err
	}
	select {
	case err := <-ready:
		if err != nil {
			return fail(fmt.Errorf("new daemon did not get ready: %w", err))
		}
		return cmd.Process.Pid, nil
	case err := <-exited:
		return 0, fmt.Errorf("new daemon exited during start: %v", err)
	case <-timer.C:
		return fail(errors.New("new daemon did not get ready within " + reloadReadyTimeout.String()))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
}

// namedListener is a listening socket passed to the successor under name
// (its LISTEN_FDNAMES entry).
type namedListener struct {
	name string
	ln   net.Listener
}

// successorCmd is the re-executed daemon: files (duplicates of lns, in the
// same order) become fds 3… as systemd would pass them, followed by the
// readiness pipe. The flags that shape the daemon are carried over; bootstrap
// flags are not (the successor adopts instead of activating).
func (d *daemon) successorCmd(exe string, lns []namedListener, files []*os.File, ready *os.File) *exec.Cmd {
	names := make([]string, len(lns))
	for i, nl := range lns {
		names[i] = nl.name
	}
	// "--flag=value" form: an empty value must stay an explicit "off" and
	// not fall back to ROLLBRIDGE_METRICS_LISTEN.
	cmd := exec.Command(exe, "daemon", "--config", d.opts.ConfigPath, "--runner", d.runner.Kind(),
		"--metrics-listen="+d.opts.MetricsListen)
	cmd.Env = append(cleanEnv(os.Environ()),
		"LISTEN_FDS="+strconv.Itoa(len(lns)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		envReexec+"=1",
		envReadyFD+"="+strconv.Itoa(3+len(files)))
	if ns := os.Getenv("NOTIFY_SOCKET"); ns != "" {
		cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+ns)
	}
	cmd.ExtraFiles = append(append([]*os.File(nil), files...), ready)
	return cmd
}

func listenerFile(ln net.Listener) (*os.File, error) {
	type filer interface{ File() (*os.File, error) }
	f, ok := ln.(filer)
	if !ok {
		return nil, fmt.Errorf("listener %s cannot be passed on (%T)", ln.Addr(), ln)
	}
	file, err := f.File()
	if err != nil {
		return nil, fmt.Errorf("duplicate listener %s: %w", ln.Addr(), err)
	}
	return file, nil
}

// handOver ends this process's part after a successful reload: stop
// accepting (the successor holds the same sockets), let in-flight proxied
// requests finish, stop persisting, and end Run — leaving every unit alone.
func (d *daemon) handOver(ctx context.Context) {
	d.shutOnce.Do(func() {
		if ul, ok := d.ctlLn.(*net.UnixListener); ok {
			// The socket file now belongs to the successor.
			ul.SetUnlinkOnClose(false)
		}
		d.ctl.Stop(ctx)
		// The successor serves the same metrics socket; scrapes already
		// accepted here are still answered.
		d.stopMetrics()
		if d.state != nil {
			d.state.halt()
		}
		if err := d.stopProxy(); err != nil {
			d.log.Warn("proxy close after handover", "error", err)
		}
		close(d.done)
	})
}
