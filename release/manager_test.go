package release

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

// fakeTraffic records switches and lets tests hold connections open.
type fakeTraffic struct {
	mu       sync.Mutex
	active   string
	switches []string
	routes   []Route // every Switch's route, in order
	conns    map[string]int
	upConns  map[string]int // in-flight per upstream of the active release
	drained  chan string
	upDrains []string // DrainUpstream calls: upstream addresses
}

func newFakeTraffic() *fakeTraffic {
	return &fakeTraffic{conns: map[string]int{}, upConns: map[string]int{}, drained: make(chan string, 10)}
}

func (f *fakeTraffic) Switch(release string, rt Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.active = release
	f.switches = append(f.switches, release)
	f.routes = append(f.routes, rt)
}

func (f *fakeTraffic) UpstreamConnections(string) map[string]Connections {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]Connections{}
	for u, n := range f.upConns {
		out[u] = Connections{HTTP: n}
	}
	return out
}

func (f *fakeTraffic) DrainUpstream(_ context.Context, _, upstream string, _ time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.upDrains = append(f.upDrains, upstream)
}

// lastRoute returns the route of the latest switch.
func (f *fakeTraffic) lastRoute() Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.routes) == 0 {
		return Route{}
	}
	return f.routes[len(f.routes)-1]
}
func (f *fakeTraffic) Clear() { f.mu.Lock(); f.active = ""; f.mu.Unlock() }
func (f *fakeTraffic) Connections(release string) (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns[release], 0
}
func (f *fakeTraffic) Drain(ctx context.Context, release string, deadline time.Time) {
	for {
		if h, _ := f.Connections(release); h == 0 || time.Now().After(deadline) {
			f.drained <- release
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}
func (f *fakeTraffic) Forget(string) {}

func (f *fakeTraffic) current() string { f.mu.Lock(); defer f.mu.Unlock(); return f.active }

type harness struct {
	t       *testing.T
	m       *Manager
	runner  *unitstest.Fake
	traffic *fakeTraffic
	cfgPath string
	dir     string
	health  func(url string) error
}

const baseConfig = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000, forceStopTimeoutMs: 500},
  processes: [
    {id: "beacon", policy: "service", command: "beacon --port {{port}}", port: {from: 0, to: 0}},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs --beacon {{ports.beacon}}", port: {from: 0, to: 1}},
    {id: "worker", command: "worker {{replicaIndex}}", replicas: 2, restartDelayMs: 10},
    {id: "cron", policy: "singleton", command: "cron"},
    {id: "web", policy: "proxied", command: "web --port {{port}}", port: {from: 0, to: 0}, restartDelayMs: 10}
  ]
}`

func newHarness(t *testing.T, src string) *harness {
	t.Helper()
	return newHarnessWith(t, src, nil)
}

// startManager creates a Manager from opts and runs it until the test
// ends, when it is shut down.
func startManager(t *testing.T, opts Options) *Manager {
	t.Helper()
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = m.Shutdown(sctx)
		cancel()
	})
	if err := m.Run(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

func (h *harness) deploy(id string) (DeployResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.m.Deploy(ctx, DeployRequest{ReleasePath: h.dir, ReleaseID: id})
}

func (h *harness) startOrder() []string {
	var out []string
	for _, c := range h.runner.Calls() {
		if c.Op == "start" {
			_, rel, inst, _ := units.ParseUnitName(c.Name)
			out = append(out, rel+"/"+inst)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDeployOrderAndSwitch(t *testing.T) {
	h := newHarness(t, baseConfig)
	res, err := h.deploy("v1")
	if err != nil {
		t.Fatal(err)
	}
	if res.ActiveReleaseID != "v1" || res.PreviousReleaseID != nil {
		t.Fatalf("result %+v", res)
	}
	// Processes start one after another; the replicas of one process at
	// once, so their relative order is free.
	order := h.startOrder()
	if len(order) == 6 && order[2] > order[3] {
		order[2], order[3] = order[3], order[2]
	}
	want := "v1/beacon v1/jobs v1/worker#0 v1/worker#1 v1/web v1/cron"
	if got := strings.Join(order, " "); got != want {
		t.Errorf("start order\n got %s\nwant %s", got, want)
	}
	if h.traffic.current() != "v1" {
		t.Errorf("traffic on %q", h.traffic.current())
	}
	st := h.m.Status(context.Background())
	if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" || len(st.Releases) != 1 || len(st.Services) != 1 || len(st.Singletons) != 1 {
		t.Fatalf("status %+v", st)
	}
	for _, p := range st.Releases[0].Processes {
		if p.State != "running" || p.LastStartReason != "deploy" || p.PID == 0 {
			t.Errorf("process %+v", p)
		}
	}
}

func TestSecondDeployRetiresPreviousAndKeepsService(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	beaconPID := h.m.Status(context.Background()).Services[0].Process.PID
	h.traffic.mu.Lock()
	h.traffic.conns["v1"] = 1 // an open request keeps v1 draining
	h.traffic.mu.Unlock()
	res, err := h.deploy("v2")
	if err != nil {
		t.Fatal(err)
	}
	if res.PreviousReleaseID == nil || *res.PreviousReleaseID != "v1" {
		t.Fatalf("previous %v", res.PreviousReleaseID)
	}
	st := h.m.Status(context.Background())
	if st.Releases[0].State != "draining" {
		t.Errorf("v1 state %s, want draining while a connection is open", st.Releases[0].State)
	}
	if st.Services[0].Process.PID != beaconPID {
		t.Error("persistent service was restarted by a deploy")
	}
	if !strings.Contains(st.Services[0].Process.Command, "beacon --port") {
		t.Errorf("service command %q", st.Services[0].Process.Command)
	}
	h.traffic.mu.Lock()
	h.traffic.conns["v1"] = 0
	h.traffic.mu.Unlock()
	waitFor(t, "v1 stopped", func() bool { return h.m.Status(context.Background()).Releases[0].State == "stopped" })
	// Singleton: the old one stopped before the new one started.
	var order []string
	for _, c := range h.runner.Calls() {
		if strings.Contains(c.Name, "cron") && (c.Op == "start" || c.Op == "stop") {
			order = append(order, c.Op+":"+c.Name)
		}
	}
	if len(order) != 3 || !strings.HasPrefix(order[1], "stop:") || !strings.Contains(order[1], "-v1-") || !strings.Contains(order[2], "-v2-") {
		t.Errorf("singleton order %v", order)
	}
}

func TestFailedHealthKeepsPreviousRelease(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	h.health = func(url string) error { return errors.New("Health check failed for " + url + ": HTTP 500") }
	_, err := h.deploy("v2")
	if err == nil || !strings.Contains(err.Error(), "Health check failed") {
		t.Fatalf("deploy v2 err %v", err)
	}
	if h.traffic.current() != "v1" {
		t.Errorf("traffic moved to %q", h.traffic.current())
	}
	st := h.m.Status(context.Background())
	if len(st.Releases) != 1 || st.Releases[0].ReleaseID != "v1" || st.Releases[0].State != "active" {
		t.Fatalf("releases after failed deploy: %+v", st.Releases)
	}
	msgs := map[string]int{}
	for _, e := range h.m.Events().Recent(0) {
		msgs[e.Message+"|"+anyStr(e.Data["phase"])]++
	}
	if msgs["release startup failed|before cleanup"] != 1 || msgs["release startup failed|after cleanup"] != 1 || msgs["deploy failed|"] != 1 {
		t.Errorf("events %v", msgs)
	}
	// Everything v2 started is stopped.
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && strings.Contains(c.Name, "-v2-") {
			if s, err := h.runner.Status(context.Background(), c.Name); err == nil && s.State == units.StateRunning {
				t.Errorf("%s still running", c.Name)
			}
		}
	}
}

func anyStr(v any) string {
	s, _ := v.(string)
	return s
}

func TestCrashRestartAndBudget(t *testing.T) {
	src := strings.Replace(baseConfig, `restartDelayMs: 10},`, `restartDelayMs: 10, restart: {maxRestarts: 2, windowMs: 60000}},`, 1)
	h := newHarness(t, src)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	unit := units.Identity{App: "demo", Release: "v1", Process: "worker", Replica: 0, Replicas: 2}.UnitName()
	for i := 1; i <= 2; i++ {
		if err := h.runner.Exit(unit, units.Exit{Code: 0}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "crash restart", func() bool {
			p := h.m.Status(context.Background()).Releases[0].Processes[1]
			return p.Restarts == i && p.State == "running" && p.LastStartReason == "crash"
		})
	}
	h.runner.Exit(unit, units.Exit{Code: 1})
	waitFor(t, "restart limit", func() bool {
		for _, e := range h.m.Events().Recent(0) {
			if e.Message == "restart limit reached" {
				return true
			}
		}
		return false
	})
	p := h.m.Status(context.Background()).Releases[0].Processes[1]
	if p.State != "failed" || p.ExitCode.value() != 1 {
		t.Errorf("after budget: %+v", p)
	}
	// A manual restart revives it.
	res, err := h.m.Restart(context.Background(), "worker#0", "")
	if err != nil || len(res.Restarted) != 1 {
		t.Fatalf("restart %v %v", res, err)
	}
	if p := h.m.Status(context.Background()).Releases[0].Processes[1]; p.State != "running" || p.LastStartReason != "manual" {
		t.Errorf("after manual restart: %+v", p)
	}
}

func TestRestartRules(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := h.m.Restart(ctx, "web", ""); err == nil || !strings.Contains(err.Error(), "cannot be restarted in place") {
		t.Errorf("proxied restart: %v", err)
	}
	if _, err := h.m.Restart(ctx, "nope", ""); err == nil || err.Error() != `No managed process with id "nope" to restart.` {
		t.Errorf("unknown: %v", err)
	}
	res, err := h.m.Restart(ctx, "worker", "")
	if err != nil || strings.Join(res.Restarted, ",") != "worker#0,worker#1" {
		t.Errorf("replicas: %v %v", res, err)
	}
	res, err = h.m.Restart(ctx, "", "service")
	if err != nil || strings.Join(res.Restarted, ",") != "beacon,jobs" {
		t.Errorf("services: %v %v", res, err)
	}
}

func TestRollbackAndStop(t *testing.T) {
	h := newHarness(t, baseConfig)
	ctx := context.Background()
	if _, err := h.m.Rollback(ctx, ""); err == nil || err.Error() != "No previous release to roll back to." {
		t.Errorf("no previous: %v", err)
	}
	h.deploy("v1")
	h.deploy("v2")
	waitFor(t, "v1 stopped", func() bool { return h.m.Status(ctx).Releases[0].State == "stopped" })
	if _, err := h.m.Rollback(ctx, "v2"); err == nil || err.Error() != `Release "v2" is already active.` {
		t.Errorf("active: %v", err)
	}
	if _, err := h.m.Rollback(ctx, "v9"); err == nil || err.Error() != `No retained release "v9" to roll back to.` {
		t.Errorf("unknown: %v", err)
	}
	res, err := h.m.Rollback(ctx, "")
	if err != nil || res.ActiveReleaseID != "v1" || *res.PreviousReleaseID != "v2" {
		t.Fatalf("rollback %+v %v", res, err)
	}
	if h.traffic.current() != "v1" {
		t.Errorf("traffic %q", h.traffic.current())
	}
	st, err := h.m.Stop(ctx, "")
	if err != nil || st.ActiveReleaseID != nil || h.traffic.current() != "" {
		t.Fatalf("stop: %+v %v traffic %q", st, err, h.traffic.current())
	}
	if _, err := h.m.Stop(ctx, ""); err == nil || err.Error() != "Release not found: active" {
		t.Errorf("stop without active: %v", err)
	}
	if len(st.Services) != 1 || st.Services[0].Process.State != "running" {
		t.Errorf("stop touched the service: %+v", st.Services)
	}
}

func TestDeployRefusals(t *testing.T) {
	h := newHarness(t, baseConfig)
	h.deploy("v1")
	if _, err := h.deploy("v1"); err == nil || !strings.Contains(err.Error(), `Release "v1" is already active`) {
		t.Errorf("redeploy active id: %v", err)
	}
	// Incompatible reload: proxy port change.
	os.WriteFile(h.cfgPath, []byte(strings.Replace(baseConfig, "port: 0, drain", "port: 1234, drain", 1)), 0o644)
	if _, err := h.deploy("v2"); err == nil || !strings.Contains(err.Error(), "cannot be applied live") {
		t.Errorf("incompatible: %v", err)
	}
	// Busy.
	release, err := h.m.begin("a test deploy")
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.deploy("v3")
	release()
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "a test deploy is running") {
		t.Errorf("busy: %v", err)
	}
}

func TestShutdownStopsEverything(t *testing.T) {
	h := newHarness(t, baseConfig)
	h.deploy("v1")
	ctx := context.Background()
	if err := h.m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	list, _ := h.runner.List(ctx, "demo")
	for _, s := range list {
		if s.State == units.StateRunning {
			t.Errorf("%s still running after shutdown", s.Name)
		}
	}
	if _, err := h.deploy("v2"); err == nil || err.Error() != "Rollbridge is shutting down" {
		t.Errorf("deploy after shutdown: %v", err)
	}
}

func TestRestartDelay(t *testing.T) {
	def := &config.Process{RestartDelay: 10 * time.Millisecond, Restart: config.Restart{BackoffFactor: 2, MaxDelay: 500 * time.Millisecond}}
	var got []time.Duration
	for n := range 8 {
		got = append(got, restartDelay(def, n))
	}
	want := []time.Duration{10, 20, 40, 80, 160, 320, 500, 500}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Errorf("delay(%d) = %v, want %v", i, got[i], want[i]*time.Millisecond)
		}
	}
	def.Restart = config.Restart{BackoffFactor: 1, MaxDelay: 5 * time.Millisecond}
	if d := restartDelay(def, 0); d != 5*time.Millisecond {
		t.Errorf("fast path cap: %v", d)
	}
}

func TestReleaseIDFromTime(t *testing.T) {
	ts := time.Date(2026, 5, 23, 14, 31, 9, 512e6, time.UTC)
	if got := releaseIDFromTime(ts); got != "20260523143109512" {
		t.Errorf("got %s", got)
	}
}
