package e2e

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// Helpers shared by the supervision and release-policy tests (issue 6).

// markerDir is a per-test temp dir for the files fixtures write. It is
// removed after the daemon of the test has shut down (cleanups run LIFO and
// newEnv registers its own later).
func markerDir(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rbe2e-"+name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// event is one decoded entry of `rollbridge events --json`.
type event struct {
	At      time.Time
	Message string
	Data    map[string]any
}

func (ev event) str(key string) string {
	s, _ := ev.Data[key].(string)
	return s
}

// num returns a numeric data field, or -1 when it is absent or null.
func (ev event) num(key string) float64 {
	if f, ok := ev.Data[key].(float64); ok {
		return f
	}
	return -1
}

// eventLog returns the daemon's events with their timestamps and data, in
// emission order.
func (e *env) eventLog() []event {
	e.t.Helper()
	var raw []struct {
		At      string         `json:"at"`
		Message string         `json:"message"`
		Data    map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(e.rb("events", "--json", "--limit", "1000")), &raw); err != nil {
		e.t.Fatal(err)
	}
	out := make([]event, 0, len(raw))
	for _, r := range raw {
		at, err := time.Parse("2006-01-02T15:04:05.000Z", r.At)
		if err != nil {
			e.t.Fatalf("event %q: bad timestamp %q: %v", r.Message, r.At, err)
		}
		out = append(out, event{At: at, Message: r.Message, Data: r.Data})
	}
	return out
}

// indexOf returns the positions of the events with message for instance
// processID of releaseID ("" matches any).
func indexOf(evs []event, message, processID, releaseID string) []int {
	var out []int
	for i, ev := range evs {
		if ev.Message != message {
			continue
		}
		if processID != "" && ev.str("processId") != processID {
			continue
		}
		if releaseID != "" && ev.str("releaseId") != releaseID {
			continue
		}
		out = append(out, i)
	}
	return out
}

// findProcess returns instance id of release releaseID from status.
func findProcess(st status, releaseID, id string) (process, bool) {
	for _, r := range st.Releases {
		if r.ReleaseID != releaseID {
			continue
		}
		for _, p := range r.Processes {
			if p.ID == id {
				return p, true
			}
		}
	}
	return process{}, false
}

// mustProcess is findProcess that fails the test when the instance is
// missing.
func (e *env) mustProcess(st status, releaseID, id string) process {
	e.t.Helper()
	p, ok := findProcess(st, releaseID, id)
	if !ok {
		e.t.Fatalf("no process %s in release %s: %+v", id, releaseID, st.Releases)
	}
	return p
}

// waitStopped waits until every release other than active is stopped.
func (e *env) waitStopped(active string, timeout time.Duration) {
	e.t.Helper()
	e.waitFor("releases other than "+active+" stopped", timeout, func() bool {
		for _, r := range e.status().Releases {
			if r.ReleaseID != active && r.State != "stopped" {
				return false
			}
		}
		return true
	})
}

// editConfig rewrites the config file, replacing old by new (which must
// occur).
func (e *env) editConfig(old, new string) {
	e.t.Helper()
	b, err := os.ReadFile(e.config)
	if err != nil {
		e.t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		e.t.Fatalf("config has no %q:\n%s", old, b)
	}
	if err := os.WriteFile(e.config, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// readLines returns the non-empty lines of a marker file (none if it does
// not exist yet).
func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// webProcess is the proxied demo app every test config ends with.
const webProcess = `{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {path: "/ping", intervalMs: 50}}`

// switchToDrained is the time from the switch to v2 to the end of v1's
// drain, from the event log.
func switchToDrained(t *testing.T, evs []event) time.Duration {
	t.Helper()
	switched := indexOf(evs, "traffic switched", "", "v2")
	drained := indexOf(evs, "release drained", "", "v1")
	if len(switched) != 1 || len(drained) != 1 {
		t.Fatalf("want one traffic switched to v2 and one release drained v1: %v %v", switched, drained)
	}
	return evs[drained[0]].At.Sub(evs[switched[0]].At)
}

// logDeployTimes logs the median and slowest deploy wall time (CLI call to
// JSON result) and the same without the new web process's boot (from its
// "process started" to "traffic switched": the app binding its port plus
// the health probe seeing it).
func logDeployTimes(t *testing.T, runner string, walls map[string]time.Duration, evs []event) {
	t.Helper()
	var all, own []time.Duration
	for id, wall := range walls {
		started := indexOf(evs, "process started", "web", id)
		switched := indexOf(evs, "traffic switched", "", id)
		if len(started) == 0 || len(switched) != 1 {
			t.Errorf("deploy %s: no web start or switch in the event log", id)
			continue
		}
		boot := evs[switched[0]].At.Sub(evs[started[0]].At)
		all = append(all, wall)
		own = append(own, wall-boot)
	}
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	slices.Sort(own)
	t.Logf("%s runner: deploy wall time median %v, slowest %v; without the web process's boot and health wait median %v, slowest %v (%d deploys)",
		runner, all[len(all)/2].Round(time.Millisecond), all[len(all)-1].Round(time.Millisecond),
		own[len(own)/2].Round(time.Millisecond), own[len(own)-1].Round(time.Millisecond), len(all))
}
