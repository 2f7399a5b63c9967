package main

import (
	"strings"
	"testing"

	"github.com/rollbridge/rollbridge/config"
)

// TestProgressView renders a deploy's progress events as a terminal user
// sees them (provisional health lines replaced in place) and as a log sees
// them (no terminal: no provisional lines).
func TestProgressView(t *testing.T) {
	cfg := &config.Config{Processes: []config.Process{
		{ID: "beacon", Policy: config.Service, Replicas: 1},
		{ID: "worker", Policy: config.Companion, Replicas: 2},
		{ID: "web", Policy: config.Proxied, Replicas: 2},
	}}
	events := []progressEvent{
		{"deploy starting", map[string]any{"releaseId": "v2", "releasePath": "/srv/app/v2"}},
		{"process started", map[string]any{"id": "beacon", "pid": 10.0}},
		{"process started", map[string]any{"id": "worker#1", "pid": 12.0}},
		{"process started", map[string]any{"id": "worker#0", "pid": 11.0}},
		{"process started", map[string]any{"id": "web#0", "pid": 13.0}},
		{"process started", map[string]any{"id": "web#1", "pid": 14.0}},
		{"health probe", map[string]any{"url": "http://127.0.0.1:4001/up", "healthy": false, "reason": "connection refused", "elapsedMs": 200.0, "timeoutMs": 30000.0}},
		{"health probe", map[string]any{"url": "http://127.0.0.1:4001/up", "healthy": true, "elapsedMs": 450.0}},
		{"process exited", map[string]any{"id": "worker#1", "code": nil, "signal": "SIGKILL"}},
		{"traffic switched", map[string]any{"releaseId": "v2", "previousReleaseId": "v1"}},
	}
	for _, terminal := range []bool{true, false} {
		var b strings.Builder
		v := newProgressView(&b, terminal, cfg)
		for _, ev := range events {
			v.event(ev)
		}
		out := b.String()
		t.Logf("terminal=%v:\n%s", terminal, out)
		for _, want := range []string{
			"Deploying release v2 from /srv/app/v2\n",
			"  ✓ started beacon (service, pid 10)\n",
			"  ✓ started worker#1 (companion 1/2, pid 12)\n",
			"  ✓ started worker#0 (companion 2/2, pid 11)\n",
			"  ✓ started web#0 (proxied 1/2, pid 13)\n",
			"  ✓ started web#1 (proxied 2/2, pid 14)\n",
			"  ✓ healthy: http://127.0.0.1:4001/up after 0.5s\n",
			"  · worker#1 exited (code -, signal SIGKILL)\n",
			"  ✓ traffic switched: v1 → v2\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("terminal=%v: missing %q", terminal, want)
			}
		}
		waiting := "\r\033[K  … waiting for http://127.0.0.1:4001/up: connection refused (0.2s / 30s)\r\033[K  ✓ healthy"
		if got := strings.Contains(out, waiting); got != terminal {
			t.Errorf("terminal=%v: provisional health line shown=%v", terminal, got)
		}
		if strings.Contains(out, "<nil>") {
			t.Errorf("terminal=%v: <nil> in output", terminal)
		}
	}
}
