package systemd_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/systemd"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

func testSpec(app, process string, argv []string, env ...string) units.Spec {
	return units.Spec{
		Identity:   units.Identity{App: app, Release: "v1", Process: process, Replicas: 1},
		Argv:       argv,
		Dir:        os.TempDir(),
		Env:        append(os.Environ(), env...),
		StopSignal: syscall.SIGTERM,
		Grace:      units.Grace{Timeout: 5 * time.Second},
	}
}

// An instance that crashes while no daemon watches is found failed, with
// its exit status, by the next runner; stopping it clears it.
func TestCrashWhileDaemonDown(t *testing.T) {
	app := unitstest.UniqueApp()
	first := newRunner(t, app)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv, env := unitstest.Workload(unitstest.ModeExit, "CODE=9", "DELAY_MS=300")
	spec := testSpec(app, "crashy", argv, env...)
	name := spec.Identity.UnitName()
	t.Cleanup(func() { _ = first.Stop(context.Background(), name, syscall.SIGKILL, units.Grace{}) })
	if _, err := first.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	first.Close() // the daemon goes away; the unit keeps running
	time.Sleep(600 * time.Millisecond)

	second := newRunner(t, app)
	list, err := second.List(ctx, app)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != name || list[0].State != units.StateFailed ||
		list[0].Exit == nil || *list[0].Exit != (units.Exit{Code: 9}) || list[0].Identity != spec.Identity {
		t.Fatalf("List after a crash while down = %+v", list)
	}
	if err := second.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if list, _ := second.List(ctx, app); len(list) != 0 {
		t.Errorf("failed unit still listed after Stop: %+v", list)
	}
}

func TestStatusPIDsAndMemory(t *testing.T) {
	app := unitstest.UniqueApp()
	r := newRunner(t, app)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := testSpec(app, "tree", nil)
	spec.Command = "sleep 1000 & sleep 1000 & wait"
	name := spec.Identity.UnitName()
	t.Cleanup(func() { _ = r.Stop(context.Background(), name, syscall.SIGKILL, units.Grace{}) })
	if _, err := r.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	var st units.Status
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if st, err = r.Status(ctx, name); err != nil {
			t.Fatal(err)
		}
		if len(st.PIDs) >= 3 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(st.PIDs) < 3 || st.MemoryBytes == 0 {
		t.Fatalf("Status = %+v, want 3 pids and a memory figure", st)
	}
	t.Logf("3-process instance: %d bytes (MemoryCurrent or VmRSS sum)", st.MemoryBytes)
}

func TestUserManagerRejectsUser(t *testing.T) {
	conn := dbusctltest.Connect(t)
	if !conn.UserManager() {
		t.Skip("connected to the system manager")
	}
	app := unitstest.UniqueApp()
	r := newRunner(t, app)
	spec := testSpec(app, "web", []string{"/bin/sleep", "1000"})
	spec.User = "nobody"
	_, err := r.Start(context.Background(), spec)
	if !errors.Is(err, dbusctl.ErrNotSupported) || !strings.Contains(err.Error(), "system manager") {
		t.Fatalf("User= on a user manager: %v", err)
	}
}

func TestNewUnavailable(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path="+dir+"/no-bus")
	t.Setenv("XDG_RUNTIME_DIR", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := systemd.New(ctx, "demo", systemd.Options{Bus: dbusctl.BusUser})
	if !errors.Is(err, units.ErrUnavailable) {
		t.Fatalf("New without a manager: %v, want ErrUnavailable", err)
	}
	t.Logf("error: %v", err)
}

// TestStopSlice: the application's slice stays while an instance runs and
// is stopped once none is left.
func TestStopSlice(t *testing.T) {
	app := unitstest.UniqueApp()
	r := newRunner(t, app).(*systemd.Runner)
	conn := dbusctltest.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := testSpec(app, "web", []string{"/bin/sleep", "1000"})
	name := spec.Identity.UnitName()
	t.Cleanup(func() { _ = r.Stop(context.Background(), name, syscall.SIGKILL, units.Grace{}) })
	if _, err := r.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	sliceState := func() string {
		list, err := conn.ListUnits(ctx, units.AppSlice(app))
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			return "not loaded"
		}
		return list[0].ActiveState
	}
	if err := r.StopSlice(ctx); err != nil {
		t.Fatal(err)
	}
	if s := sliceState(); s != "active" {
		t.Fatalf("slice with a running instance: %s, want active", s)
	}
	if err := r.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := r.StopSlice(ctx); err != nil {
		t.Fatal(err)
	}
	if s := sliceState(); s == "active" {
		t.Fatalf("slice after its last instance stopped: %s, want stopped", s)
	}
	// Idempotent: a slice already gone is fine.
	if err := r.StopSlice(ctx); err != nil {
		t.Errorf("second StopSlice: %v", err)
	}
}
