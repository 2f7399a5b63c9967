package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logEvents returns the events with message msg from a daemon's JSON log
// lines (its stdout), with their data.
func logEvents(logs, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(logs, "\n") {
		var r struct {
			Msg  string         `json:"msg"`
			Data map[string]any `json:"data"`
		}
		if json.Unmarshal([]byte(line), &r) == nil && r.Msg == msg {
			out = append(out, r.Data)
		}
	}
	return out
}

// TestFailedTakeoverLeavesOwnerServing (BOO-06, spec §8.7 step 3; OWN-03,
// spec §3.7): a `--takeover-owner` daemon whose activation fails exits 1
// without touching the running owner — same release, same process, its
// control socket and proxy keep serving, nothing retired. A later
// takeover that succeeds retires the owner, which emits `external owner
// retired` {attestation, status: "draining"} and exits.
func TestFailedTakeoverLeavesOwnerServing(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		port := freePort(t)
		e := newEnvOpts(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {timeoutMs: 1000, intervalMs: 50}}]`, envOpts{port: port})
		e.deploy("v1")
		owner, ownerExited, ownerLogs := e.daemon, e.exited, e.logs
		before := e.mustProcess(e.status(), "v1", "web")
		var unitsBefore []string
		if runner == "systemd" {
			unitsBefore = e.listUnits()
		}

		// The release directory lacks the app: the health check fails.
		broken := e.dir + "/releases/broken"
		if err := os.MkdirAll(broken, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(rbBinary, "daemon", "-c", e.config, "--runner", runner, "--release-path", broken, "--release-id", "v2", "--revision", "r2",
			"--boot-attestation", attestation, "--takeover-owner")
		cmd.Env = e.environ()
		cmd.Dir = e.dir
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("failed takeover: %v, want exit 1\n%s", err, tail(string(out), 20))
		}
		if len(logEvents(string(out), "bootstrap activation failed")) != 1 {
			t.Errorf("failed takeover output lacks bootstrap activation failed:\n%s", tail(string(out), 20))
		}

		select {
		case <-ownerExited:
			t.Fatalf("the owner exited after a failed takeover:\n%s", tail(ownerLogs.String(), 40))
		default:
		}
		st := e.status()
		if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" || len(st.Releases) != 1 {
			t.Errorf("owner after the failed takeover: active %v, releases %+v", st.ActiveReleaseID, st.Releases)
		}
		if after := e.mustProcess(st, "v1", "web"); after.PID != before.PID || after.State != "running" || after.Restarts != 0 {
			t.Errorf("owner's web after the failed takeover: %+v, was %+v", after, before)
		}
		if code, body, err := get(e.proxyURL("/")); err != nil || code != 200 || !strings.Contains(body, "release v1") {
			t.Errorf("owner's proxy after the failed takeover: %d %q %v", code, body, err)
		}
		if runner == "systemd" {
			if got := e.listUnits(); strings.Join(got, ",") != strings.Join(unitsBefore, ",") {
				t.Errorf("units after the failed takeover: %v, want the owner's %v", got, unitsBefore)
			}
		}
		if n := len(logEvents(ownerLogs.String(), "external owner retired")); n != 0 {
			t.Errorf("the owner was retired by a failed takeover")
		}

		// A takeover that succeeds retires the owner.
		e.startBootstrap("v3", "--boot-attestation", attestation, "--takeover-owner")
		select {
		case <-ownerExited:
		case <-time.After(30 * time.Second):
			t.Fatalf("the owner (pid %d) did not exit after retirement:\n%s", owner.Process.Pid, tail(ownerLogs.String(), 40))
		}
		retired := logEvents(ownerLogs.String(), "external owner retired")
		if len(retired) != 1 || retired[0]["attestation"] != attestation || retired[0]["status"] != "draining" || len(retired[0]) != 2 {
			t.Errorf("external owner retired events of the owner: %v", retired)
		}
		if code := owner.ProcessState.ExitCode(); code != 0 {
			t.Errorf("retired owner exit code %d", code)
		}
		e.waitFor("the new owner to answer", 20*time.Second, func() bool {
			_, err := e.rbErr("status")
			return err == nil
		})
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v3") {
			t.Errorf("after the takeover: %q", body)
		}
	})
}

// TestShutdownUnlinksSocketWhileProcessesStop (SHD-02, spec §3.6 steps 3
// and 5): the control socket file is gone while a process that ignores
// SIGTERM is still being stopped, and the shutdown reply only comes after
// that process ended.
func TestShutdownUnlinksSocketWhileProcessesStop(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[
    {id: "stubborn", command: "trap '' TERM; while :; do sleep 0.05; done", gracefulStopMs: 1500},
    `+webProcess+`]`)
		e.deploy("v1")
		pid := e.mustProcess(e.status(), "v1", "stubborn").PID
		if pid <= 0 {
			t.Fatalf("stubborn pid %d", pid)
		}
		type result struct {
			out string
			err error
			at  time.Time
		}
		replied := make(chan result, 1)
		start := time.Now()
		go func() {
			out, err := e.rbErr("shutdown")
			replied <- result{out, err, time.Now()}
		}()
		var goneAt time.Time
		for {
			if _, err := os.Stat(e.ctlPath); errors.Is(err, os.ErrNotExist) {
				goneAt = time.Now()
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatal("the control socket file was not removed")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) != nil {
			t.Errorf("the stubborn process (pid %d) was already gone when the socket file disappeared (%v after the request)", pid, goneAt.Sub(start))
		}
		r := <-replied
		if r.err != nil {
			t.Fatalf("shutdown: %v\n%s", r.err, r.out)
		}
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("the stubborn process (pid %d) still runs after the shutdown reply", pid)
		}
		t.Logf("socket file gone %v after the request, reply after %v", goneAt.Sub(start).Round(time.Millisecond), r.at.Sub(start).Round(time.Millisecond))
		<-e.exited
	})
}
