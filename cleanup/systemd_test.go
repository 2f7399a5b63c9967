package cleanup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
)

// startUnit starts a transient unit for id, as the systemd runner would
// name it and with its identity environment, and stops it (and the
// application's slice) when the test ends.
func startUnit(t *testing.T, conn *dbusctl.Conn, id units.Identity, spec dbusctl.TransientSpec) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name := id.UnitName()
	spec.Name, spec.Slice, spec.WorkingDirectory = name, id.Slice(), "/"
	spec.Description = "cleanup test " + id.InstanceID()
	spec.Environment = units.WithIdentityEnv(nil, id)
	if len(spec.Argv) == 0 {
		spec.Argv = []string{"/bin/sleep", "300"}
	}
	if err := conn.StartTransient(ctx, spec); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, u := range []string{name, id.Slice()} {
			if err := conn.Kill(ctx, u, 9); err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) && !errors.Is(err, dbusctl.ErrNoSuchProcess) {
				t.Logf("kill %s: %v", u, err)
			}
			if err := conn.Stop(ctx, u); err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) {
				t.Errorf("stop %s: %v", u, err)
			}
			_ = conn.ResetFailed(ctx, u)
		}
	})
	st, err := conn.State(ctx, name)
	if err != nil || st.MainPID == 0 {
		t.Fatalf("state of %s: %+v, %v", name, st, err)
	}
	return name, st.MainPID
}

// TestRecoverUnits: with a systemd manager, every running unit of the
// application is a leftover (with or without statePath); recorded pids
// inside those units are not listed twice; --force stops the units (one
// ignores its stop signal and never gets SIGKILL from the manager) and the
// exec-runner process, then clears the state file.
func TestRecoverUnits(t *testing.T) {
	conn := dbusctltest.Connect(t)
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Application = marker(t)[len("rbtest-"):] // unique: no other test's units
	cfg.Proxy.ForceStopTimeout = time.Second

	web, webPID := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "web", Replicas: 1}, dbusctl.TransientSpec{})
	worker, _ := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "worker", Replica: 0, Replicas: 2}, dbusctl.TransientSpec{})
	stubborn, stubbornPID := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r0", Process: "ghost", Replicas: 1}, dbusctl.TransientSpec{
		Argv:        []string{"/bin/sh", "-c", "trap '' TERM; exec sleep 300"},
		TimeoutStop: dbusctl.Infinity,
		NoSIGKILL:   true,
	})

	// Without statePath: the units alone (the manager found from the
	// environment, as the CLI finds it).
	rep, err := Recover(ctxT(t), Options{Config: cfg, Runner: RunnerAuto}, false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range rep.Found.Units {
		names = append(names, u.Name)
	}
	want := []string{stubborn, web, worker}
	slices.Sort(want)
	if !slices.Equal(names, want) || len(rep.Found.Processes) != 0 || rep.StateFile != "" {
		t.Fatalf("units %q, want %q (%+v)", names, want, rep)
	}
	lines := rep.Found.Lines()
	for _, wantLine := range []string{
		"web (pid " + strconv.Itoa(webPID) + ", release r1, unit " + web + ")",
		"ghost (pid " + strconv.Itoa(stubbornPID) + ", release r0, unit " + stubborn + ")",
	} {
		if !slices.Contains(lines, wantLine) {
			t.Errorf("lines %q lack %q", lines, wantLine)
		}
	}
	if u := rep.Found.Units[slices.Index(names, worker)]; u.Instance != "worker#0" || u.Release != "r1" {
		t.Errorf("worker unit %+v", u)
	}

	// The exec runner never asks systemd.
	if _, err := Recover(ctxT(t), Options{Config: cfg, Runner: RunnerExec}, false); !errors.Is(err, ErrNoStatePath) {
		t.Errorf("exec runner without statePath: %v", err)
	}

	// With statePath: the web unit's recorded pid goes with its unit; the
	// exec-runner child is a process leftover.
	cfg.StatePath = filepath.Join(dir, "state.json")
	child := startProc(t, "exec sleep 300")
	writeState(t, cfg.StatePath, map[string]int{"web": webPID, "worker#1": child.pid})
	opts := Options{Config: cfg, Runner: RunnerAuto, Manager: conn}
	rep, err = Recover(ctxT(t), opts, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Found.Units) != 3 || len(rep.Found.Processes) != 1 || rep.Found.Processes[0].PID != child.pid {
		t.Fatalf("with statePath: %+v", rep.Found)
	}

	start := time.Now()
	rep, err = Recover(ctxT(t), opts, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("forced recover of 3 units (one needs SIGKILL after 1 s) and 1 process: %v", time.Since(start))
	if rep.Remaining.Len() != 0 || rep.Stopped.Len() != 4 || !rep.StateCleared {
		t.Fatalf("forced: %+v", rep)
	}
	for _, name := range want {
		st, err := conn.State(ctxT(t), name)
		if err == nil && st.Running() {
			t.Errorf("%s still %s", name, st.ActiveState)
		}
	}
	waitGone(t, child.pid)
	if _, err := os.Stat(cfg.StatePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file: %v", err)
	}
	if rep, err := Recover(ctxT(t), opts, false); err != nil || rep.Found.Len() != 0 {
		t.Errorf("after the forced run: %+v, %v", rep.Found, err)
	}
}

// TestPredeployStopsUnits: predeploy-cleanup's recovery covers units even
// without statePath.
func TestPredeployStopsUnits(t *testing.T) {
	conn := dbusctltest.Connect(t)
	cfg := testConfig(t, t.TempDir())
	cfg.Application = marker(t)[len("rbtest-"):]
	name, _ := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "web", Replicas: 1}, dbusctl.TransientSpec{})
	res, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerSystemd, Manager: conn}})
	if err != nil || res.Action != ActionNoDaemonCleaned || res.Recovered != 1 {
		t.Fatalf("%+v, %v", res, err)
	}
	if st, err := conn.State(ctxT(t), name); err == nil && st.Running() {
		t.Errorf("%s still %s", name, st.ActiveState)
	}
}

// TestPredeployKeepsAdoptableUnits: units a new daemon would re-adopt (a
// configured process, replica in range) keep running, so a crashed daemon's
// release keeps serving until the next deploy re-adopts it; others go.
func TestPredeployKeepsAdoptableUnits(t *testing.T) {
	conn := dbusctltest.Connect(t)
	cfg := testConfig(t, t.TempDir())
	cfg.Application = marker(t)[len("rbtest-"):]
	cfg.Processes = []config.Process{{ID: "web", Policy: config.Proxied, Replicas: 1}, {ID: "worker", Policy: config.Companion, Replicas: 2}}
	keep, _ := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "web", Replicas: 1}, dbusctl.TransientSpec{})
	keep2, _ := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "worker", Replica: 1, Replicas: 2}, dbusctl.TransientSpec{})
	gone, _ := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "worker", Replica: 2, Replicas: 3}, dbusctl.TransientSpec{})
	gone2, _ := startUnit(t, conn, units.Identity{App: cfg.Application, Release: "r1", Process: "retired", Replicas: 1}, dbusctl.TransientSpec{})
	res, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerSystemd, Manager: conn}})
	if err != nil || res.Recovered != 2 {
		t.Fatalf("%+v, %v", res, err)
	}
	for _, name := range []string{keep, keep2} {
		if st, err := conn.State(ctxT(t), name); err != nil || !st.Running() {
			t.Errorf("adoptable %s was stopped (%v)", name, err)
		}
	}
	for _, name := range []string{gone, gone2} {
		if st, err := conn.State(ctxT(t), name); err == nil && st.Running() {
			t.Errorf("leftover %s still %s", name, st.ActiveState)
		}
	}
}
