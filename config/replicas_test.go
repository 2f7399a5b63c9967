package config

import (
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestProxiedReplicaFields: replicas "auto", balance, stickiness, notify
// readiness, dependsOn and recycle are normalized and rendered as JSON.
func TestProxiedReplicaFields(t *testing.T) {
	cfg := mustLoad(t, procs(
		webWith(`replicas: "auto", balance: "round-robin", stickiness: {cookie: "rb"}, health: {notify: true, timeoutMs: 5000}, recycle: {everyMs: 60000, jitterMs: 500}, dependsOn: ["beacon", "beacon"]`),
		`{id: "beacon", policy: "service", command: "b", health: {notify: true, path: "/ready"}}`,
		worker(`replicas: 3`),
	))
	web := cfg.Process("web")
	if web.Replicas != max(runtime.NumCPU(), 1) || !web.ReplicasAuto {
		t.Errorf("replicas = %d auto=%v, want %d (NumCPU)", web.Replicas, web.ReplicasAuto, runtime.NumCPU())
	}
	if web.Balance != RoundRobin || web.Stickiness == nil || web.Stickiness.Cookie != "rb" || web.Stickiness.ClientIP {
		t.Errorf("balance/stickiness = %q %+v", web.Balance, web.Stickiness)
	}
	if h := web.Health; h == nil || !h.Notify || h.Path != "" || h.Timeout != 5*time.Second {
		t.Errorf("notify health without a path = %+v, want no HTTP path", h)
	}
	if h := cfg.Process("beacon").Health; !h.Notify || h.Path != "/ready" {
		t.Errorf("notify health with a path = %+v", h)
	}
	if web.Recycle == nil || web.Recycle.Every != time.Minute || web.Recycle.Jitter != 500*time.Millisecond {
		t.Errorf("recycle = %+v", web.Recycle)
	}
	if !slices.Equal(web.DependsOn, []string{"beacon"}) {
		t.Errorf("dependsOn = %q, want duplicates removed", web.DependsOn)
	}
	if w := cfg.Process("worker"); w.ReplicasAuto || w.Replicas != 3 || w.Balance != "" || w.Stickiness != nil || w.Recycle != nil || w.DependsOn != nil {
		t.Errorf("worker defaults = %+v", w)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"balance":"round-robin"`, `"stickiness":{"cookie":"rb"}`, `"notify":true`,
		`"recycle":{"everyMs":60000,"jitterMs":500}`, `"dependsOn":["beacon"]`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
	if strings.Count(string(b), `"balance"`) != 1 {
		t.Errorf("balance must be omitted where unset:\n%s", b)
	}
}

// TestReplicaPorts: {{port}} and ROLLBRIDGE_PORT are each replica's own
// port; {{ports.web}} and ROLLBRIDGE_WEB_PORT stay replica 0's.
func TestReplicaPorts(t *testing.T) {
	cfg := mustLoad(t, procs(webWith(`replicas: 3, command: "serve --port {{port}} --first {{ports.web}} --i {{replicaIndex}}/{{replicaCount}}"`)))
	web := cfg.Process("web")
	rc := cfg.ReleaseContext("r1", "/srv/r1", "", map[string]int{"web": 18000}, nil)
	rc.ReplicaPorts = map[string][]int{"web": {18000, 18001, 18002}}
	for i, port := range []int{18000, 18001, 18002} {
		in, err := web.Build(rc, i)
		if err != nil {
			t.Fatal(err)
		}
		want := "serve --port " + itoa(port) + " --first 18000 --i " + itoa(i) + "/3"
		if in.Command != want || in.Port != port || !in.HasPort || in.ID != "web#"+itoa(i) {
			t.Errorf("replica %d: %q port %d id %s, want %q", i, in.Command, in.Port, in.ID, want)
		}
		if !slices.Contains(in.Env, "ROLLBRIDGE_PORT="+itoa(port)) || !slices.Contains(in.Env, "ROLLBRIDGE_WEB_PORT=18000") {
			t.Errorf("replica %d env: %q", i, in.Env)
		}
	}
	// Without ReplicaPorts every replica falls back to Ports (a single
	// proxied process, as before).
	rc.ReplicaPorts = nil
	if in, err := web.Build(rc, 2); err != nil || in.Port != 18000 {
		t.Errorf("fallback: %+v %v", in, err)
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
