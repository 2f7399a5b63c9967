package daemon

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
