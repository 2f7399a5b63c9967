package release

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
)

const replicasConfig = `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000, forceStopTimeoutMs: 500},
  processes: [
    {id: "worker", command: "worker"},
    {id: "web", policy: "proxied", replicas: 3, command: "web --port {{port}} --first {{ports.web}}",
     port: {from: 0, to: 0}, restartDelayMs: 10, stickiness: {cookie: "rb"}, balance: "round-robin"}
  ]
}`

func upstreamPorts(t *testing.T, rt Route) []int {
	t.Helper()
	var out []int
	for _, u := range rt.Upstreams {
		_, p, err := net.SplitHostPort(u)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(p)
		out = append(out, n)
	}
	return out
}

// TestProxiedReplicasDeploy: every replica gets its own port, every one is
// health-checked before the one switch, which moves the whole pool.
func TestProxiedReplicasDeploy(t *testing.T) {
	h := newHarness(t, replicasConfig)
	var mu sync.Mutex
	var probed []string
	h.health = func(url string) error {
		mu.Lock()
		probed = append(probed, url)
		mu.Unlock()
		return nil
	}
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	if len(h.traffic.switches) != 1 {
		t.Fatalf("switches %v, want exactly one", h.traffic.switches)
	}
	rt := h.traffic.lastRoute()
	ports := upstreamPorts(t, rt)
	if len(ports) != 3 || ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
		t.Fatalf("route %+v: want three distinct ports", rt)
	}
	if rt.Stickiness == nil || rt.Stickiness.Cookie != "rb" || rt.Balance != "round-robin" {
		t.Errorf("route policy %+v", rt)
	}
	if len(probed) != 3 {
		t.Errorf("health probes %v, want one per replica", probed)
	}
	st := h.m.Status(context.Background())
	rel := st.Releases[0]
	if rel.Ports["web"] != ports[0] {
		t.Errorf("status ports %v, want web = replica 0's port %d", rel.Ports, ports[0])
	}
	var ids []string
	for _, p := range rel.Processes {
		if !strings.HasPrefix(p.ID, "web") {
			continue
		}
		ids = append(ids, p.ID)
		i, _ := strconv.Atoi(strings.TrimPrefix(p.ID, "web#"))
		want := "web --port " + strconv.Itoa(ports[i]) + " --first " + strconv.Itoa(ports[0])
		if p.Command != want || p.Port != ports[i] || p.InRotation == nil || !*p.InRotation || p.Connections == nil {
			t.Errorf("%s: command %q port %d inRotation %v, want %q", p.ID, p.Command, p.Port, p.InRotation, want)
		}
	}
	if strings.Join(ids, ",") != "web#0,web#1,web#2" {
		t.Errorf("proxied instances %v", ids)
	}
}

// TestCrashedReplicaLeavesAndRejoinsRotation: a replica that exits is out
// of the pool at once and back after its restart passed the health check.
func TestCrashedReplicaLeavesAndRejoinsRotation(t *testing.T) {
	h := newHarness(t, replicasConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	all := upstreamPorts(t, h.traffic.lastRoute())
	unit := units.Identity{App: "demo", Release: "v1", Process: "web", Replica: 1, Replicas: 3}.UnitName()
	gate := make(chan struct{})
	h.health = func(url string) error { <-gate; return nil }
	if err := h.runner.Exit(unit, units.Exit{Code: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web#1 out of the pool", func() bool {
		p := upstreamPorts(t, h.traffic.lastRoute())
		return len(p) == 2 && p[0] == all[0] && p[1] == all[2]
	})
	waitFor(t, "web#1 restarted", func() bool {
		for _, p := range h.m.Status(context.Background()).Releases[0].Processes {
			if p.ID == "web#1" {
				return p.State == "running" && p.Restarts == 1
			}
		}
		return false
	})
	if p := upstreamPorts(t, h.traffic.lastRoute()); len(p) != 2 {
		t.Fatalf("web#1 rejoined before its health check passed: %v", p)
	}
	close(gate)
	waitFor(t, "web#1 back in the pool", func() bool {
		return slices.Equal(upstreamPorts(t, h.traffic.lastRoute()), all)
	})
	var msgs []string
	for _, e := range h.m.Events().Recent(0) {
		if strings.HasPrefix(e.Message, "replica ") {
			msgs = append(msgs, e.Message+" "+anyStr(e.Data["id"]))
		}
	}
	if strings.Join(msgs, "; ") != "replica out of rotation web#1; replica in rotation web#1" {
		t.Errorf("events %q", msgs)
	}
}

// TestDependsOnOrdersStarts: within each deploy phase, a process starts
// after the processes it depends on; otherwise the usual order holds.
func TestDependsOnOrdersStarts(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0},
  processes: [
    {id: "late", policy: "service", command: "late", dependsOn: ["early"]},
    {id: "early", policy: "service", command: "early"},
    {id: "jobs", policy: "service", deployStrategy: "handoff", command: "jobs", port: {from: 0, to: 1}, dependsOn: ["worker", "late"]},
    {id: "worker", command: "worker", dependsOn: ["web"]},
    {id: "web", policy: "proxied", command: "web", port: {from: 0, to: 0}},
    {id: "b", policy: "singleton", command: "b", dependsOn: ["a"]},
    {id: "a", policy: "singleton", command: "a"}
  ]
}`)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	want := "v1/early v1/late v1/web v1/worker v1/jobs v1/a v1/b"
	if got := strings.Join(h.startOrder(), " "); got != want {
		t.Errorf("start order\n got %s\nwant %s", got, want)
	}
}

func (h *harness) proxied(id string) ProcessStatus {
	h.t.Helper()
	st := h.m.Status(context.Background())
	for _, p := range st.Releases[len(st.Releases)-1].Processes {
		if p.ID == id {
			return p
		}
	}
	h.t.Fatalf("no process %s", id)
	return ProcessStatus{}
}

// TestRestartReplicaStartsReplacementFirst: restart --process web#1 starts
// the next generation on a new port, moves the pool in one switch, then
// drains and stops the old one; the last replica in rotation is never
// replaced; a single proxied process keeps refusing in-place restarts.
func TestRestartReplicaStartsReplacementFirst(t *testing.T) {
	h := newHarness(t, strings.Replace(replicasConfig, `restartDelayMs: 10,`, `restartDelayMs: 10, restart: {maxRestarts: 0},`, 1))
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before := upstreamPorts(t, h.traffic.lastRoute())
	old := h.proxied("web#1")
	res, err := h.m.Restart(ctx, "web#1", "")
	if err != nil || strings.Join(res.Restarted, ",") != "web#1" {
		t.Fatalf("restart web#1: %+v %v", res, err)
	}
	after := upstreamPorts(t, h.traffic.lastRoute())
	if len(after) != 3 || after[0] != before[0] || after[2] != before[2] || after[1] == before[1] {
		t.Fatalf("pool %v → %v: want web#1 on a new port, the others unchanged", before, after)
	}
	nu := h.proxied("web#1")
	if nu.PID == old.PID || nu.LastStartReason != "manual" || !strings.Contains(nu.Unit, `web\x231\x23g1`) || nu.Port != after[1] {
		t.Errorf("replacement %+v", nu)
	}
	// The new generation started before the old one was stopped.
	var order []string
	for _, c := range h.runner.Calls() {
		if strings.Contains(c.Name, `web\x231`) && (c.Op == "start" || c.Op == "stop") {
			order = append(order, c.Op+" "+c.Name)
		}
	}
	if len(order) < 3 || !strings.HasPrefix(order[1], "start ") || !strings.Contains(order[1], `\x23g1`) || !strings.HasPrefix(order[2], "stop ") || strings.Contains(order[2], `\x23g1`) {
		t.Errorf("order %q: want start of g1 before the stop of g0", order)
	}
	h.traffic.mu.Lock()
	drains := slices.Clone(h.traffic.upDrains)
	h.traffic.mu.Unlock()
	if len(drains) != 1 || !strings.HasSuffix(drains[0], ":"+strconv.Itoa(before[1])) {
		t.Errorf("DrainUpstream calls %q, want the old web#1", drains)
	}
	n := len(h.m.Status(ctx).Releases[0].Processes)
	if n != 4 { // worker + three replicas: the old incarnation is gone
		t.Errorf("%d processes after the replacement, want 4", n)
	}

	// Rolling restart of every replica.
	if res, err := h.m.Restart(ctx, "web", ""); err != nil || strings.Join(res.Restarted, ",") != "web#0,web#1,web#2" {
		t.Fatalf("restart web: %+v %v", res, err)
	}
	if p := upstreamPorts(t, h.traffic.lastRoute()); len(p) != 3 {
		t.Fatalf("pool after the rolling restart: %v", p)
	}
	if h.proxied("web#0").Port != h.m.Status(ctx).Releases[0].Ports["web"] {
		t.Errorf("ports.web must follow replica 0: %v vs %d", h.m.Status(ctx).Releases[0].Ports, h.proxied("web#0").Port)
	}

	// Only web#1 left in rotation: it is not replaced.
	for _, id := range []string{"web#0", "web#2"} {
		if err := h.runner.Exit(h.proxied(id).Unit, units.Exit{Code: 1}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "one replica in rotation", func() bool { return len(h.traffic.lastRoute().Upstreams) == 1 })
	if _, err := h.m.Restart(ctx, "web#1", ""); err == nil || !strings.Contains(err.Error(), "only replica") {
		t.Errorf("restart of the last replica in rotation: %v", err)
	}
	if _, err := h.m.Restart(ctx, "web#7", ""); err == nil || !strings.Contains(err.Error(), "No managed process") {
		t.Errorf("restart web#7: %v", err)
	}
}

func TestRestartSingleProxiedStillRefused(t *testing.T) {
	h := newHarness(t, baseConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{"web", ""}, {"", "proxied"}} {
		if _, err := h.m.Restart(context.Background(), c[0], c[1]); err == nil || !strings.Contains(err.Error(), "cannot be restarted in place") {
			t.Errorf("restart %q %q: %v", c[0], c[1], err)
		}
	}
}

// TestRecycle: proxied replicas are recycled start-first (the pool never
// has fewer than two upstreams), a companion by stop and start; both with
// reason recycle.
func TestRecycle(t *testing.T) {
	h := newHarness(t, `export default {
  application: "demo",
  proxy: {port: 0, drainTimeoutMs: 2000},
  processes: [
    {id: "worker", command: "worker", recycle: {everyMs: 150, jitterMs: 50}},
    {id: "web", policy: "proxied", replicas: 2, command: "web --port {{port}}", port: {from: 0, to: 0}, recycle: {everyMs: 100}}
  ]
}`)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	recycled := func() (web, worker int) {
		for _, e := range h.m.Events().Recent(0) {
			switch {
			case e.Message == "replica replaced" && e.Data["reason"] == "recycle":
				web++
			case e.Message == "process started" && e.Data["reason"] == "recycle" && e.Data["id"] == "worker":
				worker++
			}
		}
		return
	}
	waitFor(t, "recycles", func() bool { w, k := recycled(); return w >= 4 && k >= 2 })
	h.traffic.mu.Lock()
	routes := slices.Clone(h.traffic.routes)
	h.traffic.mu.Unlock()
	for i, rt := range routes {
		if len(rt.Upstreams) != 2 {
			t.Fatalf("switch %d had %d upstreams; the pool must never shrink: %v", i, len(rt.Upstreams), rt.Upstreams)
		}
	}
	if p := h.proxied("worker"); p.LastStartReason != "recycle" {
		t.Errorf("worker %+v", p)
	}
	if p := h.proxied("web#0"); p.LastStartReason != "recycle" || !strings.Contains(p.Unit, `\x23g`) {
		t.Errorf("web#0 %+v", p)
	}
	t.Logf("%d switches, pool size 2 throughout", len(routes))
}

// TestAdoptReplicaGenerations: a new daemon re-adopts replicas of any
// generation with their own ports; when a slot has two incarnations (the
// previous daemon ended during a replacement) the newest serves and the
// older is drained and stopped.
func TestAdoptReplicaGenerations(t *testing.T) {
	h := newHarness(t, replicasConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := h.m.Restart(ctx, "web#1", ""); err != nil {
		t.Fatal(err)
	}
	// A newer incarnation of web#2 that the old daemon started but did not
	// finish switching to.
	var spec2 units.Spec
	for _, c := range h.runner.Calls() {
		if c.Op == "start" && c.Spec.Identity.Process == "web" && c.Spec.Identity.Replica == 2 {
			spec2 = c.Spec
		}
	}
	spec2.Identity.Generation = 4
	var env []string
	for _, kv := range spec2.Env {
		if strings.HasPrefix(kv, "ROLLBRIDGE_PORT=") {
			kv = "ROLLBRIDGE_PORT=45999"
		}
		env = append(env, kv)
	}
	spec2.Env = env
	if _, err := h.runner.Start(ctx, spec2); err != nil {
		t.Fatal(err)
	}
	want := upstreamPorts(t, h.traffic.lastRoute())
	want[2] = 45999
	oldWeb2 := h.proxied("web#2").Unit
	h.m.detach() // the old daemon goes away without stopping anything

	traffic := newFakeTraffic()
	m, err := New(Options{Config: h.m.config(), Runner: h.runner.Reopen(), Traffic: traffic, Env: []string{"PATH=/usr/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := m.Run(rctx); err != nil {
		t.Fatal(err)
	}
	res, err := m.Adopt(ctx, nil)
	if err != nil || res.Active != "v1" {
		t.Fatalf("Adopt: %+v %v", res, err)
	}
	if got := upstreamPorts(t, traffic.lastRoute()); !slices.Equal(got, want) {
		t.Errorf("adopted pool %v, want %v (web#1 generation 1, web#2 generation 4)", got, want)
	}
	waitFor(t, "the stale web#2 stopped", func() bool {
		st, err := h.runner.Status(ctx, oldWeb2)
		return err == nil && st.State != units.StateRunning
	})
	waitFor(t, "one incarnation per replica in status", func() bool {
		n := 0
		for _, p := range m.Status(ctx).Releases[0].Processes {
			if strings.HasPrefix(p.ID, "web#") {
				n++
			}
		}
		return n == 3
	})
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	_ = m.Shutdown(sctx)
}

// TestRequestedReplacement: an instance that sends STATUS=rollbridge:replace
// is replaced gracefully: a replica start-first, a companion by stop and
// start; other STATUS texts are ignored.
func TestRequestedReplacement(t *testing.T) {
	h := newHarness(t, replicasConfig)
	if _, err := h.deploy("v1"); err != nil {
		t.Fatal(err)
	}
	old := h.proxied("web#1")
	h.runner.SendStatus(old.Unit, "rollbridge:replacement is not a request")
	h.runner.SendStatus(h.proxied("web#0").Unit, "serving")
	if err := h.runner.SendStatus(old.Unit, "rollbridge:replace uncaught TypeError"); err != nil {
		t.Fatal(err)
	}
	h.runner.SendStatus(old.Unit, "rollbridge:replace") // a repeat counts once
	waitFor(t, "web#1 replaced", func() bool {
		p := h.proxied("web#1")
		return p.PID != old.PID && p.LastStartReason == "requested"
	})
	worker := h.proxied("worker")
	h.runner.SendStatus(worker.Unit, "rollbridge:replace")
	waitFor(t, "worker restarted", func() bool {
		p := h.proxied("worker")
		return p.PID != worker.PID && p.State == "running" && p.LastStartReason == "requested"
	})
	replaced := 0
	for _, e := range h.m.Events().Recent(0) {
		if e.Message == "replica replaced" {
			replaced++
		}
	}
	if replaced != 1 {
		t.Errorf("%d replacements, want 1", replaced)
	}
	if p := upstreamPorts(t, h.traffic.lastRoute()); len(p) != 3 || h.proxied("web#0").LastStartReason != "deploy" {
		t.Errorf("pool %v; web#0 %+v", p, h.proxied("web#0"))
	}
}

// TestAllocatePortsPerReplica: a proxied process with replicas gets one
// port per replica from its range, replica 0's being ports[id]; a
// replacement port avoids the ports in use.
func TestAllocatePortsPerReplica(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if base > 65000 {
		base = 40000
	}
	defs := []config.Process{
		{ID: "jobs", Policy: config.Companion, Replicas: 2, Port: &config.PortRange{From: 0, To: 0}},
		{ID: "web", Policy: config.Proxied, Replicas: 3, Port: &config.PortRange{From: base, To: base + 20}},
	}
	a, err := allocatePorts(context.Background(), "127.0.0.1", defs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.releaseAll()
	rp := a.replicaPorts["web"]
	if len(rp) != 3 || rp[0] != a.ports["web"] || rp[0] == rp[1] || rp[1] == rp[2] || rp[0] == rp[2] {
		t.Fatalf("replica ports %v, ports %v", rp, a.ports)
	}
	for _, p := range rp {
		if p < base || p > base+20 {
			t.Errorf("port %d outside %d-%d", p, base, base+20)
		}
	}
	if _, ok := a.replicaPorts["jobs"]; ok || a.ports["jobs"] == 0 || len(a.holds["web"]) != 3 {
		t.Errorf("non-proxied process: %v %v; holds %d", a.replicaPorts, a.ports, len(a.holds["web"]))
	}
	a.take("web")
	port, hold, err := allocateReplacementPort(context.Background(), "127.0.0.1", *defs[1].Port, rp)
	if err != nil {
		t.Fatal(err)
	}
	hold.Close()
	if slices.Contains(rp, port) || port < base || port > base+20 {
		t.Errorf("replacement port %d collides with %v or leaves the range", port, rp)
	}
	// A range without room fails with the usual message.
	small := []config.Process{{ID: "web", Policy: config.Proxied, Replicas: 3, Port: &config.PortRange{From: base + 30, To: base + 31}}}
	if _, err := allocatePorts(context.Background(), "127.0.0.1", small, nil); err == nil || !strings.Contains(err.Error(), "No available ports in range") {
		t.Errorf("small range: %v", err)
	}
}
