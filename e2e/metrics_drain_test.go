package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestDrainCutIsNotAProxyError: a request still running at the old
// release's drain deadline is cut (504) and reported as `proxy request
// drained`, counted apart from upstream failures. The daemon's hook does
// not depend on the runner, so the exec runner suffices.
func TestDrainCutIsNotAProxyError(t *testing.T) {
	e := newEnvOpts(t, "exec", `[`+webProcess+`]`, envOpts{noStart: true})
	e.editConfig("drainTimeoutMs: 15000", "drainTimeoutMs: 500")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	e.extraEnv = append(e.extraEnv, "ROLLBRIDGE_METRICS_LISTEN="+addr)
	e.startDaemon()
	e.deploy("v1")

	type result struct {
		code int
		err  error
	}
	slow := make(chan result, 1)
	slowURL := e.proxyURL("/slow?ms=30000")
	go func() {
		code, _, err := get(slowURL)
		slow <- result{code, err}
	}()
	e.waitFor("the slow request to reach v1", 10*time.Second, func() bool {
		for _, r := range e.status().Releases {
			if r.ReleaseID == "v1" && r.Connections.HTTP == 1 {
				return true
			}
		}
		return false
	})
	e.deploy("v2")
	select {
	case r := <-slow:
		if r.err != nil || r.code != 504 {
			t.Errorf("slow request cut at the drain deadline: %d %v, want 504", r.code, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the slow request was not cut at the 500ms drain deadline")
	}

	var drained []int
	e.waitFor("the drain cut event", 5*time.Second, func() bool {
		drained = indexOf(e.eventLog(), "proxy request drained", "", "v1")
		return len(drained) == 1
	})
	evs := e.eventLog()
	if ev := evs[drained[0]]; ev.str("reason") != "drained" || ev.str("error") == "" {
		t.Errorf("drain cut event %+v: want reason drained and the error", ev.Data)
	}
	if ix := indexOf(evs, "proxy error", "", ""); len(ix) != 0 {
		t.Errorf("the drain cut was also reported as an upstream failure: %v", pick(evs, ix))
	}
	_, body, err := get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for metric, want := range map[string]float64{"rollbridge_proxy_drained_total": 1, "rollbridge_proxy_errors_total": 0} {
		if v, ok := sample(body, metric); !ok || v != want {
			t.Errorf("%s = %v (found %v), want %v", metric, v, ok, want)
		}
	}
}
