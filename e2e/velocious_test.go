package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/units"
)

// jobsRange is the handoff service's port range: a multi-port range is
// required, and old and new instances must hold different ports from it.
const jobsFrom, jobsTo = 27400, 27499

// velociousTopology is the shape of examples/velocious.js with the demo app
// and shell workers: a persistent beacon broker, a handoff coordinator, a
// pool of four draining workers and the proxied web process
// (TestVelociousExampleShape keeps the two in step). The workers drain on
// SIGINT rather than the example's SIGTERM, to prove a non-default
// stopSignal reaches them.
func velociousTopology(dir string) string {
	workers := filepath.Join(dir, "workers.log")
	ints := filepath.Join(dir, "sigint.log")
	quiet := filepath.Join(dir, "quiet.log")
	worker := `echo "$ROLLBRIDGE_RELEASE_ID $ROLLBRIDGE_REPLICA_INDEX $ROLLBRIDGE_REPLICA_COUNT {{replicaIndex}}/{{replicaCount}} ` +
		`{{ports.beacon}} $ROLLBRIDGE_BEACON_PORT {{ports.jobs-main}} $ROLLBRIDGE_JOBS_MAIN_PORT" >> ` + workers + `; ` +
		`trap 'echo "$ROLLBRIDGE_RELEASE_ID $ROLLBRIDGE_REPLICA_INDEX" >> ` + ints + `; exit 0' INT; ` +
		`while :; do sleep 0.05; done`
	return fmt.Sprintf(`[
    {id: "beacon", policy: "service", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}},
    {id: "jobs-main", policy: "service", deployStrategy: "handoff", command: "./demo-app --port {{port}}", port: {from: %d, to: %d}},
    {id: "worker", policy: "companion", replicas: 4, nonBlockingDrain: true, stopSignal: "SIGINT", gracefulStopMs: 5000,
     lifecycle: {quietCommand: %s},
     command: %s},
    %s
  ]`, jobsFrom, jobsTo,
		jsQuote(`echo "$ROLLBRIDGE_RELEASE_ID $ROLLBRIDGE_REPLICA_INDEX $ROLLBRIDGE_PID" >> `+quiet),
		jsQuote(worker), webProcess)
}

func TestVelociousTopology(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := markerDir(t, "velo")
		e := newEnv(t, runner, velociousTopology(dir))
		releaseIDs := []string{"v1", "v2", "v3"}
		var beacon process
		var beaconPort int
		jobsPorts := map[string]int{}
		workerPIDs := map[string]int{} // "v1 0" → pid

		for i, id := range releaseIDs {
			e.deploy(id)
			st := e.status()
			if st.ActiveReleaseID == nil || *st.ActiveReleaseID != id {
				t.Fatalf("after deploy %s the active release is %v", id, st.ActiveReleaseID)
			}
			if _, body, err := get(e.proxyURL("/")); err != nil || !strings.Contains(body, "release "+id) {
				t.Fatalf("proxy after deploy %s: %q %v", id, body, err)
			}
			// The reply comes after retirement began: never two active
			// releases.
			for _, r := range st.Releases {
				if r.ReleaseID != id && r.State == "active" {
					t.Errorf("right after deploy %s, %s is still active", id, r.ReleaseID)
				}
			}
			if len(st.Services) != 1 || st.Services[0].Process.ID != "beacon" {
				t.Fatalf("services after %s: %+v", id, st.Services)
			}
			b := st.Services[0].Process
			var rel = st.Releases[len(st.Releases)-1]
			if rel.ReleaseID != id {
				t.Fatalf("newest release is %s, want %s", rel.ReleaseID, id)
			}
			if i == 0 {
				beacon, beaconPort = b, rel.Ports["beacon"]
				if beacon.PID == 0 || beaconPort == 0 {
					t.Fatalf("beacon not running on a port: %+v port %d", beacon, beaconPort)
				}
				if code, _, err := get(fmt.Sprintf("http://127.0.0.1:%d/ping", beaconPort)); err != nil || code != 200 {
					t.Fatalf("beacon does not answer on its port %d: %d %v", beaconPort, code, err)
				}
			} else if b.PID != beacon.PID || rel.Ports["beacon"] != beaconPort || b.State != "running" {
				t.Errorf("persistent beacon changed at %s: pid %d→%d port %d→%d state %s",
					id, beacon.PID, b.PID, beaconPort, rel.Ports["beacon"], b.State)
			}
			jp := rel.Ports["jobs-main"]
			if jp < jobsFrom || jp > jobsTo {
				t.Errorf("jobs-main of %s on port %d, outside %d-%d", id, jp, jobsFrom, jobsTo)
			}
			jobsPorts[id] = jp
			if i > 0 {
				prev := releaseIDs[i-1]
				if jobsPorts[prev] == jp {
					t.Errorf("handoff jobs-main of %s reuses the port %d of %s", id, jp, prev)
				}
			}
			for r := range 4 {
				p := e.mustProcess(st, id, fmt.Sprintf("worker#%d", r))
				if p.State != "running" || p.PID == 0 {
					t.Errorf("%s worker#%d not running: %+v", id, r, p)
				}
				workerPIDs[fmt.Sprintf("%s %d", id, r)] = p.PID
			}

			e.waitStopped(id, 20*time.Second)
			st = e.status()
			checkVelociousUnits(t, e, st, id)

			if i > 0 {
				checkHandoffOrder(t, e.eventLog(), releaseIDs[i-1], id)
			}
		}

		// Every worker saw its replica slot and the ports it depends on.
		lines := readLines(t, filepath.Join(dir, "workers.log"))
		if len(lines) != 12 {
			t.Fatalf("want 12 worker start lines (3 releases × 4 replicas), got %d: %q", len(lines), lines)
		}
		seen := map[string]bool{}
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) != 8 {
				t.Errorf("worker line %q", l)
				continue
			}
			rel, idx := f[0], f[1]
			seen[rel+" "+idx] = true
			bp, jp := strconv.Itoa(beaconPort), strconv.Itoa(jobsPorts[rel])
			if f[2] != "4" || f[3] != idx+"/4" || f[4] != bp || f[5] != bp || f[6] != jp || f[7] != jp {
				t.Errorf("worker line %q: want index %s of 4, beacon port %s, jobs-main port %s", l, idx, bp, jp)
			}
		}
		for _, rel := range releaseIDs {
			for r := range 4 {
				if !seen[fmt.Sprintf("%s %d", rel, r)] {
					t.Errorf("no start line of %s worker#%d", rel, r)
				}
			}
		}

		// The retired pools stopped through SIGINT (their trap ran) after the
		// quiet hook, which saw each worker's pid.
		ints := readLines(t, filepath.Join(dir, "sigint.log"))
		sort.Strings(ints)
		wantInts := []string{"v1 0", "v1 1", "v1 2", "v1 3", "v2 0", "v2 1", "v2 2", "v2 3"}
		if !slices.Equal(ints, wantInts) {
			t.Errorf("workers that trapped SIGINT: %q, want %q", ints, wantInts)
		}
		quiet := readLines(t, filepath.Join(dir, "quiet.log"))
		if len(quiet) != 8 {
			t.Errorf("want 8 quiet hooks (two retired pools), got %q", quiet)
		}
		for _, l := range quiet {
			f := strings.Fields(l)
			if len(f) != 3 || strconv.Itoa(workerPIDs[f[0]+" "+f[1]]) != f[2] {
				t.Errorf("quiet hook line %q: want ROLLBRIDGE_PID %d", l, workerPIDs[strings.Join(f[:min(2, len(f))], " ")])
			}
		}
		checkVelociousRestarts(t, e, beaconPort)

		evs := e.eventLog()
		if n := len(indexOf(evs, "process stop timed out; sending SIGKILL", "", "")); n != 0 {
			t.Errorf("%d stops escalated to SIGKILL", n)
		}
		for _, rel := range []string{"v1", "v2"} {
			for r := range 4 {
				id := fmt.Sprintf("worker#%d", r)
				ix := indexOf(evs, "process exited", id, rel)
				if len(ix) != 1 || evs[ix[0]].num("code") != 0 || evs[ix[0]].Data["signal"] != nil {
					t.Errorf("%s %s should exit once with code 0 from its SIGINT trap: %v", rel, id, pick(evs, ix))
				}
			}
		}
	})
}

// checkVelociousUnits checks the instance set once only active is left
// running: on systemd the app's units, on both runners the status.
func checkVelociousUnits(t *testing.T, e *env, st status, active string) {
	t.Helper()
	want := []string{
		units.Identity{App: e.app, Release: "v1", Process: "beacon", Replicas: 1}.UnitName(),
		units.Identity{App: e.app, Release: active, Process: "jobs-main", Replicas: 1}.UnitName(),
		units.Identity{App: e.app, Release: active, Process: "web", Replicas: 1}.UnitName(),
	}
	for r := range 4 {
		want = append(want, units.Identity{App: e.app, Release: active, Process: "worker", Replica: r, Replicas: 4}.UnitName())
	}
	sort.Strings(want)

	var running []string
	if b := st.Services[0].Process; b.State == "running" && b.PID != 0 {
		running = append(running, b.Unit)
	}
	for _, r := range st.Releases {
		for _, p := range r.Processes {
			switch {
			case r.ReleaseID == active && (p.State != "running" || p.PID == 0):
				t.Errorf("%s %s is %s (pid %d), want running", r.ReleaseID, p.ID, p.State, p.PID)
			case r.ReleaseID != active && (p.State != "stopped" || p.PID != 0):
				t.Errorf("retired %s %s is %s (pid %d), want stopped", r.ReleaseID, p.ID, p.State, p.PID)
			}
			if p.State == "running" {
				running = append(running, p.Unit)
			}
		}
		if r.ReleaseID == active && len(r.Processes) != 6 {
			t.Errorf("release %s has %d processes, want 6 (jobs-main, worker#0-3, web)", active, len(r.Processes))
		}
	}
	sort.Strings(running)
	if !slices.Equal(running, want) {
		t.Errorf("running instances after %s:\n got %v\nwant %v", active, running, want)
	}
	if e.runner == "systemd" {
		if got := e.listUnits(); !slices.Equal(got, want) {
			t.Errorf("systemd units after %s:\n got %v\nwant %v", active, got, want)
		}
	}
}

// checkHandoffOrder checks the overlap of the handoff service: the new
// release's jobs-main started while the old one still ran, and the old one
// stopped only after every other process of its release.
func checkHandoffOrder(t *testing.T, evs []event, old, cur string) {
	t.Helper()
	newStart := indexOf(evs, "process started", "jobs-main", cur)
	oldExit := indexOf(evs, "process exited", "jobs-main", old)
	if len(newStart) != 1 || len(oldExit) != 1 {
		t.Errorf("jobs-main: %d starts of %s, %d exits of %s", len(newStart), cur, len(oldExit), old)
		return
	}
	if newStart[0] > oldExit[0] {
		t.Errorf("jobs-main of %s started after the one of %s exited: no overlap", cur, old)
	}
	for _, id := range []string{"web", "worker#0", "worker#1", "worker#2", "worker#3"} {
		ix := indexOf(evs, "process exited", id, old)
		if len(ix) != 1 {
			t.Errorf("%s of %s exited %d times", id, old, len(ix))
			continue
		}
		if ix[0] > oldExit[0] {
			t.Errorf("handoff jobs-main of %s exited before its release's %s", old, id)
		}
	}
}

func pick(evs []event, ix []int) []event {
	out := make([]event, 0, len(ix))
	for _, i := range ix {
		out = append(out, evs[i])
	}
	return out
}

// checkVelociousRestarts bounces one replica, then the persistent beacon,
// which comes back from its refreshed (v3) definition on its stable port.
func checkVelociousRestarts(t *testing.T, e *env, beaconPort int) {
	t.Helper()
	restart := func(id string) []string {
		var res struct {
			Restarted []string `json:"restarted"`
		}
		out := e.rb("restart", "--process", id)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("restart %s: %q: %v", id, out, err)
		}
		return res.Restarted
	}
	before := e.status()
	if got := restart("worker#1"); !slices.Equal(got, []string{"worker#1"}) {
		t.Errorf("restart worker#1 restarted %q", got)
	}
	after := e.status()
	for r := range 4 {
		id := fmt.Sprintf("worker#%d", r)
		b, a := e.mustProcess(before, "v3", id), e.mustProcess(after, "v3", id)
		switch {
		case r == 1 && (a.PID == b.PID || a.PID == 0 || a.LastStartReason != "manual" || a.State != "running"):
			t.Errorf("worker#1 after its restart: pid %d→%d reason %q state %s", b.PID, a.PID, a.LastStartReason, a.State)
		case r != 1 && (a.PID != b.PID || a.LastStartReason != "deploy"):
			t.Errorf("%s was touched by the restart of worker#1: pid %d→%d reason %q", id, b.PID, a.PID, a.LastStartReason)
		}
	}
	if out, err := e.rbErr("restart", "--process", "web"); err == nil || !strings.Contains(out, "The proxied process cannot be restarted in place") {
		t.Errorf("restart of the proxied process: %v %q", err, out)
	}

	oldBeacon := before.Services[0].Process
	if got := restart("beacon"); !slices.Equal(got, []string{"beacon"}) {
		t.Errorf("restart beacon restarted %q", got)
	}
	nb := e.status().Services[0].Process
	wantUnit := units.Identity{App: e.app, Release: "v3", Process: "beacon", Replicas: 1}.UnitName()
	if nb.PID == oldBeacon.PID || nb.State != "running" || nb.LastStartReason != "manual" || nb.Unit != wantUnit {
		t.Errorf("beacon after restart: pid %d→%d state %s reason %q unit %s (want %s)",
			oldBeacon.PID, nb.PID, nb.State, nb.LastStartReason, nb.Unit, wantUnit)
	}
	e.waitFor("the restarted beacon answering on its stable port", 10*time.Second, func() bool {
		code, _, err := get(fmt.Sprintf("http://127.0.0.1:%d/ping", beaconPort))
		return err == nil && code == 200
	})
}

// TestVelociousExampleShape checks that the topology TestVelociousTopology
// deploys has the shape of examples/velocious.js: the same policies, deploy
// strategies, replica counts, drain settings and hooks per process.
func TestVelociousExampleShape(t *testing.T) {
	example, err := config.Load(context.Background(), filepath.Join("..", "examples", "velocious.js"), config.LoadOptions{Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rollbridge.js")
	src := fmt.Sprintf("export default {application: \"shape\", proxy: {port: 4600}, processes: %s}\n", velociousTopology(t.TempDir()))
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	test, err := config.Load(context.Background(), path, config.LoadOptions{Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	// Example id → test id.
	ids := map[string]string{"beacon": "beacon", "background-jobs-main": "jobs-main", "background-jobs-worker": "worker", "web": "web"}
	if len(example.Processes) != len(ids) || len(test.Processes) != len(ids) {
		t.Fatalf("example has %d processes, test %d, want %d each", len(example.Processes), len(test.Processes), len(ids))
	}
	byID := func(c *config.Config, id string) *config.Process {
		for i := range c.Processes {
			if c.Processes[i].ID == id {
				return &c.Processes[i]
			}
		}
		t.Fatalf("no process %q", id)
		return nil
	}
	shape := func(p *config.Process) string {
		return fmt.Sprintf("policy=%s strategy=%s replicas=%d nonBlockingDrain=%v quietHook=%v port=%v",
			p.Policy, p.DeployStrategy, p.Replicas, p.NonBlockingDrain, p.Lifecycle.QuietCommand != "", p.Port != nil)
	}
	for exID, testID := range ids {
		ex, te := byID(example, exID), byID(test, testID)
		if shape(ex) != shape(te) {
			t.Errorf("%s: example %s\n%*s test    %s", exID, shape(ex), len(exID), "", shape(te))
		}
	}
}
