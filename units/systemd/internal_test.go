package systemd

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

func TestIdentityFromName(t *testing.T) {
	for _, id := range []units.Identity{
		{App: "shop-front", Release: "2024.1", Process: "web", Replicas: 1},
		{App: "a", Release: "r", Process: "worker", Replica: 2, Replicas: 3},
		{App: "a", Release: "r", Process: "worker", Replica: 0, Replicas: 2},
	} {
		got := identityFromName(id.UnitName())
		if got.App != id.App || got.Release != id.Release || got.Process != id.Process || got.Replica != id.Replica ||
			got.InstanceID() != id.InstanceID() {
			t.Errorf("identityFromName(%s) = %+v, want %+v", id.UnitName(), got, id)
		}
	}
}

func TestUnitPattern(t *testing.T) {
	// systemd fnmatch()es with FNM_NOESCAPE: the backslash of \x2d is literal.
	if got, want := units.AppUnitPattern("shop-front"), `rollbridge-shop\x2dfront-*.service`; got != want {
		t.Errorf("unitPattern = %q, want %q", got, want)
	}
}

func TestCheckProgram(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "data")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkProgram(exe, nil); err != nil {
		t.Errorf("absolute executable: %v", err)
	}
	if err := checkProgram("prog", []string{"PATH=/nonexistent:" + dir}); err != nil {
		t.Errorf("PATH lookup: %v", err)
	}
	for _, bad := range []string{filepath.Join(dir, "missing"), plain, dir, "no-such-program-rb"} {
		err := checkProgram(bad, []string{"PATH=" + dir})
		if err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("checkProgram(%q) = %v, want an error naming it", bad, err)
		}
	}
}

func TestTransientSpec(t *testing.T) {
	id := units.Identity{App: "demo", Release: "r1", Process: "worker", Replica: 1, Replicas: 2}
	spec := units.Spec{
		Identity: id, Command: "exec node $SCRIPT", Dir: "/srv/demo",
		Env: []string{"PORT=3000", units.EnvApplication + "=custom"}, StopSignal: syscall.SIGINT,
		Grace: units.Grace{Timeout: 30 * time.Second},
	}
	r := &Runner{app: "demo", cat: "/usr/bin/systemd-cat"}
	ts := r.transientSpec(spec)
	if ts.Name != id.UnitName() || ts.Slice != "rollbridge-demo.slice" || ts.SyslogIdentifier != `rollbridge-demo-r1-worker\x231` {
		t.Errorf("names: %+v", ts)
	}
	wantArgv := []string{"/usr/bin/systemd-cat", `--identifier=rollbridge-demo-r1-worker\x231`, "--priority=info",
		"--stderr-priority=err", "--", "/bin/sh", "-c", "exec node $SCRIPT"}
	if !slices.Equal(ts.Argv, wantArgv) {
		t.Errorf("Argv = %q, want %q", ts.Argv, wantArgv)
	}
	if ts.TimeoutStop != 30*time.Second || ts.NoSIGKILL || ts.KillSignal != syscall.SIGINT || ts.WorkingDirectory != "/srv/demo" {
		t.Errorf("stop settings: %+v", ts)
	}
	// User-set identity variables win; the missing ones are added.
	if !slices.Contains(ts.Environment, units.EnvApplication+"=custom") || !slices.Contains(ts.Environment, units.EnvInstanceID+"=worker#1") {
		t.Errorf("Environment = %q", ts.Environment)
	}
	if !slices.Contains(ts.LogExtraFields, "ROLLBRIDGE_INSTANCE=worker#1") {
		t.Errorf("LogExtraFields = %q", ts.LogExtraFields)
	}

	spec.Grace = units.Grace{Indefinite: true}
	spec.Argv = []string{"/usr/bin/node", "app.js"}
	r.cat = ""
	ts = r.transientSpec(spec)
	if ts.TimeoutStop != dbusctl.Infinity || !ts.NoSIGKILL {
		t.Errorf("indefinite grace: TimeoutStop %v NoSIGKILL %v", ts.TimeoutStop, ts.NoSIGKILL)
	}
	if !slices.Equal(ts.Argv, spec.Argv) {
		t.Errorf("Argv without systemd-cat = %q", ts.Argv)
	}
}

func TestCheckSpec(t *testing.T) {
	r := &Runner{app: "demo"}
	err := r.checkSpec(units.Spec{Identity: units.Identity{App: "other"}, Dir: "rel"})
	if err == nil {
		t.Fatal("bad spec accepted")
	}
	for _, frag := range []string{"Identity.App", "Release", "Command nor Argv", "Dir"} {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("error %q does not mention %s", err, frag)
		}
	}
}

func TestExitState(t *testing.T) {
	cases := []struct {
		exit      units.Exit
		requested bool
		want      units.State
	}{
		{units.Exit{Code: 0}, false, units.StateExited},
		{units.Exit{Code: 3}, false, units.StateFailed},
		{units.Exit{Code: -1, Signal: syscall.SIGTERM}, false, units.StateFailed},
		{units.Exit{Code: -1, Signal: syscall.SIGKILL}, true, units.StateExited},
	}
	for _, c := range cases {
		if got := exitState(c.exit, c.requested); got != c.want {
			t.Errorf("exitState(%+v, %v) = %s, want %s", c.exit, c.requested, got, c.want)
		}
	}
	if e := toExit(dbusctl.ExitStatus{Code: dbusctl.CLDDumped, Status: 11}); e != (units.Exit{Code: -1, Signal: syscall.SIGSEGV}) {
		t.Errorf("core dump exit = %+v", e)
	}
}
