// Package unitstest holds what tests of units.Runner implementations and of
// their users share: the runner conformance suite (RunSuite), the re-exec
// test workload (WorkloadMain, Workload), an in-memory Fake runner for
// orchestration tests, and a start/stop benchmark (BenchStartStop).
//
// A package that runs the suite must call WorkloadMain first in TestMain:
//
//	func TestMain(m *testing.M) {
//		unitstest.WorkloadMain()
//		os.Exit(m.Run())
//	}
//
//	func TestRunner(t *testing.T) {
//		unitstest.RunSuite(t, unitstest.Harness{New: newRunner})
//	}
package unitstest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// Harness describes the runner under test and what it can do.
type Harness struct {
	// New returns a fresh runner bound to app. It is called more than once
	// per test: a second runner for the same app is how re-adoption is
	// tested. New registers the runner's cleanup with t.Cleanup.
	New func(t *testing.T, app string) units.Runner
	// KillsSetsidChildren: Stop also kills a daemonized descendant, one
	// that called setsid and whose parent exited before the stop, so no
	// ppid link leads to it any more (systemd: the cgroup holds it). Every
	// runner must kill a setsid child whose parent is still alive.
	KillsSetsidChildren bool
	// Readopts: a fresh runner's List/Status/Stop/Watch see instances
	// started by an earlier runner, with the same pids.
	Readopts bool
	// LogsAfterRestart: logs remain readable through a fresh runner
	// (journald yes, the exec runner's in-memory ring no).
	LogsAfterRestart bool
}

// EnvTimeoutMultiplier scales the suite's waiting bounds for slow machines.
const EnvTimeoutMultiplier = "ROLLBRIDGE_TEST_TIMEOUT_MULTIPLIER"

// RunSuite runs the conformance suite as parallel subtests. Each subtest
// uses its own application name and stops every instance it started, even
// when it fails.
func RunSuite(t *testing.T, h Harness) {
	if h.New == nil {
		t.Fatal("unitstest.Harness.New is nil")
	}
	cases := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"StartArgvEnvCwd", testStartArgvEnvCwd},
		{"ShellCommandExpansion", testShellCommand},
		{"ArgvNotExpanded", testArgvNotExpanded},
		{"ExitCodes", testExitCodes},
		{"WatchCrashLatency", testWatchCrashLatency},
		{"StopSignal", testStopSignal},
		{"GraceThenKill", testGraceThenKill},
		{"GraceIndefinite", testGraceIndefinite},
		{"StopWithoutSignal", testStopWithoutSignal},
		{"StopWaitsForDescendants", testStopWaitsForDescendants},
		{"TreeKill", testTreeKill},
		{"SetsidChildren", testSetsidChildren},
		{"StartFailures", testStartFailures},
		{"NamesAndErrors", testNamesAndErrors},
		{"Logs", testLogs},
		{"LogLineSplitting", testLogLineSplitting},
		{"LogsFollow", testLogsFollow},
		{"LogsKeptAcrossRestart", testLogsKeptAcrossRestart},
		{"List", testList},
		{"Readopt", testReadopt},
		{"Concurrency", testConcurrency},
		{"NotifyReadiness", testNotifyReadiness},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, h)
		})
	}
}

// UniqueApp returns an application name no other test (in this or a
// parallel package sharing one systemd manager) uses.
func UniqueApp() string {
	return "rbt" + strconv.FormatInt(int64(os.Getpid()), 36) + strconv.FormatUint(rand.Uint64()%(36*36*36*36*36*36), 36)
}

// scaled multiplies d by EnvTimeoutMultiplier (default 1).
func scaled(d time.Duration) time.Duration {
	if m, err := strconv.ParseFloat(os.Getenv(EnvTimeoutMultiplier), 64); err == nil && m > 0 {
		return time.Duration(float64(d) * m)
	}
	return d
}

// fixture is one subtest's runner, application and scratch directory.
type fixture struct {
	t     *testing.T
	r     units.Runner
	app   string
	dir   string
	token string // in every instance's environment: proves a pid is ours
}

func newFixture(t *testing.T, h Harness) *fixture {
	t.Helper()
	app := UniqueApp()
	dir := t.TempDir()
	// systemd needs the directory to be reachable after symlinks too.
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	}
	return &fixture{t: t, r: h.New(t, app), app: app, dir: dir, token: "RBT_TOKEN=" + app}
}

func (f *fixture) ctx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), scaled(d))
	f.t.Cleanup(cancel)
	return ctx
}

// spec returns a spec for process that runs argv (or, with argv nil, a
// shell Command set by the caller). env is added to the test's own
// environment (the full environment is passed: units under systemd get a
// minimal one otherwise).
func (f *fixture) spec(process string, argv []string, env ...string) units.Spec {
	return units.Spec{
		Identity:   units.Identity{App: f.app, Release: "v1", Process: process, Replicas: 1},
		Argv:       argv,
		Dir:        f.dir,
		Env:        mergeEnv(os.Environ(), append([]string{f.token}, env...)),
		StopSignal: syscall.SIGTERM,
		Grace:      units.Grace{Timeout: 5 * time.Second},
	}
}

func (f *fixture) workload(process, mode string, env ...string) units.Spec {
	argv, extra := Workload(mode, env...)
	return f.spec(process, argv, extra...)
}

func (f *fixture) shell(process, command string, env ...string) units.Spec {
	s := f.spec(process, nil, env...)
	s.Command = command
	return s
}

func (f *fixture) sleepArgv() []string {
	p, err := exec.LookPath("sleep")
	if err != nil {
		f.t.Fatalf("sleep not found: %v", err)
	}
	return []string{p, "1000"}
}

func (f *fixture) path(name string) string { return filepath.Join(f.dir, name) }

// start starts spec and registers its forced stop as a cleanup.
func (f *fixture) start(spec units.Spec) units.Status {
	f.t.Helper()
	st, err := f.startE(spec)
	if err != nil {
		f.t.Fatalf("Start(%s): %v", spec.Identity.InstanceID(), err)
	}
	return st
}

func (f *fixture) startE(spec units.Spec) (units.Status, error) {
	name := spec.Identity.UnitName()
	r := f.r
	f.t.Cleanup(func() { forceStop(f.t, r, name) })
	return r.Start(f.ctx(30*time.Second), spec)
}

func forceStop(t *testing.T, r units.Runner, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), scaled(15*time.Second))
	defer cancel()
	if err := r.Stop(ctx, name, syscall.SIGKILL, units.Grace{Timeout: time.Second}); err != nil {
		t.Errorf("cleanup: stop %s: %v", name, err)
	}
}

func (f *fixture) status(name string) units.Status {
	f.t.Helper()
	st, err := f.r.Status(f.ctx(10*time.Second), name)
	if err != nil {
		f.t.Fatalf("Status(%s): %v", name, err)
	}
	return st
}

// waitStatus polls Status until cond holds.
func (f *fixture) waitStatus(name, what string, cond func(units.Status) bool) units.Status {
	f.t.Helper()
	var last units.Status
	var lastErr error
	ok := eventually(10*time.Second, func() bool {
		last, lastErr = f.r.Status(f.ctx(10*time.Second), name)
		return lastErr == nil && cond(last)
	})
	if !ok {
		f.t.Fatalf("%s: %s not reached; last status %+v, err %v", name, what, last, lastErr)
	}
	return last
}

// eventually polls cond every 10 ms for up to d (scaled).
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(scaled(d))
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readFile waits up to d for path to exist and returns its content.
func (f *fixture) readFile(path string, d time.Duration) string {
	f.t.Helper()
	var b []byte
	if !eventually(d, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil
	}) {
		f.t.Fatalf("%s did not appear within %v", path, scaled(d))
	}
	return string(b)
}

func (f *fixture) readPID(path string) int {
	f.t.Helper()
	s := f.readFile(path, 10*time.Second)
	pid, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		f.t.Fatalf("pid file %s: %v", path, err)
	}
	return pid
}

// killStray SIGKILLs pid at cleanup if it is still one of this test's
// processes (its environment carries the fixture's token).
func (f *fixture) killStray(pid int) {
	f.t.Cleanup(func() {
		if f.ours(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

func (f *fixture) ours(pid int) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if string(kv) == f.token {
			return true
		}
	}
	return false
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	state := b[i+2]
	return state != 'Z' && state != 'X' && state != 'x'
}

// mergeEnv returns base with the KEY=VALUE pairs of extra replacing or
// adding to it.
func mergeEnv(base, extra []string) []string {
	idx := make(map[string]int, len(base))
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range append(slices.Clone(base), extra...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// watcher records every event of one Watch subscription with its arrival
// time.
type watcher struct {
	mu     sync.Mutex
	events []received
	wake   chan struct{}
	closed bool
}

type received struct {
	units.Event
	arrived time.Time
}

func (f *fixture) watch() *watcher { return watchRunner(f.t, f.r) }

func watchRunner(t *testing.T, r units.Runner) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := r.Watch(ctx)
	if err != nil {
		cancel()
		t.Fatalf("Watch: %v", err)
	}
	w := &watcher{wake: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range ch {
			w.mu.Lock()
			w.events = append(w.events, received{ev, time.Now()})
			w.mu.Unlock()
			w.notify()
		}
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		w.notify()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(scaled(5 * time.Second)):
			t.Errorf("Watch channel not closed 5s after its context ended")
		}
	})
	return w
}

func (w *watcher) notify() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// wait returns the nth (1-based) event of kind for name.
func (w *watcher) wait(t *testing.T, name string, kind units.EventKind, nth int, d time.Duration) received {
	t.Helper()
	timeout := time.After(scaled(d))
	for {
		w.mu.Lock()
		seen := 0
		for _, ev := range w.events {
			if ev.Name == name && ev.Kind == kind {
				if seen++; seen == nth {
					w.mu.Unlock()
					return ev
				}
			}
		}
		closed := w.closed
		w.mu.Unlock()
		if closed {
			t.Fatalf("Watch channel closed before %s event #%d of %s", kind, nth, name)
		}
		select {
		case <-w.wake:
		case <-timeout:
			t.Fatalf("no %s event #%d for %s within %v", kind, nth, name, scaled(d))
		}
	}
}

// index returns the position of ev among all events (for ordering checks).
func (w *watcher) index(ev received) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, e := range w.events {
		if e.Name == ev.Name && e.Kind == ev.Kind && e.arrived.Equal(ev.arrived) {
			return i
		}
	}
	return -1
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
