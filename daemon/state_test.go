package daemon

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/release"
)

func TestStateStoreWritesSanitizedAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	snap := map[string]any{
		"releases": []any{map[string]any{"releaseId": "v1", "processes": []any{
			map[string]any{"id": "web", "pid": 42, "command": "SECRET=1 web", "cwd": "/srv", "logs": []any{"x"}, "children": []any{}},
		}}},
		"events": []any{map[string]any{"message": "process started", "data": map[string]any{"command": "SECRET", "env": "x", "output": "y", "environment": "z", "id": "web"}}},
	}
	var failed []error
	s := &stateStore{path: path, snapshot: func(context.Context) any { return snap }, onError: func(err error) { failed = append(failed, err) }}
	s.write(context.Background())
	if len(failed) > 0 {
		t.Fatal(failed)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"SECRET", "command", "cwd", "logs", "children", `"env"`, "output", "environment"} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("state file contains %s:\n%s", secret, raw)
		}
	}
	if !strings.Contains(string(raw), `"pid": 42`) || !strings.HasSuffix(string(raw), "}\n") {
		t.Errorf("unexpected content:\n%s", raw)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	// A write into a missing directory reports and never panics.
	bad := &stateStore{path: filepath.Join(dir, "missing", "s.json"), snapshot: s.snapshot, onError: func(err error) { failed = append(failed, err) }}
	bad.write(context.Background())
	if len(failed) != 1 {
		t.Errorf("write failure not reported: %v", failed)
	}
	if err := s.finish(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("finish did not delete the state file")
	}
	s.write(context.Background())
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Error("a write after finish recreated the file")
	}
}

func TestReadOrphans(t *testing.T) {
	var live []int
	var sleepers []*exec.Cmd
	for range 3 {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		sleepers = append(sleepers, c)
		live = append(live, c.Process.Pid)
	}
	t.Cleanup(func() {
		for _, c := range sleepers {
			c.Process.Kill()
			c.Wait()
		}
	})
	dead := exec.Command("true")
	dead.Run()
	deadPID := dead.ProcessState.Pid()
	snap := map[string]any{
		"orphans":    []any{map[string]any{"id": "old", "pid": live[0], "releaseId": nil}, map[string]any{"id": "gone", "pid": deadPID, "releaseId": nil}},
		"releases":   []any{map[string]any{"releaseId": "v1", "processes": []any{map[string]any{"id": "web", "pid": live[1]}, map[string]any{"id": "w2", "pid": deadPID}}}},
		"services":   []any{map[string]any{"id": "beacon", "process": map[string]any{"pid": live[2]}}},
		"singletons": []any{map[string]any{"id": "cron", "process": map[string]any{}}},
	}
	raw, _ := json.Marshal(snap)
	path := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(path, raw, 0o600)
	got := readOrphans(path)
	if len(got) != 3 {
		t.Fatalf("orphans %+v", got)
	}
	if got[1].ID != "web" || got[1].ReleaseID == nil || *got[1].ReleaseID != "v1" || got[2].ID != "beacon" || got[2].ReleaseID != nil {
		t.Errorf("orphans %+v", got)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if len(readOrphans(path)) != 0 {
		t.Error("malformed snapshot yielded orphans")
	}
	set := orphanSet{list: got}
	for _, c := range sleepers {
		c.Process.Kill()
		c.Wait()
	}
	if l := set.live(); len(l) != 0 {
		t.Errorf("dead orphans not pruned: %+v", l)
	}
}

// TestStateRoundTripRestartBudgetAndEvents: what a successor needs to keep
// a crash-looping process's restart budget (counters, crash times, last
// memory restart) and the event history survives the state file, without
// commands or output.
func TestStateRoundTripRestartBudgetAndEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	active := "v1"
	at := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	status := release.Status{
		ActiveReleaseID: &active,
		Releases: []release.ReleaseStatus{{ReleaseID: "v1", State: "active", Processes: []release.ProcessStatus{{
			ID: "worker", Command: "worker --token SECRET", Restarts: 3, MemoryRestarts: 1, State: "running",
			RestartTimes:        []string{release.Timestamp(at), release.Timestamp(at.Add(time.Second))},
			LastMemoryRestartAt: release.Timestamp(at.Add(2 * time.Second)), LastStartReason: "memory",
			Unit: "rollbridge-demo-v1-worker.service", Logs: []release.LogEntry{{Line: "SECRET output"}},
		}}}},
		Services: []release.NamedProcess{}, Singletons: []release.NamedProcess{},
	}
	events := []release.Event{
		{At: at, Message: "process started", Data: map[string]any{"id": "worker", "pid": 7, "reason": "crash"}},
		{At: at.Add(time.Second), Message: "release startup process status", Data: map[string]any{"logs": []any{"SECRET"}, "command": "SECRET"}},
	}
	s := &stateStore{path: path, snapshot: func(context.Context) any {
		return struct {
			release.Status
			Events      []release.Event `json:"events"`
			PersistedAt string          `json:"persistedAt"`
		}{status, events, release.Timestamp(at)}
	}}
	s.write(context.Background())
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "SECRET") {
		t.Errorf("state file carries a secret:\n%s", raw)
	}
	prior := readPriorState(path)
	if prior == nil || len(prior.Releases) != 1 || len(prior.Releases[0].Processes) != 1 {
		t.Fatalf("prior %+v", prior)
	}
	p := prior.Releases[0].Processes[0]
	if p.Restarts != 3 || p.MemoryRestarts != 1 || len(p.RestartTimes) != 2 || p.RestartTimes[1] != "2026-05-01T10:00:01.000Z" ||
		p.LastMemoryRestartAt != "2026-05-01T10:00:02.000Z" || p.LastStartReason != "memory" || p.Unit == "" || p.State != "running" {
		t.Errorf("process %+v", p)
	}
	if len(prior.Events) != 2 || !prior.Events[0].At.Equal(at) || prior.Events[0].Message != "process started" || prior.Events[0].Data["reason"] != "crash" {
		t.Fatalf("events %+v", prior.Events)
	}
	if _, ok := prior.Events[1].Data["command"]; ok {
		t.Errorf("restored event carries a command: %+v", prior.Events[1])
	}
}
