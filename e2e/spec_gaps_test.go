package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCrashedProxiedProcessAnswers502UntilRestarted (PRX-12, spec §4.9):
// the active release's proxied process is killed with SIGKILL; the release
// stays active, the proxy answers 502 Bad gateway while nothing listens on
// its port, and serves again (no health check first) once the crash
// restart brought the process back on the same port.
func TestCrashedProxiedProcessAnswers502UntilRestarted(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		const restartDelay = 1200 * time.Millisecond
		e := newEnv(t, runner, fmt.Sprintf(`[
    {id: "web", policy: "proxied", command: "exec ./demo-app --port {{port}}", port: {from: 0, to: 0},
     restartDelayMs: %d, health: {path: "/ping", intervalMs: 50}}
  ]`, restartDelay.Milliseconds()))
		e.deploy("v1")
		st := e.status()
		url := fmt.Sprintf("http://127.0.0.1:%d/", st.Proxy.Port)
		before := e.mustProcess(st, "v1", "web")
		port := st.Releases[0].Ports["web"]
		if code, body, err := get(url); err != nil || code != 200 || !strings.Contains(body, "release v1") {
			t.Fatalf("before the crash: %d %q %v", code, body, err)
		}

		if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
			t.Fatalf("kill web pid %d: %v", before.PID, err)
		}
		killed := time.Now()
		// 502 while the process is down: well before the restart delay ends.
		var code int
		var body string
		var err error
		for {
			code, body, err = get(url)
			if err == nil && code == 502 {
				break
			}
			if time.Since(killed) > restartDelay {
				t.Fatalf("no 502 within %v of the SIGKILL; last answer %d %q %v", restartDelay, code, body, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if body != "Bad gateway\n" {
			t.Errorf("502 body %q, want %q", body, "Bad gateway\n")
		}
		first502 := time.Since(killed)
		// Then 200 again once the restarted process listens; until then
		// nothing but 502 (no fallback release, no 503).
		for {
			code, body, err = get(url)
			if err == nil && code == 200 && strings.Contains(body, "release v1") {
				break
			}
			if err != nil || code != 502 {
				t.Fatalf("while web is down: %d %q %v; want 502", code, body, err)
			}
			if time.Since(killed) > 15*time.Second {
				t.Fatal("the proxy did not serve again within 15 s of the crash")
			}
			time.Sleep(20 * time.Millisecond)
		}
		recovered := time.Since(killed)
		t.Logf("%s runner: first 502 %v after SIGKILL, 200 again after %v (restartDelayMs %d)",
			runner, first502.Round(time.Millisecond), recovered.Round(time.Millisecond), restartDelay.Milliseconds())
		if recovered < restartDelay*3/4 {
			t.Errorf("served again %v after the crash, before the restart delay %v", recovered, restartDelay)
		}

		st = e.status()
		after := e.mustProcess(st, "v1", "web")
		if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" || len(st.Releases) != 1 {
			t.Errorf("releases after the crash: active %v, %+v", st.ActiveReleaseID, st.Releases)
		}
		if after.PID == before.PID || after.PID == 0 || after.State != "running" || after.Restarts != 1 || after.LastStartReason != "crash" {
			t.Errorf("web after the crash: pid %d (was %d) state %s restarts %d reason %q; want a new pid, running, 1, crash",
				after.PID, before.PID, after.State, after.Restarts, after.LastStartReason)
		}
		if p := st.Releases[0].Ports["web"]; p != port {
			t.Errorf("web restarted on port %d, was %d", p, port)
		}
		if code, body, err := get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err != nil || code != 200 || !strings.Contains(body, fmt.Sprintf("pid %d", after.PID)) {
			t.Errorf("the restarted process on the old port: %d %q %v", code, body, err)
		}
		if n := len(indexOf(e.eventLog(), "proxy error", "", "v1")); n == 0 {
			t.Error("no proxy error event for the 502s")
		}
	})
}

// shutdownTopology has every kind of owner (a persistent service, a
// singleton, a companion and the proxied process) plus a companion whose
// stop takes slowStop and leaves a marker when it is complete. Its handler
// ignores further SIGTERMs before it sleeps, so the sleep survives a
// systemd stop (which signals every process of the cgroup, including
// ones forked while it kills).
func shutdownTopology(marker string, slowStop time.Duration) string {
	slow := fmt.Sprintf(`trap 'trap "" TERM; sleep %.1f; echo stopped >> %s; exit 0' TERM; while :; do sleep 0.05; done`, slowStop.Seconds(), marker)
	return fmt.Sprintf(`[
    {id: "svc", policy: "service", command: "exec sleep 100000"},
    {id: "single", policy: "singleton", command: "exec sleep 100000"},
    {id: "slow", gracefulStopMs: 10000, command: %s},
    %s
  ]`, jsQuote(slow), webProcess)
}

// owned is what a daemon owns before it is stopped.
type owned struct {
	pids      map[string]int // instance → pid
	units     []string       // systemd runner
	proxyPort int
}

func (e *env) owned() owned {
	e.t.Helper()
	st := e.status()
	o := owned{pids: map[string]int{}, proxyPort: st.Proxy.Port}
	add := func(where string, p process) {
		if p.PID == 0 || p.State != "running" {
			e.t.Fatalf("%s %s not running: %+v", where, p.ID, p)
		}
		o.pids[where+"/"+p.ID] = p.PID
	}
	for _, r := range st.Releases {
		for _, p := range r.Processes {
			add(r.ReleaseID, p)
		}
	}
	for _, s := range st.Services {
		add("service", s.Process)
	}
	for _, s := range st.Singletons {
		add("singleton", s.Process)
	}
	if e.runner == "systemd" {
		o.units = e.listUnits()
		if len(o.units) != len(o.pids) {
			e.t.Fatalf("units %v for instances %v", o.units, o.pids)
		}
	}
	return o
}

// checkAllStopped asserts that nothing of o is left: no process, no unit,
// no control socket file, no proxy listener, and that the slow stop
// completed (its marker exists).
func (e *env) checkAllStopped(when string, o owned, marker string) {
	e.t.Helper()
	for id, pid := range o.pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			e.t.Errorf("%s: %s (pid %d) still exists (kill 0: %v)", when, id, pid, err)
			// Leave nothing behind: each instance is its own group.
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if e.runner == "systemd" {
		if units := e.listUnits(); len(units) != 0 {
			e.t.Errorf("%s: units left: %v (had %v)", when, units, o.units)
			e.stopAppUnits()
		}
	}
	if _, err := os.Lstat(e.ctlPath); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("%s: control socket file still there (%v)", when, err)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", o.proxyPort), time.Second); err == nil {
		c.Close()
		e.t.Errorf("%s: the proxy port %d still accepts connections", when, o.proxyPort)
	}
	if b, err := os.ReadFile(marker); err != nil || string(b) != "stopped\n" {
		e.t.Errorf("%s: the slow process's stop had not completed: marker %q %v", when, b, err)
	}
}

// waitExit waits (bounded) for the daemon to exit and returns its code.
func (e *env) waitExit(timeout time.Duration) int {
	e.t.Helper()
	select {
	case <-e.exited:
		return e.daemon.ProcessState.ExitCode()
	case <-time.After(timeout):
		e.t.Fatalf("daemon still running %v later:\n%s", timeout, tail(e.logs.String(), 20))
		return -1
	}
}

// TestShutdownWithoutDaemonFails (SHD-06, spec §3.6, §6.3): `shutdown`
// with no daemon on control.path fails with the connection error — no
// socket file (ENOENT) or a stale one nobody listens on (ECONNREFUSED) —
// and exit code 1. Nothing here depends on the runner.
func TestShutdownWithoutDaemonFails(t *testing.T) {
	e := newEnvOpts(t, "exec", `[`+webProcess+`]`, envOpts{noStart: true})
	run := func(reason string) {
		t.Helper()
		out, err := e.rbErr("shutdown")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("shutdown without a daemon (%s): %v, want exit code 1\n%s", reason, err, out)
		}
		want := "error: dial unix " + e.ctlPath + ": connect: " + reason + "\n"
		if out != want {
			t.Errorf("shutdown without a daemon: output %q, want %q", out, want)
		}
	}
	run("no such file or directory")

	stale, err := net.Listen("unix", e.ctlPath)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // cleanup removes the file
	run("connection refused")
}

// TestShutdownRepliesAfterCleanup (SHD-06, spec §3.6): the shutdown reply
// is a completion signal — when the CLI prints it, every process (a slow
// one included) has stopped, no unit is left, the socket file is gone and
// the proxy is closed, so a replacement daemon can start at once; the
// daemon then exits 0.
func TestShutdownRepliesAfterCleanup(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		const slowStop = 700 * time.Millisecond
		marker := filepath.Join(markerDir(t, "shutdown"), "slow.stopped")
		e := newEnv(t, runner, shutdownTopology(marker, slowStop))
		e.deploy("v1")
		o := e.owned()

		start := time.Now()
		out := e.rb("shutdown")
		took := time.Since(start)
		var reply map[string]any
		if err := json.Unmarshal([]byte(out), &reply); err != nil || len(reply) != 2 || reply["status"] != "success" || reply["message"] != "shutdown" {
			t.Errorf("shutdown reply %q (%v), want {status: success, message: shutdown}", out, err)
		}
		e.checkAllStopped("when shutdown replied", o, marker)
		if took < slowStop {
			t.Errorf("shutdown replied after %v, before the %v stop could finish", took, slowStop)
		}
		t.Logf("%s runner: shutdown of %d instances replied after %v", runner, len(o.pids), took.Round(time.Millisecond))
		if code := e.waitExit(10 * time.Second); code != 0 {
			t.Errorf("daemon exit code %d after shutdown, want 0", code)
		}
		// A replacement binds the same control path right away.
		e.startDaemon()
	})
}

// TestSignalShutdown (SHD-07, spec §3.6 signal path, §6.3): SIGINT to the
// foreground daemon runs the same shutdown as SIGTERM — every process
// (a slow one included) stopped, units gone, socket file removed, proxy
// closed, state file deleted — and the daemon exits 0.
func TestSignalShutdown(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		const slowStop = 300 * time.Millisecond
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			t.Run(sig.String(), func(t *testing.T) {
				dir := markerDir(t, "signal")
				marker := filepath.Join(dir, "slow.stopped")
				statePath := filepath.Join(dir, "state.json")
				e := newEnv(t, runner, shutdownTopology(marker, slowStop)+`,
  statePath: `+jsQuote(statePath))
				e.deploy("v1")
				o := e.owned()
				if _, err := os.Stat(statePath); err != nil {
					t.Fatalf("state file before the signal: %v", err)
				}
				if err := e.daemon.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				signalled := time.Now()
				code := e.waitExit(20 * time.Second)
				if took := time.Since(signalled); took < slowStop {
					t.Errorf("daemon exited %v after %v, before the %v stop could finish", took, sig, slowStop)
				}
				if code != 0 {
					t.Errorf("exit code %d after %v, want 0\n%s", code, sig, tail(e.logs.String(), 20))
				}
				e.checkAllStopped("after "+sig.String(), o, marker)
				if _, err := os.Stat(statePath); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("state file after %v: %v, want it deleted", sig, err)
				}
				if !strings.Contains(e.logs.String(), "signal received; shutting down") {
					t.Errorf("no signal shutdown logged:\n%s", tail(e.logs.String(), 20))
				}
			})
		}
	})
}
