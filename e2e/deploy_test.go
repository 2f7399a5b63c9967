package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fullTopology has every policy: a persistent service, a singleton that
// records overlaps (it finds the previous instance's pid still alive when
// it starts: only shell builtins, so a stop cannot leave a stale marker), a
// replicated companion and the proxied web process.
func fullTopology(dir string) string {
	return fmt.Sprintf(`[
    {id: "beacon", policy: "service", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}},
    {id: "cron", policy: "singleton", gracefulStopMs: 2000,
     command: "trap 'exit 0' TERM; if read p < %[1]s/cron.owner 2>/dev/null && kill -0 \"$p\" 2>/dev/null; then echo \"overlap with $p\" >> %[1]s/cron.overlap; fi; echo $$ > %[1]s/cron.owner; while :; do sleep 0.05; done"},
    {id: "worker", replicas: 2, command: "echo worker {{replicaIndex}} of {{replicaCount}} beacon={{ports.beacon}}; exec sleep 100000"},
    {id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0},
     health: {path: "/ping", timeoutMs: 10000, intervalMs: 50}}
  ]`, dir)
}

// load hammers url with keep-alive clients and new-connection clients until
// stop is closed, counting every failure.
type load struct {
	ok, errs, non2xx atomic.Int64
	firstErr         atomic.Value
	wg               sync.WaitGroup
	stop             chan struct{}
}

func startLoad(url string, keepAlive, fresh int) *load {
	l := &load{stop: make(chan struct{})}
	worker := func(client *http.Client) {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			resp, err := client.Get(url)
			if err != nil {
				l.errs.Add(1)
				l.firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case err != nil:
				l.errs.Add(1)
				l.firstErr.CompareAndSwap(nil, err.Error())
			case resp.StatusCode/100 != 2:
				l.non2xx.Add(1)
				l.firstErr.CompareAndSwap(nil, resp.Status)
			default:
				l.ok.Add(1)
			}
		}
	}
	spawnClients(&l.wg, keepAlive, fresh, worker)
	return l
}

// spawnClients runs worker on keepAlive clients that reuse connections and
// fresh ones that open one per request (each connection then meets the
// proxy's accept path), counted in wg.
func spawnClients(wg *sync.WaitGroup, keepAlive, fresh int, worker func(*http.Client)) {
	for range keepAlive {
		wg.Add(1)
		go worker(&http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}})
	}
	for range fresh {
		wg.Add(1)
		go worker(&http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}})
	}
}

func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
}

func TestZeroDowntimeDeploys(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		dir, err := os.MkdirTemp("", "rbe2e-cron")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		e := newEnv(t, runner, fullTopology(dir))
		e.deploy("v1")
		st := e.status()
		if st.Runner != runner {
			t.Fatalf("daemon uses runner %q, want %q", st.Runner, runner)
		}
		beacon := st.Services[0].Process
		beaconPort := st.Releases[0].Ports["beacon"]
		url := e.proxyURL("/")
		if code, body, err := get(url); err != nil || code != 200 || !strings.Contains(body, "release v1") {
			t.Fatalf("v1 not served: %d %q %v", code, body, err)
		}
		if runner == "systemd" {
			units := e.listUnits()
			t.Logf("units after v1: %s", strings.Join(units, " "))
			if len(units) != 5 { // beacon, cron, worker#0, worker#1, web
				t.Errorf("want 5 units after the first deploy, got %d: %v", len(units), units)
			}
			// What an operator sees agrees with the D-Bus listing.
			if seen := e.systemctlUnits(); strings.Join(seen, " ") != strings.Join(units, " ") {
				t.Errorf("systemctl --user list-units shows %v, D-Bus %v", seen, units)
			}
		}

		l := startLoad(url, 16, 4)
		start := time.Now()
		walls := map[string]time.Duration{}
		for i := 2; i <= 11; i++ {
			id := fmt.Sprintf("v%d", i)
			t0 := time.Now()
			e.deploy(id)
			walls[id] = time.Since(t0)
		}
		// Keep the load on while the last retirements drain.
		time.Sleep(500 * time.Millisecond)
		l.finish()
		elapsed := time.Since(start)
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: %d requests during 10 deploys in %v (%.0f req/s): %d transport errors, %d non-2xx",
			runner, total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("zero-downtime broken: first failure: %v", l.firstErr.Load())
		}
		if total < 1000 {
			t.Errorf("only %d requests were made; the load generator did not run", total)
		}
		logDeployTimes(t, runner, walls, e.eventLog())
		if _, body, _ := get(url); !strings.Contains(body, "release v11") {
			t.Errorf("after the deploys: %q", body)
		}

		st = e.status()
		if s := st.Services[0].Process; s.PID != beacon.PID || st.Releases[len(st.Releases)-1].Ports["beacon"] != beaconPort {
			t.Errorf("persistent service changed: pid %d→%d port %d→%d", beacon.PID, s.PID, beaconPort, st.Releases[len(st.Releases)-1].Ports["beacon"])
		}
		if b, err := os.ReadFile(filepath.Join(dir, "cron.overlap")); err == nil {
			t.Errorf("singleton instances overlapped: %q", b)
		}
		e.waitFor("old releases stopped", 30*time.Second, func() bool {
			for _, r := range e.status().Releases {
				if r.ReleaseID != "v11" && r.State != "stopped" {
					return false
				}
			}
			return true
		})
		if runner == "systemd" {
			if units := e.listUnits(); len(units) != 5 {
				t.Errorf("want 5 units after the deploys, got %d: %v", len(units), units)
			}
		}
		// Every managed pid: release processes, persistent services and
		// singletons.
		var pids []int
		final := e.status()
		for _, r := range final.Releases {
			for _, p := range r.Processes {
				if p.PID != 0 {
					pids = append(pids, p.PID)
				}
			}
		}
		for _, s := range append(final.Services, final.Singletons...) {
			if s.Process.PID != 0 {
				pids = append(pids, s.Process.PID)
			}
		}
		if len(pids) != 5 { // web, worker#0, worker#1, beacon, cron
			t.Errorf("want 5 running pids before shutdown, got %v", pids)
		}
		e.rb("shutdown")
		select {
		case <-e.exited:
		case <-time.After(30 * time.Second):
			t.Fatal("daemon did not exit after shutdown")
		}
		if _, err := os.Stat(e.ctlPath); err == nil {
			t.Error("control socket left behind")
		}
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				t.Errorf("pid %d still alive after shutdown", pid)
			}
		}
		if runner == "systemd" {
			if units := e.listUnits(); len(units) != 0 {
				t.Errorf("units left after shutdown: %v", units)
			}
			if active := e.sliceActive(); active {
				t.Error("the application slice is still active after shutdown")
			}
		}
	})
}

func TestWebSocketKeepsOldReleaseDraining(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}]`)
		e.deploy("v1")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		wsURL := strings.Replace(e.proxyURL("/ws"), "http://", "ws://", 1)
		c, _, err := websocket.Dial(ctx, wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		echo := func() string {
			if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			_, msg, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return string(msg)
		}
		if got := echo(); got != "v1: hi" {
			t.Fatalf("echo %q", got)
		}
		e.deploy("v2")
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v2") {
			t.Errorf("new requests not on v2: %q", body)
		}
		if got := echo(); got != "v1: hi" {
			t.Errorf("websocket after the switch: %q", got)
		}
		st := e.status()
		if st.Releases[0].State != "draining" || st.Releases[0].Connections.WebSocket != 1 {
			t.Errorf("v1 should be draining with 1 websocket: %+v", st.Releases[0])
		}
		c.Close(websocket.StatusNormalClosure, "bye")
		e.waitFor("v1 stopped after the websocket closed", 20*time.Second, func() bool { return e.releaseState("v1") == "stopped" })
	})
}

func TestFailedHealthCheckKeepsOldRelease(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {path: "/ping", timeoutMs: 1500, intervalMs: 50}}]`)
		e.deploy("v1")
		broken := filepath.Join(e.dir, "releases", "broken")
		os.MkdirAll(broken, 0o755)
		out, err := e.rbErr("deploy", "--release-path", broken, "--release-id", "v2")
		if err == nil || !strings.Contains(out, "Health check failed for http://127.0.0.1:") {
			t.Fatalf("broken deploy: err %v\n%s", err, out)
		}
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v1") {
			t.Errorf("old release not serving: %q", body)
		}
		st := e.status()
		if len(st.Releases) != 1 || st.Releases[0].State != "active" {
			t.Errorf("releases after failed deploy: %+v", st.Releases)
		}
		evs := strings.Join(e.events(), "|")
		for _, want := range []string{"release startup failed", "release startup process status", "deploy failed"} {
			if !strings.Contains(evs, want) {
				t.Errorf("missing event %q in %s", want, evs)
			}
		}
	})
}
