package release

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

const crashAdoptConfig = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000, forceStopTimeoutMs: 500},
  processes: [
    {id: "beacon", policy: "service", command: "beacon"},
    {id: "worker", command: "worker {{replicaIndex}}", replicas: 2, restartDelayMs: 10,
     restart: {maxRestarts: 2, windowMs: 600000}},
    {id: "web", policy: "proxied", command: "web --port {{port}} SECRET_TOKEN=s3cr3t", port: {from: 0, to: 0}, restartDelayMs: 10}
  ]
}`

// priorOf is what the daemon persists: the status object plus the event
// history, read back as a successor daemon reads it.
func priorOf(t *testing.T, m *Manager) *PriorState {
	t.Helper()
	raw, err := json.Marshal(struct {
		Status
		Events []Event `json:"events"`
	}{m.Status(context.Background()), m.Events().Recent(0)})
	if err != nil {
		t.Fatal(err)
	}
	var p PriorState
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

// successor is a second manager over the same units, as after a daemon
// restart; its readiness checks wait for ready (nil: pass at once).
type successor struct {
	m       *Manager
	traffic *fakeTraffic
	ready   chan struct{}
	mu      sync.Mutex
	probed  int
}

func newSuccessor(t *testing.T, h *harness, runner units.Runner, gated bool) *successor {
	t.Helper()
	s := &successor{traffic: newFakeTraffic()}
	if gated {
		s.ready = make(chan struct{})
	}
	s.m = startManager(t, Options{
		Config: h.m.config(), Runner: runner, Traffic: s.traffic, Env: []string{"PATH=/usr/bin"},
		Health: func(ctx context.Context, _ string, _ config.Health) error {
			s.mu.Lock()
			s.probed++
			s.mu.Unlock()
			if s.ready == nil {
				return nil
			}
			select {
			case <-s.ready:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	return s
}

func (s *successor) process(t *testing.T, id string) ProcessStatus {
	t.Helper()
	st := s.m.Status(context.Background())
	for _, r := range st.Releases {
		for _, p := range r.Processes {
			if p.ID == id {
				return p
			}
		}
	}
	for _, p := range append(st.Services, st.Singletons...) {
		if p.ID == id {
			return p.Process
		}
	}
	t.Fatalf("no process %s in status", id)
	return ProcessStatus{}
}

func (s *successor) probes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.probed
}

func eventsFor(m *Manager, message, id string) []Event {
	var out []Event
	for _, e := range m.Events().Recent(0) {
		if e.Message == message && (id == "" || e.Data["id"] == id) {
			out = append(out, e)
		}
	}
	return out
}

// collectingRunner drops ended units from List, as systemd collects a unit
// whose process exited cleanly (or on SIGTERM) at once.
type collectingRunner struct{ *unitstest.Fake }

func (c collectingRunner) List(ctx context.Context, app string) ([]units.Status, error) {
	all, err := c.Fake.List(ctx, app)
	var out []units.Status
	for _, st := range all {
		if st.MainPID != 0 {
			out = append(out, st)
		}
	}
	return out, err
}

// TestAdoptProxiedExitedWhileDown: the proxied process died while no daemon
// ran; the successor resets the leftover unit, restarts it with reason
// crash and switches traffic to it only once its readiness check passed.
func TestAdoptProxiedExitedWhileDown(t *testing.T) {
	h := newHarness(t, crashAdoptConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	old := h.proxied("web")
	worker := h.proxied("worker#0")
	prior := priorOf(t, h.m)
	h.m.detach() // kill -9 of the daemon: units keep running
	if err := h.runner.Exit(old.Unit, units.Exit{Code: -1, Signal: syscall.SIGKILL}); err != nil {
		t.Fatal(err)
	}
	calls := len(h.runner.Calls())

	s := newSuccessor(t, h, h.runner.Reopen(), true)
	res, err := s.m.Adopt(ctx, prior)
	if err != nil {
		t.Fatal(err)
	}
	if res.Active != "v1" || len(res.Crashed) != 1 || res.Crashed[0] != old.Unit {
		t.Fatalf("adopted %+v", res)
	}
	waitFor(t, "the readiness check of the restarted web", func() bool { return s.probes() > 0 })
	if p := s.process(t, "web"); p.PID == 0 || p.LastStartReason != reasonCrash || p.Restarts != 1 || *p.InRotation {
		t.Errorf("web before its readiness check: %+v", p)
	}
	if len(s.traffic.switches) != 0 {
		t.Errorf("traffic switched before the restarted web was ready: %v", s.traffic.switches)
	}
	close(s.ready)
	waitFor(t, "web back in rotation", func() bool { return s.traffic.current() == "v1" })
	p := s.process(t, "web")
	if got := upstreamPorts(t, s.traffic.lastRoute()); len(got) != 1 || got[0] != p.Port || p.Port != old.Port {
		t.Errorf("route %v, web port %d (was %d)", got, p.Port, old.Port)
	}
	if w := s.process(t, "worker#0"); w.PID != worker.PID || w.LastStartReason != reasonDeploy {
		t.Errorf("a live worker was touched: %+v (was pid %d)", w, worker.PID)
	}
	// The leftover unit was cleared before the new start, under the same name.
	var ops []string
	for _, c := range h.runner.Calls()[calls:] {
		ops = append(ops, c.Op+" "+c.Name)
	}
	if want := []string{"stop " + old.Unit, "start " + old.Unit}; strings.Join(ops, ",") != strings.Join(want, ",") {
		t.Errorf("runner calls %v, want %v", ops, want)
	}
	exited := eventsFor(s.m, "process exited", "web")
	started := eventsFor(s.m, "process started", "web")
	last := func(evs []Event) Event { return evs[len(evs)-1] }
	if len(exited) == 0 || last(exited).Data["signal"] != "SIGKILL" || last(exited).Data["code"] != nil {
		t.Errorf("process exited events %+v", exited)
	}
	if len(started) == 0 || last(started).Data["reason"] != reasonCrash || !last(exited).At.Before(last(started).At) {
		t.Errorf("process started events %+v", started)
	}
	// The restored history comes first: the deploy of the previous daemon.
	if len(eventsFor(s.m, "traffic switched", "")) == 0 {
		t.Error("the previous daemon's events were not restored")
	}
	for _, e := range s.m.Events().Recent(0) {
		if _, ok := e.Data["command"]; ok {
			t.Errorf("event %q carries a command: %v", e.Message, e.Data)
		}
	}
}

// TestAdoptFailedCompanion: a companion in failed state (non-zero exit
// while no daemon ran) is restarted; its sibling keeps its pid.
func TestAdoptFailedCompanion(t *testing.T) {
	h := newHarness(t, crashAdoptConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w0, w1, web := h.proxied("worker#0"), h.proxied("worker#1"), h.proxied("web")
	prior := priorOf(t, h.m)
	h.m.detach()
	h.runner.Exit(w1.Unit, units.Exit{Code: 3})
	if st, _ := h.runner.Status(ctx, w1.Unit); st.State != units.StateFailed {
		t.Fatalf("worker#1 unit %+v, want failed", st)
	}

	s := newSuccessor(t, h, h.runner.Reopen(), false)
	res, err := s.m.Adopt(ctx, prior)
	if err != nil || res.Active != "v1" || len(res.Crashed) != 1 {
		t.Fatalf("adopted %+v %v", res, err)
	}
	waitFor(t, "worker#1 restarted", func() bool {
		p := s.process(t, "worker#1")
		return p.PID != 0 && p.State == stateRunning
	})
	p := s.process(t, "worker#1")
	if p.LastStartReason != reasonCrash || p.Restarts != 1 || p.PID == w1.PID || len(p.RestartTimes) != 1 {
		t.Errorf("worker#1 %+v", p)
	}
	if ev := eventsFor(s.m, "process exited", "worker#1"); len(ev) != 1 || ev[0].Data["code"] != 3 {
		t.Errorf("process exited %+v", ev)
	}
	if got := s.process(t, "worker#0"); got.PID != w0.PID {
		t.Errorf("worker#0 pid %d, was %d", got.PID, w0.PID)
	}
	// The untouched web is in the pool at once, as before.
	if s.traffic.current() != "v1" || s.process(t, "web").PID != web.PID {
		t.Errorf("traffic %q, web %+v", s.traffic.current(), s.process(t, "web"))
	}
}

// TestAdoptCrashBudgetExhausted: the restart budget (restart counters and
// crash times) survives the daemon; a crash that exhausts it leaves the
// instance failed instead of restarting it.
func TestAdoptCrashBudgetExhausted(t *testing.T) {
	h := newHarness(t, crashAdoptConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		p := h.proxied("worker#0")
		h.runner.Exit(p.Unit, units.Exit{Code: 1})
		waitFor(t, "worker#0 restarted", func() bool { q := h.proxied("worker#0"); return q.PID != 0 && q.Restarts == i })
	}
	before := h.proxied("worker#0")
	if len(before.RestartTimes) != 2 {
		t.Fatalf("restartTimes %v", before.RestartTimes)
	}
	prior := priorOf(t, h.m)
	h.m.detach()
	h.runner.Exit(before.Unit, units.Exit{Code: 1})
	starts := 0
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && c.Name == before.Unit {
			starts++
		}
	}

	s := newSuccessor(t, h, h.runner.Reopen(), false)
	if _, err := s.m.Adopt(ctx, prior); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart limit reached", func() bool { return len(eventsFor(s.m, "restart limit reached", "worker#0")) > 0 })
	time.Sleep(50 * time.Millisecond) // restartDelayMs is 10: a restart would have happened
	p := s.process(t, "worker#0")
	if p.State != stateFailed || p.PID != 0 || p.Restarts != 2 || len(p.RestartTimes) != 2 || p.ExitCode.value() != 1 {
		t.Errorf("worker#0 %+v", p)
	}
	n := 0
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && c.Name == before.Unit {
			n++
		}
	}
	if n != starts {
		t.Errorf("worker#0 started %d more times", n-starts)
	}
	// Its leftover unit is cleared all the same.
	if st, err := h.runner.Status(ctx, before.Unit); err != nil || st.MainPID != 0 {
		t.Errorf("worker#0 unit %+v %v", st, err)
	}
	if last := h.runner.Calls()[len(h.runner.Calls())-1]; last.Op != "stop" || last.Name != before.Unit {
		t.Errorf("last call %+v, want a reset of %s", last, before.Unit)
	}
}

// TestAdoptRestoresRestartCounters: a live instance keeps its counters and
// crash times, so a crash after the daemon restart counts against the same
// budget.
func TestAdoptRestoresRestartCounters(t *testing.T) {
	h := newHarness(t, crashAdoptConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		p := h.proxied("worker#1")
		h.runner.Exit(p.Unit, units.Exit{Code: 1})
		waitFor(t, "worker#1 restarted", func() bool { q := h.proxied("worker#1"); return q.PID != 0 && q.Restarts == i })
	}
	want := h.proxied("worker#1")
	prior := priorOf(t, h.m)
	h.m.detach()

	s := newSuccessor(t, h, h.runner.Reopen(), false)
	if _, err := s.m.Adopt(ctx, prior); err != nil {
		t.Fatal(err)
	}
	got := s.process(t, "worker#1")
	if got.PID != want.PID || got.Restarts != 2 || strings.Join(got.RestartTimes, ",") != strings.Join(want.RestartTimes, ",") {
		t.Fatalf("adopted worker#1 %+v, want counters of %+v", got, want)
	}
	h.runner.Exit(got.Unit, units.Exit{Code: 1})
	waitFor(t, "restart limit reached", func() bool { return len(eventsFor(s.m, "restart limit reached", "worker#1")) > 0 })
	if p := s.process(t, "worker#1"); p.State != stateFailed {
		t.Errorf("worker#1 %+v", p)
	}
}

// TestAdoptCollectedUnit: a unit the manager collected (a clean exit leaves
// nothing to list) is rebuilt from the state file and restarted; a service
// too. The exec runner's children are left to the orphan report.
func TestAdoptCollectedUnit(t *testing.T) {
	h := newHarness(t, crashAdoptConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	web := h.proxied("web")
	beacon := h.m.Status(ctx).Services[0].Process
	prior := priorOf(t, h.m)
	h.m.detach()
	h.runner.Exit(web.Unit, units.Exit{Code: -1, Signal: syscall.SIGTERM})
	h.runner.Exit(beacon.Unit, units.Exit{})

	s := newSuccessor(t, h, collectingRunner{h.runner.Reopen()}, false)
	res, err := s.m.Adopt(ctx, prior)
	if err != nil || res.Active != "v1" || len(res.Crashed) != 2 {
		t.Fatalf("adopted %+v %v", res, err)
	}
	waitFor(t, "web serving again", func() bool { return s.traffic.current() == "v1" })
	if p := s.process(t, "web"); p.Port != web.Port || p.Unit != web.Unit || p.LastStartReason != reasonCrash {
		t.Errorf("web %+v (was port %d)", p, web.Port)
	}
	waitFor(t, "beacon restarted", func() bool { return s.process(t, "beacon").PID != 0 })
	if ev := eventsFor(s.m, "process exited", "beacon"); len(ev) != 1 || ev[0].Data["code"] != nil {
		t.Errorf("beacon exit events %+v", ev)
	}
}

// TestAdoptCrashedWithoutPrior: without a state file an ended unit is not
// adopted (whether it was wanted is unknown), as before.
func TestAdoptCrashedWithoutPrior(t *testing.T) {
	h := newHarness(t, crashAdoptConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	w1 := h.proxied("worker#1")
	h.m.detach()
	h.runner.Exit(w1.Unit, units.Exit{Code: 3})
	s := newSuccessor(t, h, h.runner.Reopen(), false)
	res, err := s.m.Adopt(context.Background(), nil)
	if err != nil || len(res.Crashed) != 0 || len(res.Instances) != 3 {
		t.Fatalf("adopted %+v %v", res, err)
	}
	for _, p := range s.m.Status(context.Background()).Releases[0].Processes {
		if p.ID == "worker#1" {
			t.Errorf("worker#1 adopted: %+v", p)
		}
	}
}

// TestPriorStateLenientEvents: an unreadable event does not make the
// whole state unreadable.
func TestPriorStateLenientEvents(t *testing.T) {
	var p PriorState
	raw := `{"activeReleaseId":"v1","events":[{"at":"2026-01-02T03:04:05.006Z","data":{"id":"web"},"message":"process started"},{"data":7},"x"],"releases":[]}`
	if err := json.Unmarshal([]byte(raw), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != 1 || p.Events[0].Message != "process started" || !p.Events[0].At.Equal(time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)) {
		t.Errorf("events %+v", p.Events)
	}
	if err := json.Unmarshal([]byte(`{"events":{"not":"a list"}}`), &p); err != nil || len(p.Events) != 0 {
		t.Errorf("events %+v %v", p.Events, err)
	}
}

// TestEventsRestore: a restored history goes before the events recorded
// since, bounded by EventHistory.
func TestEventsRestore(t *testing.T) {
	ev := NewEvents(nil, nil)
	ev.Emit("new", nil)
	var prior []Event
	for i := range EventHistory {
		prior = append(prior, Event{Message: "old", Data: map[string]any{"i": i}})
	}
	ev.Restore(prior)
	all := ev.Recent(0)
	if len(all) != EventHistory || all[len(all)-1].Message != "new" || all[0].Data["i"] != 1 {
		t.Fatalf("%d events, first %+v, last %+v", len(all), all[0], all[len(all)-1])
	}
	ev.Emit("newer", nil)
	if all := ev.Recent(2); all[0].Message != "new" || all[1].Message != "newer" {
		t.Errorf("after restore %+v", all)
	}
	small := NewEvents(nil, nil)
	small.Restore(prior[:2])
	small.Emit("x", nil)
	if got := small.Recent(0); len(got) != 3 || got[2].Message != "x" {
		t.Errorf("%+v", got)
	}
}
