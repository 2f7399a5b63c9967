package release

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// countEvents counts the events with message in the manager's history.
func countEvents(h *harness, message string) int {
	n := 0
	for _, e := range h.m.Events().Recent(0) {
		if e.Message == message {
			n++
		}
	}
	return n
}

// processStatus returns the status of instance id of release rel.
func processStatus(t *testing.T, h *harness, rel, id string) ProcessStatus {
	t.Helper()
	for _, r := range h.m.Status(context.Background()).Releases {
		if r.ReleaseID != rel {
			continue
		}
		for _, p := range r.Processes {
			if p.ID == id {
				return p
			}
		}
	}
	t.Fatalf("no process %s in release %s", id, rel)
	return ProcessStatus{}
}

// TestCrashBudgetWindowSlides checks that restart.maxRestarts counts only
// the crashes inside restart.windowMs: two quick crashes use the budget, a
// crash after the window has passed is restarted again, and crashes beyond
// the budget inside the (new) window leave the instance failed. It runs in
// a synctest bubble: the manager's clock (time.Now) and its restart timers
// are the bubble's, so the window is crossed without real waiting.
func TestCrashBudgetWindowSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const window = time.Second
		src := strings.Replace(baseConfig, `restartDelayMs: 10},`, `restartDelayMs: 10, restart: {maxRestarts: 2, windowMs: 1000}},`, 1)
		h := newHarness(t, src)
		if _, err := h.deploy("v1"); err != nil {
			t.Fatal(err)
		}
		unit := units.Identity{App: "demo", Release: "v1", Process: "worker", Replica: 0, Replicas: 2}.UnitName()
		crash := func(wantRestarts int) {
			t.Helper()
			if err := h.runner.Exit(unit, units.Exit{Code: 1}); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			time.Sleep(100 * time.Millisecond) // past any restart delay (10 ms, ×backoff)
			synctest.Wait()
			p := processStatus(t, h, "v1", "worker#0")
			if p.State != stateRunning || p.Restarts != wantRestarts || p.LastStartReason != reasonCrash {
				t.Fatalf("after crash %d: state %s restarts %d reason %s, want running/%d/crash", wantRestarts, p.State, p.Restarts, p.LastStartReason, wantRestarts)
			}
		}

		// Crashes spaced more than windowMs apart never exhaust the budget.
		for i := 1; i <= 4; i++ {
			crash(i)
			time.Sleep(window + 100*time.Millisecond)
		}
		// Two quick crashes fill the budget...
		crash(5)
		crash(6)
		// ...which frees up again once they leave the window.
		time.Sleep(window)
		crash(7)
		crash(8)
		if n := countEvents(h, "restart limit reached"); n != 0 {
			t.Fatalf("restart limit reached %d times while within budget", n)
		}
		// A third crash inside the window is beyond the budget.
		if err := h.runner.Exit(unit, units.Exit{Code: 3}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		p := processStatus(t, h, "v1", "worker#0")
		if p.State != stateFailed || p.Restarts != 8 || p.ExitCode.value() != 3 {
			t.Errorf("after the budget: state %s restarts %d exit %v, want failed/8/3", p.State, p.Restarts, p.ExitCode.value())
		}
		if n := countEvents(h, "restart limit reached"); n != 1 {
			t.Errorf("restart limit reached %d times, want 1", n)
		}
		// Failed stays failed: no timer restarts it later.
		time.Sleep(10 * window)
		synctest.Wait()
		if p := processStatus(t, h, "v1", "worker#0"); p.State != stateFailed {
			t.Errorf("failed instance restarted later: %s", p.State)
		}
	})
}
