package e2e

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const attestation = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startBootstrap runs `daemon` with the bootstrap tuple as the env's daemon.
func (e *env) startBootstrap(id string, extra ...string) {
	e.t.Helper()
	e.spawnDaemon(append([]string{"--release-path", e.release(id), "--release-id", id, "--revision", id + "-rev"}, extra...)...)
}

func TestBootstrapActivation(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnvOpts(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}]`, envOpts{noStart: true})
		e.startBootstrap("v1", "--boot-attestation", attestation)
		e.waitFor("the bootstrapped daemon to answer", 20*time.Second, func() bool {
			_, err := e.rbErr("status")
			return err == nil
		})
		var st struct {
			ActiveReleaseID string `json:"activeReleaseId"`
			Bootstrap       struct {
				Attestation, ReleaseID, ReleasePath, Revision string
			} `json:"bootstrap"`
		}
		json.Unmarshal([]byte(e.rb("status", "--json")), &st)
		if st.ActiveReleaseID != "v1" || st.Bootstrap.ReleaseID != "v1" || st.Bootstrap.Revision != "v1-rev" || st.Bootstrap.Attestation != attestation {
			t.Errorf("bootstrap status: %+v", st)
		}
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v1") {
			t.Errorf("bootstrapped release not served: %q", body)
		}
	})
}

func TestBootstrapFailureLeavesNothing(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnvOpts(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {timeoutMs: 1000, intervalMs: 50}}]`, envOpts{noStart: true})
		broken := e.dir + "/releases/broken"
		os.MkdirAll(broken, 0o755)
		e.logs = &lockedBuffer{}
		cmd := exec.Command(rbBinary, "daemon", "-c", e.config, "--runner", runner, "--release-path", broken, "--release-id", "broken", "--revision", "r1")
		cmd.Env = e.environ()
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("failed activation: err %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "bootstrap activation failed") || !strings.Contains(string(out), "Health check failed") {
			t.Errorf("output lacks the failure:\n%s", tail(string(out), 20))
		}
		if _, err := os.Stat(e.ctlPath); err == nil {
			t.Error("control socket created by a failed bootstrap")
		}
		if runner == "systemd" {
			if units := e.listUnits(); len(units) != 0 {
				t.Errorf("units left by a failed bootstrap: %v", units)
			}
		}
	})
}

// TestTakeoverOwner: a second daemon activates a new release while the first
// serves, retires it and takes over its listeners.
func TestTakeoverOwner(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		port := freePort(t)
		e := newEnvOpts(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}]`, envOpts{port: port})
		e.deploy("v1")
		old := e.daemon
		oldExited := e.exited
		oldLogs := e.logs
		url := e.proxyURL("/")
		l := startLoad(url, 8, 2)
		e.startBootstrap("v2", "--boot-attestation", attestation, "--takeover-owner")
		select {
		case <-oldExited:
		case <-time.After(30 * time.Second):
			t.Fatalf("the old owner (pid %d) did not exit after retirement:\n%s", old.Process.Pid, tail(oldLogs.String(), 400))
		}
		e.waitFor("the new owner to answer", 20*time.Second, func() bool {
			_, err := e.rbErr("status")
			return err == nil
		})
		time.Sleep(300 * time.Millisecond)
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("takeover under load: %d requests, %d transport errors, %d non-2xx (first: %v)", total, l.errs.Load(), l.non2xx.Load(), l.firstErr.Load())
		if _, body, _ := get(url); !strings.Contains(body, "release v2") {
			t.Errorf("after takeover: %q", body)
		}
		evs := strings.Join(e.events(), "|")
		if strings.Contains(evs, "units adopted") && runner == "systemd" && strings.Contains(e.rb("status", "--json"), `"releaseId": "v1"`) {
			t.Errorf("the new owner adopted the old owner's release: %s", evs)
		}
	})
}

// TestSigtermDuringActivation: SIGTERM while the bootstrap release is still
// starting stops everything the attempt started and exits 0.
func TestSigtermDuringActivation(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnvOpts(t, runner, `[
    {id: "worker", command: "exec sleep 10000"},
    {id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {startDelayMs: 3000, intervalMs: 50}}]`, envOpts{noStart: true})
		e.startBootstrap("v1")
		exited := e.exited
		time.Sleep(700 * time.Millisecond) // processes started, health check waiting
		if runner == "systemd" && len(e.listUnits()) != 2 {
			t.Fatalf("units during activation: %v", e.listUnits())
		}
		e.daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			t.Fatal("daemon did not exit after SIGTERM during activation")
		}
		if code := e.daemon.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit code %d, want 0\n%s", code, tail(e.logs.String(), 20))
		}
		if _, err := os.Stat(e.ctlPath); err == nil {
			t.Error("control socket exists after an aborted activation")
		}
		if runner == "systemd" {
			if units := e.listUnits(); len(units) != 0 {
				t.Errorf("units left: %v", units)
			}
		}
		if strings.Contains(e.logs.String(), `"process started"`) && !strings.Contains(e.logs.String(), `"process exited"`) {
			t.Errorf("started processes were not stopped:\n%s", tail(e.logs.String(), 20))
		}
	})
}
