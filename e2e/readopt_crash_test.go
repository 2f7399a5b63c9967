package e2e

import (
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonCrashUnitDiedWhileDown: after kill -9 of the daemon, the
// proxied process and a worker are killed too; the next daemon finds their
// failed units, clears them and restarts both per the crash policy (reason
// crash), and the proxy serves the release again without a deploy.
func TestDaemonCrashUnitDiedWhileDown(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		if runner != "systemd" {
			t.Skip("the exec runner's children cannot be re-adopted (documented); nothing survives to restart")
		}
		dir := t.TempDir()
		e := newEnv(t, runner, fullTopology(dir)+`,
  statePath: `+jsQuote(dir+"/state.json"))
		e.deploy("v1")
		before := e.status()
		pids := map[string]int{}
		for _, p := range before.Releases[0].Processes {
			pids[p.ID] = p.PID
		}
		if pids["web"] == 0 || pids["worker#1"] == 0 {
			t.Fatalf("status before: %+v", before.Releases[0].Processes)
		}

		syscall.Kill(e.daemon.Process.Pid, syscall.SIGKILL)
		<-e.exited
		for _, id := range []string{"web", "worker#1"} {
			syscall.Kill(pids[id], syscall.SIGKILL)
		}
		e.waitFor("the killed processes gone", 10*time.Second, func() bool {
			return errors.Is(syscall.Kill(pids["web"], 0), syscall.ESRCH) && errors.Is(syscall.Kill(pids["worker#1"], 0), syscall.ESRCH)
		})
		e.startDaemon()
		url := e.proxyURL("/")
		e.waitFor("the proxy serving v1 again", 20*time.Second, func() bool {
			code, body, err := get(url)
			return err == nil && code == 200 && strings.Contains(body, "release v1")
		})
		e.waitFor("worker#1 running again", 10*time.Second, func() bool {
			for _, p := range e.status().Releases[0].Processes {
				if p.ID == "worker#1" {
					return p.PID != 0 && p.State == "running"
				}
			}
			return false
		})
		after := e.status()
		if *after.ActiveReleaseID != "v1" {
			t.Errorf("active %v", *after.ActiveReleaseID)
		}
		for _, p := range after.Releases[0].Processes {
			switch p.ID {
			case "web", "worker#1":
				if p.PID == pids[p.ID] || p.LastStartReason != "crash" || p.Restarts != 1 {
					t.Errorf("%s not restarted as a crash: %+v (pid before %d)", p.ID, p, pids[p.ID])
				}
			default:
				if p.PID != pids[p.ID] {
					t.Errorf("%s: pid %d before, %d after", p.ID, pids[p.ID], p.PID)
				}
			}
		}
		var evs []struct {
			Message string         `json:"message"`
			Data    map[string]any `json:"data"`
		}
		if err := json.Unmarshal([]byte(e.rb("events", "--json")), &evs); err != nil {
			t.Fatal(err)
		}
		exited, restarted, deployed := false, false, false
		for _, ev := range evs {
			if _, ok := ev.Data["command"]; ok {
				t.Errorf("event %q carries a command: %v", ev.Message, ev.Data)
			}
			switch {
			case ev.Message == "process exited" && ev.Data["id"] == "web" && ev.Data["signal"] == "SIGKILL":
				exited = true
			case ev.Message == "process started" && ev.Data["id"] == "web" && ev.Data["reason"] == "crash":
				restarted = exited
			case ev.Message == "traffic switched":
				deployed = true // the previous daemon's history was restored
			}
		}
		if !exited || !restarted || !deployed {
			t.Errorf("events: web exited %v, then restarted %v; deploy history restored %v:\n%s", exited, restarted, deployed, strings.Join(e.events(), "\n"))
		}
	})
}
