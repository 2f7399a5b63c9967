package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestRecycleUnderLoad: replicas recycled on a schedule are replaced
// start-first, one at a time: no request is lost and the pool never
// shrinks.
func TestRecycleUnderLoad(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, replicaWeb(3, `recycle: {everyMs: 1200, jitterMs: 400}`))
		e.deploy("v1")
		first := e.replicas("v1")
		l := startLoad(e.proxyURL("/"), 16, 4)
		e.waitFor("six recycles", 60*time.Second, func() bool {
			n := 0
			for _, ev := range e.eventLog() {
				if ev.Message == "replica replaced" && ev.str("reason") == "recycle" {
					n++
				}
			}
			return n >= 6
		})
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: %d requests during 6+ recycles: %d transport errors, %d non-2xx", runner, total, l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests lost during recycling: first failure %v", l.firstErr.Load())
		}
		reps := e.replicas("v1")
		if len(reps) < 3 {
			t.Fatalf("replicas after recycling: %+v", reps)
		}
		for id, p := range reps {
			if p.PID == first[id].PID {
				continue // may be mid-replacement or not yet recycled
			}
			if p.LastStartReason != "recycle" || !strings.Contains(p.Unit, `\x23g`) {
				t.Errorf("%s after recycling: %+v", id, p)
			}
		}
		var recycling int
		for _, ev := range e.eventLog() {
			if ev.Message == "process recycling" {
				recycling++
			}
		}
		if recycling < 6 {
			t.Errorf("%d 'process recycling' events, want at least 6", recycling)
		}
	})
}

// TestRestartReplicaUnderLoad: `rollbridge restart --process web#2` replaces
// one replica start-first (a new generation of its unit on a new port)
// without losing a request; `--process web` rolls every replica.
func TestRestartReplicaUnderLoad(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, replicaWeb(4, ""))
		e.deploy("v1")
		before := e.replicas("v1")
		l := startLoad(e.proxyURL("/"), 16, 4)
		time.Sleep(200 * time.Millisecond)
		out := e.rb("restart", "--process", "web#2", "--json")
		if !strings.Contains(out, `"web#2"`) {
			t.Errorf("restart output %s", out)
		}
		mid := e.replicas("v1")
		out = e.rb("restart", "--process", "web", "--json")
		time.Sleep(200 * time.Millisecond)
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: %d requests during restart --process web#2 and a rolling restart of 4 replicas: %d transport errors, %d non-2xx",
			runner, total, l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests lost: first failure %v", l.firstErr.Load())
		}
		w2 := mid["web#2"]
		if w2.PID == before["web#2"].PID || w2.Port == before["web#2"].Port || w2.LastStartReason != "manual" || !strings.Contains(w2.Unit, `web\x232\x23g1`) {
			t.Errorf("web#2 after restart: %+v (before %+v)", w2, before["web#2"])
		}
		for _, id := range []string{"web#0", "web#1", "web#3"} {
			if mid[id].PID != before[id].PID {
				t.Errorf("%s changed although only web#2 was restarted", id)
			}
		}
		if !strings.Contains(out, `"web#0"`) || !strings.Contains(out, `"web#3"`) {
			t.Errorf("rolling restart output %s", out)
		}
		after := e.replicas("v1")
		for id, p := range after {
			if p.PID == mid[id].PID || p.InRotation == nil || !*p.InRotation {
				t.Errorf("%s after the rolling restart: %+v", id, p)
			}
		}
		if runner == "systemd" {
			if units := e.listUnits(); len(units) != 4 {
				t.Errorf("units after the restarts: %v, want four", units)
			}
		}
		// A single proxied process keeps refusing.
		single := newEnv(t, runner, replicaWeb(1, ""))
		single.deploy("v1")
		if out, err := single.rbErr("restart", "--process", "web"); err == nil || !strings.Contains(out, "cannot be restarted in place") {
			t.Errorf("restart of a single proxied process: %v %s", err, out)
		}
	})
}

// TestReplaceRequestedBySdNotify: a replica that sends sd_notify
// STATUS=rollbridge:replace (the demo app does after --replace-after
// requests) keeps serving until its replacement is ready, then is drained
// and stopped; no request is lost.
func TestReplaceRequestedBySdNotify(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[{id: "web", policy: "proxied", replicas: 2, command: "exec ./demo-app --port {{port}} --ready-delay-ms 100 --replace-after 1500",
     port: {from: 0, to: 0}, health: {notify: true, path: "/ping", timeoutMs: 10000, intervalMs: 50}}]`)
		e.deploy("v1")
		l := startLoad(e.proxyURL("/"), 8, 2)
		e.waitFor("two requested replacements", 60*time.Second, func() bool {
			n := 0
			for _, ev := range e.eventLog() {
				if ev.Message == "replica replaced" && ev.str("reason") == "requested" {
					n++
				}
			}
			return n >= 2
		})
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: %d requests across requested replacements: %d transport errors, %d non-2xx", runner, total, l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests lost: first failure %v", l.firstErr.Load())
		}
		var asked int
		for _, ev := range e.eventLog() {
			if ev.Message == "process replacement requested" && ev.str("status") == "rollbridge:replace" {
				asked++
			}
		}
		if asked < 2 {
			t.Errorf("%d 'process replacement requested' events", asked)
		}
	})
}
