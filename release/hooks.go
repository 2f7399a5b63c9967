package release

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/account"
)

// hookRunner runs lifecycle hooks (spec §5.6): /bin/sh -c in the process's
// cwd and environment plus ROLLBRIDGE_PID, as the process's account (its
// user/group settings: a hook never has more rights than its process), in a
// process group of its own so a hook that hangs is killed as a whole at its
// bound. Output is discarded. Failures are reported as events and never
// abort the stop sequence.
type hookRunner struct {
	in  *instance
	env []string
	cwd string
	pid int
	// user and group are the process definition's account settings.
	user, group string
}

func newHookRunner(in *instance, def *config.Process, env []string, cwd string, pid int) hookRunner {
	return hookRunner{in: in, env: env, cwd: cwd, pid: pid, user: def.User, group: def.Group}
}

func (h hookRunner) run(ctx context.Context, label, command string, bound time.Duration) {
	pid := ""
	if h.pid > 0 {
		pid = strconv.Itoa(h.pid)
	}
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = h.cwd
	cmd.Env = append(append([]string(nil), h.env...), "ROLLBRIDGE_PID="+pid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if _, err := os.Stat(h.cwd); err != nil {
		cmd.Dir = "/"
	}
	cred, err := account.Credential(h.user, h.group)
	if err != nil {
		// Never fall back to the daemon's account.
		h.in.emit(label+" failed", map[string]any{"error": err.Error(), "id": h.in.id})
		return
	}
	cmd.SysProcAttr.Credential = cred
	if err := cmd.Start(); err != nil {
		h.in.emit(label+" failed", map[string]any{"error": err.Error(), "id": h.in.id})
		return
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case err = <-done:
	case <-timer.C:
		h.in.emit(label+" timed out", map[string]any{"id": h.in.id, "timeoutMs": bound.Milliseconds()})
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		h.in.emit(label+" exited on signal", map[string]any{"id": h.in.id, "signal": units.SignalName(ws.Signal())})
		return
	}
	h.in.emit(label+" exited non-zero", map[string]any{"code": ee.ExitCode(), "id": h.in.id})
}
