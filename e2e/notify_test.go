package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// notifyTopology: a persistent service and two proxied replicas that bind
// their port at once but send READY=1 only after a delay, and a companion
// that depends on the service and checks at start-up that it is ready.
func notifyTopology(readyDelayMs int) string {
	return fmt.Sprintf(`[
    {id: "beacon", policy: "service", command: "exec ./demo-app --port {{port}} --ready-delay-ms 600", port: {from: 0, to: 0},
     health: {notify: true, timeoutMs: 10000}},
    {id: "worker", dependsOn: ["beacon"], command: "exec ./demo-app --port 0 --fetch http://127.0.0.1:{{ports.beacon}}/stats"},
    {id: "web", policy: "proxied", replicas: 2, command: "exec ./demo-app --port {{port}} --ready-delay-ms %d", port: {from: 0, to: 0},
     health: {notify: true, path: "/ping", timeoutMs: 3000, intervalMs: 50}}
  ]`, readyDelayMs)
}

type appStats struct {
	Instance          string `json:"instance"`
	Release           string `json:"release"`
	Ready             bool   `json:"ready"`
	Served            int    `json:"served"`
	ServedBeforeReady int    `json:"servedBeforeReady"`
}

func replicaStats(t *testing.T, port int) appStats {
	t.Helper()
	_, body, err := get(fmt.Sprintf("http://127.0.0.1:%d/stats", port))
	if err != nil {
		t.Fatal(err)
	}
	var s appStats
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("stats %q: %v", body, err)
	}
	return s
}

// TestNotifyReadinessGatesSwitch: the switch waits for every replica's
// READY=1 (then the HTTP probe), so an app that binds early but is not
// ready yet gets no traffic; dependsOn waits for the dependency's READY=1;
// an app that never sends READY=1 fails the deploy and the old release
// keeps serving.
func TestNotifyReadinessGatesSwitch(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		const delay = 1500
		e := newEnv(t, runner, notifyTopology(delay))
		e.deploy("v1")

		// dependsOn: the companion started only once beacon sent READY=1.
		st := e.status()
		worker := e.mustProcess(st, "v1", "worker")
		var fetched string
		for _, l := range worker.Logs {
			if strings.Contains(l.Line, "fetch ") {
				fetched = l.Line
			}
		}
		if !strings.Contains(fetched, `"ready":true`) {
			t.Errorf("the companion found beacon not ready at its start: %q", fetched)
		}

		l := startLoad(e.proxyURL("/"), 8, 2)
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		e.deploy("v2")
		took := time.Since(start)
		time.Sleep(300 * time.Millisecond)
		l.finish()
		if took < delay*time.Millisecond {
			t.Errorf("deploy took %v, less than the %d ms before READY=1", took, delay)
		}
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: deploy with READY=1 after %d ms took %v; %d requests, %d errors, %d non-2xx",
			runner, delay, took.Round(time.Millisecond), total, l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests lost: %v", l.firstErr.Load())
		}
		served := 0
		for id, p := range e.replicas("v2") {
			s := replicaStats(t, p.Port)
			served += s.Served
			if s.ServedBeforeReady != 0 || !s.Ready || s.Release != "v2" {
				t.Errorf("%s: %+v; want no request served before READY=1", id, s)
			}
		}
		if served == 0 {
			t.Errorf("v2 served nothing after the switch")
		}

		// Never ready: the start fails at the timeout, v2 keeps serving.
		e.editConfig(fmt.Sprintf("--ready-delay-ms %d", delay), "--ready-delay-ms -1")
		out, err := e.rbErr("deploy", "--release-path", e.release("v3"), "--release-id", "v3")
		if err == nil || !strings.Contains(out, "READY=1") {
			t.Errorf("deploy of a release that never sends READY=1: err %v\n%s", err, out)
		}
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v2") {
			t.Errorf("after the failed deploy: %q", body)
		}
	})
}
