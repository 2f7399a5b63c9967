package unitstest

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// stop calls Stop and returns how long it took.
func (f *fixture) stop(name string, sig syscall.Signal, grace units.Grace) time.Duration {
	f.t.Helper()
	t0 := time.Now()
	if err := f.r.Stop(f.ctx(60*time.Second), name, sig, grace); err != nil {
		f.t.Fatalf("Stop(%s, %v, %+v): %v", name, sig, grace, err)
	}
	return time.Since(t0)
}

func testStopSignal(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	marker, ready := f.path("marker"), f.path("ready")
	spec := f.workload("trap", ModeTrap, "SIGNAL=SIGINT", "MARKER="+marker, "READY="+ready)
	spec.StopSignal = syscall.SIGINT
	name := spec.Identity.UnitName()
	st := f.start(spec)
	f.readFile(ready, 10*time.Second)
	d := f.stop(name, syscall.SIGINT, units.Grace{Timeout: 10 * time.Second})
	t.Logf("stop with SIGINT (trapped, exit 0) took %s", ms(d))
	if got := f.readFile(marker, time.Second); got != "SIGINT" {
		t.Errorf("workload received %q, want SIGINT", got)
	}
	if ev := w.wait(t, name, units.EventExited, 1, 10*time.Second); ev.Exit != (units.Exit{}) {
		t.Errorf("exit %+v, want code 0", ev.Exit)
	}
	if alive(st.MainPID) {
		t.Errorf("pid %d alive after Stop", st.MainPID)
	}
}

func testGraceThenKill(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	ready := f.path("ready")
	spec := f.workload("stubborn", ModeIgnoreTerm, "READY="+ready)
	name := spec.Identity.UnitName()
	st := f.start(spec)
	f.readFile(ready, 10*time.Second)
	grace := 500 * time.Millisecond
	d := f.stop(name, syscall.SIGTERM, units.Grace{Timeout: grace})
	t.Logf("stop of a process ignoring SIGTERM with grace %v took %s", grace, ms(d))
	if d < grace-20*time.Millisecond || d > grace+units.KillWait+scaled(2*time.Second) {
		t.Errorf("stop took %v, want about the %v grace", d, grace)
	}
	if alive(st.MainPID) {
		t.Errorf("pid %d alive after Stop", st.MainPID)
	}
	if ev := w.wait(t, name, units.EventExited, 1, 10*time.Second); ev.Exit != (units.Exit{Code: -1, Signal: syscall.SIGKILL}) {
		t.Errorf("exit %+v, want SIGKILL", ev.Exit)
	}
}

func testGraceIndefinite(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	ready := f.path("ready")
	spec := f.workload("stubborn", ModeIgnoreTerm, "READY="+ready)
	name := spec.Identity.UnitName()
	st := f.start(spec)
	f.readFile(ready, 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := f.r.Stop(ctx, name, syscall.SIGTERM, units.Grace{Indefinite: true})
	t.Logf("indefinite stop returned after %s: %v", ms(time.Since(t0)), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop with Indefinite grace returned %v, want the context's deadline error", err)
	}
	if !alive(st.MainPID) {
		t.Fatalf("indefinite grace killed pid %d", st.MainPID)
	}
	if got := f.status(name); got.State != units.StateRunning && got.State != units.StateStopping {
		t.Errorf("state %s while the process still runs", got.State)
	}
	if err := f.r.Signal(f.ctx(10*time.Second), name, syscall.SIGKILL); err != nil {
		t.Fatalf("Signal(SIGKILL): %v", err)
	}
	if ev := w.wait(t, name, units.EventExited, 1, 10*time.Second); ev.Exit.Signal != syscall.SIGKILL {
		t.Errorf("exit %+v, want SIGKILL", ev.Exit)
	}
}

func testStopWithoutSignal(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	// sig 0: the process leaves by itself within the window.
	leaving := f.workload("leaving", ModeExit, "DELAY_MS=400", "CODE=0")
	f.start(leaving)
	d := f.stop(leaving.Identity.UnitName(), 0, units.Grace{Timeout: 20 * time.Second})
	t.Logf("stop without signal of a process leaving after 400 ms took %s", ms(d))
	if d > scaled(10*time.Second) {
		t.Errorf("stop took %v although the process left after 400 ms", d)
	}
	if ev := w.wait(t, leaving.Identity.UnitName(), units.EventExited, 1, 10*time.Second); ev.Exit != (units.Exit{}) {
		t.Errorf("exit %+v, want code 0 (no signal may be sent)", ev.Exit)
	}

	// sig 0: a process that stays is killed after the window.
	staying := f.spec("staying", f.sleepArgv())
	st := f.start(staying)
	grace := 300 * time.Millisecond
	d = f.stop(staying.Identity.UnitName(), 0, units.Grace{Timeout: grace})
	t.Logf("stop without signal of a staying process, grace %v, took %s", grace, ms(d))
	if d < grace-20*time.Millisecond {
		t.Errorf("stop took %v, less than the %v grace", d, grace)
	}
	if alive(st.MainPID) {
		t.Errorf("pid %d alive after Stop", st.MainPID)
	}
	if ev := w.wait(t, staying.Identity.UnitName(), units.EventExited, 1, 10*time.Second); ev.Exit.Signal != syscall.SIGKILL {
		t.Errorf("exit %+v, want SIGKILL", ev.Exit)
	}
}

// waitTree waits until the instance has at least n processes, all of them
// running program comm (so their signal setup is done), and returns them.
func (f *fixture) waitTree(name string, n int, comm string) []int {
	f.t.Helper()
	st := f.waitStatus(name, strconv.Itoa(n)+" processes running "+comm, func(st units.Status) bool {
		if len(st.PIDs) < n {
			return false
		}
		for _, pid := range st.PIDs {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			if strings.TrimSpace(string(b)) != comm {
				return false
			}
		}
		return true
	})
	if !slices.Contains(st.PIDs, st.MainPID) {
		f.t.Errorf("PIDs %v lack MainPID %d", st.PIDs, st.MainPID)
	}
	return st.PIDs
}

func testStopWaitsForDescendants(t *testing.T, h Harness) {
	f := newFixture(t, h)
	// The main process dies on SIGTERM at once; its child ignores SIGTERM,
	// so the stop must wait for it and SIGKILL it after the grace.
	spec := f.shell("outlived", `(trap '' TERM; exec sleep 1000) & exec sleep 1000`)
	name := spec.Identity.UnitName()
	f.start(spec)
	pids := f.waitTree(name, 2, "sleep")
	grace := 500 * time.Millisecond
	d := f.stop(name, syscall.SIGTERM, units.Grace{Timeout: grace})
	t.Logf("stop waiting for a descendant that outlives the main process took %s", ms(d))
	if d < grace-20*time.Millisecond {
		t.Errorf("stop returned after %v, before the %v grace, while a descendant ignored SIGTERM", d, grace)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d alive after Stop", pid)
		}
	}
}

func testTreeKill(t *testing.T, h Harness) {
	f := newFixture(t, h)
	spec := f.shell("tree", `sleep 1000 & sleep 1000 & wait`)
	name := spec.Identity.UnitName()
	f.start(spec)
	st := f.waitStatus(name, "shell and two sleeps", func(st units.Status) bool { return len(st.PIDs) >= 3 })
	d := f.stop(name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second})
	t.Logf("stop of a 3-process tree took %s", ms(d))
	for _, pid := range st.PIDs {
		if alive(pid) {
			t.Errorf("pid %d alive after Stop", pid)
		}
	}
}

func testSetsidChildren(t *testing.T, h Harness) {
	f := newFixture(t, h)

	// A child in its own session whose parent (the main process) lives:
	// every runner must stop it.
	pidfile, ready := f.path("child.pid"), f.path("ready")
	spec := f.workload("setsid", ModeForkSetsidChild, "PIDFILE="+pidfile, "READY="+ready)
	name := spec.Identity.UnitName()
	st := f.start(spec)
	f.readFile(ready, 10*time.Second)
	child := f.readPID(pidfile)
	f.killStray(child)
	if got := f.status(name); !slices.Contains(got.PIDs, child) {
		t.Errorf("Status.PIDs %v lack the setsid child %d", got.PIDs, child)
	}
	f.stop(name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second})
	if alive(st.MainPID) || alive(child) {
		t.Errorf("after Stop: main %d alive %v, setsid child %d alive %v", st.MainPID, alive(st.MainPID), child, alive(child))
	}

	// A daemonized grandchild: setsid, and its parent already exited.
	pidfile2, ready2 := f.path("daemon.pid"), f.path("ready2")
	spec2 := f.workload("daemon", ModeForkSetsidChild, "PIDFILE="+pidfile2, "READY="+ready2, "ORPHAN=1")
	name2 := spec2.Identity.UnitName()
	st2 := f.start(spec2)
	f.readFile(ready2, 10*time.Second)
	daemon := f.readPID(pidfile2)
	f.killStray(daemon)
	f.stop(name2, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second})
	if alive(st2.MainPID) {
		t.Errorf("main pid %d alive after Stop", st2.MainPID)
	}
	switch {
	case h.KillsSetsidChildren && alive(daemon):
		t.Errorf("daemonized setsid grandchild %d survived Stop", daemon)
	case h.KillsSetsidChildren:
	case alive(daemon):
		t.Logf("documented limitation: daemonized setsid grandchild %d escaped Stop; killing it by pid", daemon)
		if f.ours(daemon) {
			_ = syscall.Kill(daemon, syscall.SIGKILL)
		}
	default:
		t.Logf("daemonized setsid grandchild %d was stopped although the harness does not promise it", daemon)
	}
}
