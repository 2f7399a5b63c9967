package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCrashRestartBudget(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := markerDir(t, "budget")
		ok := filepath.Join(dir, "ok")
		// Crashes (exit 3) until the ok file exists, then stays up.
		cmd := fmt.Sprintf("if [ -e %s ]; then exec sleep 100000; fi; echo crashing; exit 3", ok)
		e := newEnv(t, runner, fmt.Sprintf(`[
    {id: "crasher", restartDelayMs: 50, restart: {maxRestarts: 2, windowMs: 60000}, command: %s},
    {id: "once", restartDelayMs: 50, restart: {maxRestarts: 0}, command: "exit 0"},
    %s
  ]`, jsQuote(cmd), webProcess))
		e.deploy("v1")
		e.waitFor("restart limit reached", 20*time.Second, func() bool {
			return len(indexOf(e.eventLog(), "restart limit reached", "crasher", "v1")) > 0
		})
		// No further attempt once the budget is spent.
		time.Sleep(300 * time.Millisecond)
		evs := e.eventLog()
		limit := pick(evs, indexOf(evs, "restart limit reached", "crasher", "v1"))
		if len(limit) != 1 || limit[0].num("maxRestarts") != 2 || limit[0].num("windowMs") != 60000 || limit[0].str("id") != "crasher" {
			t.Errorf("restart limit reached events: %+v", limit)
		}
		var reasons []string
		for _, ev := range pick(evs, indexOf(evs, "process started", "crasher", "v1")) {
			reasons = append(reasons, ev.str("reason"))
		}
		if want := []string{"deploy", "crash", "crash"}; !slices.Equal(reasons, want) {
			t.Errorf("crasher start reasons %q, want %q", reasons, want)
		}
		for _, ev := range pick(evs, indexOf(evs, "process exited", "crasher", "v1")) {
			if ev.num("code") != 3 {
				t.Errorf("crasher exit: %+v", ev.Data)
			}
		}
		// maxRestarts 0 disables restarts; an exit with code 0 is a crash too.
		if ix := indexOf(evs, "process started", "once", "v1"); len(ix) != 1 {
			t.Errorf("once started %d times, want 1", len(ix))
		}
		if lim := pick(evs, indexOf(evs, "restart limit reached", "once", "v1")); len(lim) != 1 || lim[0].num("maxRestarts") != 0 {
			t.Errorf("once: restart limit reached %+v", lim)
		}
		if p := e.mustProcess(e.status(), "v1", "once"); p.State != "failed" || p.Restarts != 0 {
			t.Errorf("once after exit 0: state %s restarts %d, want failed, 0", p.State, p.Restarts)
		}

		p := e.mustProcess(e.status(), "v1", "crasher")
		if p.State != "failed" || p.Restarts != 2 || p.PID != 0 || p.LastStartReason != "crash" {
			t.Errorf("crasher after its budget: state %s restarts %d pid %d reason %q; want failed, 2, no pid, crash",
				p.State, p.Restarts, p.PID, p.LastStartReason)
		}

		// restart revives a process that exhausted its budget.
		if err := os.WriteFile(ok, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var res struct {
			Status    string   `json:"status"`
			Restarted []string `json:"restarted"`
		}
		out := e.rb("restart", "--process", "crasher")
		if err := json.Unmarshal([]byte(out), &res); err != nil || res.Status != "success" || !slices.Equal(res.Restarted, []string{"crasher"}) {
			t.Fatalf("restart reply %s (%v)", out, err)
		}
		time.Sleep(200 * time.Millisecond)
		p = e.mustProcess(e.status(), "v1", "crasher")
		if p.State != "running" || p.PID == 0 || p.LastStartReason != "manual" || p.Restarts != 2 {
			t.Errorf("crasher after restart: state %s pid %d reason %q restarts %d; want running, a pid, manual, 2",
				p.State, p.PID, p.LastStartReason, p.Restarts)
		}
		evs = e.eventLog()
		if n := len(indexOf(evs, "process restart requested", "crasher", "v1")); n != 1 {
			t.Errorf("%d process restart requested events", n)
		}
		if ix := indexOf(evs, "process started", "crasher", "v1"); len(ix) != 4 || evs[ix[3]].str("reason") != "manual" {
			t.Errorf("starts after the manual restart: %+v", pick(evs, ix))
		}
	})
}

func TestCrashRestartBackoff(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		// delayFor(n) = 100ms × 2^n capped at 400ms: 100, 200, 400, 400, 400.
		e := newEnv(t, runner, `[
    {id: "flapper", command: "exit 1", restartDelayMs: 100, restart: {backoffFactor: 2, maxDelayMs: 400, maxRestarts: 5}},
    `+webProcess+`
  ]`)
		e.deploy("v1")
		e.waitFor("restart limit reached", 20*time.Second, func() bool {
			return len(indexOf(e.eventLog(), "restart limit reached", "flapper", "v1")) > 0
		})
		evs := e.eventLog()
		starts := pick(evs, indexOf(evs, "process started", "flapper", "v1"))
		exits := pick(evs, indexOf(evs, "process exited", "flapper", "v1"))
		if len(starts) != 6 || len(exits) != 6 {
			t.Fatalf("want 6 starts and 6 exits (1 + 5 restarts), got %d and %d", len(starts), len(exits))
		}
		want := []time.Duration{100, 200, 400, 400, 400}
		var delays, gaps []string
		for i, d := range want {
			d *= time.Millisecond
			// exit → next start is the scheduled delay plus one spawn.
			delay := starts[i+1].At.Sub(exits[i].At)
			gap := starts[i+1].At.Sub(starts[i].At)
			delays = append(delays, delay.String())
			gaps = append(gaps, gap.String())
			// Timestamps have millisecond resolution and a restart never
			// fires early, so the lower bound is firm: it proves the growth.
			// The upper bound allows for a slow spawn on a loaded machine but
			// still proves the cap (uncapped, restart 5 would wait 1600ms).
			if delay < d-2*time.Millisecond || delay > d+time.Second {
				t.Errorf("restart %d came %v after the crash, want about %v", i+1, delay, d)
			}
			if starts[i+1].str("reason") != "crash" {
				t.Errorf("restart %d reason %q", i+1, starts[i+1].str("reason"))
			}
		}
		t.Logf("%s runner: crash→restart delays %v; start→start gaps %v", runner, delays, gaps)
		if p := e.mustProcess(e.status(), "v1", "flapper"); p.Restarts != 5 || p.State != "failed" {
			t.Errorf("flapper: restarts %d state %s", p.Restarts, p.State)
		}
	})
}

func TestStopSignalAndKillEscalation(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := markerDir(t, "sigint")
		marker := filepath.Join(dir, "drained")
		// SIGINT starts a one-second drain that ends with a marker.
		drainer := fmt.Sprintf(`trap 'sleep 1; echo "$ROLLBRIDGE_RELEASE_ID" >> %s; exit 0' INT; while :; do sleep 0.05; done`, marker)
		e := newEnv(t, runner, fmt.Sprintf(`[
    {id: "drainer", stopSignal: "SIGINT", gracefulStopMs: 5000, command: %s},
    {id: "stubborn", gracefulStopMs: 1000, command: %s},
    %s
  ]`, jsQuote(drainer), jsQuote("trap '' TERM; while :; do sleep 0.05; done"), webProcess))
		e.deploy("v1")
		st := e.status()
		stubbornPID := e.mustProcess(st, "v1", "stubborn").PID
		e.deploy("v2")
		e.waitStopped("v2", 10*time.Second)
		if got := readLines(t, marker); !slices.Equal(got, []string{"v1"}) {
			t.Errorf("drainer's SIGINT trap did not finish within its window: marker %q", got)
		}
		evs := e.eventLog()
		took := switchToDrained(t, evs)
		// Both stops run in parallel: about max(1 s drain, 1 s + SIGKILL).
		t.Logf("%s runner: v1 (1 s SIGINT drain, 1 s SIGKILL window) drained %v after the switch", runner, took)
		if took < 950*time.Millisecond || took > 6*time.Second {
			t.Errorf("retiring v1 took %v, want a little over 1s", took)
		}
		if ix := indexOf(evs, "process stop timed out; sending SIGKILL", "drainer", ""); len(ix) != 0 {
			t.Errorf("drainer was escalated: %+v", pick(evs, ix))
		}
		kills := pick(evs, indexOf(evs, "process stop timed out; sending SIGKILL", "stubborn", "v1"))
		if len(kills) != 1 || int(kills[0].num("pid")) != stubbornPID {
			t.Errorf("want one SIGKILL escalation of stubborn pid %d: %+v", stubbornPID, kills)
		}
		drainerExit := pick(evs, indexOf(evs, "process exited", "drainer", "v1"))
		if len(drainerExit) != 1 || drainerExit[0].num("code") != 0 {
			t.Errorf("drainer exit: %+v", drainerExit)
		}
		stubbornExit := pick(evs, indexOf(evs, "process exited", "stubborn", "v1"))
		if len(stubbornExit) != 1 || stubbornExit[0].str("signal") != "SIGKILL" {
			t.Errorf("stubborn exit: %+v", stubbornExit)
		}
		if len(kills) == 1 && len(stubbornExit) == 1 {
			// The escalation came after the 1 s window.
			if d := kills[0].At.Sub(evs[indexOf(evs, "traffic switched", "", "v2")[0]].At); d < 950*time.Millisecond || d > 4*time.Second {
				t.Errorf("SIGKILL escalation %v after the switch, want about 1s", d)
			}
		}
	})
}

func TestLifecycleHookOrder(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := markerDir(t, "hooks")
		log := filepath.Join(dir, "hooks.log")
		hook := func(name string) string { return jsQuote(fmt.Sprintf(`echo "%s $ROLLBRIDGE_PID" >> %s`, name, log)) }
		// The hanging quiet hook sleeps a duration no other process uses, so
		// the test can check it was killed.
		const hang = "sleep 37.913"
		e := newEnv(t, runner, fmt.Sprintf(`[
    {id: "hooked", gracefulStopMs: 3000, command: "exec sleep 100000",
     lifecycle: {quietCommand: %s, drainCommand: %s, drainTimeoutMs: 2000,
                 stopCommand: %s}},
    {id: "hangs", gracefulStopMs: 400, command: "exec sleep 100000", lifecycle: {quietCommand: %q}},
    %s
  ]`, hook("quiet"), hook("drain"),
			jsQuote(fmt.Sprintf(`echo "stop $ROLLBRIDGE_PID" >> %s; kill -TERM -"$ROLLBRIDGE_PID"`, log)),
			hang, webProcess))
		e.deploy("v1")
		pid := e.mustProcess(e.status(), "v1", "hooked").PID
		if pid == 0 {
			t.Fatal("hooked has no pid")
		}
		e.deploy("v2")
		e.waitStopped("v2", 15*time.Second)

		p := strconv.Itoa(pid)
		want := []string{"quiet " + p, "drain " + p, "stop " + p}
		if got := readLines(t, log); !slices.Equal(got, want) {
			t.Errorf("hook log %q, want %q", got, want)
		}
		evs := e.eventLog()
		exit := pick(evs, indexOf(evs, "process exited", "hooked", "v1"))
		if len(exit) != 1 || exit[0].str("signal") != "SIGTERM" {
			t.Errorf("hooked should end by its stopCommand's SIGTERM: %+v", exit)
		}
		if ix := indexOf(evs, "process stop timed out; sending SIGKILL", "hooked", ""); len(ix) != 0 {
			t.Errorf("hooked was escalated to SIGKILL")
		}
		timedOut := pick(evs, indexOf(evs, "quiet command timed out", "hangs", "v1"))
		if len(timedOut) != 1 || timedOut[0].num("timeoutMs") != 400 {
			t.Errorf("want one quiet command timed out {timeoutMs: 400} for hangs: %+v", timedOut)
		}
		if hangsExit := pick(evs, indexOf(evs, "process exited", "hangs", "v1")); len(hangsExit) != 1 || hangsExit[0].str("signal") != "SIGTERM" {
			t.Errorf("hangs should be stopped with SIGTERM after its hook timed out: %+v", hangsExit)
		}
		if pids := processesMatching(hang); len(pids) != 0 {
			t.Errorf("the timed-out quiet hook is still running: pids %v", pids)
		}
	})
}

// processesMatching lists pids whose command line contains s.
func processesMatching(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err == nil && strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			out = append(out, pid)
		}
	}
	return out
}

func TestNonBlockingDrain(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := markerDir(t, "nbdrain")
		// crashy exits (code 1) once its release's die file exists: a crash
		// while its release drains, which must not be restarted.
		crashy := fmt.Sprintf(`while [ ! -e %s/die-"$ROLLBRIDGE_RELEASE_ID" ]; do sleep 0.05; done; exit 1`, dir)
		e := newEnv(t, runner, `[
    {id: "nb", nonBlockingDrain: true, command: "exec sleep 100000"},
    {id: "blocking", command: "exec sleep 100000"},
    {id: "crashy", restartDelayMs: 50, command: `+jsQuote(crashy)+`},
    `+webProcess+`
  ]`)
		e.deploy("v1")

		// Two requests hold v1 open across the deploy: a 4 s /slow one and
		// an event stream that stays open until the test closes it (so the
		// checks below do not race the 4 s under load).
		type result struct {
			code int
			body string
			err  error
		}
		slow := make(chan result, 1)
		slowURL := e.proxyURL("/slow?ms=4000")
		begun := time.Now()
		go func() {
			code, body, err := get(slowURL)
			slow <- result{code, body, err}
		}()
		resp, err := http.Get(e.proxyURL("/sse"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		events := bufio.NewReader(resp.Body)
		nextEvent := func() string {
			for {
				line, err := events.ReadString('\n')
				if err != nil {
					t.Fatalf("event stream: %v", err)
				}
				if data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
					return data
				}
			}
		}
		if ev := nextEvent(); !strings.HasPrefix(ev, "v1 ") {
			t.Fatalf("first event %q", ev)
		}
		e.waitFor("both requests in flight on v1", 10*time.Second, func() bool {
			for _, r := range e.status().Releases {
				if r.ReleaseID == "v1" && r.Connections.HTTP == 2 {
					return true
				}
			}
			return false
		})

		e.deploy("v2")
		deployed := time.Now()
		// The non-blocking worker stops at once while v1 still drains; the
		// ordinary companion waits for the drain.
		e.waitFor("v1's nonBlockingDrain worker stopped", 10*time.Second, func() bool {
			return e.mustProcess(e.status(), "v1", "nb").State == "stopped"
		})
		nbStopped := time.Since(deployed)
		st := e.status()
		if s := e.releaseStateIn(st, "v1"); s != "draining" {
			t.Errorf("v1 is %s when its nonBlockingDrain worker stopped, want draining", s)
		}
		if nb := e.mustProcess(st, "v1", "nb"); nb.PID != 0 {
			t.Errorf("stopped nb still has pid %d", nb.PID)
		}
		if b := e.mustProcess(st, "v1", "blocking"); b.State != "running" || b.PID == 0 {
			t.Errorf("the ordinary companion must wait for the drain: %s pid %d", b.State, b.PID)
		}

		// A crash of the draining release is not restarted.
		if err := os.WriteFile(filepath.Join(dir, "die-v1"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		e.waitFor("v1's crashy to exit", 10*time.Second, func() bool {
			return e.mustProcess(e.status(), "v1", "crashy").State == "failed"
		})
		time.Sleep(300 * time.Millisecond) // six restart delays
		if c := e.mustProcess(e.status(), "v1", "crashy"); c.State != "failed" || c.Restarts != 0 || c.PID != 0 {
			t.Errorf("crashy of the draining v1 was restarted: state %s restarts %d pid %d", c.State, c.Restarts, c.PID)
		}

		r := <-slow
		if r.err != nil || r.code != 200 || !strings.Contains(r.body, "slow 4000ms from release v1") {
			t.Errorf("the slow request across the deploy: %d %q %v", r.code, r.body, r.err)
		}
		if ev := nextEvent(); !strings.HasPrefix(ev, "v1 ") {
			t.Errorf("the stream moved off v1: %q", ev)
		}
		if s := e.releaseState("v1"); s != "draining" {
			t.Errorf("v1 stopped draining while its event stream is open: %s", s)
		}
		t.Logf("%s runner: nonBlockingDrain worker stopped %v after the deploy; the 4 s request took %v",
			runner, nbStopped.Round(time.Millisecond), time.Since(begun).Round(time.Millisecond))
		resp.Body.Close()
		e.waitStopped("v2", 10*time.Second)
		evs := e.eventLog()
		nbExit := indexOf(evs, "process exited", "nb", "v1")
		webExit := indexOf(evs, "process exited", "web", "v1")
		if len(nbExit) != 1 || len(webExit) != 1 || nbExit[0] > webExit[0] {
			t.Errorf("nb should exit before v1's web: %v %v", nbExit, webExit)
		}
	})
}

func (e *env) releaseStateIn(st status, id string) string {
	for _, r := range st.Releases {
		if r.ReleaseID == id {
			return r.State
		}
	}
	return ""
}

func TestStopWaitsForDescendants(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir := markerDir(t, "desc")
		marker := filepath.Join(dir, "child-done")
		// The leader leaves at once on SIGTERM; its background child takes
		// 800 ms to finish. The stop (and the release) must wait for it.
		// The child ignores further SIGTERMs: when the leader exits, systemd
		// signals the rest of the unit's cgroup again (see the report).
		cmd := fmt.Sprintf(`(trap 'trap "" TERM; sleep 0.8; echo "$ROLLBRIDGE_RELEASE_ID" >> %s; exit 0' TERM; while :; do sleep 0.05; done) & `+
			`trap 'exit 0' TERM; while :; do sleep 0.05; done`, marker)
		e := newEnv(t, runner, fmt.Sprintf(`[
    {id: "parent", gracefulStopMs: 5000, command: %s},
    %s
  ]`, jsQuote(cmd), webProcess))
		e.deploy("v1")
		e.deploy("v2")
		e.waitStopped("v2", 10*time.Second)
		if got := readLines(t, marker); !slices.Equal(got, []string{"v1"}) {
			t.Errorf("v1 reported stopped before its descendant finished (marker %q)", got)
		}
		evs := e.eventLog()
		took := switchToDrained(t, evs)
		t.Logf("%s runner: v1 drained %v after the switch (its descendant needs 800ms)", runner, took)
		if took < 780*time.Millisecond {
			t.Errorf("v1 drained %v after the switch: it did not wait for the descendant", took)
		}
		if ix := indexOf(evs, "process stop timed out; sending SIGKILL", "parent", "v1"); len(ix) != 0 {
			t.Errorf("parent was escalated to SIGKILL")
		}
	})
}

// TestInstantExitsAreSupervised crash-loops processes that exit before the
// runner can report their pid (under systemd the unit is often gone by the
// time its start job completes). Every exit must still be seen: each replica
// uses up its budget and ends failed, none is left "running" without a pid.
func TestInstantExitsAreSupervised(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[
    {id: "blip", replicas: 8, command: "exit 0", restartDelayMs: 10, restart: {maxRestarts: 3}},
    `+webProcess+`
  ]`)
		e.deploy("v1")
		const replicas, budget = 8, 3
		done := func() bool {
			return len(indexOf(e.eventLog(), "restart limit reached", "", "v1")) == replicas
		}
		deadline := time.Now().Add(20 * time.Second)
		for !done() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		evs := e.eventLog()
		st := e.status()
		for r := range replicas {
			id := fmt.Sprintf("blip#%d", r)
			starts := len(indexOf(evs, "process started", id, "v1"))
			exits := len(indexOf(evs, "process exited", id, "v1"))
			limits := len(indexOf(evs, "restart limit reached", id, "v1"))
			p := e.mustProcess(st, "v1", id)
			if starts != budget+1 || exits != budget+1 || limits != 1 || p.State != "failed" || p.Restarts != budget || p.PID != 0 {
				t.Errorf("%s: %d starts, %d exits, %d limit events, state %s, restarts %d, pid %d; want %d, %d, 1, failed, %d, 0",
					id, starts, exits, limits, p.State, p.Restarts, p.PID, budget+1, budget+1, budget)
			}
		}
	})
}

// TestEveryStopReportsExit checks that a requested stop still emits its
// `process exited` event (spec §5.2: "for requested stops too"), even though
// the runner's Stop may return before its exit event is delivered.
func TestEveryStopReportsExit(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		const replicas = 16
		e := newEnv(t, runner, fmt.Sprintf(`[
    {id: "pool", replicas: %d, command: "exec sleep 100000"},
    %s
  ]`, replicas, webProcess))
		e.deploy("v1")
		e.deploy("v2")
		e.waitStopped("v2", 20*time.Second)
		evs := e.eventLog()
		// Long-running processes always have their pid reported.
		for _, ev := range pick(evs, indexOf(evs, "process started", "", "")) {
			if ev.num("pid") <= 0 {
				t.Errorf("process started without a pid: %+v", ev.Data)
			}
		}
		ids := []string{"web"}
		for r := range replicas {
			ids = append(ids, fmt.Sprintf("pool#%d", r))
		}
		for _, id := range ids {
			ex := pick(evs, indexOf(evs, "process exited", id, "v1"))
			if len(ex) != 1 || ex[0].str("signal") != "SIGTERM" {
				t.Errorf("v1 %s: want one process exited {signal: SIGTERM}, got %+v", id, ex)
			}
		}
	})
}
