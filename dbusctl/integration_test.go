package dbusctl_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
)

// These tests need a real manager: run them inside the sandbox
//
//	eval "$(scripts/systemd-sandbox start /tmp/rbsd-dbusctl)"
//	ROLLBRIDGE_REQUIRE_SYSTEMD=1 go test ./dbusctl/
//
// and they skip loudly elsewhere.

var unitSeq atomic.Int64

// unitName returns a name unique to this test process, and registers a
// cleanup that stops and resets the unit whatever happened.
func unitName(t *testing.T, c *dbusctl.Conn, what string) string {
	t.Helper()
	name := fmt.Sprintf("rbtest-dbusctl-%d-%d-%s.service", os.Getpid(), unitSeq.Add(1), what)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = c.Kill(ctx, name, syscall.SIGKILL)
		_ = c.Stop(ctx, name)
		_ = c.ResetFailed(ctx, name)
	})
	return name
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitState polls Properties until ok(p) or the deadline.
func waitProps(t *testing.T, c *dbusctl.Conn, name string, ok func(p dbusctl.UnitProperties, err error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := c.Properties(context.Background(), name)
		if ok(p, err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: condition not reached; last state %s/%s err=%v", name, p.ActiveState, p.SubState, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartTransientFullPropertySet(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	dir := t.TempDir()
	name := unitName(t, c, "props")
	// '$LITERAL' and "$$" prove systemd passes argv verbatim: with
	// expansion they would become "" (or "expanded") and "$".
	script := `printf '%s %s %s\n' '$LITERAL' "$$" "$(pwd)" > out.txt; exec sleep 1000`
	spec := dbusctl.TransientSpec{
		Name:             name,
		Description:      "rollbridge dbusctl property test",
		Slice:            "rbtest-dbusctl.slice",
		Argv:             []string{"/bin/sh", "-c", script},
		WorkingDirectory: dir,
		Environment:      []string{"LITERAL=expanded", "FOO=bar baz"},
		KillSignal:       syscall.SIGINT,
		TimeoutStop:      7 * time.Second,
		SyslogIdentifier: strings.TrimSuffix(name, ".service"),
		LogExtraFields:   []string{"ROLLBRIDGE_APP=demo", "ROLLBRIDGE_RELEASE=r1", "ROLLBRIDGE_INSTANCE=web"},
	}
	start := time.Now()
	if err := c.StartTransient(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Logf("StartTransient job done in %v", time.Since(start))

	p, err := c.Properties(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	check := func(field string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", field, got, want)
		}
	}
	check("ActiveState", p.ActiveState, "active")
	check("Type", p.Type, "exec")
	check("Description", p.Description, spec.Description)
	check("WorkingDirectory", p.WorkingDirectory, dir)
	check("KillSignal", p.KillSignal, syscall.SIGINT)
	check("KillMode", p.KillMode, "control-group")
	check("TimeoutStop", p.TimeoutStop, 7*time.Second)
	check("SendSIGKILL", p.SendSIGKILL, true)
	check("SyslogIdentifier", p.SyslogIdentifier, spec.SyslogIdentifier)
	check("LogExtraFields", p.LogExtraFields, spec.LogExtraFields)
	check("Slice", p.Slice, spec.Slice)
	check("CollectMode", p.CollectMode, "inactive")
	for _, kv := range spec.Environment {
		if !slices.Contains(p.Environment, kv) {
			t.Errorf("Environment %v lacks %q", p.Environment, kv)
		}
	}
	escaped := make([]string, len(spec.Argv))
	for i, a := range spec.Argv {
		escaped[i] = strings.ReplaceAll(a, "$", "$$")
	}
	if len(p.ExecStart) != 1 || !slices.Equal(p.ExecStart[0].Argv, escaped) {
		t.Errorf("ExecStart = %+v", p.ExecStart)
	}
	if p.MainPID <= 0 || p.ControlGroup == "" {
		t.Fatalf("MainPID=%d ControlGroup=%q", p.MainPID, p.ControlGroup)
	}
	if p.MemoryCurrent == dbusctl.MemoryUnknown {
		t.Log("MemoryCurrent is [not set] (no memory controller for this manager)")
	}

	var out []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(out) == 0 && time.Now().Before(deadline) {
		out, _ = os.ReadFile(filepath.Join(dir, "out.txt"))
		time.Sleep(5 * time.Millisecond)
	}
	want := fmt.Sprintf("$LITERAL %d %s\n", p.MainPID, dir)
	if string(out) != want {
		t.Errorf("unit wrote %q, want %q ($VAR must not be expanded by systemd; cwd must apply)", out, want)
	}

	// Stop honours KillSignal=SIGINT: sh exec'd sleep, which dies on SIGINT.
	if err := c.Stop(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Properties(ctx, name); !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		t.Errorf("after Stop: Properties err = %v, want ErrNoSuchUnit (collected)", err)
	}
	if err := c.Stop(ctx, name); !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		t.Errorf("Stop of a gone unit: %v, want ErrNoSuchUnit", err)
	}
}

func TestIndefiniteStopProperties(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	name := unitName(t, c, "indef")
	err := c.StartTransient(ctx, dbusctl.TransientSpec{
		Name: name, Argv: []string{"/bin/sleep", "1000"},
		TimeoutStop: dbusctl.Infinity, NoSIGKILL: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Properties(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if p.TimeoutStop != dbusctl.Infinity || p.SendSIGKILL {
		t.Errorf("TimeoutStop=%v SendSIGKILL=%v, want infinity/false", p.TimeoutStop, p.SendSIGKILL)
	}
}

func TestStartFailureMissingDirectory(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	name := unitName(t, c, "nodir")
	err := c.StartTransient(ctx, dbusctl.TransientSpec{
		Name: name, Argv: []string{"/bin/sh", "-c", "exit 0"},
		WorkingDirectory: "/nonexistent/rollbridge-test",
	})
	var jerr *dbusctl.JobError
	if !errors.Is(err, dbusctl.ErrJobFailed) || !errors.As(err, &jerr) {
		t.Fatalf("want JobError/ErrJobFailed, got %v", err)
	}
	t.Logf("error: %v", err)
	if jerr.ExitStatus != 200 || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "CHDIR") {
		t.Errorf("error does not explain the failure: %v (status %d)", err, jerr.ExitStatus)
	}
	if _, err := c.Properties(ctx, name); !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		t.Errorf("failed unit left behind: %v", err)
	}
}

func TestUnitExistsRetry(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	name := unitName(t, c, "exists")
	spec := dbusctl.TransientSpec{Name: name, Argv: []string{"/bin/sh", "-c", "sleep 0.1; exit 3"}}
	if err := c.StartTransient(ctx, spec); err != nil {
		t.Fatal(err)
	}
	// CollectMode=inactive keeps the failed unit, which holds the name.
	waitProps(t, c, name, func(p dbusctl.UnitProperties, err error) bool { return err == nil && p.ActiveState == "failed" })
	p, _ := c.Properties(ctx, name)
	if e, ok := p.Exit(); !ok || e.Code != dbusctl.CLDExited || e.Status != 3 || e.Result != "exit-code" {
		t.Errorf("failed unit exit = %+v, %v", e, ok)
	}
	// Starting again hits UnitExists, resets the leftover and retries once.
	spec.Argv = []string{"/bin/sleep", "1000"}
	if err := c.StartTransient(ctx, spec); err != nil {
		t.Fatalf("restart over a failed leftover: %v", err)
	}
	// A running unit keeps its name.
	if err := c.StartTransient(ctx, spec); !errors.Is(err, dbusctl.ErrUnitExists) {
		t.Fatalf("start over a running unit: %v, want ErrUnitExists", err)
	}
}

func TestWatchExitsAndCrashLatency(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 60*time.Second)
	dir := t.TempDir()
	prefix := fmt.Sprintf("rbtest-dbusctl-%d-", os.Getpid())
	events, err := c.Watch(ctx, func(u string) bool { return strings.HasPrefix(u, prefix) })
	if err != nil {
		t.Fatal(err)
	}
	next := func(name string, kind dbusctl.EventKind) (dbusctl.UnitEvent, time.Time) {
		t.Helper()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("watch channel closed")
				}
				if ev.Unit == name && ev.Kind == kind {
					return ev, time.Now()
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no %v event", name, kind)
			}
		}
	}

	cases := []struct {
		what     string
		script   string
		code     int
		status   int
		signaled bool
	}{
		{"exit7", `sleep 0.2; date +%s%N > "$STAMP"; exit 7`, dbusctl.CLDExited, 7, false},
		{"kill9", `sleep 0.2; date +%s%N > "$STAMP"; kill -9 $$`, dbusctl.CLDKilled, 9, true},
		{"fast0", `date +%s%N > "$STAMP"; exit 0`, dbusctl.CLDExited, 0, false},
	}
	for _, tc := range cases {
		name := unitName(t, c, tc.what)
		stamp := filepath.Join(dir, tc.what)
		err := c.StartTransient(ctx, dbusctl.TransientSpec{
			Name: name, Argv: []string{"/bin/sh", "-c", tc.script},
			Environment: []string{"STAMP=" + stamp},
		})
		if err != nil {
			t.Fatal(err)
		}
		started, _ := next(name, dbusctl.UnitStarted)
		exited, seen := next(name, dbusctl.UnitExited)
		if started.PID <= 0 || exited.PID != started.PID {
			t.Errorf("%s: pids started=%d exited=%d", tc.what, started.PID, exited.PID)
		}
		if exited.Exit.Code != tc.code || exited.Exit.Status != tc.status || exited.Exit.Signaled() != tc.signaled {
			t.Errorf("%s: exit %+v, want code %d status %d", tc.what, exited.Exit, tc.code, tc.status)
		}
		raw, err := os.ReadFile(stamp)
		if err != nil {
			t.Fatal(err)
		}
		ns, _ := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
		t.Logf("%s: crash detection latency: %.1f ms (process's last timestamp → Exited event received; %.1f ms after systemd's ExecMainExitTimestamp)",
			tc.what, float64(seen.Sub(time.Unix(0, ns)).Microseconds())/1000, float64(seen.Sub(exited.At).Microseconds())/1000)
	}

	// A requested stop is an exit too, by the stop signal.
	name := unitName(t, c, "killed")
	if err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: name, Argv: []string{"/bin/sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
	next(name, dbusctl.UnitStarted)
	if err := c.Kill(ctx, name, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ev, _ := next(name, dbusctl.UnitExited)
	if code, sig := ev.Exit.ExitCodeOrSignal(); code != -1 || sig != syscall.SIGTERM {
		t.Errorf("killed: exit %+v", ev.Exit)
	}
	next(name, dbusctl.UnitRemoved)
	if err := c.Kill(ctx, name, syscall.SIGTERM); !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		t.Errorf("Kill of a gone unit: %v, want ErrNoSuchUnit", err)
	}
}

func TestListUnits(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	a, b := unitName(t, c, "list-a"), unitName(t, c, "list-b")
	for _, n := range []string{a, b} {
		if err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: n, Argv: []string{"/bin/sleep", "1000"}}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := c.ListUnits(ctx, fmt.Sprintf("rbtest-dbusctl-%d-*-list-*.service", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range list {
		names = append(names, u.Name)
		if u.ActiveState != "active" {
			t.Errorf("%s: %s", u.Name, u.ActiveState)
		}
	}
	slices.Sort(names)
	want := []string{a, b}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("ListUnits = %v, want [%s %s]", names, a, b)
	}
}

func TestReconnectAfterDrop(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	c.DropConnection()
	if _, err := c.SystemState(ctx); err != nil {
		t.Fatalf("call after drop did not reconnect: %v", err)
	}
	name := unitName(t, c, "reconnect")
	c.DropConnection()
	if err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: name, Argv: []string{"/bin/sleep", "1000"}}); err != nil {
		t.Fatalf("start after drop: %v", err)
	}
}

func TestPrivateSocket(t *testing.T) {
	c := dbusctltest.ConnectBus(t, dbusctl.BusPrivate)
	ctx := ctxFor(t, 30*time.Second)
	if c.Bus() != dbusctl.BusPrivate {
		t.Fatalf("bus = %v", c.Bus())
	}
	name := unitName(t, c, "private")
	events, err := c.Watch(ctx, func(u string) bool { return u == name })
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: name, Argv: []string{"/bin/sh", "-c", "sleep 0.1; exit 4"}}); err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Kind == dbusctl.UnitExited {
			if ev.Exit.Status != 4 {
				t.Errorf("exit %+v", ev.Exit)
			}
			return
		}
	}
	t.Fatal("watch ended without an exit")
}

func TestVersionAndUserManagerLimits(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 10*time.Second)
	v, err := c.Version(ctx)
	if err != nil || v < 200 {
		t.Fatalf("Version = %d, %v", v, err)
	}
	t.Logf("systemd %d, user manager %v, bus %v", v, c.UserManager(), c.Bus())
	if !c.UserManager() {
		return
	}
	err = c.StartTransient(ctx, dbusctl.TransientSpec{Name: "rbtest-never.service", Argv: []string{"/bin/true"}, User: "nobody"})
	if !errors.Is(err, dbusctl.ErrNotSupported) {
		t.Errorf("User= on a user manager: %v, want ErrNotSupported", err)
	}
}

// A command that exits at once may fail its Type=exec start job although it
// ran (systemd sees the exit before the exec completion); JobError.Spawned
// tells that apart from a real spawn failure.
func TestQuickExitSpawned(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	raced := 0
	for i := range 10 {
		name := unitName(t, c, "quick"+strconv.Itoa(i))
		err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: name, Argv: []string{"/bin/sh", "-c", "exit 5"}})
		if err == nil {
			continue
		}
		var jerr *dbusctl.JobError
		if !errors.As(err, &jerr) || !jerr.Spawned() || jerr.ExitStatus != 5 || jerr.PID <= 0 {
			t.Fatalf("quick exit: %v (%+v)", err, jerr)
		}
		raced++
	}
	t.Logf("start job failed because the process exited first in %d of 10 starts", raced)
	name := unitName(t, c, "noexec")
	err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: name, Argv: []string{"/nonexistent/program"}})
	var jerr *dbusctl.JobError
	if !errors.As(err, &jerr) || jerr.Spawned() || jerr.ExitStatus != 203 {
		t.Fatalf("missing program: %v", err)
	}
}

// TestStartedState: the light read after a start agrees with State on a
// running unit, and an unknown unit (loaded on demand through its computed
// path) still reads as ErrNoSuchUnit.
func TestStartedState(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	name := unitName(t, c, "started")
	if err := c.StartTransient(ctx, dbusctl.TransientSpec{Name: name, Argv: []string{"/bin/sleep", "1000"}}); err != nil {
		t.Fatal(err)
	}
	light, err := c.StartedState(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	full, err := c.State(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if light.ActiveState != "active" || light.MainPID <= 0 || light.MainPID != full.MainPID ||
		light.ControlGroup == "" || light.ControlGroup != full.ControlGroup ||
		!light.ExecMainStartTimestamp.Equal(full.ExecMainStartTimestamp) || light.ExecMainStartTimestamp.IsZero() {
		t.Errorf("StartedState %+v\nState %+v", light, full)
	}
	missing := unitName(t, c, "never-started")
	if _, err := c.StartedState(ctx, missing); !errors.Is(err, dbusctl.ErrNoSuchUnit) {
		t.Errorf("StartedState of a unit never started: %v, want ErrNoSuchUnit", err)
	}
}
