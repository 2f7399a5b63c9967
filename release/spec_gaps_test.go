package release

// Tests for review-checklist items of the spec (§10) that the other test
// files do not pin: CFG-27, DEP-02, DEP-06, DEP-11, DRN-01, STP-01, STP-03,
// RST-04, RBK-03, RSP-06, MEM-04, MEM-05, SHD-01, PRT-01, PRT-02, PRT-05.
// Timing-dependent ones run in testing/synctest bubbles (the manager's clock,
// restart timers, memory samplers and the fake runner's grace windows all use
// the bubble's fake time).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
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

// newHarnessWith is newHarness with configure applied to the manager's
// options before it is created (wrap the runner or the traffic switcher, set
// the clock); h.runner stays the fake underneath.
func newHarnessWith(t *testing.T, src string, configure func(h *harness, o *Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "rollbridge.js")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, runner: unitstest.NewFake("demo"), traffic: newFakeTraffic(), cfgPath: path, dir: dir}
	load := func(ctx context.Context) (*config.Config, error) {
		return config.Load(ctx, path, config.LoadOptions{Env: []string{"PATH=/usr/bin:/bin"}})
	}
	cfg, err := load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Config: cfg, Reload: load, Runner: h.runner, Traffic: h.traffic,
		Health: func(ctx context.Context, url string, _ config.Health) error {
			if h.health != nil {
				return h.health(url)
			}
			return nil
		},
		Env: []string{"PATH=/usr/bin:/bin"},
	}
	if configure != nil {
		configure(h, &opts)
	}
	h.m = startManager(t, opts)
	return h
}

// writeConfig replaces the harness's config file (read again by the next
// deploy or rollback).
func writeConfig(t *testing.T, h *harness, src string) {
	t.Helper()
	if err := os.WriteFile(h.cfgPath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

// unitOf is the runner name of an instance of the "demo" application.
func unitOf(rel, process string, replica, replicas int) string {
	return units.Identity{App: "demo", Release: rel, Process: process, Replica: replica, Replicas: replicas}.UnitName()
}

// setConns sets the fake proxy's open connections of a release.
func setConns(h *harness, rel string, n int) {
	h.traffic.mu.Lock()
	h.traffic.conns[rel] = n
	h.traffic.mu.Unlock()
}

// releaseStatusOf returns release rel from the manager's status.
func releaseStatusOf(t *testing.T, h *harness, rel string) ReleaseStatus {
	t.Helper()
	for _, r := range h.m.Status(context.Background()).Releases {
		if r.ReleaseID == rel {
			return r
		}
	}
	t.Fatalf("release %s not in status", rel)
	return ReleaseStatus{}
}

// namedProcess returns service or singleton id from the manager's status.
func namedProcess(t *testing.T, h *harness, id string) ProcessStatus {
	t.Helper()
	st := h.m.Status(context.Background())
	for _, p := range append(st.Services, st.Singletons...) {
		if p.ID == id {
			return p.Process
		}
	}
	t.Fatalf("no service or singleton %s in status", id)
	return ProcessStatus{}
}

// releaseInstance returns the instance id of registered release rel.
func releaseInstance(t *testing.T, m *Manager, rel, id string) *instance {
	t.Helper()
	m.mu.Lock()
	var rec *releaseRec
	for _, r := range m.releases {
		if r.id == rel {
			rec = r
		}
	}
	m.mu.Unlock()
	if rec == nil {
		t.Fatalf("release %s not registered", rel)
	}
	for _, in := range rec.list() {
		if in.id == id {
			return in
		}
	}
	t.Fatalf("no instance %s in release %s", id, rel)
	return nil
}

func pendingRestart(in *instance) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.restartTimer != nil
}

// startsWithReason counts "process started" events of processId with reason.
func startsWithReason(h *harness, processID, releaseID, reason string) int {
	n := 0
	for _, e := range h.m.Events().Recent(0) {
		if e.Message == "process started" && e.Data["processId"] == processID && e.Data["releaseId"] == releaseID && e.Data["reason"] == reason {
			n++
		}
	}
	return n
}

// letEsbuildSettle ends a synctest bubble: config.Load (esbuild) leaves a
// goroutine sleeping 250 ms, which must finish inside the bubble's fake time
// before the bubble may end.
func letEsbuildSettle() { time.Sleep(time.Second) }

// ---------------------------------------------------------------- CFG-27

// TestConfigAdoptedOnlyAfterHealthyRelease (CFG-27, spec §2.15, §3.1 steps
// 9–10): a compatible config change (releaseRetention.maxAgeMs) is not in
// force while the new release is being health-checked, is not adopted at
// all when the deploy fails, and is adopted once a deploy passes its health
// check. Checked through what the manager does with it: its periodic
// retention prune (a stopped release older than maxAgeMs goes only under the
// new config) and the config it holds while probing.
func TestConfigAdoptedOnlyAfterHealthyRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		h := newHarness(t, baseConfig)
		for _, id := range []string{"v1", "v2"} {
			if _, err := h.deploy(id); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if got := releaseStates(h); got["v1"] != relStopped || got["v2"] != relActive {
			t.Fatalf("after v2: %v", got)
		}

		// A compatible change: stopped releases older than 1 s are pruned.
		writeConfig(t, h, retentionConfig(`{maxAgeMs: 1000}`))
		var mu sync.Mutex
		var probedWith []time.Duration
		probe := func(err error) func(string) error {
			return func(string) error {
				mu.Lock()
				probedWith = append(probedWith, h.m.config().ReleaseRetention.MaxAge)
				mu.Unlock()
				return err
			}
		}

		// A deploy whose health check fails keeps the old config.
		h.health = probe(errors.New("Health check failed for http://127.0.0.1/ping: HTTP 503"))
		if _, err := h.deploy("v3"); err == nil || !strings.Contains(err.Error(), "Health check failed") {
			t.Fatalf("deploy v3 with a failing health check: %v", err)
		}
		if got := h.m.config().ReleaseRetention.MaxAge; got != 0 {
			t.Errorf("after the failed deploy the manager uses maxAgeMs %v, want the old config's 0", got)
		}
		// Several prune periods later v1 (stopped minutes ago) is still
		// retained: the new maxAgeMs is not in force.
		time.Sleep(3 * time.Minute)
		synctest.Wait()
		if got := releaseStates(h); len(got) != 2 || got["v1"] != relStopped || got["v2"] != relActive {
			t.Fatalf("after the failed deploy and 3 min: %v (the failed deploy's config was adopted)", got)
		}

		// A deploy that passes adopts it, but only after its health check.
		h.health = probe(nil)
		if _, err := h.deploy("v4"); err != nil {
			t.Fatal(err)
		}
		if got := h.m.config().ReleaseRetention.MaxAge; got != time.Second {
			t.Errorf("after the healthy deploy the manager uses maxAgeMs %v, want 1s", got)
		}
		mu.Lock()
		if len(probedWith) != 2 || probedWith[0] != 0 || probedWith[1] != 0 {
			t.Errorf("maxAgeMs in force during the health checks: %v, want [0 0] (adopted before the release was healthy)", probedWith)
		}
		mu.Unlock()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := releaseStates(h); len(got) != 1 || got["v4"] != relActive {
			t.Errorf("after the healthy deploy and 2 min: %v, want only v4 (new maxAgeMs prunes v1 and v2)", got)
		}
	})
}

// ---------------------------------------------------------------- DEP-02

// TestReleaseIDAndRevisionDefaults (DEP-02, spec §3.1 step 3–4): release id
// = releaseId, else revision, else the 17-digit UTC timestamp; revision
// defaults to the id; "deploy starting" carries revision only when given.
func TestReleaseIDAndRevisionDefaults(t *testing.T) {
	clock := time.Date(2026, 5, 23, 14, 31, 9, 512e6, time.FixedZone("CEST", 2*3600))
	h := newHarnessWith(t, baseConfig, func(_ *harness, o *Options) { o.Now = func() time.Time { return clock } })
	cases := []struct {
		req          DeployRequest
		wantID       string
		wantRevision string
		revInEvent   bool
	}{
		{DeployRequest{ReleaseID: "rel-a", Revision: "abc123"}, "rel-a", "abc123", true},
		{DeployRequest{Revision: "def456"}, "def456", "def456", true},
		{DeployRequest{}, "20260523123109512", "20260523123109512", false},
		{DeployRequest{ReleaseID: "rel-b"}, "rel-b", "rel-b", false},
	}
	for _, c := range cases {
		c.req.ReleasePath = h.dir
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := h.m.Deploy(ctx, c.req)
		cancel()
		if err != nil {
			t.Fatalf("deploy %+v: %v", c.req, err)
		}
		if res.ActiveReleaseID != c.wantID {
			t.Errorf("deploy %+v: id %q, want %q", c.req, res.ActiveReleaseID, c.wantID)
		}
		if c.req.ReleaseID == "" && c.req.Revision == "" && !regexp.MustCompile(`^\d{17}$`).MatchString(res.ActiveReleaseID) {
			t.Errorf("timestamp id %q is not 17 digits", res.ActiveReleaseID)
		}
		if r := releaseStatusOf(t, h, c.wantID); r.Revision != c.wantRevision || r.ReleasePath != h.dir {
			t.Errorf("release %s: revision %q path %q, want %q %q", c.wantID, r.Revision, r.ReleasePath, c.wantRevision, h.dir)
		}
		if p := processStatus(t, h, c.wantID, "web"); p.State != stateRunning {
			t.Errorf("release %s web: %s", c.wantID, p.State)
		}
		var started *Event
		for _, e := range h.m.Events().Recent(0) {
			if e.Message == "deploy starting" && e.Data["releaseId"] == c.wantID {
				started = &e
			}
		}
		if started == nil {
			t.Fatalf("no deploy starting event for %s", c.wantID)
		}
		rev, has := started.Data["revision"]
		if has != c.revInEvent || (has && rev != c.wantRevision) || started.Data["releasePath"] != h.dir {
			t.Errorf("deploy starting for %s: %v", c.wantID, started.Data)
		}
		// The instances see the same revision.
		web := unitOf(c.wantID, "web", 0, 1)
		st, err := h.runner.Status(context.Background(), web)
		if err != nil {
			t.Fatal(err)
		}
		if !containsEnv(st.Env, "ROLLBRIDGE_REVISION="+c.wantRevision) || !containsEnv(st.Env, "ROLLBRIDGE_RELEASE_ID="+c.wantID) {
			t.Errorf("%s env lacks revision %s / id %s", web, c.wantRevision, c.wantID)
		}
	}
}

func containsEnv(env []string, kv string) bool {
	for _, e := range env {
		if e == kv {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- DEP-06

// TestHealthFalseSkipsCheckAndSwitches (DEP-06, spec §2.8, §3.1 step 8):
// with health: false or null the proxied process is never probed and the
// traffic switches; with the default health block it is probed before the
// switch.
func TestHealthFalseSkipsCheckAndSwitches(t *testing.T) {
	for _, health := range []string{"false", "null"} {
		t.Run("health "+health, func(t *testing.T) {
			h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}, health: `+health+`}
  ]
}`)
			if p := h.m.config().Proxied(); p.Health != nil {
				t.Fatalf("health: %s parsed as %+v", health, *p.Health)
			}
			probes := 0
			h.health = func(url string) error {
				probes++
				return errors.New("Health check failed for " + url + ": HTTP 500")
			}
			res, err := h.deploy("v1")
			if err != nil || res.ActiveReleaseID != "v1" {
				t.Fatalf("deploy: %+v %v", res, err)
			}
			if probes != 0 {
				t.Errorf("health check ran %d times with health: %s", probes, health)
			}
			if h.traffic.current() != "v1" {
				t.Errorf("traffic on %q, want v1", h.traffic.current())
			}
			if n := countEvents(h, "traffic switched"); n != 1 {
				t.Errorf("traffic switched emitted %d times", n)
			}
		})
	}
	t.Run("default health gates the switch", func(t *testing.T) {
		h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [{id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}]
}`)
		var urls []string
		var trafficDuringProbe string
		h.health = func(url string) error {
			urls = append(urls, url)
			trafficDuringProbe = h.traffic.current()
			return nil
		}
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		port := releaseStatusOf(t, h, "v1").Ports["web"]
		if want := fmt.Sprintf("http://127.0.0.1:%d/ping", port); len(urls) != 1 || urls[0] != want {
			t.Errorf("probes %v, want [%s]", urls, want)
		}
		if trafficDuringProbe != "" || h.traffic.current() != "v1" {
			t.Errorf("traffic during the probe %q (want none), after %q (want v1)", trafficDuringProbe, h.traffic.current())
		}
	})
}

// ---------------------------------------------------------------- DEP-11

// TestSingletonStartFailureAfterSwitch (DEP-11, spec §3.1 step 12;
// docs/policies.md "singleton" and docs/migration.md: unlike the original
// the previous release is retired too): the singleton's start error is the
// deploy's error, the new release stays active and serving, the failed
// singleton stays registered as failed, and the previous release is retired.
func TestSingletonStartFailureAfterSwitch(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	cronV1, cronV2 := unitOf("v1", "cron", 0, 1), unitOf("v2", "cron", 0, 1)
	h.runner.FailStart(cronV2, unitstest.ErrFakeStart)
	res, err := h.deploy("v2")
	if err == nil || !errors.Is(err, unitstest.ErrFakeStart) || !strings.Contains(err.Error(), "cron") {
		t.Fatalf("deploy v2 with a failing singleton: %v, want its start error", err)
	}
	if res.ActiveReleaseID != "v2" || res.PreviousReleaseID == nil || *res.PreviousReleaseID != "v1" {
		t.Errorf("result %+v", res)
	}
	if h.traffic.current() != "v2" {
		t.Errorf("traffic on %q, want v2", h.traffic.current())
	}
	st := h.m.Status(context.Background())
	if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v2" {
		t.Fatalf("active %v, want v2", st.ActiveReleaseID)
	}
	for _, p := range releaseStatusOf(t, h, "v2").Processes {
		if p.State != stateRunning {
			t.Errorf("v2 %s is %s", p.ID, p.State)
		}
	}
	if p := namedProcess(t, h, "cron"); p.State != stateFailed || p.PID != 0 || p.Unit != cronV2 {
		t.Errorf("singleton after its failed start: state %s pid %d unit %s, want failed, no pid, %s", p.State, p.PID, p.Unit, cronV2)
	}
	// The old singleton was stopped before the new one was tried.
	var order []string
	for _, c := range h.runner.Calls() {
		if c.Name == cronV1 && c.Op == "stop" || c.Name == cronV2 && c.Op == "start" {
			order = append(order, c.Op+" "+c.Name)
		}
	}
	if len(order) != 2 || order[0] != "stop "+cronV1 || order[1] != "start "+cronV2 {
		t.Errorf("singleton calls %v, want the v1 stop before the v2 start", order)
	}
	// Documented Go behaviour: the previous release is retired anyway.
	waitFor(t, "v1 retired", func() bool { return releaseStates(h)["v1"] == relStopped })
	if n := countEvents(h, "release drained"); n != 1 {
		t.Errorf("release drained emitted %d times", n)
	}
}

// ---------------------------------------------------------------- DRN-01

// TestRetiringReleaseDrainsWithDrainStartedAt (DRN-01, spec §3.2 step 2):
// after a switch the previous release is reported draining, with
// drainStartedAt, as soon as the deploy replies; drainStartedAt is set once
// (it does not move while the release drains) and is kept, next to
// stoppedAt, once the release has drained. The manager's clock ticks a
// millisecond per reading, so stamping it again after the deploy replied
// would show.
func TestRetiringReleaseDrainsWithDrainStartedAt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		var ticks atomic.Int64
		h := newHarnessWith(t, baseConfig, func(_ *harness, o *Options) {
			o.Now = func() time.Time { return time.Now().Add(time.Duration(ticks.Add(1)) * time.Millisecond) }
		})
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		if r := releaseStatusOf(t, h, "v1"); r.State != relActive || r.DrainStartedAt != "" || r.StoppedAt != "" || r.ActivatedAt == "" {
			t.Fatalf("active v1: state %s activatedAt %q drainStartedAt %q stoppedAt %q", r.State, r.ActivatedAt, r.DrainStartedAt, r.StoppedAt)
		}
		setConns(h, "v1", 1)
		if _, err := h.deploy("v2"); err != nil {
			t.Fatal(err)
		}
		r := releaseStatusOf(t, h, "v1")
		if r.State != relDraining || r.DrainStartedAt == "" || r.StoppedAt != "" {
			t.Fatalf("v1 right after the deploy: state %s drainStartedAt %q stoppedAt %q, want draining with drainStartedAt", r.State, r.DrainStartedAt, r.StoppedAt)
		}
		if activated := releaseStatusOf(t, h, "v2").ActivatedAt; r.DrainStartedAt < activated {
			t.Errorf("v1 drainStartedAt %s before v2's activatedAt %s", r.DrainStartedAt, activated)
		}
		drainStartedAt := r.DrainStartedAt
		time.Sleep(time.Second) // less than drainTimeoutMs (2000)
		synctest.Wait()
		if r := releaseStatusOf(t, h, "v1"); r.State != relDraining || r.DrainStartedAt != drainStartedAt {
			t.Fatalf("v1 with an open connection: state %s drainStartedAt %s (was %s)", r.State, r.DrainStartedAt, drainStartedAt)
		}
		for _, p := range releaseStatusOf(t, h, "v1").Processes {
			if p.State != stateRunning {
				t.Errorf("draining v1 %s is %s before the drain ended", p.ID, p.State)
			}
		}
		setConns(h, "v1", 0)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		r = releaseStatusOf(t, h, "v1")
		if r.State != relStopped || r.DrainStartedAt != drainStartedAt || r.StoppedAt == "" || r.StoppedAt < r.DrainStartedAt {
			t.Errorf("drained v1: state %s drainStartedAt %s (was %s) stoppedAt %s", r.State, r.DrainStartedAt, drainStartedAt, r.StoppedAt)
		}
	})
}

// ---------------------------------------------------------------- STP-01

// TestStopNamedAndUnknownRelease (STP-01, spec §3.4): stop by id of a
// draining and of the active release, the exact not-found errors, the
// "release stopped" event per stop, and the status reply.
func TestStopNamedAndUnknownRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		h := newHarness(t, baseConfig)
		ctx := context.Background()
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		setConns(h, "v1", 1)
		if _, err := h.deploy("v2"); err != nil {
			t.Fatal(err)
		}
		if got := releaseStates(h)["v1"]; got != relDraining {
			t.Fatalf("v1 %s, want draining", got)
		}

		if _, err := h.m.Stop(ctx, "v9"); err == nil || err.Error() != "Release not found: v9" {
			t.Errorf("stop of an unknown id: %v", err)
		}
		if n := countEvents(h, "release stopped"); n != 0 {
			t.Errorf("release stopped emitted %d times for a refused stop", n)
		}

		// A named, non-active release: stopped, the active one untouched.
		st, err := h.m.Stop(ctx, "v1")
		if err != nil {
			t.Fatal(err)
		}
		if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v2" || h.traffic.current() != "v2" {
			t.Errorf("stop v1 changed the active release: %v, traffic %q", st.ActiveReleaseID, h.traffic.current())
		}
		states := map[string]string{}
		for _, r := range st.Releases {
			states[r.ReleaseID] = r.State
			if r.ReleaseID == "v1" {
				if r.StoppedAt == "" {
					t.Error("v1 has no stoppedAt")
				}
				for _, p := range r.Processes {
					if p.State != stateStopped || p.PID != 0 {
						t.Errorf("v1 %s after stop: %s pid %d", p.ID, p.State, p.PID)
					}
				}
			}
		}
		if states["v1"] != relStopped || states["v2"] != relActive {
			t.Errorf("status reply of stop v1: %v", states)
		}

		// The active release, named.
		st, err = h.m.Stop(ctx, "v2")
		if err != nil {
			t.Fatal(err)
		}
		if st.ActiveReleaseID != nil || h.traffic.current() != "" {
			t.Errorf("after stop v2: active %v, traffic %q", st.ActiveReleaseID, h.traffic.current())
		}
		if _, err := h.m.Stop(ctx, ""); err == nil || err.Error() != "Release not found: active" {
			t.Errorf("stop without an active release: %v", err)
		}

		var stopped []string
		for _, e := range h.m.Events().Recent(0) {
			if e.Message == "release stopped" {
				if len(e.Data) != 1 {
					t.Errorf("release stopped data %v, want only releaseId", e.Data)
				}
				stopped = append(stopped, anyStr(e.Data["releaseId"]))
			}
		}
		if strings.Join(stopped, ",") != "v1,v2" {
			t.Errorf("release stopped events for %v, want v1,v2", stopped)
		}
	})
}

// ---------------------------------------------------------------- STP-03

// TestStopDoesNotDrainOrTouchServicesAndSingletons (STP-03, spec §3.4):
// stopping the active release while it has an open connection does not
// wait for it (no drain), and leaves the persistent service and the
// singleton running.
func TestStopDoesNotDrainOrTouchServicesAndSingletons(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		h := newHarness(t, baseConfig)
		ctx := context.Background()
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		beacon, cron := namedProcess(t, h, "beacon"), namedProcess(t, h, "cron")
		setConns(h, "v1", 1)
		began := time.Now()
		st, err := h.m.Stop(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(began); waited != 0 {
			t.Errorf("stop waited %v with a connection open (drained)", waited)
		}
		select {
		case rel := <-h.traffic.drained:
			t.Errorf("stop drained %s", rel)
		default:
		}
		if len(st.Releases) != 1 || st.Releases[0].State != relStopped || st.Releases[0].DrainStartedAt != "" {
			t.Fatalf("releases after stop: %+v", st.Releases)
		}
		for _, p := range st.Releases[0].Processes {
			if p.State != stateStopped {
				t.Errorf("v1 %s is %s after stop", p.ID, p.State)
			}
		}
		for _, c := range []struct {
			before ProcessStatus
			id     string
		}{{beacon, "beacon"}, {cron, "cron"}} {
			if p := namedProcess(t, h, c.id); p.State != stateRunning || p.PID != c.before.PID {
				t.Errorf("%s after stop: state %s pid %d, want running pid %d", c.id, p.State, p.PID, c.before.PID)
			}
			for _, call := range h.runner.Calls() {
				if call.Op == "stop" && call.Name == c.before.Unit {
					t.Errorf("stop stopped %s (%s)", c.id, call.Name)
				}
			}
		}
	})
}

// ---------------------------------------------------------------- RST-04

// TestRestartNothingToRestart (RST-04, spec §3.5 steps 3, 5): without a
// processId and nothing to restart the reply is an empty list (not an
// error, and [] in JSON); a processId that matches nothing is the exact
// error.
func TestRestartNothingToRestart(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", replicas: 2},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`)
	ctx := context.Background()
	empty := func(when, policy string) {
		t.Helper()
		res, err := h.m.Restart(ctx, "", policy)
		if err != nil {
			t.Errorf("%s, restart policy %q: %v, want no error", when, policy, err)
			return
		}
		raw, _ := json.Marshal(res)
		if string(raw) != `{"restarted":[]}` {
			t.Errorf("%s, restart policy %q: %s, want {\"restarted\":[]}", when, policy, raw)
		}
	}
	notFound := func(when, id, policy string) {
		t.Helper()
		want := fmt.Sprintf("No managed process with id %q to restart.", id)
		if _, err := h.m.Restart(ctx, id, policy); err == nil || err.Error() != want {
			t.Errorf("%s, restart %q policy %q: %v, want %s", when, id, policy, err, want)
		}
	}

	empty("before any deploy", "")
	empty("before any deploy", "companion")
	notFound("before any deploy", "worker", "")
	notFound("before any deploy", "nope", "")

	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	empty("with no singleton configured", "singleton")
	empty("with no service configured", "service")
	notFound("after deploy", "nope", "")
	notFound("after deploy", "worker", "singleton")
	notFound("after deploy", "worker#7", "")

	if _, err := h.m.Stop(ctx, ""); err != nil {
		t.Fatal(err)
	}
	empty("without an active release", "")
	notFound("without an active release", "worker", "")
	if n := countEvents(h, "process restart requested"); n != 0 {
		t.Errorf("process restart requested emitted %d times", n)
	}
}

// ---------------------------------------------------------------- RBK-03

// TestRollbackToDrainingReleaseStopsItFirst (RBK-03, spec §3.3 step 3):
// rolling back to a release that is still draining stops its old instances
// (without waiting for its connections) before "rollback starting" and
// before the instances of the reused id start; the old retirement ending
// later does not touch the re-activated release.
func TestRollbackToDrainingReleaseStopsItFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		h := newHarness(t, baseConfig)
		ctx := context.Background()
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		setConns(h, "v1", 1) // keeps v1 draining
		if _, err := h.deploy("v2"); err != nil {
			t.Fatal(err)
		}
		if got := releaseStates(h)["v1"]; got != relDraining {
			t.Fatalf("v1 %s, want draining", got)
		}
		var oldIDs []string
		oldUnits := map[string]string{}
		for _, p := range releaseStatusOf(t, h, "v1").Processes {
			oldIDs = append(oldIDs, p.ID)
			oldUnits[p.Unit] = p.ID
		}
		calls0, events0 := len(h.runner.Calls()), len(h.m.Events().Recent(0))

		began := time.Now()
		res, err := h.m.Rollback(ctx, "v1")
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(began) != 0 {
			t.Errorf("rollback waited %v for the draining target's connections", time.Since(began))
		}
		if res.ActiveReleaseID != "v1" || res.PreviousReleaseID == nil || *res.PreviousReleaseID != "v2" {
			t.Errorf("rollback result %+v", res)
		}

		// Every old instance was stopped before its unit name was started
		// again for the re-deployed v1.
		calls := h.runner.Calls()[calls0:]
		for unit, id := range oldUnits {
			stopAt, startAt := -1, -1
			for i, c := range calls {
				if c.Name != unit {
					continue
				}
				if c.Op == "stop" && stopAt < 0 {
					stopAt = i
				}
				if c.Op == "start" && startAt < 0 {
					startAt = i
				}
			}
			if stopAt < 0 || startAt < 0 || stopAt > startAt {
				t.Errorf("%s (%s): stop at call %d, start at call %d, want the stop first", id, unit, stopAt, startAt)
			}
		}
		// ...and before "rollback starting".
		events := h.m.Events().Recent(0)[events0:]
		rollbackAt := -1
		exited := map[string]int{}
		for i, e := range events {
			switch {
			case e.Message == "rollback starting":
				rollbackAt = i
				if e.Data["releaseId"] != "v1" || e.Data["releasePath"] != h.dir {
					t.Errorf("rollback starting data %v", e.Data)
				}
			case e.Message == "process exited" && e.Data["releaseId"] == "v1" && rollbackAt < 0:
				exited[anyStr(e.Data["processId"])]++
			}
		}
		if rollbackAt < 0 {
			t.Fatal("no rollback starting event")
		}
		for _, id := range oldIDs {
			if exited[id] != 1 {
				t.Errorf("old v1 %s exited %d times before rollback starting, want 1", id, exited[id])
			}
		}

		// The old retirement runs out (drainTimeoutMs 2000) without
		// stopping anything of the re-activated v1.
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := releaseStates(h); got["v1"] != relActive || got["v2"] != relStopped {
			t.Errorf("releases after the old drain ended: %v", got)
		}
		if h.traffic.current() != "v1" {
			t.Errorf("traffic on %q", h.traffic.current())
		}
		for _, p := range releaseStatusOf(t, h, "v1").Processes {
			if p.State != stateRunning || p.PID == 0 {
				t.Errorf("re-activated v1 %s: %s pid %d", p.ID, p.State, p.PID)
			}
		}
	})
}

// ---------------------------------------------------------------- RSP-06

const pendingRestartConfig = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000, forceStopTimeoutMs: 500},
  processes: [
    {id: "beacon", policy: "service", command: "beacon", restartDelayMs: 60000},
    {id: "worker", command: "worker", restartDelayMs: 60000},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`

// TestPendingCrashRestartCancelled (RSP-06, spec §5.4): a crash restart
// waiting for its delay is cancelled by a stop of its release, by shutdown
// and by quiesce (owner retirement); shutdown does not wait for the timer,
// and it never fires.
func TestPendingCrashRestartCancelled(t *testing.T) {
	t.Run("stop", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			defer letEsbuildSettle()
			h := newHarness(t, pendingRestartConfig)
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			unit := unitOf("v1", "worker", 0, 1)
			if err := h.runner.Exit(unit, units.Exit{Code: 1}); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			worker := releaseInstance(t, h.m, "v1", "worker")
			if !pendingRestart(worker) {
				t.Fatal("no crash restart pending after the crash")
			}
			if _, err := h.m.Stop(context.Background(), "v1"); err != nil {
				t.Fatal(err)
			}
			if pendingRestart(worker) {
				t.Error("the crash restart is still pending after stop")
			}
			time.Sleep(2 * time.Minute)
			synctest.Wait()
			if n := startsOf(h, unit); n != 1 {
				t.Errorf("%s started %d times, want 1 (no crash restart after stop)", unit, n)
			}
			if p := processStatus(t, h, "v1", "worker"); p.State != stateStopped || p.Restarts != 0 {
				t.Errorf("worker after stop: state %s restarts %d", p.State, p.Restarts)
			}
		})
	})
	t.Run("shutdown", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			defer letEsbuildSettle()
			h := newHarness(t, pendingRestartConfig)
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			workerUnit := unitOf("v1", "worker", 0, 1)
			beaconUnit := lastStartUnit(t, h, "beacon")
			for _, u := range []string{workerUnit, beaconUnit} {
				if err := h.runner.Exit(u, units.Exit{Code: 1}); err != nil {
					t.Fatal(err)
				}
			}
			synctest.Wait()
			worker := releaseInstance(t, h.m, "v1", "worker")
			h.m.mu.Lock()
			beacon := h.m.services[0]
			h.m.mu.Unlock()
			if !pendingRestart(worker) || !pendingRestart(beacon) {
				t.Fatal("crash restarts not pending after the crashes")
			}
			began := time.Now()
			if err := h.m.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(began); waited != 0 {
				t.Errorf("shutdown took %v of (fake) time: it waited for a pending restart", waited)
			}
			if pendingRestart(worker) || pendingRestart(beacon) {
				t.Error("a crash restart is still pending after shutdown")
			}
			time.Sleep(2 * time.Minute)
			synctest.Wait()
			for _, u := range []string{workerUnit, beaconUnit} {
				if n := startsOf(h, u); n != 1 {
					t.Errorf("%s started %d times, want 1 (no crash restart after shutdown)", u, n)
				}
			}
			if n := countEvents(h, "process started"); n != 3 {
				t.Errorf("%d process started events, want the 3 of the deploy", n)
			}
		})
	})
	t.Run("quiesce", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			defer letEsbuildSettle()
			h := newHarness(t, pendingRestartConfig)
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			unit := unitOf("v1", "worker", 0, 1)
			if err := h.runner.Exit(unit, units.Exit{Code: 1}); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			worker := releaseInstance(t, h.m, "v1", "worker")
			if !pendingRestart(worker) {
				t.Fatal("no crash restart pending after the crash")
			}
			h.m.Quiesce(context.Background())
			if pendingRestart(worker) {
				t.Error("the crash restart is still pending after quiesce")
			}
			time.Sleep(2 * time.Minute)
			synctest.Wait()
			if n := startsOf(h, unit); n != 1 {
				t.Errorf("%s started %d times, want 1 (no crash restart after quiesce)", unit, n)
			}
		})
	})
}

// ---------------------------------------------------------------- MEM-04/05

// memRunner reports a test-controlled memory figure for running units (the
// fake runner models no memory).
type memRunner struct {
	*unitstest.Fake
	mu  sync.Mutex
	mem map[string]uint64
}

func (r *memRunner) set(unit string, b uint64) {
	r.mu.Lock()
	r.mem[unit] = b
	r.mu.Unlock()
}

func (r *memRunner) Status(ctx context.Context, name string) (units.Status, error) {
	st, err := r.Fake.Status(ctx, name)
	if err == nil && st.MainPID != 0 {
		r.mu.Lock()
		st.MemoryBytes = r.mem[name]
		r.mu.Unlock()
	}
	return st, err
}

const memoryConfig = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", memory: {limitBytes: 1000, warnBytes: 500, checkIntervalMs: 100}},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}}
  ]
}`

func newMemHarness(t *testing.T) (*harness, *memRunner) {
	t.Helper()
	var mr *memRunner
	h := newHarnessWith(t, memoryConfig, func(h *harness, o *Options) {
		mr = &memRunner{Fake: h.runner, mem: map[string]uint64{}}
		o.Runner = mr
	})
	return h, mr
}

// TestMemoryNoRespawnWhenNotWanted (MEM-04, spec §5.7): a memory restart
// of an instance whose release is draining, or that runs into a shutdown,
// stops it and does not start it again (memoryRestarts unchanged); an
// active release's instance is respawned with reason memory.
func TestMemoryNoRespawnWhenNotWanted(t *testing.T) {
	t.Run("draining", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			defer letEsbuildSettle()
			h, mr := newMemHarness(t)
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			setConns(h, "v1", 1)
			if _, err := h.deploy("v2"); err != nil {
				t.Fatal(err)
			}
			v1, v2 := unitOf("v1", "worker", 0, 1), unitOf("v2", "worker", 0, 1)
			mr.set(v1, 2000)
			time.Sleep(250 * time.Millisecond)
			synctest.Wait()
			if got := releaseStates(h)["v1"]; got != relDraining {
				t.Fatalf("v1 %s, want still draining", got)
			}
			if n := len(eventsFor(h.m, "memory limit exceeded", "worker")); n != 1 {
				t.Fatalf("memory limit exceeded %d times, want 1", n)
			}
			p := processStatus(t, h, "v1", "worker")
			if p.State != stateStopped || p.PID != 0 || p.MemoryRestarts != 0 || p.LastMemoryRestartAt != "" {
				t.Errorf("draining worker after its memory limit: state %s pid %d memoryRestarts %d at %q, want stopped, not respawned", p.State, p.PID, p.MemoryRestarts, p.LastMemoryRestartAt)
			}
			if n := startsOf(h, v1); n != 1 {
				t.Errorf("%s started %d times, want 1", v1, n)
			}

			// Control: the active release's worker is respawned.
			mr.set(v2, 2000)
			for i := 0; processStatus(t, h, "v2", "worker").MemoryRestarts == 0; i++ {
				if i > 100 {
					t.Fatal("no memory restart of the active worker")
				}
				time.Sleep(10 * time.Millisecond)
				synctest.Wait()
			}
			mr.set(v2, 100)
			time.Sleep(300 * time.Millisecond)
			synctest.Wait()
			if p := processStatus(t, h, "v2", "worker"); p.State != stateRunning || p.MemoryRestarts != 1 || p.LastStartReason != reasonMemory {
				t.Errorf("active worker after its memory limit: state %s memoryRestarts %d reason %s, want running/1/memory", p.State, p.MemoryRestarts, p.LastStartReason)
			}
			if n := startsWithReason(h, "worker", "v1", reasonMemory); n != 0 {
				t.Errorf("draining worker started %d times with reason memory", n)
			}
			setConns(h, "v1", 0)
		})
	})
	t.Run("shutdown during the memory restart", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			defer letEsbuildSettle()
			h, mr := newMemHarness(t)
			if _, err := h.deploy("v1"); err != nil {
				t.Fatal(err)
			}
			unit := unitOf("v1", "worker", 0, 1)
			h.runner.IgnoreStop(unit, true) // its graceful stop runs into the SIGKILL fallback
			mr.set(unit, 2000)
			time.Sleep(150 * time.Millisecond)
			synctest.Wait()
			if n := len(eventsFor(h.m, "memory limit exceeded", "worker")); n != 1 {
				t.Fatalf("memory limit exceeded %d times, want 1", n)
			}
			if p := processStatus(t, h, "v1", "worker"); p.State != stateStopping {
				t.Fatalf("worker during its memory restart: %s, want stopping", p.State)
			}
			if err := h.m.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Minute)
			synctest.Wait()
			if n := startsOf(h, unit); n != 1 {
				t.Errorf("%s started %d times, want 1 (no respawn during shutdown)", unit, n)
			}
			p := processStatus(t, h, "v1", "worker")
			if p.State != stateStopped || p.MemoryRestarts != 0 {
				t.Errorf("worker after shutdown: state %s memoryRestarts %d", p.State, p.MemoryRestarts)
			}
		})
	})
}

// TestMemoryWarningOncePerCrossing (MEM-05, spec §5.7): "memory warning"
// is emitted when a sample first exceeds warnBytes, not again while it
// stays above, re-armed by a sample at or below warnBytes, and re-armed by
// a memory restart.
func TestMemoryWarningOncePerCrossing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer letEsbuildSettle()
		h, mr := newMemHarness(t)
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		unit := unitOf("v1", "worker", 0, 1)
		warnings := func() int { return len(eventsFor(h.m, "memory warning", "worker")) }
		// sample sets the figure and lets the sampler take 3 samples.
		sample := func(b uint64) {
			mr.set(unit, b)
			time.Sleep(300 * time.Millisecond)
			synctest.Wait()
		}
		steps := []struct {
			bytes uint64
			want  int
		}{
			{400, 0},  // below
			{600, 1},  // crossing
			{900, 1},  // still above: latched
			{600, 1},  // still above
			{500, 1},  // at warnBytes: re-armed, no warning
			{501, 2},  // crossing again
			{1000, 2}, // at the limit (not above): still latched
		}
		for i, s := range steps {
			sample(s.bytes)
			if got := warnings(); got != s.want {
				t.Fatalf("step %d (%d bytes): %d warnings, want %d", i, s.bytes, got, s.want)
			}
		}
		ev := eventsFor(h.m, "memory warning", "worker")[0]
		if ev.Data["rssBytes"] != uint64(600) || ev.Data["warnBytes"] != uint64(500) || ev.Data["releaseId"] != "v1" {
			t.Errorf("memory warning data %v", ev.Data)
		}

		// A memory restart re-arms the latch.
		mr.set(unit, 1500)
		for i := 0; processStatus(t, h, "v1", "worker").MemoryRestarts == 0; i++ {
			if i > 100 {
				t.Fatal("no memory restart")
			}
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
		}
		mr.set(unit, 700) // the restarted worker, above warnBytes
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if p := processStatus(t, h, "v1", "worker"); p.MemoryRestarts != 1 || p.LastStartReason != reasonMemory {
			t.Fatalf("after the memory restart: memoryRestarts %d reason %s", p.MemoryRestarts, p.LastStartReason)
		}
		if got := warnings(); got != 3 {
			t.Errorf("%d warnings after the memory restart, want 3 (latch re-armed by the restart)", got)
		}
	})
}

// ---------------------------------------------------------------- SHD-01

// gateRunner holds every Stop of one unit until the gate opens (or the
// stop's context ends, which fails that stop).
type gateRunner struct {
	*unitstest.Fake
	unit    string
	gate    chan struct{}
	entered chan struct{}
	mu      sync.Mutex
	held    int
}

func newGateRunner(f *unitstest.Fake, unit string) *gateRunner {
	return &gateRunner{Fake: f, unit: unit, gate: make(chan struct{}), entered: make(chan struct{})}
}

func (g *gateRunner) Stop(ctx context.Context, name string, sig syscall.Signal, grace units.Grace) error {
	if name == g.unit {
		g.mu.Lock()
		g.held++
		if g.held == 1 {
			close(g.entered)
		}
		g.mu.Unlock()
		select {
		case <-g.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Fake.Stop(ctx, name, sig, grace)
}

func (g *gateRunner) stops() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// clearCounter counts the manager's Clear calls (shutdown takes the proxy's
// target away once per execution).
type clearCounter struct {
	*fakeTraffic
	mu     sync.Mutex
	clears int
}

func (c *clearCounter) Clear() {
	c.mu.Lock()
	c.clears++
	c.mu.Unlock()
	c.fakeTraffic.Clear()
}

func (c *clearCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clears
}

// collect receives n results, failing the test after timeout.
func collect(t *testing.T, results <-chan error, n int, timeout time.Duration) []error {
	t.Helper()
	var out []error
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case err := <-results:
			out = append(out, err)
		case <-deadline:
			t.Fatalf("only %d of %d shutdown calls returned", len(out), n)
		}
	}
	return out
}

// TestShutdownIdempotentSharedExecution (SHD-01, spec §3.6): concurrent
// shutdown calls share one execution — none returns before it finished,
// each step runs once — and a repeated call returns that execution's result
// at once without doing anything again, even when it failed.
func TestShutdownIdempotentSharedExecution(t *testing.T) {
	t.Run("concurrent and repeated", func(t *testing.T) {
		var g *gateRunner
		var traffic *clearCounter
		h := newHarnessWith(t, baseConfig, func(h *harness, o *Options) {
			g = newGateRunner(h.runner, unitOf("v1", "cron", 0, 1))
			traffic = &clearCounter{fakeTraffic: h.traffic}
			o.Runner, o.Traffic = g, traffic
		})
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		const callers = 5
		results := make(chan error, callers)
		for range callers {
			go func() { results <- h.m.Shutdown(ctx) }()
		}
		select {
		case <-g.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("shutdown never stopped the singleton")
		}
		time.Sleep(50 * time.Millisecond)
		select {
		case err := <-results:
			t.Fatalf("a shutdown call returned (%v) while the shared execution was still stopping the singleton", err)
		default:
		}
		close(g.gate)
		for i, err := range collect(t, results, callers, 5*time.Second) {
			if err != nil {
				t.Errorf("shutdown call %d: %v", i, err)
			}
		}
		stops := map[string]int{}
		for _, c := range h.runner.Calls() {
			if c.Op == "stop" {
				stops[c.Name]++
			}
		}
		if len(stops) != 6 { // beacon, jobs, worker#0, worker#1, web, cron
			t.Errorf("stopped units %v, want the 6 of the deploy", stops)
		}
		for unit, n := range stops {
			if n != 1 {
				t.Errorf("%s stopped %d times, want once", unit, n)
			}
		}
		if n := traffic.count(); n != 1 {
			t.Errorf("the proxy target was cleared %d times, want once (one shared execution)", n)
		}
		list, _ := h.runner.List(context.Background(), "demo")
		for _, s := range list {
			if s.State == units.StateRunning {
				t.Errorf("%s still running after shutdown", s.Name)
			}
		}

		// Repeated: the same (nil) result at once, nothing done again.
		calls := len(h.runner.Calls())
		began := time.Now()
		if err := h.m.Shutdown(ctx); err != nil {
			t.Errorf("repeated shutdown: %v", err)
		}
		if d := time.Since(began); d > time.Second {
			t.Errorf("repeated shutdown took %v", d)
		}
		if n := len(h.runner.Calls()); n != calls || traffic.count() != 1 {
			t.Errorf("repeated shutdown made %d runner calls and cleared the target %d times in all", n-calls, traffic.count())
		}
		if _, err := h.deploy("v2"); err == nil || err.Error() != "Rollbridge is shutting down" {
			t.Errorf("deploy after shutdown: %v", err)
		}
	})
	t.Run("shared failure", func(t *testing.T) {
		var g *gateRunner
		h := newHarnessWith(t, baseConfig, func(h *harness, o *Options) {
			g = newGateRunner(h.runner, unitOf("v1", "cron", 0, 1))
			o.Runner = g
		})
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { close(g.gate) }) // lets the harness's own shutdown end
		first, cancelFirst := context.WithCancel(context.Background())
		defer cancelFirst()
		later, cancelLater := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancelLater()
		results := make(chan error, 2)
		go func() { results <- h.m.Shutdown(first) }()
		select {
		case <-g.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("shutdown never stopped the singleton")
		}
		go func() { results <- h.m.Shutdown(later) }()
		time.Sleep(50 * time.Millisecond)
		// The first caller gives up: the singleton's stop fails, and so does
		// the one execution, for both callers.
		cancelFirst()
		const want = "Shutdown failed to stop 1 owned resource(s)."
		for i, err := range collect(t, results, 2, 5*time.Second) {
			if err == nil || err.Error() != want {
				t.Errorf("shutdown call %d: %v, want %s", i, err, want)
			}
		}
		// A repeated call returns that result without stopping anything
		// again (the gate is still closed: a second attempt would hang).
		calls, held := len(h.runner.Calls()), g.stops()
		done := make(chan error, 1)
		go func() { done <- h.m.Shutdown(later) }()
		select {
		case err := <-done:
			if err == nil || err.Error() != want {
				t.Errorf("repeated shutdown: %v, want %s", err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the repeated shutdown ran again (blocked on the singleton's stop)")
		}
		if len(h.runner.Calls()) != calls || g.stops() != held {
			t.Errorf("the repeated shutdown stopped units again: %d runner calls, %d singleton stops", len(h.runner.Calls())-calls, g.stops()-held)
		}
	})
}

// ---------------------------------------------------------------- PRT-01/02/05

// freePortBlock returns the first port of n consecutive ports that can be
// bound on 127.0.0.1 right now, below the kernel's ephemeral range (so
// outgoing connections of other tests do not take them meanwhile).
func freePortBlock(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		base := 20000 + rand.IntN(12000-n)
		var lns []net.Listener
		ok := true
		for p := base; p < base+n; p++ {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no block of %d free ports on 127.0.0.1", n)
	return 0
}

// occupy binds 127.0.0.1:port for the rest of the test.
func occupy(t *testing.T, port int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("occupy port %d: %v", port, err)
	}
	t.Cleanup(func() { ln.Close() })
}

// bindable reports whether 127.0.0.1:port can be bound now.
func bindable(port int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// TestPortsAllocatedOnceBeforeAnyStartInConfigOrder (PRT-01, spec §3.8,
// §2.14): every ported definition (persistent and handoff service,
// companion, singleton, proxied) gets its port in one allocation, in config
// order, before the first process of the release starts: the very first
// start already sees every ROLLBRIDGE_<ID>_PORT, and every later start of
// the release (the singleton after the switch too) sees the same ports.
func TestPortsAllocatedOnceBeforeAnyStartInConfigOrder(t *testing.T) {
	base := freePortBlock(t, 10)
	rng := fmt.Sprintf("{from: %d, to: %d}", base, base+9)
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "beacon", policy: "service", command: "beacon --port {{port}}", port: `+rng+`},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs", port: `+rng+`},
    {id: "plain", command: "plain"},
    {id: "mail-worker", command: "mail --port {{port}}", port: `+rng+`},
    {id: "cron", policy: "singleton", command: "cron --port {{port}}", port: `+rng+`},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: `+rng+`}
  ]
}`)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ported := []string{"beacon", "jobs", "mail-worker", "cron", "web"} // config order
	portsIn := func(env []string) map[string]int {
		out := map[string]int{}
		for _, id := range ported {
			prefix := config.PortEnvName(id) + "="
			for _, kv := range env {
				if v, ok := strings.CutPrefix(kv, prefix); ok {
					out[id], _ = strconv.Atoi(v)
				}
			}
		}
		return out
	}
	var starts []unitstest.FakeCall
	for _, c := range h.runner.Calls() {
		if c.Op == "start" {
			starts = append(starts, c)
		}
	}
	if len(starts) != 6 || starts[0].Spec.Identity.Process != "beacon" {
		t.Fatalf("starts %d, first %s", len(starts), starts[0].Name)
	}
	first := portsIn(starts[0].Spec.Env)
	if len(first) != len(ported) {
		t.Fatalf("the first start (%s) sees ports %v, want all of %v", starts[0].Name, first, ported)
	}
	for i, id := range ported {
		if p := first[id]; p < base || p > base+9 {
			t.Errorf("%s port %d outside %d-%d", id, p, base, base+9)
		}
		if i > 0 && first[id] <= first[ported[i-1]] {
			t.Errorf("%s got %d, not above %s's %d: not allocated in config order", id, first[id], ported[i-1], first[ported[i-1]])
		}
	}
	for _, c := range starts {
		got := portsIn(c.Spec.Env)
		for _, id := range ported {
			if got[id] != first[id] {
				t.Errorf("%s sees %s=%d, the first start saw %d (allocated more than once)", c.Name, id, got[id], first[id])
			}
		}
		own := c.Spec.Identity.Process
		if p, ok := first[own]; ok && !containsEnv(c.Spec.Env, "ROLLBRIDGE_PORT="+strconv.Itoa(p)) {
			t.Errorf("%s: ROLLBRIDGE_PORT is not its allocated %d", c.Name, p)
		}
		if _, ok := first[own]; !ok {
			for _, kv := range c.Spec.Env {
				if strings.HasPrefix(kv, "ROLLBRIDGE_PORT=") {
					t.Errorf("port-less %s has %s", c.Name, kv)
				}
			}
		}
	}
	if got := releaseStatusOf(t, h, "v1").Ports; len(got) != len(ported) {
		t.Errorf("status ports %v, want %v", got, first)
	} else {
		for id, p := range first {
			if got[id] != p {
				t.Errorf("status port of %s %d, want %d", id, got[id], p)
			}
		}
	}
}

// TestPortAllocationLowestBindableSkipsReservedAndInUse (PRT-02, spec
// §3.8): each definition gets the lowest port of its range that is neither
// taken earlier in the same allocation nor in use. The chosen ports stay
// bound until taken (docs/migration.md: "held until the owning process
// starts").
func TestPortAllocationLowestBindableSkipsReservedAndInUse(t *testing.T) {
	base := freePortBlock(t, 6)
	occupy(t, base+1)
	rng := &config.PortRange{From: base, To: base + 5}
	defs := []config.Process{
		{ID: "a", Policy: config.Companion, Replicas: 1, Port: rng},
		{ID: "none", Policy: config.Companion, Replicas: 1},
		{ID: "b", Policy: config.Companion, Replicas: 1, Port: rng},
		{ID: "c", Policy: config.Singleton, Replicas: 1, Port: &config.PortRange{From: base, To: base + 3}},
		{ID: "web", Policy: config.Proxied, Replicas: 1, Port: rng},
	}
	a, err := allocatePorts(context.Background(), "127.0.0.1", defs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.releaseAll)
	want := map[string]int{"a": base, "b": base + 2, "c": base + 3, "web": base + 4}
	if len(a.ports) != len(want) {
		t.Errorf("ports %v, want %v", a.ports, want)
	}
	for id, p := range want {
		if a.ports[id] != p {
			t.Errorf("%s got port %d, want %d (ports %v)", id, a.ports[id], p, a.ports)
		}
	}
	if bindable(base) {
		t.Errorf("port %d of a is not held until taken", base)
	}
	a.take("a")
	if !bindable(base) {
		t.Errorf("port %d still held after take", base)
	}
	a.releaseAll()
	for _, p := range []int{base + 2, base + 3, base + 4} {
		if !bindable(p) {
			t.Errorf("port %d still held after releaseAll", p)
		}
	}
}

// TestPortExhaustionErrorWording (PRT-05, spec §3.8): the exhaustion error
// counts the range's ports reserved by this allocation, in use, and (when
// any) unbindable, in the spec's exact wording; a failed allocation
// releases what it had bound, and a deploy failing on it starts nothing.
func TestPortExhaustionErrorWording(t *testing.T) {
	t.Run("reserved and in use", func(t *testing.T) {
		base := freePortBlock(t, 3)
		occupy(t, base)
		rng := &config.PortRange{From: base, To: base + 2}
		defs := []config.Process{
			{ID: "a", Policy: config.Companion, Replicas: 1, Port: rng},
			{ID: "b", Policy: config.Companion, Replicas: 1, Port: rng},
			{ID: "web", Policy: config.Proxied, Replicas: 1, Port: rng},
		}
		_, err := allocatePorts(context.Background(), "127.0.0.1", defs, nil)
		want := fmt.Sprintf("No available ports in range %d-%d (3 ports on 127.0.0.1): 2 reserved by this deploy, 1 already in use. Widen the port range, free a port, or check bind permissions.", base, base+2)
		if err == nil || err.Error() != want {
			t.Fatalf("error\n got %v\nwant %s", err, want)
		}
		for _, p := range []int{base + 1, base + 2} {
			if !bindable(p) {
				t.Errorf("port %d still held after the failed allocation", p)
			}
		}
	})
	t.Run("single port in use", func(t *testing.T) {
		base := freePortBlock(t, 1)
		occupy(t, base)
		defs := []config.Process{{ID: "web", Policy: config.Proxied, Replicas: 1, Port: &config.PortRange{From: base, To: base}}}
		_, err := allocatePorts(context.Background(), "127.0.0.1", defs, nil)
		want := fmt.Sprintf("No available ports in range %d-%d (1 port on 127.0.0.1): 0 reserved by this deploy, 1 already in use. Widen the port range, free a port, or check bind permissions.", base, base)
		if err == nil || err.Error() != want {
			t.Fatalf("error\n got %v\nwant %s", err, want)
		}
	})
	t.Run("unbindable", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root may bind privileged ports")
		}
		if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
			if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n <= 1 {
				t.Skip("port 1 is bindable without privileges here")
			}
		}
		defs := []config.Process{{ID: "web", Policy: config.Proxied, Replicas: 1, Port: &config.PortRange{From: 1, To: 1}}}
		_, err := allocatePorts(context.Background(), "127.0.0.1", defs, nil)
		want := "No available ports in range 1-1 (1 port on 127.0.0.1): 0 reserved by this deploy, 0 already in use, 1 could not be bound (e.g. EACCES). Widen the port range, free a port, or check bind permissions."
		if err == nil || err.Error() != want {
			t.Fatalf("error\n got %v\nwant %s", err, want)
		}
	})
	t.Run("deploy", func(t *testing.T) {
		base := freePortBlock(t, 2)
		occupy(t, base+1)
		h := newHarness(t, fmt.Sprintf(`export default {
  application: "demo",
  proxy: {port: 0, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker", port: {from: %d, to: %d}},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: %d, to: %d}}
  ]
}`, base, base+1, base, base+1))
		_, err := h.deploy("v1")
		want := fmt.Sprintf("No available ports in range %d-%d (2 ports on 127.0.0.1): 1 reserved by this deploy, 1 already in use. Widen the port range, free a port, or check bind permissions.", base, base+1)
		if err == nil || err.Error() != want {
			t.Fatalf("deploy error\n got %v\nwant %s", err, want)
		}
		if n := len(h.runner.Calls()); n != 0 {
			t.Errorf("%d runner calls for a deploy whose allocation failed, want none", n)
		}
		failed := eventsFor(h.m, "deploy failed", "")
		if len(failed) != 1 || failed[0].Data["error"] != want || failed[0].Data["releaseId"] != "v1" {
			t.Errorf("deploy failed events %v", failed)
		}
		if n := countEvents(h, "release startup failed"); n != 0 {
			t.Errorf("release startup failed emitted %d times for an allocation failure", n)
		}
		if !bindable(base) {
			t.Errorf("port %d still held after the failed deploy", base)
		}
		if st := h.m.Status(context.Background()); st.ActiveReleaseID != nil || len(st.Releases) != 0 {
			t.Errorf("status after the failed deploy: %+v", st)
		}
	})
}
