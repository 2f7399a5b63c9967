package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// deployReply is the JSON reply of deploy and rollback.
type deployReply struct {
	Status            string  `json:"status"`
	ActiveReleaseID   string  `json:"activeReleaseId"`
	PreviousReleaseID *string `json:"previousReleaseId"`
}

func TestRollback(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[`+webProcess+`]`)
		if out, err := e.rbErr("rollback"); err == nil || !strings.Contains(out, "No previous release to roll back to.") {
			t.Errorf("rollback without releases: %v %s", err, out)
		}
		e.deploy("v1")
		e.deploy("v2")
		e.waitStopped("v2", 10*time.Second)

		out := e.rb("rollback")
		var rep deployReply
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("rollback reply %q: %v", out, err)
		}
		if rep.Status != "success" || rep.ActiveReleaseID != "v1" || rep.PreviousReleaseID == nil || *rep.PreviousReleaseID != "v2" {
			t.Errorf("rollback reply %s", out)
		}
		if _, body, err := get(e.proxyURL("/")); err != nil || !strings.Contains(body, "release v1") {
			t.Errorf("after the rollback: %q %v", body, err)
		}
		e.waitStopped("v1", 10*time.Second)
		st := e.status()
		if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v1" {
			t.Errorf("active release %v", st.ActiveReleaseID)
		}
		if web := e.mustProcess(st, "v1", "web"); web.State != "running" || web.LastStartReason != "deploy" {
			t.Errorf("v1 web after rollback: %+v", web)
		}
		if evs := e.events(); !slices.Contains(evs, "rollback starting") {
			t.Errorf("no rollback starting event: %v", evs)
		}
		if runner == "systemd" {
			// The rolled-back release reuses its unit names.
			want := []string{units.Identity{App: e.app, Release: "v1", Process: "web", Replicas: 1}.UnitName()}
			if got := e.listUnits(); !slices.Equal(got, want) {
				t.Errorf("units after the rollback: %v, want %v", got, want)
			}
		}

		for _, c := range []struct{ args, want string }{
			{"nope", `No retained release "nope" to roll back to.`},
			{"v1", `Release "v1" is already active.`},
		} {
			out, err := e.rbErr("rollback", "--release-id", c.args)
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("rollback --release-id %s: %v %q, want %q", c.args, err, out, c.want)
			}
		}
		// A plain rollback goes back to v2 again.
		out = e.rb("rollback")
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.ActiveReleaseID != "v2" {
			t.Errorf("second rollback: %s (%v)", out, err)
		}
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v2") {
			t.Errorf("after the second rollback: %q", body)
		}
	})
}

func TestLiveConfigReload(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[
    {id: "stubborn", gracefulStopMs: 60000, command: "trap '' TERM; while :; do sleep 0.05; done"},
    `+webProcess+`
  ]`)
		e.deploy("v1")
		// The retiring release is governed by the reloaded window.
		e.editConfig("gracefulStopMs: 60000", "gracefulStopMs: 500")
		e.deploy("v2")
		start := time.Now()
		e.waitStopped("v2", 15*time.Second)
		t.Logf("%s runner: v1 stopped %v after the deploy (reloaded gracefulStopMs 500, was 60000)", runner, time.Since(start).Round(time.Millisecond))
		evs := e.eventLog()
		kills := pick(evs, indexOf(evs, "process stop timed out; sending SIGKILL", "stubborn", "v1"))
		switched := indexOf(evs, "traffic switched", "", "v2")
		if len(kills) != 1 || len(switched) != 1 {
			t.Fatalf("want one SIGKILL escalation of v1 stubborn after the switch to v2: %+v", kills)
		}
		if d := kills[0].At.Sub(evs[switched[0]].At); d < 450*time.Millisecond || d > 5*time.Second {
			t.Errorf("SIGKILL %v after the switch, want about 500ms", d)
		}

		// Incompatible edits are refused before anything starts; v2 keeps
		// serving.
		v3 := e.release("v3")
		for _, c := range []struct{ name, old, new, want string }{
			{"proxy.port", "port: 0, drainTimeoutMs", "port: 1, drainTimeoutMs",
				"Config changes to proxy.port cannot be applied live; restart the Rollbridge daemon before deploying."},
			{"added process", "processes: [", `processes: [{id: "extra", command: "exec sleep 100000"},`,
				"Config changes to processes cannot be applied live; restart the Rollbridge daemon before deploying."},
		} {
			e.editConfig(c.old, c.new)
			out, err := e.rbErr("deploy", "--release-path", v3, "--release-id", "v3")
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("deploy with %s changed: %v %q, want %q", c.name, err, out, c.want)
			}
			e.editConfig(c.new, c.old)
			st := e.status()
			if st.ActiveReleaseID == nil || *st.ActiveReleaseID != "v2" || len(st.Releases) != 2 {
				t.Errorf("after the refused deploy (%s): active %v, %d releases", c.name, st.ActiveReleaseID, len(st.Releases))
			}
			if _, body, err := get(e.proxyURL("/")); err != nil || !strings.Contains(body, "release v2") {
				t.Errorf("v2 not serving after the refused deploy (%s): %q %v", c.name, body, err)
			}
		}
		if ix := indexOf(e.eventLog(), "deploy starting", "", "v3"); len(ix) != 0 {
			t.Errorf("a refused deploy emitted deploy starting")
		}
		// With the config back in shape deploys work again.
		e.rb("deploy", "--release-path", v3, "--release-id", "v3")
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v3") {
			t.Errorf("v3 not serving: %q", body)
		}
	})
}

func TestReleaseRetention(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, `[`+webProcess+`],
  releaseRetention: {keep: 1}`)
		for _, id := range []string{"v1", "v2", "v3"} {
			e.deploy(id)
			e.waitStopped(id, 10*time.Second)
		}
		st := e.status()
		var got []string
		for _, r := range st.Releases {
			got = append(got, r.ReleaseID+":"+r.State)
		}
		slices.Sort(got)
		if want := []string{"v2:stopped", "v3:active"}; !slices.Equal(got, want) {
			t.Errorf("retained releases %v, want %v", got, want)
		}
		if out, err := e.rbErr("rollback", "--release-id", "v1"); err == nil || !strings.Contains(out, `No retained release "v1" to roll back to.`) {
			t.Errorf("rollback to a pruned release: %v %q", err, out)
		}
		if runner == "systemd" {
			want := []string{units.Identity{App: e.app, Release: "v3", Process: "web", Replicas: 1}.UnitName()}
			if got := e.listUnits(); !slices.Equal(got, want) {
				t.Errorf("units: %v, want %v", got, want)
			}
		}
	})
}
