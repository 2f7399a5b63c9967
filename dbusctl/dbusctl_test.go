package dbusctl

import (
	"context"
	"errors"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"
)

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]int{"252": 252, "252.38-1~deb12u1": 252, "v255-rc1": 255, " 239 ": 239} {
		got, err := parseVersion(in)
		if err != nil || got != want {
			t.Errorf("parseVersion(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "v"} {
		if _, err := parseVersion(in); err == nil {
			t.Errorf("parseVersion(%q): want error", in)
		}
	}
}

func TestUnitFromPath(t *testing.T) {
	for path, want := range map[godbus.ObjectPath]string{
		"/org/freedesktop/systemd1/unit/foo_2eservice":                                    "foo.service",
		"/org/freedesktop/systemd1/unit/rollbridge_2ddemo_2dr1_2dworker_5cx230_2eservice": `rollbridge-demo-r1-worker\x230.service`,
	} {
		got, ok := unitFromPath(path)
		if !ok || got != want {
			t.Errorf("unitFromPath(%s) = %q, %v; want %q", path, got, ok, want)
		}
	}
	if _, ok := unitFromPath("/org/freedesktop/systemd1/job/12"); ok {
		t.Error("job path accepted as a unit")
	}
}

func TestPropertiesSignatures(t *testing.T) {
	spec := TransientSpec{
		Name: "x.service", Argv: []string{"/bin/sh", "-c", "echo $HOME"},
		TimeoutStop: Infinity, NoSIGKILL: true, KillSignal: syscall.SIGINT,
		LogExtraFields: []string{"A=1"}, Environment: []string{"B=2"},
	}
	sigs := map[string]string{}
	vals := map[string]any{}
	for _, p := range spec.properties(252) {
		sigs[p.Name] = p.Value.Signature().String()
		vals[p.Name] = p.Value.Value()
	}
	want := map[string]string{
		"ExecStart": "a(sasb)", "Type": "s", "KillMode": "s", "KillSignal": "i",
		"TimeoutStopUSec": "t", "SendSIGKILL": "b", "LogExtraFields": "aay",
		"Environment": "as", "CollectMode": "s", "Description": "s",
	}
	for name, sig := range want {
		if sigs[name] != sig {
			t.Errorf("%s: signature %q, want %q", name, sigs[name], sig)
		}
	}
	if vals["TimeoutStopUSec"] != uint64(math.MaxUint64) || vals["SendSIGKILL"] != false || vals["Type"] != "exec" {
		t.Errorf("indefinite stop props wrong: %v %v %v", vals["TimeoutStopUSec"], vals["SendSIGKILL"], vals["Type"])
	}
	// Every manager: ExecStart with $ escaped (never ExecStartEx, which
	// systemd 252 cannot re-read from its transient unit file); old
	// managers also get Type=simple.
	for _, v := range []int{239, 252} {
		for _, p := range spec.properties(v) {
			switch p.Name {
			case "ExecStartEx":
				t.Errorf("ExecStartEx sent to systemd %d", v)
			case "ExecStart":
				if cmds := p.Value.Value().([]execCommand); cmds[0].Argv[2] != "echo $$HOME" || cmds[0].IgnoreFailure {
					t.Errorf("systemd %d: argv not escaped or failure ignored: %+v", v, cmds[0])
				}
			}
		}
	}
	for _, p := range spec.properties(239) {
		switch p.Name {
		case "ExecStart":
			cmds := p.Value.Value().([]execCommand)
			if cmds[0].Argv[2] != "echo $$HOME" {
				t.Errorf("legacy argv not escaped: %q", cmds[0].Argv[2])
			}
		case "Type":
			if p.Value.Value() != "simple" {
				t.Errorf("Type on 239 = %v", p.Value.Value())
			}
		}
	}
}

func TestValidate(t *testing.T) {
	bad := TransientSpec{Name: "x", WorkingDirectory: "rel", Environment: []string{"NOEQ"}}
	err := bad.validate(false)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", err)
	}
	for _, frag := range []string{"Name", "Argv", "WorkingDirectory", "Environment"} {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("error %q does not name %s", err, frag)
		}
	}
	user := TransientSpec{Name: "x.service", Argv: []string{"/bin/true"}, User: "nobody", MemoryMax: 1 << 20}
	if err := user.validate(true); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "User, MemoryMax") {
		t.Errorf("user manager with User=: got %v", err)
	}
	if err := user.validate(false); err != nil {
		t.Errorf("system manager with User=: %v", err)
	}
}

// feed drives the watch state machine with synthetic signals.
type feed struct {
	t *testing.T
	w *watcher
}

func newFeed(t *testing.T, since uint64) *feed {
	c := &Conn{done: make(chan struct{})}
	return &feed{t: t, w: &watcher{c: c, filter: func(string) bool { return true }, since: since,
		units: map[string]*track{}, out: make(chan UnitEvent, 100)}}
}

const unitPathFoo = godbus.ObjectPath("/org/freedesktop/systemd1/unit/foo_2eservice")

func (f *feed) svc(pid uint32, code, status int32, result string, start, exit uint64) {
	f.w.handle(context.Background(), &godbus.Signal{
		Path: unitPathFoo, Name: "org.freedesktop.DBus.Properties.PropertiesChanged",
		Body: []any{ifaceService, map[string]godbus.Variant{
			"ExecMainPID": godbus.MakeVariant(pid), "MainPID": godbus.MakeVariant(pid),
			"ExecMainCode": godbus.MakeVariant(code), "ExecMainStatus": godbus.MakeVariant(status),
			"Result":                 godbus.MakeVariant(result),
			"ExecMainStartTimestamp": godbus.MakeVariant(start), "ExecMainExitTimestamp": godbus.MakeVariant(exit),
		}, []string{}},
	})
}

func (f *feed) unit(active, sub string) {
	f.w.handle(context.Background(), &godbus.Signal{
		Path: unitPathFoo, Name: "org.freedesktop.DBus.Properties.PropertiesChanged",
		Body: []any{ifaceUnit, map[string]godbus.Variant{
			"ActiveState": godbus.MakeVariant(active), "SubState": godbus.MakeVariant(sub),
		}, []string{}},
	})
}

// kinds drains the events, dropping state changes.
func (f *feed) kinds() []UnitEvent {
	var out []UnitEvent
	for {
		select {
		case ev := <-f.w.out:
			if ev.Kind != UnitStateChanged {
				out = append(out, ev)
			}
		default:
			return out
		}
	}
}

func TestWatchStateMachine(t *testing.T) {
	t.Run("new unit's first inactive is not an exit", func(t *testing.T) {
		f := newFeed(t, 100)
		// The sequence recorded from systemd 252 for `sleep 0.3; exit 3`.
		f.svc(42, 0, 0, "success", 200, 0)
		f.unit("inactive", "dead")
		f.unit("activating", "start")
		if evs := f.kinds(); len(evs) != 0 {
			t.Fatalf("events before active: %+v", evs)
		}
		f.unit("active", "running")
		f.svc(0, CLDExited, 3, "exit-code", 200, 300)
		f.unit("failed", "failed")
		evs := f.kinds()
		if len(evs) != 2 || evs[0].Kind != UnitStarted || evs[0].PID != 42 || evs[1].Kind != UnitExited {
			t.Fatalf("got %+v", evs)
		}
		if e := evs[1].Exit; e.Code != CLDExited || e.Status != 3 || e.Result != "exit-code" {
			t.Errorf("exit %+v", e)
		}
	})
	t.Run("coalesced start and exit", func(t *testing.T) {
		f := newFeed(t, 100)
		f.svc(7, 0, 0, "success", 200, 0)
		f.unit("inactive", "dead")
		f.unit("activating", "start")
		f.svc(7, CLDExited, 0, "success", 200, 210)
		f.unit("inactive", "dead")
		evs := f.kinds()
		if len(evs) != 2 || evs[0].Kind != UnitStarted || evs[1].Kind != UnitExited || evs[1].Exit.Status != 0 {
			t.Fatalf("got %+v", evs)
		}
	})
	t.Run("signal exit", func(t *testing.T) {
		f := newFeed(t, 100)
		f.svc(9, 0, 0, "success", 200, 0)
		f.unit("active", "running")
		f.svc(0, CLDKilled, 15, "success", 200, 400)
		f.unit("deactivating", "stop-sigterm")
		f.unit("inactive", "dead")
		evs := f.kinds()
		if len(evs) != 2 || !evs[1].Exit.Signaled() || evs[1].Exit.Status != 15 {
			t.Fatalf("got %+v", evs)
		}
		if code, sig := evs[1].Exit.ExitCodeOrSignal(); code != -1 || sig != syscall.SIGTERM {
			t.Errorf("ExitCodeOrSignal = %d, %v", code, sig)
		}
	})
	t.Run("started before watch: only the exit is reported", func(t *testing.T) {
		f := newFeed(t, 1000)
		f.svc(5, 0, 0, "success", 500, 0)
		f.unit("active", "running")
		if evs := f.kinds(); len(evs) != 0 {
			t.Fatalf("retroactive events: %+v", evs)
		}
		f.svc(0, CLDExited, 1, "exit-code", 500, 1500)
		f.unit("failed", "failed")
		evs := f.kinds()
		if len(evs) != 1 || evs[0].Kind != UnitExited {
			t.Fatalf("got %+v", evs)
		}
	})
	t.Run("spawn failure never reports a start it did not make", func(t *testing.T) {
		f := newFeed(t, 100)
		f.svc(8, 0, 0, "success", 200, 0)
		f.unit("inactive", "dead")
		f.unit("activating", "start")
		f.svc(0, CLDExited, 200, "exit-code", 200, 201)
		f.unit("failed", "failed")
		// Coalesced with the exit, Started and Exited both arrive; the
		// runner drops them because the start job failed.
		evs := f.kinds()
		if len(evs) != 2 || evs[1].Exit.Status != 200 {
			t.Fatalf("got %+v", evs)
		}
		f.w.handle(context.Background(), &godbus.Signal{Name: "org.freedesktop.systemd1.Manager.UnitRemoved",
			Body: []any{"foo.service", unitPathFoo}})
		if evs := f.kinds(); len(evs) != 1 || evs[0].Kind != UnitRemoved {
			t.Fatalf("removed: %+v", evs)
		}
	})
}

func (f *feed) statusText(text string) {
	f.w.handle(context.Background(), &godbus.Signal{
		Path: unitPathFoo, Name: "org.freedesktop.DBus.Properties.PropertiesChanged",
		Body: []any{ifaceService, map[string]godbus.Variant{"StatusText": godbus.MakeVariant(text)}, []string{}},
	})
}

// TestWatchStatusText: a change of StatusText to a non-empty value is a
// Status event (sd_notify STATUS=); unchanged or empty texts are not.
func TestWatchStatusText(t *testing.T) {
	f := newFeed(t, 100)
	f.svc(42, 0, 0, "success", 200, 0)
	f.unit("active", "running")
	f.kinds()
	for _, s := range []string{"warming up", "warming up", "", "rollbridge:replace"} {
		f.statusText(s)
	}
	evs := f.kinds()
	if len(evs) != 2 || evs[0].Kind != UnitStatus || evs[0].Status != "warming up" || evs[1].Status != "rollbridge:replace" || evs[1].Unit != "foo.service" {
		t.Fatalf("got %+v", evs)
	}
	if UnitStatus.String() != "status" {
		t.Error(UnitStatus.String())
	}
}

func TestNotifyProperties(t *testing.T) {
	spec := TransientSpec{Name: "x.service", Argv: []string{"/bin/true"}, Notify: true, TimeoutStart: 1500 * time.Millisecond}
	vals := map[string]any{}
	for _, p := range spec.properties(252) {
		vals[p.Name] = p.Value.Value()
	}
	if vals["Type"] != "notify" || vals["NotifyAccess"] != "all" || vals["TimeoutStartUSec"] != uint64(1500000) {
		t.Errorf("notify props: Type %v NotifyAccess %v TimeoutStartUSec %v", vals["Type"], vals["NotifyAccess"], vals["TimeoutStartUSec"])
	}
	spec.TimeoutStart = -1
	if err := spec.validate(false); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative TimeoutStart: %v", err)
	}
}
