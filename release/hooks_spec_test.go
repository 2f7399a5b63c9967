package release

// Tests for review-checklist items of the spec (§10) about the graceful stop
// sequence and lifecycle hooks (§5.5, §5.6) that the other test files do not
// pin: TPL-04 (hooks are not templated), GST-02 (the drain step), GST-03
// (stopCommand replaces the stop signal; nothing is sent to a process that
// already exited), GST-08 (hook failures are logged with their labels and
// are non-fatal), plus MEM-02's children list (§5.7, §5.9).
//
// The runner is the fake (no process is started for an instance), but the
// hooks are real: the release layer runs them itself with /bin/sh in the
// instance's cwd, which is the release path (the harness's directory), so
// hooks leave marker files there. A hook "stops" an instance by leaving a
// marker that a watcher goroutine turns into the fake's Exit.

import (
	"context"
	"encoding/json"
	"fmt"
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

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

// hkJS quotes s as a JavaScript string literal.
func hkJS(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// hkConfig is a config whose processes are the given ones plus a proxied
// web without hooks.
func hkConfig(processes ...string) string {
	return `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000, forceStopTimeoutMs: 500},
  processes: [
    ` + strings.Join(processes, ",\n    ") + `,
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`
}

// hkStop stops release rel (the hooks of every instance run) and returns how
// long it took.
func hkStop(t *testing.T, h *harness, rel string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := h.m.Stop(ctx, rel); err != nil {
		t.Fatalf("stop %s: %v", rel, err)
	}
	return time.Since(start)
}

// hkSignals lists the signals that reached unit through the runner, in
// order: a Stop with a signal, or a Signal call. A Stop without a signal
// (0: only wait for the unit to end) is not a signal and is left out.
func hkSignals(h *harness, unit string) []string {
	var out []string
	for _, c := range h.runner.Calls() {
		if c.Name == unit && (c.Op == "stop" || c.Op == "signal") && c.Signal != 0 {
			out = append(out, units.SignalName(c.Signal))
		}
	}
	return out
}

// hkFirstSignalAt is when the first signal reached unit (zero if none).
func hkFirstSignalAt(h *harness, unit string) time.Time {
	for _, c := range h.runner.Calls() {
		if c.Name == unit && (c.Op == "stop" || c.Op == "signal") && c.Signal != 0 {
			return c.At
		}
	}
	return time.Time{}
}

// hkExists reports whether name exists in the harness's (release)
// directory.
func hkExists(h *harness, name string) bool {
	_, err := os.Stat(filepath.Join(h.dir, name))
	return err == nil
}

// hkRead returns the trimmed content of name in the release directory.
func hkRead(t *testing.T, h *harness, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, name))
	if err != nil {
		t.Fatalf("hook output %s: %v", name, err)
	}
	return strings.TrimSpace(string(b))
}

// hkOnFile runs fn once name appears in the release directory (polled every
// 5 ms) and returns a function that reports whether it ran. The watcher ends
// with the test.
func hkOnFile(t *testing.T, h *harness, name string, fn func()) func() bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var mu sync.Mutex
	ran := false
	go func() {
		defer close(done)
		for !hkExists(h, name) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		fn()
		mu.Lock()
		ran = true
		mu.Unlock()
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() bool { mu.Lock(); defer mu.Unlock(); return ran }
}

// hkExitOnFile makes the fake instance unit exit (as if by sig, 0 = a clean
// exit) once name appears, then touches name+".seen" so a hook waiting for
// it can return.
func hkExitOnFile(t *testing.T, h *harness, unit, name string, sig syscall.Signal) func() bool {
	t.Helper()
	return hkOnFile(t, h, name, func() {
		e := units.Exit{}
		if sig != 0 {
			e = units.Exit{Code: -1, Signal: sig}
		}
		if err := h.runner.Exit(unit, e); err != nil {
			t.Errorf("exit %s: %v", unit, err)
		}
		if err := os.WriteFile(filepath.Join(h.dir, name+".seen"), nil, 0o644); err != nil {
			t.Error(err)
		}
	})
}

// hkAwait is a shell fragment that waits (up to 5 s) for name to appear.
func hkAwait(name string) string {
	return fmt.Sprintf(`i=0; while [ ! -e %s ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done`, name)
}

// hkEventData returns the data of the events message about id, with the
// release and process ids every instance event carries removed.
func hkEventData(h *harness, message, id string) []map[string]string {
	var out []map[string]string
	for _, e := range eventsFor(h.m, message, id) {
		d := map[string]string{}
		for k, v := range e.Data {
			if k != "processId" && k != "releaseId" {
				d[k] = fmt.Sprint(v)
			}
		}
		out = append(out, d)
	}
	return out
}

// hkHookEvents lists every hook failure event (any label) of id as
// "<message> <data>".
func hkHookEvents(h *harness, id string) []string {
	var out []string
	for _, e := range h.m.Events().Recent(0) {
		if e.Data["id"] != id {
			continue
		}
		for _, label := range []string{"quiet command", "drain command", "stop command"} {
			if strings.HasPrefix(e.Message, label+" ") {
				out = append(out, fmt.Sprintf("%s %v", e.Message, e.Data))
			}
		}
	}
	return out
}

// hkLingering lists the live (not zombie) processes whose command line
// contains s, waiting up to 5 s for them to go: a SIGKILLed process group
// dies asynchronously.
func hkLingering(s string) []int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []int
		ents, _ := os.ReadDir("/proc")
		for _, ent := range ents {
			pid, err := strconv.Atoi(ent.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
			if err != nil || !strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
				continue
			}
			if st, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat")); err == nil {
				if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && (st[i+2] == 'Z' || st[i+2] == 'X') {
					continue
				}
			}
			out = append(out, pid)
		}
		if len(out) == 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- TPL-04

// TestHooksRunUntemplated (TPL-04, spec §2.11, §2.13, §5.6): hooks run
// with their literal text — "{{…}}" in a quiet, drain or stop command is
// neither replaced nor an error (an unresolvable one does not fail the
// deploy) — while the same placeholders in the command are rendered; hooks
// read the process environment instead.
func TestHooksRunUntemplated(t *testing.T) {
	const lit = `{{releaseId}} {{ port }} {{processId}} {{nope}}`
	hook := func(out string) string {
		return hkJS(fmt.Sprintf(`printf '%%s|%%s\n' '%s' "$ROLLBRIDGE_RELEASE_ID" > %s`, lit, out))
	}
	h := newHarness(t, hkConfig(fmt.Sprintf(
		`{id: "worker", command: "worker {{releaseId}} {{processId}}", gracefulStopMs: 300,
     lifecycle: {quietCommand: %s, drainCommand: %s, drainTimeoutMs: 2000, stopCommand: %s}}`,
		hook("quiet.out"), hook("drain.out"), hook("stop.out"))))
	if _, err := h.deploy("v1"); err != nil {
		t.Fatalf("deploy with placeholders in hooks: %v", err)
	}
	if p := processStatus(t, h, "v1", "worker"); p.Command != "worker v1 worker" {
		t.Errorf("command %q, want the rendered %q", p.Command, "worker v1 worker")
	}
	hkStop(t, h, "v1")
	for _, out := range []string{"quiet.out", "drain.out", "stop.out"} {
		if got, want := hkRead(t, h, out), lit+"|v1"; got != want {
			t.Errorf("%s: the hook printed %q, want %q (literal placeholders, env from the process)", out, got, want)
		}
	}
	if evs := hkHookEvents(h, "worker"); len(evs) != 0 {
		t.Errorf("hook failures: %q", evs)
	}
}

// ---------------------------------------------------------------- GST-02

// TestDrainStep (GST-02, spec §5.5 step 3, §2.11): with drainTimeoutMs > 0
// the drain step runs drainCommand bounded by drainTimeoutMs, or without a
// drainCommand waits up to drainTimeoutMs for the process to exit by itself
// before it is signalled; it is skipped when drainTimeoutMs is 0 and when
// nothing is left alive.
func TestDrainStep(t *testing.T) {
	unit := unitOf("v1", "worker", 0, 1)

	t.Run("drainCommand runs before the stop signal", func(t *testing.T) {
		h := newHarness(t, hkConfig(`{id: "worker", command: "worker",
     lifecycle: {drainCommand: "echo $ROLLBRIDGE_PID > drained", drainTimeoutMs: 5000}}`))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		pid := processStatus(t, h, "v1", "worker").PID
		hkStop(t, h, "v1")
		if got := hkRead(t, h, "drained"); got != strconv.Itoa(pid) {
			t.Errorf("drainCommand saw ROLLBRIDGE_PID=%q, want %d", got, pid)
		}
		if sigs := hkSignals(h, unit); !slices.Equal(sigs, []string{"SIGTERM"}) {
			t.Errorf("signals %q, want the stop signal after the drain", sigs)
		}
		if evs := hkHookEvents(h, "worker"); len(evs) != 0 {
			t.Errorf("hook events %q", evs)
		}
	})

	t.Run("drainCommand bounded by drainTimeoutMs", func(t *testing.T) {
		const hang = "sleep 37.517"
		h := newHarness(t, hkConfig(fmt.Sprintf(`{id: "worker", command: "worker", gracefulStopMs: 5000,
     lifecycle: {drainCommand: %s, drainTimeoutMs: 400}}`, hkJS("touch drain.started; "+hang+"; touch drain.finished"))))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		took := hkStop(t, h, "v1")
		if !hkExists(h, "drain.started") || hkExists(h, "drain.finished") {
			t.Errorf("drainCommand started %v, finished %v; want started and cut off", hkExists(h, "drain.started"), hkExists(h, "drain.finished"))
		}
		if got := hkEventData(h, "drain command timed out", "worker"); len(got) != 1 || got[0]["timeoutMs"] != "400" || len(got[0]) != 2 {
			t.Errorf("drain command timed out events %v, want one {id, timeoutMs: 400}", got)
		}
		at := hkFirstSignalAt(h, unit)
		if sigs := hkSignals(h, unit); !slices.Equal(sigs, []string{"SIGTERM"}) || at.Sub(start) < 400*time.Millisecond {
			t.Errorf("signals %q %v after the stop began, want SIGTERM once the 400 ms drain bound elapsed", sigs, at.Sub(start))
		}
		if took > 10*time.Second {
			t.Errorf("stop took %v: the drain was not bounded", took)
		}
		if pids := hkLingering(hang); len(pids) != 0 {
			t.Errorf("the timed-out drainCommand still runs: pids %v", pids)
		}
	})

	t.Run("without drainCommand waits for the process up to drainTimeoutMs", func(t *testing.T) {
		h := newHarness(t, hkConfig(`{id: "worker", command: "worker", lifecycle: {drainTimeoutMs: 700}}`))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		took := hkStop(t, h, "v1")
		at := hkFirstSignalAt(h, unit)
		if sigs := hkSignals(h, unit); !slices.Equal(sigs, []string{"SIGTERM"}) {
			t.Errorf("signals %q, want SIGTERM after the wait", sigs)
		}
		if d := at.Sub(start); d < 700*time.Millisecond || d > 5*time.Second {
			t.Errorf("SIGTERM %v after the stop began, want after the 700 ms drain wait (and bounded by it)", d)
		}
		if took > 10*time.Second {
			t.Errorf("stop took %v", took)
		}
	})

	t.Run("without drainCommand a process that exits during the wait is not signalled", func(t *testing.T) {
		// The quiet hook lets the test start the clock; the process then
		// exits 300 ms into the 20 s drain wait.
		h := newHarness(t, hkConfig(`{id: "worker", command: "worker",
     lifecycle: {quietCommand: "touch quiet.done", drainTimeoutMs: 20000}}`))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		hkOnFile(t, h, "quiet.done", func() {
			time.Sleep(300 * time.Millisecond)
			if err := h.runner.Exit(unit, units.Exit{}); err != nil {
				t.Errorf("exit: %v", err)
			}
		})
		took := hkStop(t, h, "v1")
		if sigs := hkSignals(h, unit); len(sigs) != 0 {
			t.Errorf("signals %q sent to a process that exited during the drain wait", sigs)
		}
		if took < 300*time.Millisecond || took > 10*time.Second {
			t.Errorf("stop took %v, want the wait to end when the process exited (≈300 ms)", took)
		}
		if p := processStatus(t, h, "v1", "worker"); p.State != stateStopped {
			t.Errorf("worker %s, want stopped", p.State)
		}
	})

	t.Run("drainTimeoutMs 0 skips the step", func(t *testing.T) {
		// The config refuses a drainCommand without a positive
		// drainTimeoutMs (CFG-15); hand the manager such a definition
		// anyway to see that the stop sequence itself gates the step.
		mutate := func(c *config.Config) *config.Config {
			c.Process("worker").Lifecycle.DrainCommand = "touch drained"
			c.Process("worker").Lifecycle.DrainTimeout = 0
			return c
		}
		h := newHarnessWith(t, hkConfig(`{id: "worker", command: "worker", lifecycle: {drainTimeoutMs: 0}}`), func(h *harness, o *Options) {
			o.Config = mutate(o.Config)
			load := o.Reload
			o.Reload = func(ctx context.Context) (*config.Config, error) {
				c, err := load(ctx)
				if err != nil {
					return nil, err
				}
				return mutate(c), nil
			}
		})
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		hkStop(t, h, "v1")
		if hkExists(h, "drained") {
			t.Error("drainCommand ran with drainTimeoutMs 0")
		}
		if evs := hkHookEvents(h, "worker"); len(evs) != 0 {
			t.Errorf("drain step ran with drainTimeoutMs 0: %q", evs)
		}
		at := hkFirstSignalAt(h, unit)
		if sigs := hkSignals(h, unit); !slices.Equal(sigs, []string{"SIGTERM"}) || at.Sub(start) > 2*time.Second {
			t.Errorf("signals %q %v after the stop began, want SIGTERM at once", sigs, at.Sub(start))
		}
	})

	t.Run("skipped when the process exited during the quiet hook", func(t *testing.T) {
		h := newHarness(t, hkConfig(fmt.Sprintf(`{id: "worker", command: "worker",
     lifecycle: {quietCommand: %s, drainCommand: "touch drained", drainTimeoutMs: 5000}}`,
			hkJS("touch quieted; "+hkAwait("quieted.seen")))))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		exited := hkExitOnFile(t, h, unit, "quieted", 0)
		hkStop(t, h, "v1")
		if !exited() {
			t.Fatal("the quiet hook did not run")
		}
		if hkExists(h, "drained") {
			t.Error("drainCommand ran although the process had exited")
		}
		if sigs := hkSignals(h, unit); len(sigs) != 0 {
			t.Errorf("signals %q sent to a process that had exited", sigs)
		}
	})
}

// ---------------------------------------------------------------- GST-03

// TestStopCommandReplacesSignal (GST-03, spec §5.5 step 4, §2.11):
// stopCommand runs instead of sending stopSignal (with ROLLBRIDGE_PID set);
// only the SIGKILL fallback may follow when it does not end the process;
// when the process already exited before the stop step neither stopCommand
// nor a signal is sent.
func TestStopCommandReplacesSignal(t *testing.T) {
	unit := unitOf("v1", "worker", 0, 1)

	t.Run("stopCommand ends the process, no signal", func(t *testing.T) {
		// An explicit stopSignal "SIGTERM" is allowed with stopCommand and
		// is still not sent.
		h := newHarness(t, hkConfig(fmt.Sprintf(`{id: "worker", command: "worker", stopSignal: "SIGTERM", gracefulStopMs: 5000,
     lifecycle: {stopCommand: %s}}`, hkJS("echo $ROLLBRIDGE_PID > stopped; "+hkAwait("stopped.seen")))))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		pid := processStatus(t, h, "v1", "worker").PID
		hkExitOnFile(t, h, unit, "stopped", syscall.SIGTERM) // the hook's "kill -TERM -$ROLLBRIDGE_PID"
		took := hkStop(t, h, "v1")
		if got := hkRead(t, h, "stopped"); got != strconv.Itoa(pid) {
			t.Errorf("stopCommand saw ROLLBRIDGE_PID=%q, want %d", got, pid)
		}
		if sigs := hkSignals(h, unit); len(sigs) != 0 {
			t.Errorf("signals %q sent although stopCommand is set", sigs)
		}
		if evs := eventsFor(h.m, "process stop timed out; sending SIGKILL", "worker"); len(evs) != 0 || took > 4*time.Second {
			t.Errorf("escalated to SIGKILL (%v) or stop took %v", evs, took)
		}
	})

	t.Run("only the SIGKILL fallback when stopCommand leaves the process running", func(t *testing.T) {
		h := newHarness(t, hkConfig(`{id: "worker", command: "worker", stopSignal: "SIGTERM", gracefulStopMs: 300,
     lifecycle: {stopCommand: "touch stopcmd"}}`))
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		pid := processStatus(t, h, "v1", "worker").PID
		hkStop(t, h, "v1")
		if !hkExists(h, "stopcmd") {
			t.Error("stopCommand did not run")
		}
		if sigs := hkSignals(h, unit); !slices.Equal(sigs, []string{"SIGKILL"}) {
			t.Errorf("signals %q, want only the SIGKILL fallback", sigs)
		}
		if got := hkEventData(h, "process stop timed out; sending SIGKILL", "worker"); len(got) != 1 || got[0]["pid"] != strconv.Itoa(pid) {
			t.Errorf("escalation events %v, want one with pid %d", got, pid)
		}
	})

	for _, c := range []struct {
		name, lifecycle string
	}{
		{"process exited during the quiet hook: no stopCommand", `stopCommand: "touch stopcmd"`},
		{"process exited during the quiet hook: no stopSignal", ``},
	} {
		t.Run(c.name, func(t *testing.T) {
			life := "quietCommand: " + hkJS("touch quieted; "+hkAwait("quieted.seen"))
			if c.lifecycle != "" {
				life += ", " + c.lifecycle
			}
			h := newHarness(t, hkConfig(`{id: "worker", command: "worker", gracefulStopMs: 5000, lifecycle: {`+life+`}}`))
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			exited := hkExitOnFile(t, h, unit, "quieted", 0)
			took := hkStop(t, h, "v1")
			if !exited() {
				t.Fatal("the quiet hook did not run")
			}
			if hkExists(h, "stopcmd") {
				t.Error("stopCommand ran although the process had exited")
			}
			if sigs := hkSignals(h, unit); len(sigs) != 0 {
				t.Errorf("signals %q sent to a process that had exited", sigs)
			}
			if took > 4*time.Second {
				t.Errorf("stop took %v", took)
			}
			if p := processStatus(t, h, "v1", "worker"); p.State != stateStopped {
				t.Errorf("worker %s, want stopped", p.State)
			}
		})
	}
}

// ---------------------------------------------------------------- GST-08

// TestHookFailuresLoggedAndNonFatal (GST-08, spec §5.6): a hook that cannot
// be spawned emits "<label> failed" {error, id}, one that exits non-zero
// "<label> exited non-zero" {code, id}, one killed by a signal "<label>
// exited on signal" {id, signal}, one that overruns its bound "<label>
// timed out" {id, timeoutMs}; in every case the stop sequence goes on to
// its next step and the stop succeeds.
func TestHookFailuresLoggedAndNonFatal(t *testing.T) {
	// An environment string above the kernel's 128 KiB MAX_ARG_STRLEN makes
	// every exec of the hook shell fail with E2BIG: the hook cannot be
	// spawned. The fake runner does not care.
	h := newHarness(t, hkConfig(
		`{id: "spawnfail", command: "spawnfail", gracefulStopMs: 300, env: {HUGE: "x".repeat(200000)},
     lifecycle: {quietCommand: "touch q.spawnfail", drainCommand: "touch d.spawnfail", drainTimeoutMs: 300, stopCommand: "touch s.spawnfail"}}`,
		`{id: "nonzero", command: "nonzero", stopSignal: "SIGINT",
     lifecycle: {quietCommand: "touch q.nonzero; exit 3", drainCommand: "touch d.nonzero; exit 4", drainTimeoutMs: 2000}}`,
		`{id: "signalled", command: "signalled", gracefulStopMs: 300,
     lifecycle: {quietCommand: "touch q.signalled; kill -TERM $$", stopCommand: "touch s.signalled; kill -KILL $$"}}`,
		`{id: "slow", command: "slow", stopSignal: "SIGHUP",
     lifecycle: {quietCommand: "sleep 38.261", drainCommand: "touch d.slow", drainTimeoutMs: 2000}, gracefulStopMs: 400}`,
	))
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	took := hkStop(t, h, "v1")
	if took > 20*time.Second {
		t.Errorf("stop took %v", took)
	}

	type want struct {
		message string
		data    map[string]string // besides id; "*" = any non-empty value
	}
	cases := map[string]struct {
		events  []want
		ran     []string // hook markers that must exist (the step after a failure ran)
		signals []string // what reached the unit afterwards
	}{
		"spawnfail": {
			events: []want{
				{"quiet command failed", map[string]string{"error": "*"}},
				{"drain command failed", map[string]string{"error": "*"}},
				{"stop command failed", map[string]string{"error": "*"}},
			},
			// stopCommand replaces the signal; its failure leaves the
			// SIGKILL fallback.
			signals: []string{"SIGKILL"},
		},
		"nonzero": {
			events: []want{
				{"quiet command exited non-zero", map[string]string{"code": "3"}},
				{"drain command exited non-zero", map[string]string{"code": "4"}},
			},
			ran:     []string{"q.nonzero", "d.nonzero"},
			signals: []string{"SIGINT"},
		},
		"signalled": {
			events: []want{
				{"quiet command exited on signal", map[string]string{"signal": "SIGTERM"}},
				{"stop command exited on signal", map[string]string{"signal": "SIGKILL"}},
			},
			ran:     []string{"q.signalled", "s.signalled"},
			signals: []string{"SIGKILL"},
		},
		"slow": {
			// gracefulStopMs bounds the quiet hook.
			events:  []want{{"quiet command timed out", map[string]string{"timeoutMs": "400"}}},
			ran:     []string{"d.slow"},
			signals: []string{"SIGHUP"},
		},
	}
	for id, c := range cases {
		var got []string
		for _, e := range h.m.Events().Recent(0) {
			if e.Data["id"] == id && (strings.HasPrefix(e.Message, "quiet command ") || strings.HasPrefix(e.Message, "drain command ") || strings.HasPrefix(e.Message, "stop command ")) {
				got = append(got, e.Message)
			}
		}
		var wantMsgs []string
		for _, w := range c.events {
			wantMsgs = append(wantMsgs, w.message)
			data := hkEventData(h, w.message, id)
			if len(data) != 1 {
				t.Errorf("%s: %d %q events, want 1", id, len(data), w.message)
				continue
			}
			d := data[0]
			if d["id"] != id || len(d) != len(w.data)+1 {
				t.Errorf("%s: %q data %v, want id and %v", id, w.message, d, w.data)
			}
			for k, v := range w.data {
				if v == "*" && d[k] == "" || v != "*" && d[k] != v {
					t.Errorf("%s: %q %s = %q, want %q", id, w.message, k, d[k], v)
				}
			}
		}
		if !slices.Equal(got, wantMsgs) {
			t.Errorf("%s: hook events %q, want %q", id, got, wantMsgs)
		}
		for _, m := range c.ran {
			if !hkExists(h, m) {
				t.Errorf("%s: %s missing: the step after a failed hook did not run", id, m)
			}
		}
		if sigs := hkSignals(h, unitOf("v1", id, 0, 1)); !slices.Equal(sigs, c.signals) {
			t.Errorf("%s: signals %q, want %q", id, sigs, c.signals)
		}
		if p := processStatus(t, h, "v1", id); p.State != stateStopped {
			t.Errorf("%s: %s after the stop, want stopped", id, p.State)
		}
	}
	for _, m := range []string{"q.spawnfail", "d.spawnfail", "s.spawnfail"} {
		if hkExists(h, m) {
			t.Errorf("%s exists: a hook ran although it could not be spawned", m)
		}
	}
	if d := hkEventData(h, "quiet command failed", "spawnfail"); len(d) == 1 && !strings.Contains(d[0]["error"], "argument list too long") {
		t.Errorf("spawn failure error %q, want the exec error", d[0]["error"])
	}
	if pids := hkLingering("sleep 38.261"); len(pids) != 0 {
		t.Errorf("the timed-out quiet hook still runs: pids %v", pids)
	}
}

// ---------------------------------------------------------------- MEM-02

// childrenRunner reports real processes as an instance's PIDs (unsorted,
// to see that status sorts them) and a fixed memory figure: the fake runner
// models neither.
type childrenRunner struct {
	*unitstest.Fake
	unit string
	pids []int
	mem  uint64
}

func (r *childrenRunner) Status(ctx context.Context, name string) (units.Status, error) {
	st, err := r.Fake.Status(ctx, name)
	if err == nil && name == r.unit && st.MainPID != 0 {
		st.PIDs = slices.Clone(r.pids)
		st.MemoryBytes = r.mem
	}
	return st, err
}

// TestMemoryChildrenSortedByPID (MEM-02, spec §5.7, §5.9): a memory sample
// exposes every process of the instance as children {command, pid,
// rssBytes} sorted by pid — command from /proc/<pid>/comm, rssBytes the
// process's VmRSS — and rssBytes as the runner's figure for the whole
// instance (the exec runner's VmRSS sum: units/exec.TestRSSSumsProcessGroup).
func TestMemoryChildrenSortedByPID(t *testing.T) {
	var pids []int
	for _, name := range []string{"sleep", "cat", "sleep"} {
		var cmd *exec.Cmd
		if name == "cat" {
			cmd = exec.Command("cat") // blocks on the pipe below
			if _, err := cmd.StdinPipe(); err != nil {
				t.Fatal(err)
			}
		} else {
			cmd = exec.Command("sleep", "300")
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		pids = append(pids, cmd.Process.Pid)
	}
	unsorted := slices.Clone(pids)
	slices.Sort(pids)
	slices.Reverse(unsorted)
	if slices.IsSorted(unsorted) {
		t.Fatal("test setup: pids not unsorted")
	}

	unit := unitOf("v1", "worker", 0, 1)
	h := newHarnessWith(t, hkConfig(`{id: "worker", command: "worker", memory: {limitBytes: 1099511627776, checkIntervalMs: 20}}`),
		func(h *harness, o *Options) {
			o.Runner = &childrenRunner{Fake: h.runner, unit: unit, pids: unsorted, mem: 123456789}
		})
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	var p ProcessStatus
	waitFor(t, "a memory sample", func() bool {
		p = processStatus(t, h, "v1", "worker")
		return len(p.Children) > 0
	})
	if p.RSSBytes != 123456789 {
		t.Errorf("rssBytes %d, want the runner's figure 123456789", p.RSSBytes)
	}
	var gotPIDs []int
	for _, c := range p.Children {
		gotPIDs = append(gotPIDs, c.PID)
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.PID))
		if err != nil {
			t.Fatal(err)
		}
		if c.Command != strings.TrimSpace(string(comm)) || (c.Command != "sleep" && c.Command != "cat") {
			t.Errorf("child %d command %q, want %q", c.PID, c.Command, strings.TrimSpace(string(comm)))
		}
		if rss := units.RSSBytes(c.PID); c.RSSBytes == 0 || c.RSSBytes != rss {
			t.Errorf("child %d rssBytes %d, want its VmRSS %d", c.PID, c.RSSBytes, rss)
		}
	}
	if !slices.Equal(gotPIDs, pids) {
		t.Errorf("children pids %v, want every process sorted by pid %v", gotPIDs, pids)
	}

	// The JSON shape of a child: {command, pid, rssBytes}.
	b, err := json.Marshal(p.Children[0])
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || keys["command"] == nil || keys["pid"] == nil || keys["rssBytes"] == nil {
		t.Errorf("child JSON %s, want {command, pid, rssBytes}", b)
	}
	if !strings.HasPrefix(string(b), `{"command":`) {
		t.Errorf("child JSON %s, want the original's key order command, pid, rssBytes", b)
	}

	// Gone after the stop.
	hkStop(t, h, "v1")
	if p := processStatus(t, h, "v1", "worker"); len(p.Children) != 0 || p.RSSBytes != 0 {
		t.Errorf("after the stop: children %v rssBytes %d", p.Children, p.RSSBytes)
	}
}
