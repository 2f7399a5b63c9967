package dbusctl

import (
	"context"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Values of ExecMainCode (the si_code of the main process's SIGCHLD).
const (
	CLDExited = 1 // exited; ExecMainStatus is the exit code
	CLDKilled = 2 // killed by a signal; ExecMainStatus is the signal number
	CLDDumped = 3 // killed by a signal, core dumped
)

// MemoryUnknown is MemoryCurrent when the manager has no memory accounting
// for the unit (systemd's "[not set]", UINT64_MAX): always the case for a
// user manager on a hybrid-cgroup host.
const MemoryUnknown = math.MaxUint64

// ExitStatus is how a unit's main process ended.
type ExitStatus struct {
	// Code is ExecMainCode: CLDExited, CLDKilled or CLDDumped.
	Code int
	// Status is the exit code (CLDExited) or the signal number.
	Status int
	// Result is the unit's Result: "success", "exit-code", "signal",
	// "core-dump", "timeout", "oom-kill", …
	Result string
}

// Signaled reports whether a signal ended the process.
func (e ExitStatus) Signaled() bool { return e.Code == CLDKilled || e.Code == CLDDumped }

// ExitCodeOrSignal returns (exit code, 0) for a normal exit and (-1, signal)
// when a signal ended the process.
func (e ExitStatus) ExitCodeOrSignal() (int, syscall.Signal) {
	if e.Signaled() {
		return -1, syscall.Signal(e.Status)
	}
	return e.Status, 0
}

// ExecCommand is one entry of ExecStart as the manager reports it.
type ExecCommand struct {
	Path  string
	Argv  []string
	Flags []string // e.g. "no-env-expand"; empty on managers without ExecStartEx
}

// UnitInfo is one row of ListUnits.
type UnitInfo struct {
	Name        string
	Description string
	LoadState   string
	ActiveState string
	SubState    string
}

// UnitState is the runtime part of a service unit's state: what changes
// while it runs. State reads it with concurrent single-property calls, about
// four times faster than the full Properties.
type UnitState struct {
	LoadState string
	// ActiveState: active, reloading, inactive, failed, activating, deactivating.
	ActiveState  string
	SubState     string
	MainPID      int // 0 when no main process runs
	ControlGroup string
	// ExecMain* describe the last main process, also after it ended.
	ExecMainPID            int
	ExecMainCode           int
	ExecMainStatus         int
	ExecMainStartTimestamp time.Time // zero when never started
	ExecMainExitTimestamp  time.Time // zero while running
	Result                 string
	// MemoryCurrent is the cgroup's memory use, or MemoryUnknown.
	MemoryCurrent uint64
}

// UnitProperties is a typed snapshot of a service unit (Unit and Service
// D-Bus interfaces): its runtime state and its configuration.
type UnitProperties struct {
	UnitState
	Name        string
	Description string

	Type             string
	Environment      []string
	ExecStart        []ExecCommand
	WorkingDirectory string
	KillSignal       syscall.Signal
	KillMode         string
	TimeoutStop      time.Duration // Infinity for "infinity"
	SendSIGKILL      bool
	SyslogIdentifier string
	LogExtraFields   []string
	Slice            string
	CollectMode      string
	User, Group      string
	MemoryMax        uint64 // math.MaxUint64 = no limit
}

// Exit returns the main process's end, ok=false while it runs or when it
// never ran.
func (p UnitState) Exit() (ExitStatus, bool) {
	if p.ExecMainCode == 0 || p.ExecMainExitTimestamp.IsZero() {
		return ExitStatus{}, false
	}
	return ExitStatus{Code: p.ExecMainCode, Status: p.ExecMainStatus, Result: p.Result}, true
}

// Running reports whether the unit holds (or is about to hold) processes.
func (p UnitState) Running() bool {
	switch p.ActiveState {
	case "active", "activating", "deactivating", "reloading":
		return true
	}
	return false
}

// failureDetail renders systemd's account of a failed start.
func (p UnitState) failureDetail() string {
	var parts []string
	if p.Result != "" && p.Result != "success" {
		parts = append(parts, "Result="+p.Result)
	}
	switch p.ExecMainCode {
	case CLDExited:
		s := "status=" + strconv.Itoa(p.ExecMainStatus)
		if name, meaning := systemdExitName(p.ExecMainStatus); name != "" {
			s += "/" + name + ": " + meaning
		}
		parts = append(parts, s)
	case CLDKilled, CLDDumped:
		parts = append(parts, "signal="+strconv.Itoa(p.ExecMainStatus))
	}
	return strings.Join(parts, ", ")
}

// systemdExitName explains the exit codes systemd's spawn path uses when it
// fails before exec (systemd.exec(5), "Process Exit Codes").
func systemdExitName(status int) (name, meaning string) {
	switch status {
	case 200:
		return "CHDIR", "changing to the working directory failed (does it exist?)"
	case 203:
		return "EXEC", "the program could not be executed (missing or not executable?)"
	case 204:
		return "MEMORY", "out of memory while spawning"
	case 209:
		return "STDOUT", "setting up standard output failed"
	case 216:
		return "GROUP", "setting the group failed (does the group exist?)"
	case 217:
		return "USER", "setting the user failed (does the user exist?)"
	case 219:
		return "CGROUP", "setting up the cgroup failed"
	case 222:
		return "STDERR", "setting up standard error failed"
	}
	return "", ""
}

// Stop enqueues a stop job (mode "replace") and waits for it: the manager
// sends KillSignal, waits TimeoutStop, then SIGKILL unless SendSIGKILL=no.
// Stopping a unit that is not loaded returns an error matching ErrNoSuchUnit.
func (c *Conn) Stop(ctx context.Context, unit string) error {
	ch := make(chan string, 1)
	var used *generation
	err := c.do(ctx, func(g *generation) error {
		used = g
		_, err := g.sd.StopUnitContext(ctx, unit, "replace", ch)
		return classify(err)
	})
	if err != nil {
		return fmt.Errorf("stop %s: %w", unit, err)
	}
	result, err := c.waitJob(ctx, used, unit, ch, false)
	if err != nil {
		return fmt.Errorf("stop %s: waiting for the stop job: %w", unit, err)
	}
	if result != "done" {
		return &JobError{Unit: unit, Op: "stop", Result: result}
	}
	return nil
}

// Kill sends sig to every process of the unit (KillUnit, who=all). Errors
// match ErrNoSuchUnit when the unit is not loaded and ErrNoSuchProcess when
// it has no process left.
func (c *Conn) Kill(ctx context.Context, unit string, sig syscall.Signal) error {
	err := c.do(ctx, func(g *generation) error {
		return classify(g.sd.KillUnitWithTarget(ctx, unit, sd.All, int32(sig)))
	})
	if err != nil {
		return fmt.Errorf("kill %s with signal %d: %w", unit, int(sig), err)
	}
	return nil
}

// ResetFailed clears a failed unit's state so it can be garbage-collected
// (and its name reused). Resetting a unit that is not failed is a no-op; a
// unit that is not loaded gives ErrNoSuchUnit.
func (c *Conn) ResetFailed(ctx context.Context, unit string) error {
	err := c.do(ctx, func(g *generation) error {
		return classify(g.sd.ResetFailedUnitContext(ctx, unit))
	})
	if err != nil {
		return fmt.Errorf("reset-failed %s: %w", unit, err)
	}
	return nil
}

// ListUnits returns loaded units matching any of the glob patterns that are
// active, activating, deactivating, reloading or failed.
func (c *Conn) ListUnits(ctx context.Context, patterns ...string) ([]UnitInfo, error) {
	var st []sd.UnitStatus
	err := c.do(ctx, func(g *generation) error {
		var err error
		st, err = g.sd.ListUnitsByPatternsContext(ctx,
			[]string{"active", "activating", "deactivating", "reloading", "failed"}, patterns)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list units %v: %w", patterns, err)
	}
	out := make([]UnitInfo, 0, len(st))
	for _, u := range st {
		out = append(out, UnitInfo{
			Name: u.Name, Description: u.Description, LoadState: u.LoadState,
			ActiveState: u.ActiveState, SubState: u.SubState,
		})
	}
	return out, nil
}

// MaskedUnitFiles returns the names of the unit files matching patterns
// that are masked (persistently or at runtime). A masked unit is often not
// loaded at all, so ListUnits does not show it, yet systemd refuses to
// start it — or any unit placed in it, for a slice.
func (c *Conn) MaskedUnitFiles(ctx context.Context, patterns ...string) ([]string, error) {
	var files []sd.UnitFile
	err := c.do(ctx, func(g *generation) error {
		var err error
		files, err = g.sd.ListUnitFilesByPatternsContext(ctx, []string{"masked", "masked-runtime"}, patterns)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list unit files %v: %w", patterns, err)
	}
	out := make([]string, 0, len(files))
	for _, f := range files {
		out = append(out, path.Base(f.Path))
	}
	return out, nil
}

const (
	ifaceUnit    = "org.freedesktop.systemd1.Unit"
	ifaceService = "org.freedesktop.systemd1.Service"
)

// Properties reads the unit's Unit and Service properties. A unit that is
// not loaded (never started, or garbage-collected) gives ErrNoSuchUnit.
func (c *Conn) Properties(ctx context.Context, unit string) (UnitProperties, error) {
	var unitProps, svcProps map[string]godbus.Variant
	err := c.do(ctx, func(g *generation) error {
		// GetUnit, unlike reading the object path directly, does not load a
		// "not-found" stub for an unknown name.
		var path godbus.ObjectPath
		if err := g.manager().CallWithContext(ctx, "org.freedesktop.systemd1.Manager.GetUnit", 0, unit).Store(&path); err != nil {
			return classify(err)
		}
		obj := g.raw.Object("org.freedesktop.systemd1", path)
		// Both calls in flight at once: one round trip instead of two.
		cu := obj.GoWithContext(ctx, "org.freedesktop.DBus.Properties.GetAll", 0, nil, ifaceUnit)
		cs := obj.GoWithContext(ctx, "org.freedesktop.DBus.Properties.GetAll", 0, nil, ifaceService)
		<-cu.Done
		<-cs.Done
		if err := cu.Store(&unitProps); err != nil {
			return classify(err)
		}
		return classify(cs.Store(&svcProps))
	})
	if err != nil {
		return UnitProperties{}, fmt.Errorf("properties of %s: %w", unit, err)
	}
	p := parseProperties(unitProps, svcProps)
	if p.LoadState == "not-found" {
		return UnitProperties{}, fmt.Errorf("properties of %s: %w", unit, ErrNoSuchUnit)
	}
	return p, nil
}

// State reads the unit's runtime state (see UnitState). A unit that is not
// loaded gives ErrNoSuchUnit.
func (c *Conn) State(ctx context.Context, unit string) (UnitState, error) {
	return c.state(ctx, unit, false,
		[]string{"LoadState", "ActiveState", "SubState"},
		[]string{"MainPID", "ControlGroup", "ExecMainPID", "ExecMainCode", "ExecMainStatus",
			"ExecMainStartTimestamp", "ExecMainExitTimestamp", "Result", "MemoryCurrent"})
}

// StartedState is a lighter State for a unit whose start job just
// completed: only LoadState, ActiveState, MainPID, ControlGroup,
// ExecMainStartTimestamp and MemoryCurrent are read, in one pipelined batch
// addressed by the unit's computed object path (no GetUnit round trip).
// A caller that finds the unit no longer active reads State for the exit.
func (c *Conn) StartedState(ctx context.Context, unit string) (UnitState, error) {
	return c.state(ctx, unit, true,
		[]string{"LoadState", "ActiveState"},
		[]string{"MainPID", "ControlGroup", "ExecMainStartTimestamp", "MemoryCurrent"})
}

// state reads the named properties of the unit's Unit and Service
// interfaces, pipelined. With computedPath the object path is derived from
// the name; systemd then loads a unit that is not loaded (LoadState
// "not-found"), which is why only units known to exist are read that way.
func (c *Conn) state(ctx context.Context, unit string, computedPath bool, unitNames, svcNames []string) (UnitState, error) {
	u := make(map[string]godbus.Variant, len(unitNames))
	s := make(map[string]godbus.Variant, len(svcNames))
	err := c.do(ctx, func(g *generation) error {
		path := godbus.ObjectPath("/org/freedesktop/systemd1/unit/" + sd.PathBusEscape(unit))
		if !computedPath {
			if err := g.manager().CallWithContext(ctx, "org.freedesktop.systemd1.Manager.GetUnit", 0, unit).Store(&path); err != nil {
				return classify(err)
			}
		}
		obj := g.raw.Object("org.freedesktop.systemd1", path)
		type pending struct {
			into map[string]godbus.Variant
			name string
			call *godbus.Call
		}
		var calls []pending
		for _, n := range unitNames {
			calls = append(calls, pending{u, n, obj.GoWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, nil, ifaceUnit, n)})
		}
		for _, n := range svcNames {
			calls = append(calls, pending{s, n, obj.GoWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, nil, ifaceService, n)})
		}
		var firstErr error
		for _, pc := range calls {
			<-pc.call.Done
			var v godbus.Variant
			if err := pc.call.Store(&v); err != nil {
				if firstErr == nil {
					firstErr = classify(err)
				}
				continue
			}
			pc.into[pc.name] = v
		}
		return firstErr
	})
	if err != nil {
		return UnitState{}, fmt.Errorf("state of %s: %w", unit, err)
	}
	st := parseState(u, s)
	if st.LoadState == "not-found" {
		return UnitState{}, fmt.Errorf("state of %s: %w", unit, ErrNoSuchUnit)
	}
	return st, nil
}

func parseState(u, s map[string]godbus.Variant) UnitState {
	st := UnitState{
		LoadState:              str(u["LoadState"]),
		ActiveState:            str(u["ActiveState"]),
		SubState:               str(u["SubState"]),
		MainPID:                int(u32(s["MainPID"])),
		ControlGroup:           str(s["ControlGroup"]),
		ExecMainPID:            int(u32(s["ExecMainPID"])),
		ExecMainCode:           int(i32(s["ExecMainCode"])),
		ExecMainStatus:         int(i32(s["ExecMainStatus"])),
		ExecMainStartTimestamp: usecTime(u64(s["ExecMainStartTimestamp"])),
		ExecMainExitTimestamp:  usecTime(u64(s["ExecMainExitTimestamp"])),
		Result:                 str(s["Result"]),
		MemoryCurrent:          MemoryUnknown,
	}
	if v, ok := s["MemoryCurrent"]; ok {
		st.MemoryCurrent = u64(v)
	}
	return st
}

func parseProperties(u, s map[string]godbus.Variant) UnitProperties {
	p := UnitProperties{
		UnitState:   parseState(u, s),
		Name:        str(u["Id"]),
		Description: str(u["Description"]),

		Type:             str(s["Type"]),
		Environment:      strs(s["Environment"]),
		WorkingDirectory: str(s["WorkingDirectory"]),
		KillSignal:       syscall.Signal(i32(s["KillSignal"])),
		KillMode:         str(s["KillMode"]),
		SendSIGKILL:      boolean(s["SendSIGKILL"]),
		SyslogIdentifier: str(s["SyslogIdentifier"]),
		Slice:            str(s["Slice"]),
		CollectMode:      str(u["CollectMode"]),
		User:             str(s["User"]),
		Group:            str(s["Group"]),
		MemoryMax:        u64(s["MemoryMax"]),
	}
	if t := u64(s["TimeoutStopUSec"]); t == math.MaxUint64 {
		p.TimeoutStop = Infinity
	} else {
		p.TimeoutStop = time.Duration(t) * time.Microsecond
	}
	for _, f := range bytesList(s["LogExtraFields"]) {
		p.LogExtraFields = append(p.LogExtraFields, string(f))
	}
	if v, ok := s["ExecStartEx"]; ok {
		p.ExecStart = execCommands(v, true)
	} else if v, ok := s["ExecStart"]; ok {
		p.ExecStart = execCommands(v, false)
	}
	return p
}

// usecTime converts systemd's µs-since-epoch (0 = unset) to time.Time.
func usecTime(us uint64) time.Time {
	if us == 0 || us == math.MaxUint64 {
		return time.Time{}
	}
	return time.UnixMicro(int64(us))
}

func str(v godbus.Variant) string { s, _ := v.Value().(string); return s }
func u32(v godbus.Variant) uint32 { n, _ := v.Value().(uint32); return n }
func i32(v godbus.Variant) int32  { n, _ := v.Value().(int32); return n }
func u64(v godbus.Variant) uint64 { n, _ := v.Value().(uint64); return n }
func boolean(v godbus.Variant) bool {
	b, _ := v.Value().(bool)
	return b
}
func strs(v godbus.Variant) []string { s, _ := v.Value().([]string); return s }
func bytesList(v godbus.Variant) [][]byte {
	b, _ := v.Value().([][]byte)
	return b
}

// execCommands decodes ExecStartEx a(sasasttttuii) or ExecStart
// a(sasbttttuii); godbus hands structs inside variants over as []any.
func execCommands(v godbus.Variant, ex bool) []ExecCommand {
	rows, _ := v.Value().([][]any)
	out := make([]ExecCommand, 0, len(rows))
	for _, r := range rows {
		if len(r) < 3 {
			continue
		}
		cmd := ExecCommand{}
		cmd.Path, _ = r[0].(string)
		cmd.Argv, _ = r[1].([]string)
		if ex {
			cmd.Flags, _ = r[2].([]string)
		}
		out = append(out, cmd)
	}
	return out
}
