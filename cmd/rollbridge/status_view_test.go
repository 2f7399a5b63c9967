package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestFormatStatusTable(t *testing.T) {
	const reply = `{
  "application": "shop", "runner": "systemd", "activeReleaseId": "r2",
  "proxy": {"host": "127.0.0.1", "port": 3000},
  "releases": [
    {"releaseId": "r2", "state": "active", "connections": {"http": 3, "websocket": 1},
     "processes": [
       {"id": "web#0", "unit": "rollbridge-shop-r2-web\\x230.service", "state": "running", "pid": 4242,
        "uptimeMs": 65000, "restarts": 1, "rssBytes": 52428800, "connections": {"http": 2, "websocket": 1}, "inRotation": true},
       {"id": "web#1", "unit": "rollbridge-shop-r2-web\\x231.service", "state": "starting", "restarts": 0,
        "connections": {"http": 1, "websocket": 0}, "inRotation": false},
       {"id": "worker", "unit": "rollbridge-shop-r2-worker.service", "state": "running", "pid": 4250, "restarts": 0}
     ]}
  ],
  "services": [{"process": {"id": "beacon", "unit": "rollbridge-shop-r1-beacon.service", "state": "running", "pid": 4000, "restarts": 2}}],
  "singletons": []
}`
	var m map[string]any
	if err := json.Unmarshal([]byte(reply), &m); err != nil {
		t.Fatal(err)
	}
	out := formatStatus(m)
	t.Logf("\n%s", out)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	want := [][]string{
		{"shop", "proxy", "127.0.0.1:3000", "runner", "systemd", "active", "release:", "r2"},
		nil,
		{"SCOPE", "PROCESS", "UNIT", "STATE", "PID", "UPTIME", "RESTARTS", "MEMORY", "CONNECTIONS"},
		{"release", "r2", "(active)", "http", "3,", "ws", "1"},
		{"web#0", `rollbridge-shop-r2-web\x230.service`, "running", "4242", "1m5s", "1", "50.0", "MiB", "http", "2,", "ws", "1"},
		{"web#1", `rollbridge-shop-r2-web\x231.service`, "starting", "-", "-", "0", "-", "http", "1,", "ws", "0", "(out", "of", "rotation)"},
		{"worker", "rollbridge-shop-r2-worker.service", "running", "4250", "-", "0", "-"},
		{"service", "beacon", "rollbridge-shop-r1-beacon.service", "running", "4000", "-", "2", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d", len(lines), len(want))
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("line %d:\n got %q\nwant %q", i, got, w)
		}
	}
	// Columns line up: every process row's UNIT starts where the header's does.
	col := strings.Index(lines[2], "UNIT")
	if idx := strings.Index(lines[4], "rollbridge-"); idx != col {
		t.Errorf("UNIT column at %d in the header, %d in a row", col, idx)
	}
}

// A reply of another daemon version, with fields missing or of other
// types, renders with "-" instead of panicking.
func TestFormatStatusTolerant(t *testing.T) {
	for _, reply := range []string{
		`{}`,
		`{"proxy": "x", "releases": [1, {"connections": 5, "processes": [null, {"pid": "x"}]}], "services": [{"process": 3}]}`,
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(reply), &m); err != nil {
			t.Fatal(err)
		}
		out := formatStatus(m)
		if !strings.Contains(out, "SCOPE") || !strings.Contains(out, "active release: none") {
			t.Errorf("%s:\n%s", reply, out)
		}
	}
}
