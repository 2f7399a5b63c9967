package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestReloadKeepsMetrics reloads (SIGHUP) a daemon that serves Prometheus
// metrics, configured by flag and by environment: the new daemon serves
// them on the same address, from the socket its predecessor passed on, and
// no scrape fails during the handover.
func TestReloadKeepsMetrics(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		for _, via := range []string{"flag", "env"} {
			t.Run(via, func(t *testing.T) { reloadKeepsMetrics(t, runner, via) })
		}
	})
}

func reloadKeepsMetrics(t *testing.T, runner, via string) {
	// The state file tells the new daemon which release is active.
	e := newEnvOpts(t, runner, `[`+webProcess+`],
  statePath: `+jsQuote(t.TempDir()+"/state.json"), envOpts{noStart: true})
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if via == "env" {
		e.extraEnv = append(e.extraEnv, "ROLLBRIDGE_METRICS_LISTEN="+addr)
		e.startDaemon()
	} else {
		e.spawnDaemon("--metrics-listen", addr)
		e.waitFor("the daemon to answer", 15*time.Second, func() bool {
			_, err := e.rbErr("status")
			return err == nil
		})
	}
	metricsURL := "http://" + addr + "/metrics"
	scrape := func() string {
		t.Helper()
		code, body, err := get(metricsURL)
		if err != nil || code != 200 {
			t.Fatalf("scrape: %d %v", code, err)
		}
		return body
	}
	e.deploy("v1")
	url := e.proxyURL("/")
	for range 5 {
		get(url)
	}
	before := scrape()
	startedBefore, _ := sample(before, "process_start_time_seconds")
	oldPID := e.daemon.Process.Pid

	s := startScraper(metricsURL)
	time.Sleep(200 * time.Millisecond)
	syscall.Kill(oldPID, syscall.SIGHUP)
	if runner != "systemd" {
		// The exec runner refuses a reload: the same daemon keeps serving
		// its metrics.
		e.waitFor("reload refusal event", 10*time.Second, func() bool {
			return strings.Contains(strings.Join(e.events(), "|"), "daemon reload failed")
		})
		s.finish(t)
		if v, ok := sample(scrape(), `rollbridge_release_active{release="v1"}`); !ok || v != 1 {
			t.Errorf("after a refused reload: release_active v1 = %v (found %v)", v, ok)
		}
		return
	}
	e.waitFor("the old daemon to exit", 60*time.Second, func() bool { return syscall.Kill(oldPID, 0) != nil })
	time.Sleep(300 * time.Millisecond)
	s.finish(t)

	newPID := handedOverTo(t, e.logs.String())
	if newPID == 0 || newPID == oldPID {
		t.Fatalf("no handover to a new daemon in the log (old pid %d, new %d)", oldPID, newPID)
	}
	evs := e.eventLog()
	if ix := indexOf(evs, "metrics listen failed", "", ""); len(ix) != 0 {
		t.Errorf("the new daemon could not serve metrics: %v", evs[ix[0]].Data)
	}
	// The newest is the new daemon's (the history may also hold the old
	// daemon's, restored from the state file).
	ix := indexOf(evs, "metrics listening", "", "")
	if len(ix) == 0 || evs[ix[len(ix)-1]].Data["inherited"] != true || evs[ix[len(ix)-1]].str("address") != addr {
		t.Errorf("metrics listening events %v: want the new daemon's last, on %s with the inherited socket", pick(evs, ix), addr)
	}

	// The endpoint is now the new process's: a later start time, the
	// adopted release reported, and counters that move again.
	for range 3 {
		get(url)
	}
	after := scrape()
	if startedAfter, ok := sample(after, "process_start_time_seconds"); !ok || startedAfter <= startedBefore {
		t.Errorf("process_start_time_seconds %v → %v (found %v): not served by the new daemon", startedBefore, startedAfter, ok)
	}
	if v, ok := sample(after, `rollbridge_release_active{release="v1"}`); !ok || v != 1 {
		t.Errorf("after the reload: release_active v1 = %v (found %v)", v, ok)
	}
	// An exchange is counted when it ends, just after the client got its
	// response: wait for the last one.
	e.waitFor("the new daemon to count proxied requests", 5*time.Second, func() bool {
		v, ok := sample(scrape(), `rollbridge_proxy_requests_total{class="2xx",release="v1"}`)
		return ok && v >= 3
	})
	e.deploy("v2")
	if v, ok := sample(scrape(), `rollbridge_deploys_total{outcome="success"}`); !ok || v != 1 {
		t.Errorf("after a deploy in the new daemon: deploys_total success = %v (found %v), want 1", v, ok)
	}
}

// scraper fetches a URL every 10 ms, alternating a keep-alive
// client (as Prometheus scrapes) and fresh connections, counting failures.
type scraper struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startScraper(url string) *scraper {
	s := &scraper{stop: make(chan struct{})}
	clients := []*http.Client{
		{Timeout: 10 * time.Second},
		{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			resp, err := clients[i%len(clients)].Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %s", resp.Status)
				}
			}
			if err != nil {
				s.failed.Add(1)
				s.firstErr.CompareAndSwap(nil, fmt.Sprintf("client %d: %v", i%len(clients), err))
				continue
			}
			s.ok.Add(1)
		}
	}()
	return s
}

// finish stops scraping and fails t if any scrape failed.
func (s *scraper) finish(t *testing.T) {
	t.Helper()
	close(s.stop)
	s.wg.Wait()
	t.Logf("%d scrapes, %d failed", s.ok.Load()+s.failed.Load(), s.failed.Load())
	if s.failed.Load() != 0 {
		t.Errorf("scrapes failed: first failure %v", s.firstErr.Load())
	}
	if s.ok.Load() == 0 {
		t.Errorf("no scrape succeeded")
	}
}

// handedOverTo finds the pid of the successor in the daemon's JSON log
// ("daemon reload handed over").
func handedOverTo(t *testing.T, log string) int {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		var l struct {
			Msg  string `json:"msg"`
			Data struct {
				PID int `json:"pid"`
			} `json:"data"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "daemon reload handed over" {
			return l.Data.PID
		}
	}
	return 0
}
