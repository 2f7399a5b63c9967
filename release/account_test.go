package release

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// TestProcessAccountReachesRunner: user/group of a process definition are
// on every Spec the runner gets; a process without them keeps "".
func TestProcessAccountReachesRunner(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", replicas: 2, user: "jobs"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}, user: "shop", group: 33}
  ]
}`)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{"worker#0": {"jobs", ""}, "worker#1": {"jobs", ""}, "web": {"shop", "33"}}
	seen := 0
	for _, c := range h.runner.Calls() {
		if c.Op != "start" {
			continue
		}
		_, _, inst, _ := units.ParseUnitName(c.Name)
		w, ok := want[inst]
		if !ok {
			t.Errorf("unexpected start %s", c.Name)
			continue
		}
		seen++
		if got := [2]string{c.Spec.User, c.Spec.Group}; got != w {
			t.Errorf("%s: User/Group = %q, want %q", inst, got, w)
		}
	}
	if seen != len(want) {
		t.Errorf("%d starts, want %d", seen, len(want))
	}
}

// TestAccountStartFailureNamesProcess: a runner refusing the account (as
// the systemd user manager does) fails the deploy with an error naming the
// process and the runner's account message.
func TestAccountStartFailureNamesProcess(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [{id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}, user: "shop"}]
}`)
	unit := units.Identity{App: "demo", Release: "v1", Process: "web", Replicas: 1}.UnitName()
	h.runner.FailStart(unit, errors.New(`user "shop": a systemd user manager cannot run a process as another account`))
	_, err := h.deploy("v1")
	if err == nil {
		t.Fatal("deploy succeeded")
	}
	t.Logf("deploy error: %v", err)
	for _, frag := range []string{"start web", `user "shop"`, "user manager"} {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("deploy error %q does not mention %q", err, frag)
		}
	}
}

// TestHooksRunAsProcessAccount: a lifecycle hook runs with the process's
// user, never with the daemon's (root) account.
func TestHooksRunAsProcessAccount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: switching accounts needs root")
	}
	// Reachable and writable by nobody: not under t.TempDir (mode 0700).
	dir, err := os.MkdirTemp("", "rbhook")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "uid")
	h := newHarness(t, fmt.Sprintf(`export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", user: "nobody", cwd: %q, lifecycle: {quietCommand: "id -u > %s"}},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`, dir, out))
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.m.Stop(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the quiet hook did not run: %v", err)
	}
	if got := strings.TrimSpace(string(b)); got != "65534" {
		t.Errorf("quiet hook ran as uid %s, want 65534 (nobody)", got)
	}
}

// TestMemoryBackstopReachesRunner: memory.maxBytes becomes Spec.MemoryMax
// (systemd MemoryMax=); without it no backstop is asked for.
func TestMemoryBackstopReachesRunner(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", memory: {limitBytes: 1048576, maxBytes: 4194304}},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}, memory: {limitBytes: 1048576}}
  ]
}`)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"worker": 4194304, "web": 0}
	for _, c := range h.runner.Calls() {
		if c.Op != "start" {
			continue
		}
		_, _, inst, _ := units.ParseUnitName(c.Name)
		if c.Spec.MemoryMax != want[inst] {
			t.Errorf("%s: MemoryMax = %d, want %d", inst, c.Spec.MemoryMax, want[inst])
		}
		delete(want, inst)
	}
	if len(want) != 0 {
		t.Errorf("not started: %v", want)
	}
}
