package dbusctl

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	godbus "github.com/godbus/dbus/v5"
)

// EventKind classifies a UnitEvent.
type EventKind int

const (
	// UnitStateChanged: ActiveState or SubState changed.
	UnitStateChanged EventKind = iota + 1
	// UnitStarted: a main process was started and the unit got past
	// activation (active, or already ended after a successful exec).
	UnitStarted
	// UnitExited: the main process ended and the unit reached inactive or
	// failed, i.e. its whole cgroup is gone.
	UnitExited
	// UnitRemoved: the manager unloaded (garbage-collected) the unit.
	UnitRemoved
	// UnitStatus: the service's StatusText changed to a non-empty value (a
	// process of a Type=notify unit sent sd_notify STATUS=…).
	UnitStatus
)

func (k EventKind) String() string {
	switch k {
	case UnitStateChanged:
		return "state"
	case UnitStarted:
		return "started"
	case UnitExited:
		return "exited"
	case UnitRemoved:
		return "removed"
	case UnitStatus:
		return "status"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// UnitEvent is one change of one unit seen by Watch.
type UnitEvent struct {
	Kind        EventKind
	Unit        string
	ActiveState string
	SubState    string
	// PID is the main process (ExecMainPID) for Started and Exited.
	PID int
	// Exit is how the main process ended (Exited only).
	Exit ExitStatus
	// ExitUnknown marks an Exited event synthesized after a lost bus
	// connection, for a unit that vanished while no signals arrived.
	ExitUnknown bool
	// At is systemd's timestamp of the start or exit (Started, Exited), or
	// the time the signal was received.
	At time.Time
	// Start is the ExecMainStartTimestamp of the process a Started or
	// Exited event is about; with the unit name it identifies one run.
	Start time.Time
	// Status is the new StatusText (Status events only).
	Status string
}

// Watch streams events for the units filter accepts (nil = every unit),
// from D-Bus PropertiesChanged signals, not polling. It uses its own
// connection, calls Manager.Subscribe (systemd sends no unit signals to bus
// clients otherwise) and reconnects with a resync if the bus drops. The
// channel is closed when ctx ends or the Conn is closed.
//
// Exit detection relies on the Service interface's ExecMain* properties,
// which every signal carries in full: a brand-new unit first reports
// ActiveState=inactive, which must not be mistaken for an exit, and systemd
// coalesces quick transitions (a process that exits right after exec never
// shows "active"). An exit is therefore reported when the unit is
// inactive/failed and ExecMainExitTimestamp is newer than the last reported
// one; the exit code and signal are captured from that signal, before the
// unit can be garbage-collected. Units whose process started or ended
// before Watch was called are not reported retroactively.
func (c *Conn) Watch(ctx context.Context, filter func(unit string) bool) (<-chan UnitEvent, error) {
	if filter == nil {
		filter = func(string) bool { return true }
	}
	w := &watcher{
		c:      c,
		filter: filter,
		since:  uint64(time.Now().UnixMicro()),
		units:  map[string]*track{},
		out:    make(chan UnitEvent, 64),
	}
	sub, err := w.subscribe(ctx)
	if err != nil {
		return nil, err
	}
	go w.run(ctx, sub)
	return w.out, nil
}

type watcher struct {
	c      *Conn
	filter func(string) bool
	since  uint64 // µs; starts and exits before this are not reported
	units  map[string]*track
	out    chan UnitEvent
}

// track is the watcher's view of one unit, fed by signals.
type track struct {
	active, sub string
	svcSeen     bool
	execPID     int
	code        int
	status      int
	result      string
	startTS     uint64
	exitTS      uint64
	// reportedStart/Exit are the timestamps of the last Started/Exited sent.
	reportedStart uint64
	reportedExit  uint64
	running       bool // Started sent, Exited not yet
	statusText    string
}

type subscription struct {
	conn    *godbus.Conn
	cancel  context.CancelFunc
	signals chan *godbus.Signal
}

func (s *subscription) close() {
	s.conn.Close()
	s.cancel()
}

// subscribe opens the signal connection: match rules for unit
// PropertiesChanged and Manager.UnitRemoved, then Manager.Subscribe.
func (w *watcher) subscribe(ctx context.Context) (*subscription, error) {
	c := w.c
	life, cancel := context.WithCancel(context.Background())
	type result struct {
		conn *godbus.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		conn, err := dialRaw(life, c.tgt)
		if err == nil {
			err = setupSignals(ctx, conn, c.tgt)
			if err != nil {
				conn.Close()
			}
		}
		ch <- result{conn, err}
	}()
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		r.err = ctx.Err()
	case <-timer.C:
		r.err = errors.New("timed out")
	}
	if r.err != nil {
		cancel()
		return nil, fmt.Errorf("dbusctl: watch %s manager at %s: %w", c.tgt.bus, c.tgt.address, r.err)
	}
	sigs := make(chan *godbus.Signal, 256)
	r.conn.Signal(sigs)
	return &subscription{conn: r.conn, cancel: cancel, signals: sigs}, nil
}

func setupSignals(ctx context.Context, conn *godbus.Conn, t target) error {
	if t.hello {
		// On a bus the daemon routes signals by match rule; the private
		// socket delivers everything.
		if err := conn.AddMatchSignalContext(ctx,
			godbus.WithMatchSender("org.freedesktop.systemd1"),
			godbus.WithMatchInterface("org.freedesktop.DBus.Properties"),
			godbus.WithMatchMember("PropertiesChanged"),
			godbus.WithMatchPathNamespace("/org/freedesktop/systemd1/unit")); err != nil {
			return err
		}
		if err := conn.AddMatchSignalContext(ctx,
			godbus.WithMatchSender("org.freedesktop.systemd1"),
			godbus.WithMatchInterface("org.freedesktop.systemd1.Manager"),
			godbus.WithMatchMember("UnitRemoved")); err != nil {
			return err
		}
	}
	if !t.hello {
		// The private socket delivers every signal unasked. Subscribe is
		// not needed there, and systemd 252 often leaves a Subscribe sent
		// right after authentication on it unanswered (measured: 27 of 30).
		return nil
	}
	return conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
		CallWithContext(ctx, "org.freedesktop.systemd1.Manager.Subscribe", 0).Err
}

func (w *watcher) run(ctx context.Context, sub *subscription) {
	defer close(w.out)
	defer func() {
		if sub != nil {
			sub.close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.c.done:
			return
		case sig, ok := <-sub.signals:
			if ok {
				if !w.handle(ctx, sig) {
					return
				}
				continue
			}
			// The connection dropped: re-subscribe, then resync what the
			// gap may have hidden.
			sub.close()
			sub = w.resubscribe(ctx)
			if sub == nil || !w.resync(ctx) {
				return
			}
		}
	}
}

func (w *watcher) resubscribe(ctx context.Context) *subscription {
	backoff := 50 * time.Millisecond
	for {
		sub, err := w.subscribe(ctx)
		if err == nil {
			if w.c.log != nil {
				w.c.log.Info("dbusctl: watch reconnected", "address", w.c.tgt.address)
			}
			return sub
		}
		if w.c.log != nil {
			w.c.log.Warn("dbusctl: watch reconnect failed", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.c.done:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// resync reads the current state of every tracked or matching unit, as if
// a signal had carried it. It returns false when ctx ended.
func (w *watcher) resync(ctx context.Context) bool {
	names := map[string]bool{}
	for n := range w.units {
		names[n] = true
	}
	if list, err := w.c.ListUnits(ctx, "*"); err == nil {
		for _, u := range list {
			if w.filter(u.Name) {
				names[u.Name] = true
			}
		}
	}
	for name := range names {
		p, err := w.c.State(ctx, name)
		if errors.Is(err, ErrNoSuchUnit) {
			if t := w.units[name]; t != nil {
				delete(w.units, name)
				if t.running && !w.send(ctx, UnitEvent{Kind: UnitExited, Unit: name, ActiveState: "inactive", SubState: "dead",
					PID: t.execPID, ExitUnknown: true, At: time.Now(), Start: usecTime(t.startTS)}) {
					return false
				}
				if !w.send(ctx, UnitEvent{Kind: UnitRemoved, Unit: name, At: time.Now()}) {
					return false
				}
			}
			continue
		}
		if err != nil {
			continue
		}
		t := w.track(name)
		w.updateService(t, svcSnapshot{
			execPID: p.ExecMainPID, code: p.ExecMainCode, status: p.ExecMainStatus, result: p.Result,
			startTS: timeUsec(p.ExecMainStartTimestamp), exitTS: timeUsec(p.ExecMainExitTimestamp),
		})
		if !w.updateUnit(ctx, name, t, p.ActiveState, p.SubState) {
			return false
		}
	}
	return true
}

func timeUsec(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixMicro())
}

func (w *watcher) track(name string) *track {
	t := w.units[name]
	if t == nil {
		t = &track{}
		w.units[name] = t
	}
	return t
}

// handle processes one signal; false means ctx ended.
func (w *watcher) handle(ctx context.Context, sig *godbus.Signal) bool {
	switch sig.Name {
	case "org.freedesktop.DBus.Properties.PropertiesChanged":
		name, ok := unitFromPath(sig.Path)
		if !ok || !w.filter(name) || len(sig.Body) < 2 {
			return true
		}
		iface, _ := sig.Body[0].(string)
		changed, _ := sig.Body[1].(map[string]godbus.Variant)
		switch iface {
		case ifaceService:
			t := w.track(name)
			w.updateService(t, svcFromSignal(changed))
			if v, ok := changed["StatusText"]; ok {
				if text := str(v); text != t.statusText {
					t.statusText = text
					if text != "" {
						return w.send(ctx, UnitEvent{Kind: UnitStatus, Unit: name, ActiveState: t.active, SubState: t.sub,
							PID: t.execPID, At: time.Now(), Status: text})
					}
				}
			}
		case ifaceUnit:
			t := w.track(name)
			active, sub := t.active, t.sub
			if v, ok := changed["ActiveState"]; ok {
				active = str(v)
			}
			if v, ok := changed["SubState"]; ok {
				sub = str(v)
			}
			return w.updateUnit(ctx, name, t, active, sub)
		}
	case "org.freedesktop.systemd1.Manager.UnitRemoved":
		if len(sig.Body) < 1 {
			return true
		}
		name, _ := sig.Body[0].(string)
		if !w.filter(name) {
			return true
		}
		if _, known := w.units[name]; known {
			delete(w.units, name)
			return w.send(ctx, UnitEvent{Kind: UnitRemoved, Unit: name, ActiveState: "inactive", SubState: "dead", At: time.Now()})
		}
	}
	return true
}

type svcSnapshot struct {
	execPID, code, status int
	result                string
	startTS, exitTS       uint64
}

func svcFromSignal(m map[string]godbus.Variant) svcSnapshot {
	return svcSnapshot{
		execPID: int(u32(m["ExecMainPID"])),
		code:    int(i32(m["ExecMainCode"])),
		status:  int(i32(m["ExecMainStatus"])),
		result:  str(m["Result"]),
		startTS: u64(m["ExecMainStartTimestamp"]),
		exitTS:  u64(m["ExecMainExitTimestamp"]),
	}
}

func (w *watcher) updateService(t *track, s svcSnapshot) {
	if !t.svcSeen {
		// First sighting: what happened before Watch began is history.
		t.svcSeen = true
		if s.startTS != 0 && s.startTS < w.since {
			t.reportedStart = s.startTS
			t.running = s.exitTS == 0 || s.exitTS < s.startTS
		}
		if s.exitTS != 0 && s.exitTS < w.since {
			t.reportedExit = s.exitTS
		}
	}
	t.execPID, t.code, t.status, t.result = s.execPID, s.code, s.status, s.result
	t.startTS, t.exitTS = s.startTS, s.exitTS
}

func terminal(active string) bool { return active == "inactive" || active == "failed" }

// updateUnit applies a Unit-interface state and emits what it implies.
func (w *watcher) updateUnit(ctx context.Context, name string, t *track, active, sub string) bool {
	now := time.Now()
	if active != t.active || sub != t.sub {
		t.active, t.sub = active, sub
		if !w.send(ctx, UnitEvent{Kind: UnitStateChanged, Unit: name, ActiveState: active, SubState: sub, PID: t.execPID, At: now}) {
			return false
		}
	}
	if !t.svcSeen {
		return true
	}
	exited := terminal(active) && t.exitTS != 0 && t.exitTS >= t.startTS && t.exitTS != t.reportedExit
	newStart := t.startTS != 0 && t.startTS != t.reportedStart
	if newStart && (active == "active" || active == "reloading" || active == "deactivating" || exited) {
		t.reportedStart, t.running = t.startTS, true
		if !w.send(ctx, UnitEvent{Kind: UnitStarted, Unit: name, ActiveState: active, SubState: sub,
			PID: t.execPID, At: usecTime(t.startTS), Start: usecTime(t.startTS)}) {
			return false
		}
	}
	if exited && t.reportedStart == t.startTS {
		t.reportedExit, t.running = t.exitTS, false
		return w.send(ctx, UnitEvent{Kind: UnitExited, Unit: name, ActiveState: active, SubState: sub,
			PID: t.execPID, Exit: ExitStatus{Code: t.code, Status: t.status, Result: t.result},
			At: usecTime(t.exitTS), Start: usecTime(t.startTS)})
	}
	return true
}

func (w *watcher) send(ctx context.Context, ev UnitEvent) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	case <-w.c.done:
		return false
	}
}

// unitFromPath reverses systemd's object-path escaping
// (/org/freedesktop/systemd1/unit/foo_2eservice → foo.service).
func unitFromPath(p godbus.ObjectPath) (string, bool) {
	const prefix = "/org/freedesktop/systemd1/unit/"
	s, ok := strings.CutPrefix(string(p), prefix)
	if !ok || s == "" || strings.Contains(s, "/") {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '_' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String(), true
}
