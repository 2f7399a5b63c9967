package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestMemoryLimitRestartsLeakingWorker(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[
    {id: "leaker", command: "./demo-app --port 0 --leak-mb-per-s 100",
     memory: {limitBytes: 83886080, warnBytes: 41943040, checkIntervalMs: 100}, gracefulStopMs: 2000},
    {id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}
  ]`)
		e.deploy("v1")
		var p struct {
			State               string `json:"state"`
			LastStartReason     string `json:"lastStartReason"`
			MemoryRestarts      int    `json:"memoryRestarts"`
			LastMemoryRestartAt string `json:"lastMemoryRestartAt"`
		}
		e.waitFor("a memory restart", 20*time.Second, func() bool {
			var st struct {
				Releases []struct {
					Processes []json.RawMessage `json:"processes"`
				} `json:"releases"`
			}
			json.Unmarshal([]byte(e.rb("status", "--json")), &st)
			json.Unmarshal(st.Releases[0].Processes[0], &p)
			return p.MemoryRestarts >= 1 && p.State == "running"
		})
		if p.LastStartReason != "memory" || p.LastMemoryRestartAt == "" {
			t.Errorf("after a memory restart: %+v", p)
		}
		evs := strings.Join(e.events(), "|")
		for _, want := range []string{"memory warning", "memory limit exceeded"} {
			if !strings.Contains(evs, want) {
				t.Errorf("missing event %q", want)
			}
		}
	})
}
