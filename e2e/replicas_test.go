package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// replicaWeb is a proxied demo app with replicas; extra adds fields. The
// shell execs the app, so an instance's pid is the app's.
func replicaWeb(replicas int, extra string) string {
	if extra != "" {
		extra = ", " + extra
	}
	return fmt.Sprintf(`[{id: "web", policy: "proxied", replicas: %d, command: "exec ./demo-app --port {{port}}", port: {from: 0, to: 0},
     health: {path: "/ping", timeoutMs: 10000, intervalMs: 50}, restartDelayMs: 100%s}]`, replicas, extra)
}

// replicaProcess is a proxied replica in the status object.
type replicaProcess struct {
	ID              string `json:"id"`
	State           string `json:"state"`
	PID             int    `json:"pid"`
	Port            int    `json:"port"`
	Unit            string `json:"unit"`
	Restarts        int    `json:"restarts"`
	LastStartReason string `json:"lastStartReason"`
	InRotation      *bool  `json:"inRotation"`
	Connections     *struct {
		HTTP      int `json:"http"`
		WebSocket int `json:"websocket"`
	} `json:"connections"`
}

// replicas returns the proxied replicas of a release, by instance id.
func (e *env) replicas(releaseID string) map[string]replicaProcess {
	e.t.Helper()
	var st struct {
		Releases []struct {
			ReleaseID string           `json:"releaseId"`
			Processes []replicaProcess `json:"processes"`
		} `json:"releases"`
	}
	if err := json.Unmarshal([]byte(e.rb("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]replicaProcess{}
	for _, r := range st.Releases {
		if r.ReleaseID != releaseID {
			continue
		}
		for _, p := range r.Processes {
			if p.ID == "web" || strings.HasPrefix(p.ID, "web#") {
				out[p.ID] = p
			}
		}
	}
	return out
}

func (e *env) allInRotation(releaseID string, n int) bool {
	reps := e.replicas(releaseID)
	if len(reps) != n {
		return false
	}
	for _, p := range reps {
		if p.State != "running" || p.InRotation == nil || !*p.InRotation {
			return false
		}
	}
	return true
}

var instanceRe = regexp.MustCompile(`instance (\S+)\)`)

// spread sends n requests from c concurrent keep-alive clients and counts
// the instance that answered each.
func spread(t *testing.T, url string, clients, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			for range n / clients {
				resp, err := c.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				m := instanceRe.FindStringSubmatch(string(b))
				mu.Lock()
				if m == nil {
					counts["?"+string(b)]++
				} else {
					counts[m[1]]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts
}

// TestProxiedReplicas: four replicas each on their own port, each serving
// a share of the requests; deploys of four replicas under load lose nothing.
func TestProxiedReplicas(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, replicaWeb(4, ""))
		e.deploy("v1")
		reps := e.replicas("v1")
		ports := map[int]bool{}
		for id, p := range reps {
			ports[p.Port] = true
			if p.InRotation == nil || !*p.InRotation || p.Connections == nil || p.State != "running" {
				t.Errorf("%s: %+v, want running and in rotation with connection counts", id, p)
			}
		}
		if len(reps) != 4 || len(ports) != 4 {
			t.Fatalf("replicas %+v: want web#0..web#3 on four ports", reps)
		}
		if runner == "systemd" {
			if units := e.listUnits(); len(units) != 4 {
				t.Errorf("units %v, want four", units)
			}
		}
		counts := spread(t, e.proxyURL("/"), 8, 800)
		t.Logf("800 requests from 8 clients: %v", counts)
		for i := range 4 {
			if n := counts[fmt.Sprintf("web#%d", i)]; n < 40 {
				t.Errorf("web#%d served %d of 800 requests; want a share (counts %v)", i, n, counts)
			}
		}

		l := startLoad(e.proxyURL("/"), 16, 4)
		start := time.Now()
		e.deploy("v2")
		e.deploy("v3")
		time.Sleep(300 * time.Millisecond)
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: %d requests during 2 deploys of 4 replicas in %v: %d transport errors, %d non-2xx",
			runner, total, time.Since(start).Round(time.Millisecond), l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests lost during the deploys: first failure %v", l.firstErr.Load())
		}
		if total < 500 {
			t.Errorf("only %d requests were made", total)
		}
		if !e.allInRotation("v3", 4) {
			t.Errorf("v3 replicas: %+v", e.replicas("v3"))
		}
	})
}

// TestKilledReplicaLosesNoRequest: a replica killed under load leaves the
// pool at once (requests it had in flight are retried on another replica),
// is restarted by its restart policy and rejoins after its health check.
func TestKilledReplicaLosesNoRequest(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, replicaWeb(4, ""))
		e.deploy("v1")
		victim := e.replicas("v1")["web#2"]
		l := startLoad(e.proxyURL("/"), 16, 4)
		time.Sleep(300 * time.Millisecond)
		if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		e.waitFor("web#2 restarted and back in rotation", 20*time.Second, func() bool {
			p := e.replicas("v1")["web#2"]
			return p.Restarts == 1 && p.PID != victim.PID && p.InRotation != nil && *p.InRotation
		})
		time.Sleep(300 * time.Millisecond)
		l.finish()
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		t.Logf("%s runner: %d requests around a SIGKILL of web#2: %d transport errors, %d non-2xx", runner, total, l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests lost: first failure %v", l.firstErr.Load())
		}
		evs := strings.Join(e.events(), "\n")
		if !strings.Contains(evs, "replica out of rotation") || !strings.Contains(evs, "replica in rotation") {
			t.Errorf("events lack the rotation changes:\n%s", evs)
		}
	})
}

// TestStickyCookieKeepsClientOnReplica: with stickiness {cookie}, a client
// that keeps the cookie stays on one replica; new clients spread.
func TestStickyCookieKeepsClientOnReplica(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, replicaWeb(4, `stickiness: {cookie: "rb_replica"}`))
		e.deploy("v1")
		url := e.proxyURL("/")
		firsts := map[string]bool{}
		for client := range 8 {
			jar, _ := cookiejar.New(nil)
			c := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: client%2 == 0}}
			var first string
			for i := range 15 {
				resp, err := c.Get(url)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				m := instanceRe.FindStringSubmatch(string(b))
				if m == nil {
					t.Fatalf("body %q", b)
				}
				if i == 0 {
					first = m[1]
					if !strings.Contains(resp.Header.Get("Set-Cookie"), "rb_replica=") {
						t.Errorf("first response without the affinity cookie: %q", resp.Header.Values("Set-Cookie"))
					}
				} else if m[1] != first {
					t.Fatalf("client %d moved from %s to %s on request %d", client, first, m[1], i)
				}
			}
			firsts[first] = true
		}
		if len(firsts) < 2 {
			t.Errorf("8 new clients all landed on %v; want them spread", firsts)
		}
	})
}
