package exec_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/exec"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

func TestMain(m *testing.M) {
	unitstest.WorkloadMain()
	os.Exit(m.Run())
}

func newRunner(tb testing.TB, app string) *exec.Runner {
	tb.Helper()
	r, err := exec.New(app, exec.Options{})
	if err != nil {
		tb.Fatalf("exec.New: %v", err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return r
}

func TestSuite(t *testing.T) {
	unitstest.RunSuite(t, unitstest.Harness{
		New: func(t *testing.T, app string) units.Runner { return newRunner(t, app) },
		// A setsid child is caught while its parent lives (ppid walk); a
		// daemonized grandchild whose parent already exited escapes.
		KillsSetsidChildren: false,
		Readopts:            false,
		LogsAfterRestart:    false,
	})
}

func BenchmarkStartStop100(b *testing.B) {
	unitstest.BenchStartStop(b, func(tb testing.TB, app string) units.Runner { return newRunner(tb, app) }, 100)
}

// env is one test's runner and helpers for the exec-specific tests.
type env struct {
	t   *testing.T
	r   *exec.Runner
	app string
	dir string
}

func newEnv(t *testing.T) *env {
	t.Parallel()
	app := unitstest.UniqueApp()
	return &env{t: t, r: newRunner(t, app), app: app, dir: t.TempDir()}
}

func (e *env) spec(process string, env ...string) units.Spec {
	return units.Spec{
		Identity: units.Identity{App: e.app, Release: "v1", Process: process, Replicas: 1},
		Dir:      e.dir,
		Env:      append(os.Environ(), env...),
		Grace:    units.Grace{Timeout: 5 * time.Second},
	}
}

func (e *env) workload(process, mode string, env ...string) units.Spec {
	argv, extra := unitstest.Workload(mode, env...)
	s := e.spec(process, extra...)
	s.Argv = argv
	return s
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

func (e *env) start(spec units.Spec) units.Status {
	e.t.Helper()
	st, err := e.r.Start(e.ctx(), spec)
	if err != nil {
		e.t.Fatalf("Start: %v", err)
	}
	return st
}

func (e *env) watch() <-chan units.Event {
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	ch, err := e.r.Watch(ctx)
	if err != nil {
		e.t.Fatalf("Watch: %v", err)
	}
	return ch
}

func waitExit(t *testing.T, ch <-chan units.Event, name string) units.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed before %s exited", name)
			}
			if ev.Name == name && ev.Kind == units.EventExited {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s did not exit within 10s", name)
		}
	}
}

func texts(lines []units.LogLine) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Line
	}
	return out
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

func TestRingBoundKeptAcrossRestarts(t *testing.T) {
	e := newEnv(t)
	w := e.watch()
	spec := e.workload("printer", unitstest.ModePrint, "LINES=4", "EXIT=1")
	spec.OutputLines = 6
	name := spec.Identity.UnitName()
	for range 2 {
		e.start(spec)
		waitExit(t, w, name)
	}
	// Both runs printed out-1..out-4; the ring holds the newest 6.
	want := []string{"out-3", "out-4", "out-1", "out-2", "out-3", "out-4"}
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		lines, err := e.r.Logs(e.ctx(), name, 0)
		if err != nil {
			t.Fatalf("Logs: %v", err)
		}
		if got = texts(lines); slices.Equal(got, want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("Logs = %q, want %q", got, want)
}

func TestMemoryBytes(t *testing.T) {
	e := newEnv(t)
	ready := filepath.Join(e.dir, "ready")
	spec := e.workload("mem", unitstest.ModeSleep, "READY="+ready)
	e.start(spec)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workload not ready")
		}
	}
	st, err := e.r.Status(e.ctx(), spec.Identity.UnitName())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("workload RSS: %d KiB over pids %v", st.MemoryBytes/1024, st.PIDs)
	if st.MemoryBytes < 1<<20 {
		t.Errorf("MemoryBytes = %d, want the VmRSS sum (at least 1 MiB for a Go process)", st.MemoryBytes)
	}
}

func TestLeftoverGroupMembersStoppedAfterLeaderExit(t *testing.T) {
	e := newEnv(t)
	w := e.watch()
	pidfile := filepath.Join(e.dir, "bg.pid")
	spec := e.spec("leaver")
	spec.Command = "sleep 1000 & echo $! > " + pidfile + "; exit 0"
	name := spec.Identity.UnitName()
	e.start(spec)
	if ev := waitExit(t, w, name); ev.Exit != (units.Exit{}) {
		t.Errorf("exit %+v, want 0", ev.Exit)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	bg, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	st, err := e.r.Status(e.ctx(), name)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != units.StateExited || !slices.Contains(st.PIDs, bg) || st.MainPID != 0 {
		t.Errorf("Status = %+v, want exited, no MainPID, the leftover %d in PIDs", st, bg)
	}
	if err := e.r.Stop(e.ctx(), name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if alive(bg) {
		t.Errorf("leftover group member %d alive after Stop", bg)
	}
}

func TestEscapeeHoldingOutputDoesNotDelayExit(t *testing.T) {
	e := newEnv(t)
	w := e.watch()
	pidfile := filepath.Join(e.dir, "escapee.pid")
	spec := e.spec("daemonizer")
	// The escapee keeps the output pipe open and leaves the group.
	spec.Command = "setsid sleep 1000 & echo $! > " + pidfile + "; echo started"
	name := spec.Identity.UnitName()
	t0 := time.Now()
	e.start(spec)
	waitExit(t, w, name)
	t.Logf("exit observed after %v while an escapee holds stdout", time.Since(t0))
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) }) // ours: pid from our own shell
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		lines, _ := e.r.Logs(e.ctx(), name, 0)
		if slices.Contains(texts(lines), "started") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("output not captured: %q", texts(lines))
		}
	}
	// Close must not hang on the pipe the escapee holds.
	t0 = time.Now()
	if err := e.r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("Close took %v with an escapee holding the output pipe", d)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	e := newEnv(t)
	w := e.watch()
	ready := filepath.Join(e.dir, "ready")
	plain := e.spec("plain")
	plain.Argv = []string{"sleep", "1000"}
	stubborn := e.workload("stubborn", unitstest.ModeIgnoreTerm, "READY="+ready)
	stubborn.Grace = units.Grace{Indefinite: true}
	p1 := e.start(plain).MainPID
	p2 := e.start(stubborn).MainPID
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workload not ready")
		}
	}
	followErr := make(chan error, 1)
	go func() {
		followErr <- e.r.Follow(context.Background(), plain.Identity.UnitName(), func(units.LogLine) {})
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := e.r.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	t.Logf("Shutdown with an indefinite-grace instance, bounded at 300 ms, took %v", time.Since(t0))
	if alive(p1) || alive(p2) {
		t.Errorf("after Shutdown: %d alive %v, %d alive %v", p1, alive(p1), p2, alive(p2))
	}
	exits := 0
	for ev := range w { // drained, then closed by Shutdown
		if ev.Kind == units.EventExited {
			exits++
		}
	}
	if exits != 2 {
		t.Errorf("watch delivered %d exit events before closing, want 2", exits)
	}
	if err := <-followErr; !errors.Is(err, exec.ErrClosed) {
		t.Errorf("Follow after Shutdown: %v, want ErrClosed", err)
	}
	if _, err := e.r.Start(e.ctx(), plain); !errors.Is(err, exec.ErrClosed) {
		t.Errorf("Start after Shutdown: %v, want ErrClosed", err)
	}
	if _, err := e.r.Watch(e.ctx()); !errors.Is(err, exec.ErrClosed) {
		t.Errorf("Watch after Shutdown: %v, want ErrClosed", err)
	}
	if err := e.r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSlowSubscriberLosesNoExit(t *testing.T) {
	e := newEnv(t)
	w := e.watch() // not read until every instance has exited
	const n = 60
	tru := e.spec("x")
	tru.Argv = []string{"true"}
	for i := range n {
		s := tru
		s.Identity.Process = "p" + strconv.Itoa(i)
		e.start(s)
	}
	for i := range n {
		name := units.Identity{App: e.app, Release: "v1", Process: "p" + strconv.Itoa(i), Replicas: 1}.UnitName()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			st, err := e.r.Status(e.ctx(), name)
			if err == nil && st.Exit != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not exit", name)
			}
		}
	}
	counts := map[units.EventKind]int{}
	timeout := time.After(10 * time.Second)
	for counts[units.EventExited] < n {
		select {
		case ev := <-w:
			counts[ev.Kind]++
		case <-timeout:
			t.Fatalf("received %v, want %d started and exited events", counts, n)
		}
	}
	if counts[units.EventStarted] != n {
		t.Errorf("received %v, want %d of each", counts, n)
	}
}

func TestUserGroup(t *testing.T) {
	e := newEnv(t)
	if os.Geteuid() != 0 {
		spec := e.spec("as-nobody")
		spec.Command, spec.User = "id -u", "nobody"
		if _, err := e.r.Start(e.ctx(), spec); err == nil || !strings.Contains(err.Error(), "root") {
			t.Errorf("Start with User as non-root: %v, want an error about root", err)
		}
		t.Skip("not root: only the refusal was tested")
	}
	w := e.watch()
	cases := []struct{ user, group, want string }{
		{"nobody", "", "65534 65534"},
		{"65534", "nogroup", "65534 65534"},
		{"", "nogroup", "0 65534"},
		{"12345", "", "12345 12345"}, // numeric uid without a passwd entry
	}
	for i, c := range cases {
		spec := e.spec("id" + strconv.Itoa(i))
		spec.Command, spec.User, spec.Group = `echo "$(id -u) $(id -g)"`, c.user, c.group
		spec.Dir = "/"
		name := spec.Identity.UnitName()
		e.start(spec)
		waitExit(t, w, name)
		var got []string
		for deadline := time.Now().Add(5 * time.Second); len(got) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			lines, _ := e.r.Logs(e.ctx(), name, 0)
			got = texts(lines)
		}
		if !slices.Equal(got, []string{c.want}) {
			t.Errorf("user %q group %q: id printed %q, want %q", c.user, c.group, got, c.want)
		}
	}
	spec := e.spec("bad")
	spec.Command, spec.User = "true", "no-such-user-rbt"
	if _, err := e.r.Start(e.ctx(), spec); err == nil || !strings.Contains(err.Error(), "no-such-user-rbt") {
		t.Errorf("unknown user: %v", err)
	}
}

func TestInvalidSpecs(t *testing.T) {
	e := newEnv(t)
	base := e.spec("web")
	base.Argv = []string{"true"}
	cases := []struct {
		mutate func(*units.Spec)
		want   string
	}{
		{func(s *units.Spec) { s.Identity.App = "other" }, "Identity.App"},
		{func(s *units.Spec) { s.Identity.Release = "" }, "Identity.Release"},
		{func(s *units.Spec) { s.Identity.Process = "" }, "Identity.Process"},
		{func(s *units.Spec) { s.Identity.Replica = 3 }, "Identity.Replica"},
		{func(s *units.Spec) { s.Argv = nil }, "neither Command nor Argv"},
		{func(s *units.Spec) { s.Dir = "" }, "Dir is empty"},
		{func(s *units.Spec) { s.Dir = "/etc/hostname" }, "not a directory"},
		{func(s *units.Spec) { s.Argv = []string{"no-such-program-rbt"} }, "not found in PATH"},
		{func(s *units.Spec) { s.Argv = []string{"/etc"} }, "not an executable"},
	}
	for _, c := range cases {
		s := base
		s.Env = slices.Clone(base.Env)
		c.mutate(&s)
		_, err := e.r.Start(e.ctx(), s)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Start error %v, want it to mention %q", c.want, err, c.want)
		}
	}
	if list, _ := e.r.List(e.ctx(), e.app); len(list) != 0 {
		t.Errorf("failed starts left records: %+v", list)
	}
	if _, err := exec.New("", exec.Options{}); err == nil {
		t.Errorf("New with an empty app succeeded")
	}
}

func TestArgvUsesInstancePath(t *testing.T) {
	e := newEnv(t)
	bin := filepath.Join(e.dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "rbt-hello"), []byte("#!/bin/sh\necho hello from PATH\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := e.watch()
	spec := e.spec("hello", "PATH="+bin+":/usr/bin:/bin")
	spec.Argv = []string{"rbt-hello"}
	name := spec.Identity.UnitName()
	e.start(spec)
	if ev := waitExit(t, w, name); ev.Exit != (units.Exit{}) {
		t.Fatalf("exit %+v", ev.Exit)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		lines, _ := e.r.Logs(e.ctx(), name, 0)
		if slices.Equal(texts(lines), []string{"hello from PATH"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Logs = %q", texts(lines))
		}
	}
}

func TestListOtherApp(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("web")
	spec.Argv = []string{"sleep", "1000"}
	e.start(spec)
	if list, err := e.r.List(e.ctx(), e.app+"-other"); err != nil || len(list) != 0 {
		t.Errorf("List(other app) = %+v, %v; want nothing", list, err)
	}
	if k := e.r.Kind(); k != "exec" {
		t.Errorf("Kind() = %q", k)
	}
}

func BenchmarkStartStop100Concurrent(b *testing.B) {
	unitstest.BenchStartStopConcurrent(b, func(tb testing.TB, app string) units.Runner { return newRunner(tb, app) }, 100, 16)
}
