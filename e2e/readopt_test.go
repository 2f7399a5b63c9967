package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonCrashReadoption kills the daemon with SIGKILL under load: the
// units keep running, the next daemon re-adopts them with the same pids
// (no duplicate instance) and the proxy serves the same release again.
func TestDaemonCrashReadoption(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		if runner != "systemd" {
			t.Skip("the exec runner's children cannot be re-adopted (documented); covered by TestStatePathAndOrphans")
		}
		dir := t.TempDir()
		e := newEnv(t, runner, fullTopology(dir)+`,
  statePath: `+jsQuote(dir+"/state.json"))
		e.deploy("v1")
		e.deploy("v2")
		e.waitFor("v1 stopped", 20*time.Second, func() bool { return e.releaseState("v1") == "stopped" })
		before := e.status()
		pids := map[string]int{}
		for _, p := range before.Releases[1].Processes {
			pids[p.Unit] = p.PID
		}
		for _, s := range before.Services {
			pids[s.Process.Unit] = s.Process.PID
		}
		for _, s := range before.Singletons {
			pids[s.Process.Unit] = s.Process.PID
		}
		unitsBefore := e.listUnits()
		url := e.proxyURL("/")

		syscall.Kill(e.daemon.Process.Pid, syscall.SIGKILL)
		<-e.exited
		killedAt := time.Now()
		e.startDaemon()
		// The config binds port 0, so the new daemon has a new proxy port.
		url = e.proxyURL("/")
		// Time until the proxy serves the active release again.
		var gap time.Duration
		for {
			if code, body, err := get(url); err == nil && code == 200 && strings.Contains(body, "release v2") {
				gap = time.Since(killedAt)
				break
			}
			if time.Since(killedAt) > 20*time.Second {
				t.Fatal("proxy did not serve v2 again after the restart")
			}
			time.Sleep(5 * time.Millisecond)
		}
		after := e.status()
		adopted := 0
		for _, p := range after.Releases[len(after.Releases)-1].Processes {
			if pids[p.Unit] != p.PID {
				t.Errorf("%s: pid %d before, %d after", p.Unit, pids[p.Unit], p.PID)
			}
			adopted++
		}
		for _, s := range append(after.Services, after.Singletons...) {
			if pids[s.Process.Unit] != s.Process.PID {
				t.Errorf("%s: pid %d before, %d after", s.Process.Unit, pids[s.Process.Unit], s.Process.PID)
			}
			adopted++
		}
		unitsAfter := e.listUnits()
		if fmt.Sprint(unitsBefore) != fmt.Sprint(unitsAfter) {
			t.Errorf("units changed across the restart:\n before %v\n after  %v", unitsBefore, unitsAfter)
		}
		if *after.ActiveReleaseID != "v2" || len(after.Releases) != 2 || after.Releases[0].State != "stopped" {
			t.Errorf("releases after re-adoption: %+v", after.Releases)
		}
		t.Logf("kill -9 → serving again in %v (daemon restart incl.); re-adopted %d of %d units", gap.Round(time.Millisecond), adopted, len(unitsBefore))
		if adopted != len(unitsBefore) {
			t.Errorf("re-adopted %d units, %d were running", adopted, len(unitsBefore))
		}
		// The adopted release keeps deploying normally.
		e.deploy("v3")
		if _, body, _ := get(url); !strings.Contains(body, "release v3") {
			t.Errorf("after re-adoption deploy: %q", body)
		}
	})
}
