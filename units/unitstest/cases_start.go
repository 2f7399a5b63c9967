package unitstest

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

func testStartArgvEnvCwd(t *testing.T, h Harness) {
	f := newFixture(t, h)
	out := f.path("env.json")
	spec := f.workload("web", ModeEnv, "OUT="+out, "RBT_CUSTOM=custom value")
	name := spec.Identity.UnitName()
	before := time.Now()
	st := f.start(spec)
	if st.Name != name || st.MainPID <= 0 {
		t.Fatalf("Start returned %+v, want Name %s and a MainPID", st, name)
	}

	var rep EnvReport
	if err := json.Unmarshal([]byte(f.readFile(out, 10*time.Second)), &rep); err != nil {
		t.Fatalf("env report: %v", err)
	}
	if rep.PID != st.MainPID {
		t.Errorf("workload pid %d, Start reported MainPID %d (Argv must be executed directly)", rep.PID, st.MainPID)
	}
	if rep.Cwd != f.dir {
		t.Errorf("cwd %q, want %q", rep.Cwd, f.dir)
	}
	// Spec.Env did not carry the identity: the runner adds it.
	for _, kv := range append(spec.Identity.IdentityEnv(), "RBT_CUSTOM=custom value") {
		if !slices.Contains(rep.Env, kv) {
			t.Errorf("environment lacks %q", kv)
		}
	}

	got := f.status(name)
	if got.State != units.StateRunning || got.MainPID != st.MainPID || !slices.Contains(got.PIDs, st.MainPID) {
		t.Errorf("Status = %+v, want running with MainPID %d in PIDs", got, st.MainPID)
	}
	if got.Identity != spec.Identity {
		t.Errorf("Status.Identity = %+v, want %+v", got.Identity, spec.Identity)
	}
	if got.StartedAt.Before(before.Add(-time.Second)) || got.StartedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("StartedAt %v not around the start (%v)", got.StartedAt, before)
	}
	if got.Exit != nil {
		t.Errorf("running instance has Exit %+v", *got.Exit)
	}

	// A replica whose environment was completed by the caller keeps it.
	out2 := f.path("env2.json")
	spec2 := f.workload("worker", ModeEnv, "OUT="+out2)
	spec2.Identity.Replica, spec2.Identity.Replicas = 1, 2
	spec2.Env = units.WithIdentityEnv(spec2.Env, spec2.Identity)
	f.start(spec2)
	if err := json.Unmarshal([]byte(f.readFile(out2, 10*time.Second)), &rep); err != nil {
		t.Fatalf("env report: %v", err)
	}
	for _, kv := range []string{units.EnvInstanceID + "=worker#1", units.EnvReplicaIndex + "=1", units.EnvReplicaCount + "=2"} {
		if !slices.Contains(rep.Env, kv) {
			t.Errorf("replica environment lacks %q", kv)
		}
	}
}

func testShellCommand(t *testing.T, h Harness) {
	f := newFixture(t, h)
	spec := f.shell("sh", `echo "var=$RBT_VAR braces=${RBT_VAR} pid=$$"; pwd; exec sleep 1000`, "RBT_VAR=hello world")
	name := spec.Identity.UnitName()
	st := f.start(spec)
	want := "var=hello world braces=hello world pid=" + strconv.Itoa(st.MainPID)
	lines := f.waitLogLines(name, 2)
	if lines[0].Line != want {
		t.Errorf("first line %q, want %q (the shell, not the runner, expands $VAR and $$)", lines[0].Line, want)
	}
	if lines[1].Line != f.dir {
		t.Errorf("pwd printed %q, want %q", lines[1].Line, f.dir)
	}
	// exec replaced the shell: the main pid is still the one $$ named.
	if got := f.status(name); got.MainPID != st.MainPID || got.State != units.StateRunning {
		t.Errorf("Status = %+v, want running with MainPID %d", got, st.MainPID)
	}
}

func testArgvNotExpanded(t *testing.T, h Harness) {
	f := newFixture(t, h)
	// "$1" is expanded by this shell to the literal argument, which must
	// reach it untouched: no $VAR or $$ expansion, no word splitting.
	literal := "$RBT_VAR ${RBT_VAR} $$ %n a  b"
	spec := f.spec("argv", []string{"/bin/sh", "-c", `echo "[$1]"; exec sleep 1000`, "argv0", literal}, "RBT_VAR=oops")
	f.start(spec)
	lines := f.waitLogLines(spec.Identity.UnitName(), 1)
	if want := "[" + literal + "]"; lines[0].Line != want {
		t.Errorf("argument arrived as %q, want %q", lines[0].Line, want)
	}
}

func testExitCodes(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	cases := []struct {
		process string
		spec    units.Spec
		want    units.Exit
		state   units.State
	}{
		{"crash", f.workload("crash", ModeExit, "CODE=3", "DELAY_MS=100"), units.Exit{Code: 3}, units.StateFailed},
		{"clean", f.workload("clean", ModeExit, "CODE=0", "DELAY_MS=100"), units.Exit{Code: 0}, units.StateExited},
		{"killed", f.spec("killed", f.sleepArgv()), units.Exit{Code: -1, Signal: syscall.SIGKILL}, units.StateFailed},
	}
	pids := map[string]int{}
	for _, c := range cases {
		pids[c.process] = f.start(c.spec).MainPID
	}
	killed := cases[2].spec.Identity.UnitName()
	if err := f.r.Signal(f.ctx(10*time.Second), killed, syscall.SIGKILL); err != nil {
		t.Fatalf("Signal(SIGKILL): %v", err)
	}
	for _, c := range cases {
		name := c.spec.Identity.UnitName()
		ev := w.wait(t, name, units.EventExited, 1, 10*time.Second)
		if ev.Exit != c.want {
			t.Errorf("%s: exit event %+v, want %+v", c.process, ev.Exit, c.want)
		}
		if ev.Identity != c.spec.Identity {
			t.Errorf("%s: event identity %+v, want %+v", c.process, ev.Identity, c.spec.Identity)
		}
		if ev.PID != 0 && ev.PID != pids[c.process] {
			t.Errorf("%s: event pid %d, want %d", c.process, ev.PID, pids[c.process])
		}
		if ev.At.IsZero() {
			t.Errorf("%s: event without time", c.process)
		}
		// A runner may forget an ended instance (systemd collects it);
		// if it still knows it, the record must be right.
		st, err := f.r.Status(f.ctx(10*time.Second), name)
		switch {
		case errors.Is(err, units.ErrNotFound):
		case err != nil:
			t.Errorf("%s: Status: %v", c.process, err)
		case st.State == units.StateUnknown:
		default:
			if st.State != c.state || st.Exit == nil || *st.Exit != c.want || st.MainPID != 0 {
				t.Errorf("%s: Status after exit = %+v (exit %v), want %s with %+v and no MainPID", c.process, st, st.Exit, c.state, c.want)
			}
		}
	}
}

func testWatchCrashLatency(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	ts := f.path("exit-ts")
	spec := f.workload("crash", ModeExit, "CODE=1", "DELAY_MS=300", "TSFILE="+ts)
	name := spec.Identity.UnitName()
	st := f.start(spec)
	started := w.wait(t, name, units.EventStarted, 1, 10*time.Second)
	exited := w.wait(t, name, units.EventExited, 1, 10*time.Second)
	if started.PID != st.MainPID || started.Identity != spec.Identity {
		t.Errorf("started event %+v, want pid %d identity %+v", started.Event, st.MainPID, spec.Identity)
	}
	if w.index(started) > w.index(exited) {
		t.Errorf("exited event delivered before started event")
	}
	if exited.Exit != (units.Exit{Code: 1}) {
		t.Errorf("exit %+v, want code 1", exited.Exit)
	}
	n, err := strconv.ParseInt(f.readFile(ts, time.Second), 10, 64)
	if err != nil {
		t.Fatalf("timestamp file: %v", err)
	}
	lat := exited.arrived.Sub(time.Unix(0, n))
	t.Logf("crash detection latency: %s", ms(lat))
	if lat < 0 || lat > scaled(2*time.Second) {
		t.Errorf("crash detection latency %v outside 0..2s", lat)
	}
}

func testStartFailures(t *testing.T, h Harness) {
	f := newFixture(t, h)
	marker := f.path("ran.json")
	missing := f.path("no-such-dir")
	spec := f.workload("web", ModeEnv, "OUT="+marker)
	spec.Dir = missing
	name := spec.Identity.UnitName()
	if _, err := f.startE(spec); err == nil {
		t.Fatalf("Start with missing Dir succeeded")
	} else if !strings.Contains(err.Error(), missing) {
		t.Errorf("error %q does not name the missing directory %s", err, missing)
	} else {
		t.Logf("missing Dir: %v", err)
	}
	bad := f.spec("bad", []string{f.path("no-such-program")})
	if _, err := f.startE(bad); err == nil {
		t.Errorf("Start of a missing program succeeded")
	} else {
		t.Logf("missing program: %v", err)
	}

	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the workload ran although Start failed")
	}
	for _, n := range []string{name, bad.Identity.UnitName()} {
		st, err := f.r.Status(f.ctx(10*time.Second), n)
		if err == nil && (st.MainPID != 0 || st.State == units.StateRunning) {
			t.Errorf("after a failed start Status(%s) = %+v", n, st)
		}
	}
	f.expectRunning(nil)

	// A failed start is retried, not remembered (spec §5.1 Go note).
	spec.Dir = f.dir
	f.start(spec)
	f.readFile(marker, 10*time.Second)
}

// expectRunning checks that List reports exactly names as running.
func (f *fixture) expectRunning(names []string) []units.Status {
	f.t.Helper()
	list, err := f.r.List(f.ctx(10*time.Second), f.app)
	if err != nil {
		f.t.Fatalf("List: %v", err)
	}
	var running []units.Status
	var got []string
	for _, st := range list {
		if st.Identity.App != f.app {
			f.t.Errorf("List(%s) returned %s of application %q", f.app, st.Name, st.Identity.App)
		}
		if st.State == units.StateRunning {
			running = append(running, st)
			got = append(got, st.Name)
		}
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, want) {
		f.t.Errorf("running instances %q, want %q", got, want)
	}
	return running
}

func testNamesAndErrors(t *testing.T, h Harness) {
	f := newFixture(t, h)
	spec := f.spec("web", f.sleepArgv())
	name := spec.Identity.UnitName()
	st := f.start(spec)
	ctx := f.ctx(30 * time.Second)
	if _, err := f.r.Start(ctx, spec); !errors.Is(err, units.ErrAlreadyRunning) {
		t.Errorf("second Start: %v, want ErrAlreadyRunning", err)
	}
	if got := f.status(name); got.MainPID != st.MainPID {
		t.Errorf("second Start disturbed the instance: %+v", got)
	}
	unknown := units.Identity{App: f.app, Release: "v1", Process: "nope", Replicas: 1}.UnitName()
	if _, err := f.r.Status(ctx, unknown); !errors.Is(err, units.ErrNotFound) {
		t.Errorf("Status(unknown): %v, want ErrNotFound", err)
	}
	if err := f.r.Stop(ctx, unknown, syscall.SIGTERM, units.Grace{Timeout: time.Second}); err != nil {
		t.Errorf("Stop(unknown): %v, want nil", err)
	}
	if err := f.r.Signal(ctx, unknown, syscall.SIGTERM); err == nil {
		t.Errorf("Signal(unknown) succeeded")
	}
	if err := f.r.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if alive(st.MainPID) {
		t.Errorf("pid %d alive after Stop returned", st.MainPID)
	}
	if err := f.r.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: time.Second}); err != nil {
		t.Errorf("Stop of a stopped instance: %v, want nil", err)
	}
	if k := f.r.Kind(); k == "" {
		t.Errorf("Kind() is empty")
	}
}

func testList(t *testing.T, h Harness) {
	f := newFixture(t, h)
	web := f.spec("web", f.sleepArgv())
	w0 := f.spec("worker", f.sleepArgv())
	w0.Identity.Release, w0.Identity.Replicas = "v2", 2
	w1 := w0
	w1.Identity.Replica = 1
	specs := map[string]units.Spec{}
	for _, s := range []units.Spec{web, w0, w1} {
		specs[s.Identity.UnitName()] = s
		f.start(s)
	}
	// An application whose name extends this one's must not leak in.
	g := &fixture{t: t, app: f.app + "-x", dir: f.dir, token: f.token}
	g.r = h.New(t, g.app)
	other := g.spec("web", g.sleepArgv())
	g.start(other)

	running := f.expectRunning(slices.Collect(maps.Keys(specs)))
	for _, st := range running {
		want := specs[st.Name].Identity
		if st.Identity != want {
			t.Errorf("List identity of %s = %+v, want %+v", st.Name, st.Identity, want)
		}
		if st.MainPID <= 0 || !slices.Contains(st.PIDs, st.MainPID) {
			t.Errorf("List entry %s: MainPID %d PIDs %v", st.Name, st.MainPID, st.PIDs)
		}
	}
	g.expectRunning([]string{other.Identity.UnitName()})
}

func testReadopt(t *testing.T, h Harness) {
	f := newFixture(t, h)
	spec := f.workload("web", ModePrint, "LINES=3")
	name := spec.Identity.UnitName()
	st := f.start(spec)
	f.waitLogLines(name, 3)

	r2 := h.New(t, f.app)
	f2 := *f
	f2.r = r2
	list, err := r2.List(f.ctx(10*time.Second), f.app)
	if err != nil {
		t.Fatalf("second runner List: %v", err)
	}
	if !h.Readopts {
		t.Logf("runner does not re-adopt (documented): a fresh runner lists %d instances", len(list))
		return
	}
	var found *units.Status
	for i := range list {
		if list[i].Name == name {
			found = &list[i]
		}
	}
	if found == nil || found.MainPID != st.MainPID || found.State != units.StateRunning || found.Identity != spec.Identity {
		t.Fatalf("second runner lists %+v, want %s running with MainPID %d and identity %+v", list, name, st.MainPID, spec.Identity)
	}
	if got := f2.status(name); got.MainPID != st.MainPID {
		t.Errorf("second runner Status = %+v, want MainPID %d", got, st.MainPID)
	}
	if h.LogsAfterRestart {
		lines, err := r2.Logs(f.ctx(10*time.Second), name, 10)
		if err != nil || len(lines) < 3 || lines[len(lines)-1].Line != "out-3" {
			t.Errorf("second runner Logs = %v, %v; want the 3 lines", lines, err)
		}
	}
	w2 := f2.watch()
	if err := r2.Stop(f.ctx(30*time.Second), name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second}); err != nil {
		t.Fatalf("second runner Stop: %v", err)
	}
	if alive(st.MainPID) {
		t.Errorf("pid %d alive after the second runner stopped it", st.MainPID)
	}
	ev := w2.wait(t, name, units.EventExited, 1, 10*time.Second)
	if ev.Exit.Signal != syscall.SIGTERM {
		t.Errorf("exit event %+v, want death by SIGTERM", ev.Exit)
	}
}

func testConcurrency(t *testing.T, h Harness) {
	f := newFixture(t, h)
	const n = 20
	specs := make([]units.Spec, n)
	names := make([]string, n)
	for i := range specs {
		specs[i] = f.spec("p"+strconv.Itoa(i), f.sleepArgv())
		names[i] = specs[i].Identity.UnitName()
		r, name := f.r, names[i]
		t.Cleanup(func() { forceStop(t, r, name) })
	}
	ctx := f.ctx(60 * time.Second)
	errs := make([]error, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range specs {
		wg.Go(func() { _, errs[i] = f.r.Start(ctx, specs[i]) })
	}
	wg.Wait()
	t.Logf("%d parallel starts took %s", n, ms(time.Since(t0)))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("parallel Start: %v", err)
	}
	running := f.expectRunning(names)
	t0 = time.Now()
	for i := range specs {
		wg.Go(func() {
			errs[i] = f.r.Stop(ctx, names[i], syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second})
		})
	}
	wg.Wait()
	t.Logf("%d parallel stops took %s", n, ms(time.Since(t0)))
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("parallel Stop: %v", err)
	}
	for _, st := range running {
		if alive(st.MainPID) {
			t.Errorf("%s: pid %d alive after Stop", st.Name, st.MainPID)
		}
	}
	f.expectRunning(nil)
}

// waitLogLines polls Logs until at least n lines are there and returns
// them all.
func (f *fixture) waitLogLines(name string, n int) []units.LogLine {
	f.t.Helper()
	var lines []units.LogLine
	var err error
	if !eventually(10*time.Second, func() bool {
		lines, err = f.r.Logs(f.ctx(10*time.Second), name, 1000)
		return err == nil && len(lines) >= n
	}) {
		f.t.Fatalf("Logs(%s): want %d lines, have %v (err %v)", name, n, lineTexts(lines), err)
	}
	return lines
}

func lineTexts(lines []units.LogLine) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Line
	}
	return out
}
