package e2e

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadReexecUnderLoad sends SIGHUP (what `systemctl reload` does) to
// the daemon while clients hammer the proxy: a new daemon process takes the
// listening sockets and the units over, the old one exits, and no request
// fails.
func TestReloadReexecUnderLoad(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := t.TempDir()
		e := newEnv(t, runner, fullTopology(dir)+`,
  statePath: `+jsQuote(dir+"/state.json"))
		e.deploy("v1")
		if runner != "systemd" {
			// The exec runner refuses: its children cannot be handed over.
			syscall.Kill(e.daemon.Process.Pid, syscall.SIGHUP)
			e.waitFor("reload refusal event", 10*time.Second, func() bool {
				return strings.Contains(strings.Join(e.events(), "|"), "daemon reload failed")
			})
			if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v1") {
				t.Errorf("daemon stopped serving after a refused reload: %q", body)
			}
			return
		}
		before := e.status()
		url := e.proxyURL("/")
		oldPID := e.daemon.Process.Pid

		l := startLoad(url, 16, 4)
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		syscall.Kill(oldPID, syscall.SIGHUP)
		e.waitFor("the old daemon to exit", 60*time.Second, func() bool { return syscall.Kill(oldPID, 0) != nil })
		handover := time.Since(start)
		time.Sleep(500 * time.Millisecond)
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("reload under load: handover in %v; %d requests, %d transport errors, %d non-2xx",
			handover.Round(time.Millisecond), total, l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests failed during the reload: first failure %v", l.firstErr.Load())
		}

		after := e.status()
		if after.Proxy.Port != before.Proxy.Port {
			t.Errorf("proxy port changed: %d → %d", before.Proxy.Port, after.Proxy.Port)
		}
		for i, p := range after.Releases[0].Processes {
			if p.PID != before.Releases[0].Processes[i].PID {
				t.Errorf("%s restarted by the reload: pid %d → %d", p.ID, before.Releases[0].Processes[i].PID, p.PID)
			}
		}
		var evs []struct {
			Message string `json:"message"`
		}
		json.Unmarshal([]byte(e.rb("events", "--json")), &evs)
		if len(evs) == 0 || !strings.Contains(e.rb("events"), "units adopted") {
			t.Errorf("the new daemon did not re-adopt the units: %v", evs)
		}
		// The new daemon deploys as usual.
		e.deploy("v2")
		if _, body, _ := get(url); !strings.Contains(body, "release v2") {
			t.Errorf("deploy after reload: %q", body)
		}
	})
}
