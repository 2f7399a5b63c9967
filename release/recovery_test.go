package release

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// lastStartUnit is the unit of the latest recorded start of process.
func lastStartUnit(t *testing.T, h *harness, process string) string {
	t.Helper()
	var unit string
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && c.Spec.Identity.Process == process {
			unit = c.Name
		}
	}
	if unit == "" {
		t.Fatalf("no start of %s recorded", process)
	}
	return unit
}

// startsOf counts the recorded starts of unit.
func startsOf(h *harness, unit string) int {
	n := 0
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && c.Name == unit {
			n++
		}
	}
	return n
}

// releaseStates maps release id to state in the manager's status.
func releaseStates(h *harness) map[string]string {
	out := map[string]string{}
	for _, r := range h.m.Status(context.Background()).Releases {
		out[r.ReleaseID] = r.State
	}
	return out
}

// TestSpawnFailureThenRecovery: a start that fails fails the deploy and
// leaves the previous release serving; once the cause is gone the same
// deploy succeeds (spec §11.2-5: a spawn failure leaves nothing behind that
// turns later starts into no-ops).
func TestSpawnFailureThenRecovery(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	web2 := units.Identity{App: "demo", Release: "v2", Process: "web", Replicas: 1}.UnitName()
	h.runner.FailStart(web2, errors.New("exec: web: not found"))
	_, err := h.deploy("v2")
	if err == nil || !strings.Contains(err.Error(), "exec: web: not found") {
		t.Fatalf("deploy v2 with a failing start: %v", err)
	}
	if h.traffic.current() != "v1" {
		t.Errorf("traffic moved to %q", h.traffic.current())
	}
	st := h.m.Status(context.Background())
	if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" || len(st.Releases) != 1 || st.Releases[0].State != relActive {
		t.Fatalf("status after failed deploy: active %v releases %+v", st.ActiveReleaseID, st.Releases)
	}
	for _, p := range st.Releases[0].Processes {
		if p.State != stateRunning {
			t.Errorf("v1 %s is %s after the failed deploy", p.ID, p.State)
		}
	}
	if n := countEvents(h, "deploy failed"); n != 1 {
		t.Errorf("deploy failed emitted %d times", n)
	}

	h.runner.FailStart(web2, nil)
	res, err := h.deploy("v2")
	if err != nil || res.ActiveReleaseID != "v2" || res.PreviousReleaseID == nil || *res.PreviousReleaseID != "v1" {
		t.Fatalf("deploy v2 after the failure cleared: %+v %v", res, err)
	}
	if h.traffic.current() != "v2" {
		t.Errorf("traffic on %q", h.traffic.current())
	}
	if n := startsOf(h, web2); n != 2 {
		t.Errorf("%s started %d times, want 2 (failed, then real)", web2, n)
	}
	if p := processStatus(t, h, "v2", "web"); p.State != stateRunning || p.PID == 0 || p.LastStartReason != reasonDeploy {
		t.Errorf("v2 web: %+v", p)
	}
	waitFor(t, "v1 stopped", func() bool { return releaseStates(h)["v1"] == relStopped })
}

// TestCrashRestartSpawnFailureThenManualRestart: a crash restart whose
// start fails leaves the instance failed, and a later restart really
// starts it again (the original's restart was a silent no-op, §11.2-5).
func TestCrashRestartSpawnFailureThenManualRestart(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	unit := units.Identity{App: "demo", Release: "v1", Process: "worker", Replica: 0, Replicas: 2}.UnitName()
	h.runner.FailStart(unit, errors.New("fork: resource temporarily unavailable"))
	if err := h.runner.Exit(unit, units.Exit{Code: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "process restart failed", func() bool { return countEvents(h, "process restart failed") == 1 })
	if p := processStatus(t, h, "v1", "worker#0"); p.State != stateFailed || p.PID != 0 {
		t.Fatalf("after the failed crash restart: %+v", p)
	}
	h.runner.FailStart(unit, nil)
	before := startsOf(h, unit)
	res, err := h.m.Restart(context.Background(), "worker#0", "")
	if err != nil || strings.Join(res.Restarted, ",") != "worker#0" {
		t.Fatalf("restart: %+v %v", res, err)
	}
	if n := startsOf(h, unit) - before; n != 1 {
		t.Errorf("restart started the unit %d times, want 1", n)
	}
	if p := processStatus(t, h, "v1", "worker#0"); p.State != stateRunning || p.PID == 0 || p.LastStartReason != reasonManual {
		t.Errorf("after restart: %+v", p)
	}
}

// TestDeployRevivesFailedService: a persistent service whose restart budget
// ran out stays failed until the next successful deploy starts it again
// (startServices, spec §11.2-6); a deploy leaves a running one alone.
func TestDeployRevivesFailedService(t *testing.T) {
	src := strings.Replace(baseConfig, `command: "beacon --port {{port}}",`,
		`command: "beacon --port {{port}}", restartDelayMs: 10, restart: {maxRestarts: 1, windowMs: 60000},`, 1)
	h := newHarness(t, src)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	beacon := func() ProcessStatus {
		for _, s := range h.m.Status(context.Background()).Services {
			if s.ID == "beacon" {
				return s.Process
			}
		}
		t.Fatal("no beacon service")
		return ProcessStatus{}
	}
	unit := lastStartUnit(t, h, "beacon")
	if err := h.runner.Exit(unit, units.Exit{Code: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "beacon crash restart", func() bool { p := beacon(); return p.State == stateRunning && p.Restarts == 1 })
	if err := h.runner.Exit(lastStartUnit(t, h, "beacon"), units.Exit{Code: 2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart limit reached", func() bool { return countEvents(h, "restart limit reached") == 1 })
	if p := beacon(); p.State != stateFailed || p.PID != 0 {
		t.Fatalf("beacon after its budget: %+v", p)
	}

	if _, err := h.deploy("v2"); err != nil {
		t.Fatal(err)
	}
	p := beacon()
	if p.State != stateRunning || p.PID == 0 || p.LastStartReason != reasonDeploy {
		t.Fatalf("beacon after deploy v2: state %s pid %d reason %s, want running/deploy", p.State, p.PID, p.LastStartReason)
	}
	if !strings.Contains(p.Command, "beacon --port") {
		t.Errorf("revived beacon command %q", p.Command)
	}
	// Running now: the next deploy does not touch it.
	pid := p.PID
	if _, err := h.deploy("v3"); err != nil {
		t.Fatal(err)
	}
	if p := beacon(); p.PID != pid || p.State != stateRunning {
		t.Errorf("deploy v3 restarted the running beacon: %+v", p)
	}
	// The revival gave it a fresh budget: its next crash is restarted,
	// not counted against the crashes that exhausted the old one.
	restarts := beacon().Restarts
	if err := h.runner.Exit(lastStartUnit(t, h, "beacon"), units.Exit{Code: 3}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "revived beacon crash restart", func() bool {
		p := beacon()
		return p.State == stateRunning && p.Restarts == restarts+1 && p.LastStartReason == reasonCrash
	})
	if n := countEvents(h, "restart limit reached"); n != 1 {
		t.Errorf("restart limit reached %d times, want once (before the revival)", n)
	}
}

// TestFailedRollbackKeepsCurrent: a rollback whose target fails to start
// leaves the current release active and serving, and the target retained
// for a later rollback (RBK-05).
func TestFailedRollbackKeepsCurrent(t *testing.T) {
	h := newHarness(t, baseConfig)
	ctx := context.Background()
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.deploy("v2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "v1 stopped", func() bool { return releaseStates(h)["v1"] == relStopped })

	web1 := units.Identity{App: "demo", Release: "v1", Process: "web", Replicas: 1}.UnitName()
	h.runner.FailStart(web1, errors.New("exec: web: permission denied"))
	if _, err := h.m.Rollback(ctx, ""); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("rollback with a failing start: %v", err)
	}
	if h.traffic.current() != "v2" {
		t.Errorf("traffic moved to %q", h.traffic.current())
	}
	st := h.m.Status(ctx)
	if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v2" {
		t.Fatalf("active after failed rollback: %v", st.ActiveReleaseID)
	}
	if got := releaseStates(h); got["v2"] != relActive || got["v1"] != relStopped || len(got) != 2 {
		t.Errorf("releases after failed rollback: %v", got)
	}
	for _, p := range st.Releases {
		if p.ReleaseID != "v2" {
			continue
		}
		for _, pr := range p.Processes {
			if pr.State != stateRunning {
				t.Errorf("v2 %s is %s after the failed rollback", pr.ID, pr.State)
			}
		}
	}
	// Nothing of the failed attempt is left running (beacon, a persistent
	// service, keeps the unit name of the release it first started with).
	list, _ := h.runner.List(ctx, "demo")
	for _, s := range list {
		if strings.Contains(s.Name, "-v1-") && !strings.Contains(s.Name, "-beacon") && s.State == units.StateRunning {
			t.Errorf("%s of the failed rollback still running", s.Name)
		}
	}

	h.runner.FailStart(web1, nil)
	res, err := h.m.Rollback(ctx, "")
	if err != nil || res.ActiveReleaseID != "v1" {
		t.Fatalf("rollback after the failure cleared: %+v %v", res, err)
	}
	if h.traffic.current() != "v1" {
		t.Errorf("traffic on %q after rollback", h.traffic.current())
	}
}

// retentionConfig is baseConfig with releaseRetention set.
func retentionConfig(retention string) string {
	return strings.Replace(baseConfig, `application: "demo",`, `application: "demo", releaseRetention: `+retention+`,`, 1)
}

// TestRetentionMaxAgeWithoutDeploy: a stopped release older than maxAgeMs
// leaves the registry without another deploy or stop, keep still prunes at
// once, and the active release is never pruned. Runs in a synctest bubble
// (fake clock for the manager and its prune timer).
func TestRetentionMaxAgeWithoutDeploy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxAge = 2 * time.Second
		h := newHarness(t, retentionConfig(`{keep: 1, maxAgeMs: 2000}`))
		for _, id := range []string{"v1", "v2"} {
			if _, err := h.deploy(id); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if got := releaseStates(h); got["v1"] != relStopped || got["v2"] != relActive {
			t.Fatalf("after v2: %v", got)
		}
		if _, err := h.deploy("v3"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		// keep: 1 keeps only the newest stopped release.
		if got := releaseStates(h); len(got) != 2 || got["v2"] != relStopped || got["v3"] != relActive {
			t.Fatalf("after v3 (keep 1): %v", got)
		}
		time.Sleep(maxAge - 500*time.Millisecond)
		synctest.Wait()
		if got := releaseStates(h); got["v2"] != relStopped {
			t.Fatalf("v2 pruned before maxAgeMs: %v", got)
		}
		// Past maxAgeMs plus one prune interval (maxAgeMs/2).
		time.Sleep(maxAge)
		synctest.Wait()
		if got := releaseStates(h); len(got) != 1 || got["v3"] != relActive {
			t.Fatalf("after maxAgeMs without a deploy: %v", got)
		}
		if _, err := h.m.Rollback(context.Background(), "v2"); err == nil || !strings.Contains(err.Error(), `No retained release "v2"`) {
			t.Errorf("rollback to a pruned release: %v", err)
		}
	})
}

// TestRetentionNoMaxAgeKeepsOld: without maxAgeMs age never prunes; only
// keep does.
func TestRetentionNoMaxAgeKeepsOld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, retentionConfig(`{keep: 1}`))
		for _, id := range []string{"v1", "v2", "v3"} {
			if _, err := h.deploy(id); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		time.Sleep(24 * time.Hour)
		synctest.Wait()
		if got := releaseStates(h); len(got) != 2 || got["v2"] != relStopped || got["v3"] != relActive {
			t.Fatalf("after a day: %v", got)
		}
	})
}
