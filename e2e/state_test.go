package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStatePathAndOrphans(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		stateDir, err := os.MkdirTemp("", "rbe2e-state")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(stateDir)
		statePath := filepath.Join(stateDir, "state.json")
		e := newEnv(t, runner, `[{id: "web", policy: "proxied", command: "SECRET_TOKEN=abc ./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}],
  statePath: `+jsQuote(statePath))
		e.deploy("v1")
		raw, err := os.ReadFile(statePath)
		if err != nil {
			t.Fatalf("state file not written after deploy: %v", err)
		}
		if strings.Contains(string(raw), "SECRET_TOKEN") || strings.Contains(string(raw), `"command"`) {
			t.Errorf("state file leaks commands:\n%s", raw)
		}
		var snap struct {
			ActiveReleaseID string `json:"activeReleaseId"`
			PersistedAt     string `json:"persistedAt"`
			Releases        []struct {
				Processes []struct {
					PID int `json:"pid"`
				} `json:"processes"`
			} `json:"releases"`
		}
		if err := json.Unmarshal(raw, &snap); err != nil || snap.ActiveReleaseID != "v1" || snap.PersistedAt == "" {
			t.Fatalf("snapshot %s (%v)", raw, err)
		}
		if fi, _ := os.Stat(statePath); fi.Mode().Perm() != 0o600 {
			t.Errorf("state file mode %v", fi.Mode().Perm())
		}
		webPID := snap.Releases[0].Processes[0].PID

		// A crashed daemon leaves its processes running. Under systemd the
		// next daemon re-adopts their units; with the exec runner it can only
		// report them as orphans (advisory, spec §8.2).
		syscall.Kill(e.daemon.Process.Pid, syscall.SIGKILL)
		<-e.exited
		t.Cleanup(func() { killOrphan(t, e, webPID) })
		if syscall.Kill(webPID, 0) != nil {
			t.Fatalf("web pid %d died with the daemon", webPID)
		}
		e.startDaemon()
		out := e.rb("status", "--json")
		var st struct {
			ActiveReleaseID *string `json:"activeReleaseId"`
			Orphans         []struct {
				ID        string `json:"id"`
				PID       int    `json:"pid"`
				ReleaseID string `json:"releaseId"`
			} `json:"orphans"`
			Releases []struct {
				Processes []struct {
					PID int `json:"pid"`
				} `json:"processes"`
			} `json:"releases"`
		}
		json.Unmarshal([]byte(out), &st)
		if runner == "systemd" {
			if len(st.Orphans) != 0 || st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" ||
				len(st.Releases) != 1 || st.Releases[0].Processes[0].PID != webPID {
				t.Errorf("re-adoption after restart: %s", out)
			}
		} else {
			if len(st.Orphans) != 1 || st.Orphans[0].PID != webPID || st.Orphans[0].ReleaseID != "v1" {
				t.Errorf("orphans after restart: %s", out)
			}
			killOrphan(t, e, webPID)
			e.waitFor("orphan pruned from status", 10*time.Second, func() bool {
				return !strings.Contains(e.rb("status", "--json"), `"orphans": [
    {`)
			})
		}
		e.rb("shutdown")
		<-e.exited
		if _, err := os.Stat(statePath); !os.IsNotExist(err) {
			t.Errorf("state file not removed by shutdown: %v", err)
		}
	})
}

// killOrphan ends a process left behind by a killed daemon: through its unit
// under systemd, by pid otherwise.
func killOrphan(t *testing.T, e *env, pid int) {
	if e.runner == "systemd" {
		e.stopAppUnits()
	}
	// The exec runner's instance leads its own process group: kill the
	// whole group, so the shell's children do not outlive the test.
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
}

func jsQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
