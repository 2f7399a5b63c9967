package release

// Tests for the parts of review-checklist items (spec §10) that the other
// test files leave unasserted: CFG-25, CFG-28, TPL-03, DEP-03, DEP-05,
// DEP-07, DRN-06, RST-02, RET-01, RET-03, OWN-02, SUP-08. Helpers here carry
// a g2 prefix so they cannot collide with other test files of the package.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

// g2StartRunner is the fake runner with test hooks around Start: before runs
// ahead of the fake's Start (an error fails the start), after runs once the
// fake started the unit and before Start returns. attempts records every
// Start call, including ones the fake refuses (a cancelled context).
type g2StartRunner struct {
	*unitstest.Fake
	before func(ctx context.Context, name string) error
	after  func(name string)

	mu       sync.Mutex
	attempts []string
}

func (r *g2StartRunner) Start(ctx context.Context, spec units.Spec) (units.Status, error) {
	id := spec.Identity
	if id.Replicas < 1 {
		id.Replicas = 1
	}
	name := id.UnitName()
	r.mu.Lock()
	r.attempts = append(r.attempts, name)
	r.mu.Unlock()
	if r.before != nil {
		if err := r.before(ctx, name); err != nil {
			return units.Status{}, err
		}
	}
	st, err := r.Fake.Start(ctx, spec)
	if err == nil && r.after != nil {
		r.after(name)
	}
	return st, err
}

func (r *g2StartRunner) attempted(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.attempts, name)
}

// g2FailStopRunner fails every Stop of one unit (the unit keeps running).
type g2FailStopRunner struct {
	*unitstest.Fake
	unit string
}

var errG2StopRefused = errors.New("gaps2: stop refused")

func (r *g2FailStopRunner) Stop(ctx context.Context, name string, sig syscall.Signal, grace units.Grace) error {
	if name == r.unit {
		return errG2StopRefused
	}
	return r.Fake.Stop(ctx, name, sig, grace)
}

// g2DrainRecorder records how far away the deadline of each release drain
// was when the drain began.
type g2DrainRecorder struct {
	*fakeTraffic
	mu     sync.Mutex
	bounds map[string]time.Duration
}

func (d *g2DrainRecorder) Drain(ctx context.Context, release string, deadline time.Time) {
	d.mu.Lock()
	d.bounds[release] = time.Until(deadline)
	d.mu.Unlock()
	d.fakeTraffic.Drain(ctx, release, deadline)
}

func (d *g2DrainRecorder) bound(release string) (time.Duration, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, ok := d.bounds[release]
	return b, ok
}

// g2EventHook is a slog handler that calls fn synchronously, in the emitting
// goroutine, for every event the manager emits.
type g2EventHook struct{ fn func(message string) }

func (g2EventHook) Enabled(context.Context, slog.Level) bool { return true }
func (g g2EventHook) Handle(_ context.Context, r slog.Record) error {
	g.fn(r.Message)
	return nil
}
func (g g2EventHook) WithAttrs([]slog.Attr) slog.Handler { return g }
func (g g2EventHook) WithGroup(string) slog.Handler      { return g }

// g2Registry lists the registered release ids (registry order).
func g2Registry(m *Manager) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for _, r := range m.releases {
		ids = append(ids, r.id)
	}
	return ids
}

// g2Events returns the events with message (and, when rel is set, data
// releaseId rel).
func g2Events(h *harness, message, rel string) []Event {
	var out []Event
	for _, e := range h.m.Events().Recent(0) {
		if e.Message == message && (rel == "" || e.Data["releaseId"] == rel) {
			out = append(out, e)
		}
	}
	return out
}

// g2Index is the position of the first event matching message, releaseId
// rel and (when set) processId proc at or after from, or -1.
func g2Index(evs []Event, from int, message, rel, proc string) int {
	for i := from; i < len(evs); i++ {
		e := evs[i]
		if e.Message == message && (rel == "" || e.Data["releaseId"] == rel) && (proc == "" || e.Data["processId"] == proc) {
			return i
		}
	}
	return -1
}

// g2Running reports whether the fake runs unit.
func g2Running(h *harness, unit string) bool {
	st, err := h.runner.Status(context.Background(), unit)
	return err == nil && st.State == units.StateRunning
}

// g2Stops lists the signals of the recorded Stop calls of unit.
func g2Stops(h *harness, unit string) []syscall.Signal {
	var out []syscall.Signal
	for _, c := range h.runner.Calls() {
		if c.Op == "stop" && c.Name == unit {
			out = append(out, c.Signal)
		}
	}
	return out
}

// g2LastStartCommand is the command of the latest recorded start of unit.
func g2LastStartCommand(h *harness, unit string) string {
	cmd := ""
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && c.Name == unit {
			cmd = c.Spec.Command
		}
	}
	return cmd
}

// ---------------------------------------------------------------- CFG-25

// TestRollbackReevaluatesConfig (CFG-25, spec §2.1, §2.15, §3.3 step 5): a
// rollback re-reads the config file like a deploy does: an invalid file
// fails it with the aggregated error, an incompatible edit is refused, and
// a compatible edit is what the rolled-back release is started with (and
// adopted). A refused rollback leaves the active release serving and starts
// nothing.
func TestRollbackReevaluatesConfig(t *testing.T) {
	var reloads atomic.Int32
	h := newHarnessWith(t, baseConfig, func(_ *harness, o *Options) {
		inner := o.Reload
		o.Reload = func(ctx context.Context) (*config.Config, error) {
			reloads.Add(1)
			return inner(ctx)
		}
	})
	ctx := context.Background()
	for _, id := range []string{"v1", "v2"} {
		if _, err := h.deploy(id); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "v1 stopped", func() bool { return releaseStates(h)["v1"] == relStopped })
	activeV2 := func(when string) {
		t.Helper()
		st := h.m.Status(ctx)
		if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v2" || h.traffic.current() != "v2" {
			t.Errorf("%s: active %v, traffic %q, want v2", when, st.ActiveReleaseID, h.traffic.current())
		}
		if got := releaseStates(h); got["v1"] != relStopped || got["v2"] != relActive {
			t.Errorf("%s: releases %v", when, got)
		}
	}

	refused := []struct {
		name, src, want string
		exact           bool
	}{
		{"invalid", strings.Replace(baseConfig, "drainTimeoutMs: 2000", `drainTimeoutMs: "soon"`, 1),
			"Invalid Rollbridge config:\n  - proxy.drainTimeoutMs must be a number", false},
		{"incompatible", strings.Replace(baseConfig, "port: 0, drain", "port: 1234, drain", 1),
			"Config changes to proxy.port cannot be applied live; restart the Rollbridge daemon before deploying.", true},
	}
	for _, c := range refused {
		writeConfig(t, h, c.src)
		before, calls := reloads.Load(), len(h.runner.Calls())
		_, err := h.m.Rollback(ctx, "")
		if err == nil || (c.exact && err.Error() != c.want) || (!c.exact && !strings.HasPrefix(err.Error(), c.want)) {
			t.Errorf("rollback with an %s config: %v, want %q", c.name, err, c.want)
		}
		if n := reloads.Load() - before; n != 1 {
			t.Errorf("rollback with an %s config re-read the config %d times, want once", c.name, n)
		}
		if n := len(h.runner.Calls()) - calls; n != 0 {
			t.Errorf("rollback with an %s config made %d runner calls, want none", c.name, n)
		}
		activeV2("after the rollback refused for an " + c.name + " config")
	}

	// A compatible edit: the re-deployed v1 runs the edited command.
	writeConfig(t, h, strings.Replace(baseConfig, `command: "worker {{replicaIndex}}"`, `command: "edited-worker {{replicaIndex}}"`, 1))
	before := reloads.Load()
	res, err := h.m.Rollback(ctx, "")
	if err != nil || res.ActiveReleaseID != "v1" {
		t.Fatalf("rollback after a compatible edit: %+v %v", res, err)
	}
	if n := reloads.Load() - before; n != 1 {
		t.Errorf("the rollback re-read the config %d times, want once", n)
	}
	for i := range 2 {
		unit := unitOf("v1", "worker", i, 2)
		if got, want := g2LastStartCommand(h, unit), fmt.Sprintf("edited-worker %d", i); got != want {
			t.Errorf("rolled-back %s started with %q, want the edited %q", unit, got, want)
		}
	}
	if got := h.m.config().Process("worker").Command; got != "edited-worker {{replicaIndex}}" {
		t.Errorf("config in force after the rollback: worker command %q, want the edited one", got)
	}
}

// ---------------------------------------------------------------- CFG-28

const g2RetireConfigA = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 600000, forceStopTimeoutMs: 5000},
  processes: [
    {id: "worker", command: "worker"},
    {id: "mailer", command: "mailer"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`

// g2RetireConfigB changes, compatibly, everything retirement takes from the
// config: the drain timeout, a stop signal, nonBlockingDrain, the hooks and
// the graceful window.
const g2RetireConfigB = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2500, forceStopTimeoutMs: 5000},
  processes: [
    {id: "worker", command: "worker", stopSignal: "SIGINT"},
    {id: "mailer", command: "mailer", nonBlockingDrain: true, gracefulStopMs: 300, lifecycle: {
      quietCommand: "echo quiet >> \"$ROLLBRIDGE_RELEASE_PATH/hooks-$ROLLBRIDGE_RELEASE_ID\"",
      drainCommand: "echo drain >> \"$ROLLBRIDGE_RELEASE_PATH/hooks-$ROLLBRIDGE_RELEASE_ID\"",
      drainTimeoutMs: 5000,
      stopCommand: "echo stop >> \"$ROLLBRIDGE_RELEASE_PATH/hooks-$ROLLBRIDGE_RELEASE_ID\""
    }},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`

// TestReloadedConfigGovernsRetirement (CFG-28, spec §2.15, §3.2 steps 3–5):
// the previous release, started under config A, is retired under the
// reloaded config B: its instances get B's stop signal, lifecycle hooks
// (quiet → drain → stopCommand instead of the signal), graceful window and
// nonBlockingDrain, and its connection drain is bounded by B's
// drainTimeoutMs (A's would hold it for ten minutes).
func TestReloadedConfigGovernsRetirement(t *testing.T) {
	var rec *g2DrainRecorder
	h := newHarnessWith(t, g2RetireConfigA, func(h *harness, o *Options) {
		rec = &g2DrainRecorder{fakeTraffic: h.traffic, bounds: map[string]time.Duration{}}
		o.Traffic = rec
	})
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	setConns(h, "v1", 1) // never closes: only the drain timeout ends the drain
	writeConfig(t, h, g2RetireConfigB)
	began := time.Now()
	if _, err := h.deploy("v2"); err != nil {
		t.Fatal(err)
	}

	// nonBlockingDrain (B): the mailer stops while v1 still drains.
	waitFor(t, "v1 mailer stopped", func() bool { return processStatus(t, h, "v1", "mailer").State == stateStopped })
	if r := releaseStatusOf(t, h, "v1"); r.State != relDraining {
		t.Errorf("v1 %s when its nonBlockingDrain mailer had stopped, want still draining", r.State)
	}
	for _, id := range []string{"worker", "web"} {
		if p := processStatus(t, h, "v1", id); p.State != stateRunning {
			t.Errorf("v1 %s is %s while the release drains, want running", id, p.State)
		}
	}
	// B's hooks, in order; stopCommand replaces the signal, and B's 300 ms
	// window (A's is 5 s) ends in the SIGKILL fallback (the fake ignores
	// the hooks).
	raw, err := os.ReadFile(filepath.Join(h.dir, "hooks-v1"))
	if err != nil || string(raw) != "quiet\ndrain\nstop\n" {
		t.Errorf("v1 mailer hooks ran %q (%v), want quiet, drain, stop", raw, err)
	}
	mailer := unitOf("v1", "mailer", 0, 1)
	if got := g2Stops(h, mailer); len(got) != 2 || got[0] != 0 || got[1] != syscall.SIGKILL {
		t.Errorf("v1 mailer stop signals %v, want [0 (stopCommand) SIGKILL (fallback)]", got)
	}
	if evs := eventsFor(h.m, "process stop timed out; sending SIGKILL", "mailer"); len(evs) != 1 {
		t.Errorf("SIGKILL fallback of the mailer reported %d times, want once", len(evs))
	}

	// B's drainTimeoutMs ends the drain.
	waitFor(t, "v1 stopped", func() bool { return releaseStates(h)["v1"] == relStopped })
	if took := time.Since(began); took < 2400*time.Millisecond {
		t.Errorf("v1 stopped %v after the deploy with a connection open, want after the reloaded drainTimeoutMs 2500", took)
	}
	if b, ok := rec.bound("v1"); !ok || b <= 2000*time.Millisecond || b > 2500*time.Millisecond {
		t.Errorf("v1 drain deadline %v ahead (drained: %v), want the reloaded 2.5 s", b, ok)
	}
	// B's stop signal for the worker; the web keeps the default.
	if got := g2Stops(h, unitOf("v1", "worker", 0, 1)); len(got) != 1 || got[0] != syscall.SIGINT {
		t.Errorf("v1 worker stop signals %v, want [SIGINT] (reloaded stopSignal)", got)
	}
	if got := g2Stops(h, unitOf("v1", "web", 0, 1)); len(got) != 1 || got[0] != syscall.SIGTERM {
		t.Errorf("v1 web stop signals %v, want [SIGTERM]", got)
	}
	for _, e := range g2Events(h, "process exited", "v1") {
		if e.Data["processId"] == "worker" && e.Data["signal"] != "SIGINT" {
			t.Errorf("v1 worker exited with %v, want SIGINT", e.Data)
		}
	}
}

// ---------------------------------------------------------------- TPL-03

// TestTemplateErrorFailsDeploy (TPL-03, spec §2.13, §3.1 step 9): a
// placeholder that resolves to nothing fails the start of its process and
// therefore the deploy, with "Missing template value for {{…}}" (the
// matched text); what the deploy had started is stopped and the previous
// release and config stay.
func TestTemplateErrorFailsDeploy(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	v1 := map[string]int{}
	for _, p := range releaseStatusOf(t, h, "v1").Processes {
		v1[p.ID] = p.PID
	}
	cron := namedProcess(t, h, "cron")
	const placeholder = "{{ env.ROLLBRIDGE_GAPS2_UNSET }}"
	writeConfig(t, h, strings.Replace(baseConfig, `command: "worker {{replicaIndex}}"`, `command: "worker {{replicaIndex}} `+placeholder+`"`, 1))
	_, err := h.deploy("v2")
	const want = "Missing template value for " + placeholder
	if err == nil || err.Error() != want {
		t.Fatalf("deploy v2: %v, want %q", err, want)
	}
	failed := g2Events(h, "deploy failed", "v2")
	if len(failed) != 1 || failed[0].Data["error"] != want {
		t.Errorf("deploy failed events %v, want one with error %q", failed, want)
	}
	for _, phase := range []string{"before cleanup", "after cleanup"} {
		n := 0
		for _, e := range g2Events(h, "release startup failed", "v2") {
			if e.Data["phase"] == phase && e.Data["error"] == want {
				n++
			}
		}
		if n != 1 {
			t.Errorf("release startup failed (%s) with the template error emitted %d times, want once", phase, n)
		}
	}
	// The handoff service (started before the companions) is stopped again;
	// nothing after the failing companion was started.
	jobs := unitOf("v2", "jobs", 0, 1)
	if startsOf(h, jobs) != 1 || g2Running(h, jobs) {
		t.Errorf("v2 jobs: %d starts, running %v; want started once and stopped", startsOf(h, jobs), g2Running(h, jobs))
	}
	for _, u := range []string{unitOf("v2", "worker", 0, 2), unitOf("v2", "worker", 1, 2), unitOf("v2", "web", 0, 1), unitOf("v2", "cron", 0, 1)} {
		if n := startsOf(h, u); n != 0 {
			t.Errorf("%s started %d times", u, n)
		}
	}
	// The previous release, its processes, the singleton and the config
	// are untouched.
	st := h.m.Status(context.Background())
	if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" || h.traffic.current() != "v1" || len(st.Releases) != 1 {
		t.Fatalf("after the failed deploy: active %v, traffic %q, %d releases", st.ActiveReleaseID, h.traffic.current(), len(st.Releases))
	}
	for _, p := range st.Releases[0].Processes {
		if p.State != stateRunning || p.PID != v1[p.ID] {
			t.Errorf("v1 %s: %s pid %d, want running pid %d", p.ID, p.State, p.PID, v1[p.ID])
		}
	}
	if p := namedProcess(t, h, "cron"); p.State != stateRunning || p.PID != cron.PID {
		t.Errorf("singleton after the failed deploy: %s pid %d, want running pid %d", p.State, p.PID, cron.PID)
	}
	if got := h.m.config().Process("worker").Command; got != "worker {{replicaIndex}}" {
		t.Errorf("config in force: worker command %q, want the old one", got)
	}
}

// ---------------------------------------------------------------- DEP-03

// TestDeployStartingAfterConfigChecks (DEP-03, spec §3.1 steps 2–4): the
// config is re-evaluated and checked before "deploy starting"; a deploy
// refused by those checks (invalid file, incompatible change) emits no
// event at all and starts nothing; an accepted deploy emits "deploy
// starting" once, after the re-evaluation and before its first start.
func TestDeployStartingAfterConfigChecks(t *testing.T) {
	var reloadSaw []int // "deploy starting" events already emitted at each re-evaluation
	var startSaw sync.Map
	var mu sync.Mutex
	h := newHarnessWith(t, baseConfig, func(h *harness, o *Options) {
		inner := o.Reload
		o.Reload = func(ctx context.Context) (*config.Config, error) {
			mu.Lock()
			reloadSaw = append(reloadSaw, countEvents(h, "deploy starting"))
			mu.Unlock()
			return inner(ctx)
		}
		o.Runner = &g2StartRunner{Fake: h.runner, before: func(_ context.Context, name string) error {
			_, rel, _, _ := units.ParseUnitName(name)
			startSaw.LoadOrStore(name, len(g2Events(h, "deploy starting", rel)))
			return nil
		}}
	})
	refusals := []struct{ name, src, want string }{
		{"invalid", strings.Replace(baseConfig, `command: "cron"`, `command: 7`, 1), "Invalid Rollbridge config:"},
		{"incompatible", strings.Replace(baseConfig, "port: 0, drain", "port: 1234, drain", 1), "Config changes to proxy.port cannot be applied live"},
		{"unparsable", "export default {", ""},
	}
	for _, c := range refusals {
		writeConfig(t, h, c.src)
		events := len(h.m.Events().Recent(0))
		_, err := h.deploy("v1")
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("deploy with an %s config: %v, want %q…", c.name, err, c.want)
		}
		if got := h.m.Events().Recent(0)[events:]; len(got) != 0 {
			t.Errorf("deploy refused for an %s config emitted %v, want no event", c.name, got)
		}
	}
	if n := len(h.runner.Calls()); n != 0 {
		t.Errorf("refused deploys made %d runner calls", n)
	}

	writeConfig(t, h, baseConfig)
	for i, id := range []string{"v1", "v2"} {
		if _, err := h.deploy(id); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		saw := reloadSaw[len(reloadSaw)-1]
		mu.Unlock()
		if saw != i {
			t.Errorf("%s: %d deploy starting events when the config was re-evaluated, want %d (this deploy's was emitted before the checks)", id, saw, i)
		}
		if n := len(g2Events(h, "deploy starting", id)); n != 1 {
			t.Errorf("%s: deploy starting emitted %d times", id, n)
		}
		evs := h.m.Events().Recent(0)
		at := g2Index(evs, 0, "deploy starting", id, "")
		if first := g2Index(evs, 0, "process started", id, ""); first >= 0 && first < at {
			t.Errorf("%s: process started (event %d) before deploy starting (event %d)", id, first, at)
		}
		starts := 0
		startSaw.Range(func(k, v any) bool {
			if _, rel, _, _ := units.ParseUnitName(k.(string)); rel == id {
				starts++
				if v.(int) != 1 {
					t.Errorf("%s started with %d deploy starting events of %s emitted, want 1", k, v, id)
				}
			}
			return true
		})
		if starts == 0 {
			t.Errorf("%s: no start observed", id)
		}
	}
}

// ---------------------------------------------------------------- DEP-05

// TestReleaseStartOrder (DEP-05, spec §3.1 steps 7–8, §3.9): missing
// persistent services first, then the release's handoff services,
// companions and proxied process, each group in config order whatever the
// config's own order; the singleton after the switch. The replicas of one
// process start together (documented: docs/migration.md, docs/policies.md).
// A shutdown that begins while a group starts keeps the later groups from
// starting.
func TestReleaseStartOrder(t *testing.T) {
	const src = `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}},
    {id: "zeta", command: "zeta"},
    {id: "cron", policy: "singleton", command: "cron"},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs", port: {from: 0, to: 1}},
    {id: "alpha", command: "alpha", replicas: 2},
    {id: "beacon", policy: "service", command: "beacon"},
    {id: "mail", command: "mail"}
  ]
}`
	t.Run("groups in config order", func(t *testing.T) {
		h := newHarness(t, src)
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		order := h.startOrder()
		if len(order) == 8 && order[3] > order[4] { // the replicas' relative order is free
			order[3], order[4] = order[4], order[3]
		}
		want := "v1/beacon v1/jobs v1/zeta v1/alpha#0 v1/alpha#1 v1/mail v1/web v1/cron"
		if got := strings.Join(order, " "); got != want {
			t.Errorf("start order\n got %s\nwant %s", got, want)
		}
		// The singleton starts after the switch; everything else before it.
		evs := h.m.Events().Recent(0)
		switched := g2Index(evs, 0, "traffic switched", "v1", "")
		if i := g2Index(evs, 0, "process started", "v1", "cron"); i < switched {
			t.Errorf("singleton started at event %d, traffic switched at %d", i, switched)
		}
		if i := g2Index(evs, 0, "process started", "v1", "web"); i > switched {
			t.Errorf("web started at event %d, after traffic switched at %d", i, switched)
		}
	})

	t.Run("replicas start together", func(t *testing.T) {
		second := make(chan struct{})
		var together atomic.Bool
		h := newHarnessWith(t, src, func(h *harness, o *Options) {
			o.Runner = &g2StartRunner{Fake: h.runner, before: func(_ context.Context, name string) error {
				switch name {
				case unitOf("v1", "alpha", 1, 2):
					close(second)
				case unitOf("v1", "alpha", 0, 2):
					// Sequential starts would only start #1 after #0.
					select {
					case <-second:
						together.Store(true)
					case <-time.After(2 * time.Second):
					}
				}
				return nil
			}}
		})
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		if !together.Load() {
			t.Error("alpha#1 was not started while alpha#0's start was in progress: replicas started one after another")
		}
		for i := range 2 {
			if p := processStatus(t, h, "v1", fmt.Sprintf("alpha#%d", i)); p.State != stateRunning {
				t.Errorf("alpha#%d %s", i, p.State)
			}
		}
	})

	t.Run("shutdown stops further starts", func(t *testing.T) {
		entered, gate := make(chan struct{}), make(chan struct{})
		var r *g2StartRunner
		zeta := unitOf("v1", "zeta", 0, 1)
		h := newHarnessWith(t, src, func(h *harness, o *Options) {
			r = &g2StartRunner{Fake: h.runner, after: func(name string) {
				if name == zeta {
					close(entered)
					<-gate // zeta is started; its Start has not returned yet
				}
			}}
			o.Runner = r
		})
		type result struct {
			res DeployResult
			err error
		}
		done := make(chan result, 1)
		go func() {
			res, err := h.deploy("v1")
			done <- result{res, err}
		}()
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			close(gate)
			t.Fatal("zeta never started")
		}
		shut := make(chan error, 1)
		go func() { shut <- h.m.Shutdown(context.Background()) }()
		waitFor(t, "shutdown begun", h.m.isStopping)
		close(gate)
		var got result
		select {
		case got = <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the deploy did not return after the shutdown began")
		}
		if got.err == nil || got.err.Error() != "Rollbridge is shutting down" {
			t.Errorf("deploy during shutdown: %+v, want Rollbridge is shutting down", got)
		}
		for _, u := range []string{unitOf("v1", "alpha", 0, 2), unitOf("v1", "alpha", 1, 2), unitOf("v1", "mail", 0, 1), unitOf("v1", "web", 0, 1), unitOf("v1", "cron", 0, 1)} {
			if r.attempted(u) {
				t.Errorf("%s was started after the shutdown began", u)
			}
		}
		failed := g2Events(h, "deploy failed", "v1")
		if len(failed) != 1 || failed[0].Data["error"] != "Rollbridge is shutting down" {
			t.Errorf("deploy failed events %v", failed)
		}
		if h.traffic.current() != "" {
			t.Errorf("traffic switched to %q during shutdown", h.traffic.current())
		}
		if err := <-shut; err != nil {
			t.Errorf("shutdown: %v", err)
		}
		list, _ := h.runner.List(context.Background(), "demo")
		for _, s := range list {
			if s.State == units.StateRunning {
				t.Errorf("%s still running after the shutdown and the failed deploy", s.Name)
			}
		}
	})
}

// ---------------------------------------------------------------- DEP-07

const g2FailConfig = `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "beacon", policy: "service", command: "beacon"},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs", port: {from: 0, to: 1}},
    {id: "worker", command: "worker"},
    {id: "cron", policy: "singleton", command: "cron"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`

// TestFailedDeployCleanup (DEP-07, spec §3.1 step 9): before/after-cleanup
// diagnostics with one process status per instance, the release's
// instances stopped between them, then "deploy failed", then the
// persistent services this deploy started are stopped and unregistered;
// services it did not start, the previous release, the singleton and the
// config in force are untouched, and the error is returned.
func TestFailedDeployCleanup(t *testing.T) {
	healthErr := errors.New("Health check failed for http://127.0.0.1/ping: HTTP 500")
	t.Run("services started by the deploy", func(t *testing.T) {
		h := newHarness(t, g2FailConfig)
		h.health = func(string) error { return healthErr }
		_, err := h.deploy("v1")
		if err == nil || err.Error() != healthErr.Error() {
			t.Fatalf("deploy: %v, want %v", err, healthErr)
		}
		evs := h.m.Events().Recent(0)
		before := g2Index(evs, 0, "release startup failed", "v1", "")
		after := g2Index(evs, before+1, "release startup failed", "v1", "")
		failed := g2Index(evs, 0, "deploy failed", "v1", "")
		beaconExit := g2Index(evs, 0, "process exited", "v1", "beacon")
		if before < 0 || after < 0 || failed < 0 || beaconExit < 0 {
			t.Fatalf("events: before %d after %d deploy failed %d beacon exited %d", before, after, failed, beaconExit)
		}
		if !(before < after && after < failed && failed < beaconExit) {
			t.Errorf("order: before cleanup %d, after cleanup %d, deploy failed %d, service stopped %d; want that order", before, after, failed, beaconExit)
		}
		for i, phase := range map[int]string{before: "before cleanup", after: "after cleanup"} {
			if d := evs[i].Data; d["phase"] != phase || d["error"] != healthErr.Error() || len(d) != 3 {
				t.Errorf("release startup failed %v, want {error, phase %q, releaseId}", d, phase)
			}
		}
		if d := evs[failed].Data; len(d) != 2 || d["error"] != healthErr.Error() || d["releaseId"] != "v1" {
			t.Errorf("deploy failed data %v", d)
		}
		// One status per release instance and phase; the release's
		// instances stop between the two phases.
		for _, c := range []struct {
			from, to int
			state    string
		}{{before, after, stateRunning}, {after, failed, stateStopped}} {
			seen := map[string]bool{}
			for _, e := range evs[c.from+1 : c.to] {
				if e.Message != "release startup process status" {
					continue
				}
				id := anyStr(e.Data["processId"])
				seen[id] = true
				if e.Data["state"] != c.state {
					t.Errorf("%s status %s (%v): state %v, want %s", id, e.Data["phase"], e.Data, e.Data["state"], c.state)
				}
				if _, hasPID := e.Data["pid"].(int); hasPID != (c.state == stateRunning) {
					t.Errorf("%s status %s: pid %v", id, e.Data["phase"], e.Data["pid"])
				}
				if c.state == stateStopped && (e.Data["exitSignal"] != "SIGTERM" || e.Data["exitCode"] != nil) {
					t.Errorf("%s status after cleanup: exit %v/%v, want null/SIGTERM", id, e.Data["exitCode"], e.Data["exitSignal"])
				}
			}
			if len(seen) != 3 || !seen["jobs"] || !seen["worker"] || !seen["web"] {
				t.Errorf("process statuses between events %d and %d for %v, want jobs, worker, web", c.from, c.to, seen)
			}
		}
		for _, id := range []string{"jobs", "worker", "web"} {
			if i := g2Index(evs, before, "process exited", "v1", id); i < before || i > after {
				t.Errorf("v1 %s exited at event %d, want between the diagnostics (%d, %d)", id, i, before, after)
			}
		}
		st := h.m.Status(context.Background())
		if st.ActiveReleaseID != nil || len(st.Releases) != 0 || len(st.Services) != 0 || len(st.Singletons) != 0 {
			t.Errorf("status after the failed first deploy: %+v", st)
		}
		list, _ := h.runner.List(context.Background(), "demo")
		for _, s := range list {
			if s.State == units.StateRunning {
				t.Errorf("%s still running", s.Name)
			}
		}
		if n := startsOf(h, unitOf("v1", "cron", 0, 1)); n != 0 {
			t.Errorf("the singleton was started %d times by a failed deploy", n)
		}
	})

	t.Run("previous release and config kept", func(t *testing.T) {
		h := newHarness(t, g2FailConfig)
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		pids := map[string]int{}
		for _, p := range releaseStatusOf(t, h, "v1").Processes {
			pids[p.ID] = p.PID
		}
		beacon, cron := namedProcess(t, h, "beacon"), namedProcess(t, h, "cron")
		writeConfig(t, h, strings.Replace(g2FailConfig, `command: "worker"`, `command: "worker --edited"`, 1))
		h.health = func(string) error { return healthErr }
		if _, err := h.deploy("v2"); err == nil || err.Error() != healthErr.Error() {
			t.Fatalf("deploy v2: %v, want %v", err, healthErr)
		}
		st := h.m.Status(context.Background())
		if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" || h.traffic.current() != "v1" || len(st.Releases) != 1 {
			t.Fatalf("after the failed deploy: active %v, traffic %q, %d releases", st.ActiveReleaseID, h.traffic.current(), len(st.Releases))
		}
		for _, p := range st.Releases[0].Processes {
			if p.State != stateRunning || p.PID != pids[p.ID] {
				t.Errorf("v1 %s: %s pid %d, want running pid %d", p.ID, p.State, p.PID, pids[p.ID])
			}
		}
		// The service was not started by this deploy: it keeps running.
		if p := namedProcess(t, h, "beacon"); p.State != stateRunning || p.PID != beacon.PID {
			t.Errorf("beacon: %s pid %d, want running pid %d", p.State, p.PID, beacon.PID)
		}
		if p := namedProcess(t, h, "cron"); p.State != stateRunning || p.PID != cron.PID {
			t.Errorf("cron: %s pid %d, want running pid %d", p.State, p.PID, cron.PID)
		}
		for _, id := range []string{"jobs", "worker", "web"} {
			u := unitOf("v2", id, 0, 1)
			if startsOf(h, u) != 1 || g2Running(h, u) {
				t.Errorf("v2 %s: %d starts, running %v; want started and stopped", id, startsOf(h, u), g2Running(h, u))
			}
		}
		if got := h.m.config().Process("worker").Command; got != "worker" {
			t.Errorf("config in force after the failed deploy: worker command %q, want the old one", got)
		}
		// The failed deploy's config is adopted by the next good deploy.
		h.health = nil
		if _, err := h.deploy("v3"); err != nil {
			t.Fatal(err)
		}
		if got := h.m.config().Process("worker").Command; got != "worker --edited" {
			t.Errorf("config after the next deploy: worker command %q", got)
		}
	})
}

// ---------------------------------------------------------------- DRN-06

// TestDrainOutcomeThenPruneThenStateWrite (DRN-06, spec §3.2 step 10): at
// the end of a retirement "release drained" (or "release drain failed"
// {error, releaseId} when an instance cannot be stopped) is emitted while
// the release is still registered, then retention prunes it (keep: 0), then
// the state is written (OnChange), with the pruned registry.
func TestDrainOutcomeThenPruneThenStateWrite(t *testing.T) {
	const src = `export default {
  application: "demo",
  releaseRetention: {keep: 0},
  proxy: {port: 0, drainTimeoutMs: 60000, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`
	for _, c := range []struct {
		name    string
		message string
		fail    bool
	}{{"drained", "release drained", false}, {"drain failed", "release drain failed", true}} {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var seq []string
			note := func(s string) { mu.Lock(); seq = append(seq, s); mu.Unlock() }
			var h *harness
			h = newHarnessWith(t, src, func(hh *harness, o *Options) {
				o.Events = NewEvents(slog.New(g2EventHook{fn: func(message string) {
					if message == "release drained" || message == "release drain failed" {
						note(message + " [" + strings.Join(g2Registry(hh.m), " ") + "]")
					}
				}}), nil)
				o.OnChange = func() { note("state write [" + strings.Join(g2Registry(hh.m), " ") + "]") }
				if c.fail {
					o.Runner = &g2FailStopRunner{Fake: hh.runner, unit: unitOf("v1", "worker", 0, 1)}
				}
			})
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			setConns(h, "v1", 1)
			if _, err := h.deploy("v2"); err != nil {
				t.Fatal(err)
			}
			setConns(h, "v1", 0)
			waitFor(t, "v1 pruned", func() bool { return !slices.Contains(g2Registry(h.m), "v1") })
			waitFor(t, "the state write after the drain", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(seq) == 4
			})
			mu.Lock()
			got := strings.Join(seq, " | ")
			mu.Unlock()
			want := "state write [v1] | state write [v1 v2] | " + c.message + " [v1 v2] | state write [v2]"
			if got != want {
				t.Errorf("sequence\n got %s\nwant %s", got, want)
			}
			evs := g2Events(h, c.message, "v1")
			if len(evs) != 1 {
				t.Fatalf("%s emitted %d times for v1", c.message, len(evs))
			}
			other := map[bool]string{false: "release drain failed", true: "release drained"}[c.fail]
			if n := countEvents(h, other); n != 0 {
				t.Errorf("%s emitted %d times", other, n)
			}
			if c.fail {
				if e, _ := evs[0].Data["error"].(string); len(evs[0].Data) != 2 || !strings.Contains(e, errG2StopRefused.Error()) || !strings.Contains(e, "worker") {
					t.Errorf("release drain failed data %v, want {error naming the worker's stop failure, releaseId}", evs[0].Data)
				}
			} else if len(evs[0].Data) != 1 {
				t.Errorf("release drained data %v, want only releaseId", evs[0].Data)
			}
		})
	}
}

// ---------------------------------------------------------------- RST-02

// TestRestartTargetsInConfigOrder (RST-02, spec §3.5 steps 2, 4; handoff
// services: docs/migration.md): restart without a selector bounces, one at
// a time and in config order, the persistent service, the singletons and
// the active release's companions (and, documented Go change, its handoff
// service), never the proxied process or a draining release's companions;
// --policy singleton targets exactly the current singletons.
func TestRestartTargetsInConfigOrder(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 60000, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker"},
    {id: "cron", policy: "singleton", command: "cron"},
    {id: "beacon", policy: "service", command: "beacon"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs", port: {from: 0, to: 1}},
    {id: "mailer", command: "mailer", replicas: 2},
    {id: "sched", policy: "singleton", command: "sched"}
  ]
}`)
	ctx := context.Background()
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	setConns(h, "v1", 1)                       // v1 keeps draining
	t.Cleanup(func() { setConns(h, "v1", 0) }) // before the harness's shutdown
	if _, err := h.deploy("v2"); err != nil {
		t.Fatal(err)
	}
	v1 := map[string]int{}
	for _, p := range releaseStatusOf(t, h, "v1").Processes {
		v1[p.ID] = p.PID
	}
	calls, events := len(h.runner.Calls()), len(h.m.Events().Recent(0))

	res, err := h.m.Restart(ctx, "", "")
	want := []string{"worker", "cron", "beacon", "jobs", "mailer#0", "mailer#1", "sched"}
	if err != nil || !slices.Equal(res.Restarted, want) {
		t.Fatalf("restart all: %v %v, want %v", res.Restarted, err, want)
	}
	// One at a time: each target's stop, then its start, before the next.
	unitFor := map[string]string{
		"worker": unitOf("v2", "worker", 0, 1), "cron": unitOf("v2", "cron", 0, 1),
		"beacon": unitOf("v1", "beacon", 0, 1), "jobs": unitOf("v2", "jobs", 0, 1),
		"mailer#0": unitOf("v2", "mailer", 0, 2), "mailer#1": unitOf("v2", "mailer", 1, 2),
		"sched": unitOf("v2", "sched", 0, 1),
	}
	var got []string
	for _, c := range h.runner.Calls()[calls:] {
		got = append(got, c.Op+" "+c.Name)
	}
	var wantCalls []string
	for _, id := range want {
		start := unitFor[id]
		if id == "beacon" {
			// The persistent service started from v1 restarts from its
			// definition as refreshed by the v2 deploy (spec §1.4).
			start = unitOf("v2", "beacon", 0, 1)
		}
		wantCalls = append(wantCalls, "stop "+unitFor[id], "start "+start)
	}
	if !slices.Equal(got, wantCalls) {
		t.Errorf("runner calls\n got %v\nwant %v", got, wantCalls)
	}
	var requested []string
	for _, e := range h.m.Events().Recent(0)[events:] {
		if e.Message == "process restart requested" {
			requested = append(requested, anyStr(e.Data["processId"]))
		}
	}
	if !slices.Equal(requested, want) {
		t.Errorf("process restart requested for %v, want %v", requested, want)
	}
	for _, id := range []string{"cron", "sched"} {
		if p := namedProcess(t, h, id); p.State != stateRunning || p.LastStartReason != reasonManual || p.Unit != unitFor[id] {
			t.Errorf("singleton %s after restart: %s %s %s", id, p.State, p.LastStartReason, p.Unit)
		}
	}
	// The draining release's companions were left alone.
	for _, p := range releaseStatusOf(t, h, "v1").Processes {
		if p.State != stateRunning || p.PID != v1[p.ID] {
			t.Errorf("draining v1 %s: %s pid %d, want running pid %d", p.ID, p.State, p.PID, v1[p.ID])
		}
	}

	// --policy singleton: the singletons only, in config order.
	pids := map[string]int{"cron": namedProcess(t, h, "cron").PID, "sched": namedProcess(t, h, "sched").PID}
	res, err = h.m.Restart(ctx, "", "singleton")
	if err != nil || !slices.Equal(res.Restarted, []string{"cron", "sched"}) {
		t.Errorf("restart --policy singleton: %v %v, want [cron sched]", res.Restarted, err)
	}
	for id, pid := range pids {
		if p := namedProcess(t, h, id); p.State != stateRunning || p.PID == pid || p.LastStartReason != reasonManual {
			t.Errorf("singleton %s after restart --policy singleton: %s pid %d (was %d) %s", id, p.State, p.PID, pid, p.LastStartReason)
		}
	}
	res, err = h.m.Restart(ctx, "sched", "")
	if err != nil || !slices.Equal(res.Restarted, []string{"sched"}) {
		t.Errorf("restart sched: %v %v", res.Restarted, err)
	}
}

// ---------------------------------------------------------------- RET-01

// TestRetentionNeverPrunesDraining (RET-01, spec §8.8): with keep: 0 and a
// short maxAgeMs a draining release stays in the registry through periodic
// prunes and through the prune of a stop, and goes only once it has
// stopped; the active release is never pruned.
func TestRetentionNeverPrunesDraining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		h := newHarness(t, `export default {
  application: "demo",
  releaseRetention: {keep: 0, maxAgeMs: 1000},
  proxy: {port: 0, drainTimeoutMs: 3600000, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`)
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		setConns(h, "v1", 1)
		if _, err := h.deploy("v2"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Minute) // many periodic prunes (every 500 ms)
		synctest.Wait()
		if got := releaseStates(h); len(got) != 2 || got["v1"] != relDraining || got["v2"] != relActive {
			t.Fatalf("after 10 min: %v, want v1 draining and v2 active retained", got)
		}
		// A stop prunes (keep 0): the stopped v2 goes, the draining v1 stays.
		st, err := h.m.Stop(context.Background(), "v2")
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Releases) != 1 || st.Releases[0].ReleaseID != "v1" || st.Releases[0].State != relDraining {
			t.Fatalf("status after stop v2: %+v, want only v1 draining", st.Releases)
		}
		setConns(h, "v1", 0)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := releaseStates(h); len(got) != 0 {
			t.Errorf("after v1 drained: %v, want it pruned", got)
		}
	})
}

// ---------------------------------------------------------------- RET-03

// TestPruneAfterStop (RET-03, spec §3.4, §8.8): a stop prunes at once
// (without maxAgeMs there is no periodic prune): with keep: 1 stopping the
// active release drops the older stopped one from the stop's own reply,
// and the state written after the stop no longer has it.
func TestPruneAfterStop(t *testing.T) {
	var mu sync.Mutex
	var lastWrite []string
	h := newHarnessWith(t, retentionConfig(`{keep: 1}`), func(hh *harness, o *Options) {
		o.OnChange = func() {
			reg := g2Registry(hh.m)
			mu.Lock()
			lastWrite = reg
			mu.Unlock()
		}
	})
	for _, id := range []string{"v1", "v2"} {
		if _, err := h.deploy(id); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "v1 stopped", func() bool { return releaseStates(h)["v1"] == relStopped })
	waitFor(t, "the state write after the drain", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(lastWrite, []string{"v1", "v2"})
	})
	st, err := h.m.Stop(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var reply []string
	for _, r := range st.Releases {
		reply = append(reply, r.ReleaseID+":"+r.State)
	}
	if !slices.Equal(reply, []string{"v2:stopped"}) {
		t.Errorf("stop reply releases %v, want [v2:stopped] (v1 pruned, keep 1)", reply)
	}
	mu.Lock()
	if !slices.Equal(lastWrite, []string{"v2"}) {
		t.Errorf("state written after the stop has %v, want [v2]", lastWrite)
	}
	mu.Unlock()
	if _, err := h.m.Rollback(context.Background(), "v1"); err == nil || err.Error() != `No retained release "v1" to roll back to.` {
		t.Errorf("rollback to the pruned v1: %v", err)
	}
}

// ---------------------------------------------------------------- OWN-02

// TestQuiesceQuietsEveryInstance (OWN-02, spec §3.7 step 3): Quiesce runs
// the quietCommand of every instance — persistent service, singleton, the
// registered release and a release that is still starting — and returns
// only once all of them finished (the daemon releases its listeners after
// it returns). Afterwards an exit is not restarted, and the later graceful
// stop does not run the quiet hook again.
func TestQuiesceQuietsEveryInstance(t *testing.T) {
	const quiet = `lifecycle: {quietCommand: "sleep 0.2; echo q >> \"$ROLLBRIDGE_RELEASE_PATH/quiet-$ROLLBRIDGE_RELEASE_ID-$ROLLBRIDGE_PROCESS_ID\""}`
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 10000},
  processes: [
    {id: "beacon", policy: "service", command: "beacon", `+quiet+`},
    {id: "worker", command: "worker", restartDelayMs: 10, `+quiet+`},
    {id: "cron", policy: "singleton", command: "cron", `+quiet+`},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}, `+quiet+`}
  ]
}`)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	// v2 is starting: its worker and web run, its health check hangs.
	probing, release := make(chan struct{}), make(chan struct{})
	h.health = func(string) error {
		close(probing)
		<-release
		return errors.New("probe ended by the test")
	}
	deployed := make(chan error, 1)
	go func() {
		_, err := h.deploy("v2")
		deployed <- err
	}()
	select {
	case <-probing:
	case <-time.After(5 * time.Second):
		t.Fatal("v2 never reached its health check")
	}

	h.m.Quiesce(context.Background())
	quieted := []string{"v1-beacon", "v1-cron", "v1-worker", "v1-web", "v2-worker", "v2-web"}
	lines := func(name string) string {
		raw, _ := os.ReadFile(filepath.Join(h.dir, "quiet-"+name))
		return string(raw)
	}
	for _, name := range quieted {
		if got := lines(name); got != "q\n" {
			t.Errorf("quiet hook of %s when Quiesce returned: %q, want it run once and finished", name, got)
		}
	}
	// No restart after quiescing.
	worker := unitOf("v1", "worker", 0, 1)
	if err := h.runner.Exit(worker, units.Exit{Code: 1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := startsOf(h, worker); n != 1 {
		t.Errorf("%s started %d times, want 1 (no restart after quiesce)", worker, n)
	}
	if p := processStatus(t, h, "v1", "worker"); p.State != stateStopped {
		t.Errorf("quiesced worker after its exit: %s, want stopped", p.State)
	}

	close(release)
	select {
	case err := <-deployed:
		if err == nil || err.Error() != "Rollbridge is shutting down" {
			t.Errorf("the starting deploy: %v, want Rollbridge is shutting down", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the starting deploy did not end")
	}
	if err := h.m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, name := range quieted {
		if got := lines(name); got != "q\n" {
			t.Errorf("quiet hook of %s after the graceful stop: %q, want it run only once", name, got)
		}
	}
}

// ---------------------------------------------------------------- SUP-08

// g2ObjectKeys returns the keys of a JSON object in document order.
func g2ObjectKeys(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", raw)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// g2StatusJSON marshals the manager's status and returns the raw process
// objects: release instances as "<release>/<id>", services and singletons
// by id.
func g2StatusJSON(t *testing.T, h *harness) map[string]json.RawMessage {
	t.Helper()
	raw, err := json.Marshal(h.m.Status(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Releases []struct {
			ReleaseID string            `json:"releaseId"`
			Processes []json.RawMessage `json:"processes"`
		} `json:"releases"`
		Services   []struct{ Process json.RawMessage } `json:"services"`
		Singletons []struct{ Process json.RawMessage } `json:"singletons"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	out := map[string]json.RawMessage{}
	idOf := func(p json.RawMessage) string {
		var v struct{ ID string }
		if err := json.Unmarshal(p, &v); err != nil {
			t.Fatal(err)
		}
		return v.ID
	}
	for _, r := range st.Releases {
		for _, p := range r.Processes {
			out[r.ReleaseID+"/"+idOf(p)] = p
		}
	}
	for _, s := range append(st.Services, st.Singletons...) {
		out[idOf(s.Process)] = s.Process
	}
	return out
}

var g2Stamp = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// g2CheckProcessObject checks one process status object: exactly the keys
// want (spec §5.9 plus the documented Go keys unit, port, inRotation,
// connections, restartTimes — docs/cli.md), in the original's
// (alphabetical) order, with the spec's types.
func g2CheckProcessObject(t *testing.T, what string, raw json.RawMessage, want ...string) map[string]any {
	t.Helper()
	keys := g2ObjectKeys(t, raw)
	if !sort.StringsAreSorted(keys) {
		t.Errorf("%s: keys not in the original's order: %v", what, keys)
	}
	sorted := slices.Clone(want)
	sort.Strings(sorted)
	if !slices.Equal(keys, sorted) {
		t.Errorf("%s: keys\n got %v\nwant %v", what, keys, sorted)
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	for k, val := range v {
		ok := true
		switch k {
		case "children", "logs":
			_, ok = val.([]any)
		case "command", "cwd", "id", "unit":
			_, ok = val.(string)
		case "exitCode":
			_, isNum := val.(float64)
			ok = isNum || val == nil
		case "exitSignal":
			_, isStr := val.(string)
			ok = isStr || val == nil
		case "lastMemoryRestartAt", "startedAt":
			s, _ := val.(string)
			ok = g2Stamp.MatchString(s)
		case "lastStartReason":
			ok = slices.Contains([]any{"deploy", "crash", "manual", "memory"}, val)
		case "state":
			ok = slices.Contains([]any{"starting", "running", "stopping", "stopped", "failed"}, val)
		case "memoryRestarts", "restarts", "uptimeMs":
			n, isNum := val.(float64)
			ok = isNum && n >= 0
		case "pid", "rssBytes", "port":
			n, isNum := val.(float64)
			ok = isNum && n > 0
		}
		if !ok {
			t.Errorf("%s: %s = %#v has the wrong type", what, k, val)
		}
	}
	for _, l := range v["logs"].([]any) {
		raw, _ := json.Marshal(l)
		if keys := g2ObjectKeys(t, raw); !slices.Equal(keys, []string{"at", "line", "stream"}) {
			t.Errorf("%s: log entry keys %v", what, keys)
		}
		if s, _ := l.(map[string]any)["at"].(string); !g2Stamp.MatchString(s) {
			t.Errorf("%s: log entry at %q", what, s)
		}
	}
	return v
}

// TestProcessStatusObjectShape (SUP-08, spec §5.9): the JSON of a process
// status object through its life: never started (a singleton whose spawn
// failed), running before and after a memory sample, after a memory restart
// (exit fields, lastMemoryRestartAt) and after a crash (no pid, uptimeMs or
// rssBytes; exit fields kept).
func TestProcessStatusObjectShape(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		var mr *memRunner
		h := newHarnessWith(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", restartDelayMs: 600000, restart: {maxRestarts: 5, windowMs: 3600000},
     memory: {limitBytes: 1000, checkIntervalMs: 100}},
    {id: "cron", policy: "singleton", command: "cron"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`, func(h *harness, o *Options) {
			mr = &memRunner{Fake: h.runner, mem: map[string]uint64{}}
			o.Runner = mr
		})
		h.runner.FailStart(unitOf("v1", "cron", 0, 1), unitstest.ErrFakeStart)
		if _, err := h.deploy("v1"); !errors.Is(err, unitstest.ErrFakeStart) {
			t.Fatalf("deploy: %v, want the singleton's start failure", err)
		}
		worker := unitOf("v1", "worker", 0, 1)
		if err := h.runner.Output(worker, units.Stdout, "hello"); err != nil {
			t.Fatal(err)
		}

		// Running, before any memory sample reported a figure.
		objs := g2StatusJSON(t, h)
		always := []string{"children", "command", "cwd", "id", "logs", "memoryRestarts", "restarts", "state", "unit"}
		running := append(slices.Clone(always), "lastStartReason", "pid", "startedAt", "uptimeMs")
		v := g2CheckProcessObject(t, "running worker", objs["v1/worker"], running...)
		if v["state"] != "running" || v["lastStartReason"] != "deploy" || len(v["children"].([]any)) != 0 || len(v["logs"].([]any)) != 1 {
			t.Errorf("running worker: %v", v)
		}
		g2CheckProcessObject(t, "running web", objs["v1/web"], append(slices.Clone(running), "port", "inRotation", "connections")...)
		// Never started: the spawn failed.
		v = g2CheckProcessObject(t, "never started cron", objs["cron"], always...)
		if v["state"] != "failed" || v["restarts"] != 0.0 || v["memoryRestarts"] != 0.0 {
			t.Errorf("never started cron: %v", v)
		}

		// A sample: rssBytes.
		mr.set(worker, 500)
		time.Sleep(250 * time.Millisecond)
		synctest.Wait()
		v = g2CheckProcessObject(t, "sampled worker", g2StatusJSON(t, h)["v1/worker"], append(slices.Clone(running), "rssBytes")...)
		if v["rssBytes"] != 500.0 {
			t.Errorf("sampled worker rssBytes %v", v["rssBytes"])
		}

		// A memory restart: exit fields of the stopped incarnation and
		// lastMemoryRestartAt.
		mr.set(worker, 2000)
		for i := 0; processStatus(t, h, "v1", "worker").MemoryRestarts == 0; i++ {
			if i > 100 {
				t.Fatal("no memory restart")
			}
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
		}
		mr.set(worker, 100)
		time.Sleep(250 * time.Millisecond)
		synctest.Wait()
		v = g2CheckProcessObject(t, "worker after a memory restart", g2StatusJSON(t, h)["v1/worker"],
			append(slices.Clone(running), "rssBytes", "exitCode", "exitSignal", "lastMemoryRestartAt")...)
		if v["lastStartReason"] != "memory" || v["memoryRestarts"] != 1.0 || v["exitCode"] != nil || v["exitSignal"] != "SIGTERM" {
			t.Errorf("worker after a memory restart: %v", v)
		}

		// A crash (restart pending for 10 minutes): no pid, uptimeMs or
		// rssBytes; the exit and the counted crash time shown.
		if err := h.runner.Exit(worker, units.Exit{Code: 3}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		v = g2CheckProcessObject(t, "crashed worker", g2StatusJSON(t, h)["v1/worker"],
			append(slices.Clone(always), "exitCode", "exitSignal", "lastMemoryRestartAt", "lastStartReason", "restartTimes", "startedAt")...)
		if v["state"] != "failed" || v["exitCode"] != 3.0 || v["exitSignal"] != nil || v["lastStartReason"] != "memory" {
			t.Errorf("crashed worker: %v", v)
		}
	})
}
