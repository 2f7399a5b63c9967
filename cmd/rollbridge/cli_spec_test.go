package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/control"
)

// Tests of the CLI surface against spec §6 (checklist CLI-01, CLI-02,
// CLI-06, CLI-08, CLI-09, CLI-10 and RST-07). Commands that talk to the
// daemon run in-process against specDaemon, a fake daemon that records the
// raw request lines and answers with canned replies.

// specDaemon is a fake Rollbridge daemon on a Unix socket: it reads one
// request line per connection, records it, writes the canned reply for the
// request's command and closes the connection, as the real daemon does for
// the CLI's one-request connections (spec §7.1).
type specDaemon struct {
	ln   net.Listener
	done chan struct{}

	mu       sync.Mutex
	replies  map[string]string // command → reply line (without "\n")
	requests []string          // raw request lines, in arrival order
}

// newSpecDaemon serves a fake daemon on sock until the test ends.
func newSpecDaemon(t *testing.T, sock string) *specDaemon {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	d := &specDaemon{ln: ln, done: make(chan struct{}), replies: map[string]string{}}
	go d.serve()
	t.Cleanup(func() {
		ln.Close()
		<-d.done
	})
	return d
}

// reply sets the canned reply line for command.
func (d *specDaemon) reply(command, line string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.replies[command] = line
}

// take returns the request lines received since the last take.
func (d *specDaemon) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	reqs := d.requests
	d.requests = nil
	return reqs
}

func (d *specDaemon) serve() {
	defer close(d.done)
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.handle(c)
	}
}

func (d *specDaemon) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		// Recorded so that the test sees it as an unexpected request.
		line = []byte("<read error: " + err.Error() + ">")
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	var req struct {
		Command string `json:"command"`
	}
	d.mu.Lock()
	d.requests = append(d.requests, string(line))
	reply := `{"error":"fake daemon: no canned reply","status":"error"}`
	if json.Unmarshal(line, &req) == nil {
		if r, ok := d.replies[req.Command]; ok {
			reply = r
		}
	}
	d.mu.Unlock()
	_, _ = io.WriteString(c, reply+"\n")
}

// specSetup writes a rollbridge.js whose control socket is served by a fake
// daemon; it returns the working directory to run the CLI in.
func specSetup(t *testing.T) (string, *specDaemon) {
	t.Helper()
	dir, _, sock := recDir(t, "")
	return dir, newSpecDaemon(t, sock)
}

// sameJSON reports whether two JSON texts hold the same value (key order
// and spacing aside).
func sameJSON(t *testing.T, got, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		return false
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want JSON %q: %v", want, err)
	}
	return reflect.DeepEqual(g, w)
}

// wantOneRequest checks that exactly one request, equal to want as JSON,
// reached the daemon.
func wantOneRequest(t *testing.T, d *specDaemon, want string) {
	t.Helper()
	reqs := d.take()
	if len(reqs) != 1 || !sameJSON(t, reqs[0], want) {
		t.Errorf("requests %q, want exactly %s", reqs, want)
	}
}

// specRoot is the live command tree.
func specRoot() *cobra.Command {
	return (&app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, cwd: ".", env: nil}).rootCommand()
}

// originalCommands is the original's command set in its registration
// order (spec §6.0, checklist CLI-01).
var originalCommands = []string{
	"daemon", "deploy", "rollback", "ensure-daemon", "status", "stop", "restart",
	"shutdown", "validate", "doctor", "logs", "events", "predeploy-cleanup",
	"recover", "completion",
}

// TestCLICommandOrder covers CLI-01: the original's commands in their
// registration order, with this version's additions (docs/cli.md,
// docs/migration.md) where they are: systemd-units before completion,
// version and the hidden man command last. Help and completion show that
// order, not an alphabetical one.
func TestCLICommandOrder(t *testing.T) {
	var names []string
	for _, c := range specRoot().Commands() {
		names = append(names, c.Name())
		if c.Hidden != (c.Name() == "man") {
			t.Errorf("command %s: hidden = %v", c.Name(), c.Hidden)
		}
	}
	var originals []string
	for _, n := range names {
		if slices.Contains(originalCommands, n) {
			originals = append(originals, n)
		}
	}
	if !slices.Equal(originals, originalCommands) {
		t.Errorf("the original's commands are registered as\n%q, want\n%q", originals, originalCommands)
	}
	want := append(slices.Clone(originalCommands[:len(originalCommands)-1]), "systemd-units", "completion", "version", "man")
	if !slices.Equal(names, want) {
		t.Errorf("registered commands\n%q, want\n%q", names, want)
	}

	// What users see: help lists the visible commands (and cobra's help
	// command) in that order, and so does command-name completion.
	visible := append(slices.Clone(want[:len(want)-1]), "help")
	r := runCLI(t, ".", "--help")
	_, list, ok := strings.Cut(r.stdout, "Available Commands:\n")
	if r.code != 0 || !ok {
		t.Fatalf("--help: code %d stdout %q", r.code, r.stdout)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	var helpNames []string
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			helpNames = append(helpNames, f[0])
		}
	}
	if !slices.Equal(helpNames, visible) {
		t.Errorf("--help lists\n%q, want\n%q", helpNames, visible)
	}
	r = runCLI(t, ".", "__complete", "")
	var completed []string
	for _, line := range strings.Split(r.stdout, "\n") {
		if name, _, ok := strings.Cut(line, "\t"); ok {
			completed = append(completed, name)
		}
	}
	if r.code != 0 || !slices.Equal(completed, visible) {
		t.Errorf("command completion (code %d) offers\n%q, want\n%q", r.code, completed, visible)
	}
}

// TestCLIConfigFlag covers CLI-02: every command but completion takes
// -c/--config. Two additions of this version take none either: version
// (documented in docs/cli.md) and the hidden man command.
func TestCLIConfigFlag(t *testing.T) {
	without := map[string]bool{"completion": true, "version": true, "man": true}
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		for _, sub := range c.Commands() {
			p := append(slices.Clone(path), sub.Name())
			paths = append(paths, p)
			f := sub.Flags().Lookup("config")
			switch {
			case without[sub.Name()]:
				if f != nil || sub.Flags().ShorthandLookup("c") != nil {
					t.Errorf("%s has -c/--config", strings.Join(p, " "))
				}
			case f == nil:
				t.Errorf("%s lacks --config", strings.Join(p, " "))
			case f.Shorthand != "c" || f.Value.Type() != "string" || f.DefValue != "":
				t.Errorf("%s: --config shorthand %q, type %s, default %q; want -c, string, \"\" (./rollbridge.js)",
					strings.Join(p, " "), f.Shorthand, f.Value.Type(), f.DefValue)
			}
			walk(sub, p)
		}
	}
	walk(specRoot(), nil)
	if len(paths) < len(originalCommands) {
		t.Fatalf("walked only %d commands: %q", len(paths), paths)
	}

	// The parser agrees: both spellings parse (--help then stops before the
	// command runs), and the commands without the flag reject them.
	dir := t.TempDir()
	for _, p := range paths {
		if p[0] == "man" {
			continue // hidden packaging helper
		}
		for _, spelling := range []string{"-c", "--config"} {
			args := append(slices.Clone(p), spelling, "x.js", "--help")
			r := runCLI(t, dir, args...)
			if without[p[len(p)-1]] {
				if r.code != 1 || !strings.HasPrefix(r.stderr, "error: unknown") {
					t.Errorf("%q: code %d stderr %q, want an unknown-flag error", args, r.code, r.stderr)
				}
			} else if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "-c, --config") {
				t.Errorf("%q: code %d stderr %q", args, r.code, r.stderr)
			}
		}
	}
	r := runCLI(t, ".", "completion", "bash", "-c", "x.js")
	if r.code != 1 || r.stderr != "error: unknown shorthand flag: 'c' in -c\n" || r.stdout != "" {
		t.Errorf("completion bash -c: code %d stdout %d bytes stderr %q", r.code, len(r.stdout), r.stderr)
	}
}

// Canned replies and how the CLI prints them when stdout is not a terminal
// (2-space JSON in the daemon's key order, spec §6.0).
const (
	rollbackReply    = `{"status":"success","activeReleaseId":"v3","previousReleaseId":"v4"}`
	rollbackPrinted  = "{\n  \"status\": \"success\",\n  \"activeReleaseId\": \"v3\",\n  \"previousReleaseId\": \"v4\"\n}\n"
	stopReply        = `{"status":"success","activeReleaseId":null,"application":"shop","releases":[{"releaseId":"v2","state":"stopped"}]}`
	stopPrinted      = "{\n  \"status\": \"success\",\n  \"activeReleaseId\": null,\n  \"application\": \"shop\",\n  \"releases\": [\n    {\n      \"releaseId\": \"v2\",\n      \"state\": \"stopped\"\n    }\n  ]\n}\n"
	restartReply     = `{"status":"success","restarted":["worker#0","worker#1"]}`
	restartPrinted   = "{\n  \"status\": \"success\",\n  \"restarted\": [\n    \"worker#0\",\n    \"worker#1\"\n  ]\n}\n"
	policyErrMessage = "--policy must be one of: companion, singleton, service, proxied.\n"
)

// TestCLIRequestFields covers CLI-06: rollback --release-id, stop
// --release-id and restart --process/--policy become the control request
// fields releaseId, processId and policy (spec §7.3), absent flags send no
// field, and the daemon's reply is printed as received.
func TestCLIRequestFields(t *testing.T) {
	dir, d := specSetup(t)
	d.reply("rollback", rollbackReply)
	d.reply("stop", stopReply)
	d.reply("restart", restartReply)
	cases := []struct {
		args    []string
		request string
		decoded control.Request // what the daemon decodes (control.DecodeRequest)
		stdout  string
	}{
		{[]string{"rollback"}, `{"command":"rollback"}`,
			control.Request{Command: "rollback"}, rollbackPrinted},
		{[]string{"rollback", "--release-id", "v3"}, `{"command":"rollback","releaseId":"v3"}`,
			control.Request{Command: "rollback", ReleaseID: "v3"}, rollbackPrinted},
		{[]string{"stop"}, `{"command":"stop"}`,
			control.Request{Command: "stop"}, stopPrinted},
		{[]string{"stop", "--release-id", "v2"}, `{"command":"stop","releaseId":"v2"}`,
			control.Request{Command: "stop", ReleaseID: "v2"}, stopPrinted},
		{[]string{"restart"}, `{"command":"restart"}`,
			control.Request{Command: "restart"}, restartPrinted},
		{[]string{"restart", "--process", "worker#1"}, `{"command":"restart","processId":"worker#1"}`,
			control.Request{Command: "restart", ProcessID: "worker#1"}, restartPrinted},
		{[]string{"restart", "--policy", "singleton"}, `{"command":"restart","policy":"singleton"}`,
			control.Request{Command: "restart", Policy: "singleton"}, restartPrinted},
		{[]string{"restart", "--process", "worker", "--policy", "companion"}, `{"command":"restart","processId":"worker","policy":"companion"}`,
			control.Request{Command: "restart", ProcessID: "worker", Policy: "companion"}, restartPrinted},
	}
	for _, c := range cases {
		r := runCLI(t, dir, c.args...)
		if r.code != 0 || r.stderr != "" || r.stdout != c.stdout {
			t.Errorf("%q: code %d stderr %q stdout\n%s", c.args, r.code, r.stderr, r.stdout)
		}
		reqs := d.take()
		if len(reqs) != 1 || !sameJSON(t, reqs[0], c.request) {
			t.Errorf("%q sent %q, want exactly %s", c.args, reqs, c.request)
			continue
		}
		got, err := control.DecodeRequest([]byte(reqs[0]))
		if err != nil || got != c.decoded {
			t.Errorf("%q: the daemon decodes %+v (%v), want %+v", c.args, got, err, c.decoded)
		}
	}

	// A daemon error reply for the selected process: stderr, exit 1.
	d.reply("restart", `{"error":"No managed process with id \"nope\" to restart.","status":"error"}`)
	r := runCLI(t, dir, "restart", "--process", "nope")
	if r.code != 1 || r.stdout != "" || r.stderr != "error: No managed process with id \"nope\" to restart.\n" {
		t.Errorf("restart of an unknown id: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	wantOneRequest(t, d, `{"command":"restart","processId":"nope"}`)
}

// TestCLIRestartPolicyValidation covers RST-07: restart --policy accepts
// companion, singleton and service — and proxied, this version's
// replica replacement (docs/cli.md, docs/replicas.md) — and rejects any
// other value with the exact message, exit 1, before contacting the daemon.
func TestCLIRestartPolicyValidation(t *testing.T) {
	dir, d := specSetup(t)
	d.reply("restart", restartReply)
	for _, policy := range []string{"daemon", "Companion", "services", "all", " singleton"} {
		r := runCLI(t, dir, "restart", "--policy", policy)
		if r.code != 1 || r.stdout != "" || r.stderr != policyErrMessage {
			t.Errorf("--policy %q: code %d stdout %q stderr %q, want %q", policy, r.code, r.stdout, r.stderr, policyErrMessage)
		}
		if reqs := d.take(); len(reqs) != 0 {
			t.Errorf("--policy %q reached the daemon: %q", policy, reqs)
		}
	}
	// Rejected even combined with --process, and without a config: the
	// check comes first.
	r := runCLI(t, t.TempDir(), "restart", "--process", "worker", "--policy", "web")
	if r.code != 1 || r.stderr != policyErrMessage {
		t.Errorf("--process worker --policy web: code %d stderr %q", r.code, r.stderr)
	}
	for _, policy := range []string{"companion", "singleton", "service", "proxied"} {
		r := runCLI(t, dir, "restart", "--policy", policy)
		if r.code != 0 || r.stdout != restartPrinted {
			t.Errorf("--policy %s: code %d stderr %q", policy, r.code, r.stderr)
		}
		wantOneRequest(t, d, `{"command":"restart","policy":"`+policy+`"}`)
	}
}

// logsStatusReply is a status reply with a retained stopped release, the
// active one (a process with output, one with none, one without a logs
// field), a persistent service and a singleton.
const logsStatusReply = `{"status":"success","activeReleaseId":"v2","application":"shop",
"releases":[
 {"releaseId":"v1","state":"stopped","processes":[
  {"id":"web","state":"stopped","logs":[{"at":"2026-05-23T14:00:00.000Z","line":"release v1 listening","stream":"stdout"}]}]},
 {"releaseId":"v2","state":"active","processes":[
  {"id":"web","state":"running","logs":[{"at":"2026-05-23T14:31:09.512Z","line":"release v2 listening on 127.0.0.1:18480","stream":"stderr"}]},
  {"id":"worker#0","state":"running","logs":[]},
  {"id":"worker#1","state":"running"}]}],
"services":[{"id":"beacon","process":{"id":"beacon","logs":[{"at":"2026-05-23T14:31:10.000Z","line":"beacon up","stream":"stdout"}]}}],
"singletons":[{"id":"scheduler","process":{"id":"scheduler","logs":[
  {"at":"2026-05-23T14:31:11.000Z","line":"tick 1","stream":"stdout"},
  {"at":"2026-05-23T14:31:12.000Z","line":"tick failed","stream":"stderr"}]}}]}`

// TestCLILogs covers CLI-08: logs flattens a status reply (releases
// including stopped ones, then services, then singletons), filters by exact
// instance id, and prints text blocks, the empty messages, or JSON.
func TestCLILogs(t *testing.T) {
	dir, d := specSetup(t)
	d.reply("status", strings.ReplaceAll(logsStatusReply, "\n", ""))

	r := runCLI(t, dir, "logs")
	want := `== web [release v1 (stopped)] ==
  2026-05-23T14:00:00.000Z [stdout] release v1 listening

== web [release v2 (active)] ==
  2026-05-23T14:31:09.512Z [stderr] release v2 listening on 127.0.0.1:18480

== worker#0 [release v2 (active)] ==
  (no recent output)

== worker#1 [release v2 (active)] ==
  (no recent output)

== beacon [service] ==
  2026-05-23T14:31:10.000Z [stdout] beacon up

== scheduler [singleton] ==
  2026-05-23T14:31:11.000Z [stdout] tick 1
  2026-05-23T14:31:12.000Z [stderr] tick failed
`
	if r.code != 0 || r.stderr != "" || r.stdout != want {
		t.Errorf("logs: code %d stderr %q\n--- got ---\n%s--- want ---\n%s", r.code, r.stderr, r.stdout, want)
	}
	wantOneRequest(t, d, `{"command":"status"}`)

	r = runCLI(t, dir, "logs", "--process", "web")
	want = `== web [release v1 (stopped)] ==
  2026-05-23T14:00:00.000Z [stdout] release v1 listening

== web [release v2 (active)] ==
  2026-05-23T14:31:09.512Z [stderr] release v2 listening on 127.0.0.1:18480
`
	if r.code != 0 || r.stdout != want {
		t.Errorf("logs --process web: code %d stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
	wantOneRequest(t, d, `{"command":"status"}`)

	// The id must match exactly: worker is no instance id.
	r = runCLI(t, dir, "logs", "--process", "worker")
	if r.code != 0 || r.stderr != "" || r.stdout != "No process found with id \"worker\".\n" {
		t.Errorf("logs --process worker: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	wantOneRequest(t, d, `{"command":"status"}`)

	r = runCLI(t, dir, "logs", "--json")
	wantJSON := `[
  {
    "id": "web",
    "logs": [
      {
        "at": "2026-05-23T14:00:00.000Z",
        "line": "release v1 listening",
        "stream": "stdout"
      }
    ],
    "source": "release v1 (stopped)"
  },
  {
    "id": "web",
    "logs": [
      {
        "at": "2026-05-23T14:31:09.512Z",
        "line": "release v2 listening on 127.0.0.1:18480",
        "stream": "stderr"
      }
    ],
    "source": "release v2 (active)"
  },
  {
    "id": "worker#0",
    "logs": [],
    "source": "release v2 (active)"
  },
  {
    "id": "worker#1",
    "logs": [],
    "source": "release v2 (active)"
  },
  {
    "id": "beacon",
    "logs": [
      {
        "at": "2026-05-23T14:31:10.000Z",
        "line": "beacon up",
        "stream": "stdout"
      }
    ],
    "source": "service"
  },
  {
    "id": "scheduler",
    "logs": [
      {
        "at": "2026-05-23T14:31:11.000Z",
        "line": "tick 1",
        "stream": "stdout"
      },
      {
        "at": "2026-05-23T14:31:12.000Z",
        "line": "tick failed",
        "stream": "stderr"
      }
    ],
    "source": "singleton"
  }
]
`
	if r.code != 0 || r.stderr != "" || r.stdout != wantJSON {
		t.Errorf("logs --json: code %d stderr %q\n--- got ---\n%s--- want ---\n%s", r.code, r.stderr, r.stdout, wantJSON)
	}
	wantOneRequest(t, d, `{"command":"status"}`)

	r = runCLI(t, dir, "logs", "--json", "--process", "scheduler")
	if r.code != 0 || !sameJSON(t, r.stdout, `[{"id":"scheduler","logs":[
		{"at":"2026-05-23T14:31:11.000Z","line":"tick 1","stream":"stdout"},
		{"at":"2026-05-23T14:31:12.000Z","line":"tick failed","stream":"stderr"}],"source":"singleton"}]`) {
		t.Errorf("logs --json --process scheduler: code %d stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
	r = runCLI(t, dir, "logs", "--json", "--process", "worker")
	if r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("logs --json without a match: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	d.take()

	// Nothing managed at all.
	d.reply("status", `{"status":"success","activeReleaseId":null,"application":"shop","releases":[],"services":[],"singletons":[]}`)
	r = runCLI(t, dir, "logs")
	if r.code != 0 || r.stderr != "" || r.stdout != "No managed processes.\n" {
		t.Errorf("logs without processes: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, dir, "logs", "--json")
	if r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("logs --json without processes: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if reqs := d.take(); len(reqs) != 2 {
		t.Errorf("requests %q, want two status requests", reqs)
	}
}

// TestCLIEvents covers CLI-09: --limit must be a positive integer (checked
// before contacting the daemon) and is sent as a number; text lines are
// `<at>  <message>` plus compact JSON of non-empty data; the empty message;
// --json prints the events array.
func TestCLIEvents(t *testing.T) {
	dir, d := specSetup(t)
	// The data of the third event is spaced: the text form compacts it.
	d.reply("events", `{"status":"success","events":[`+
		`{"at":"2026-05-23T14:31:09.512Z","data":{"path":"/tmp/c.sock"},"message":"control socket listening"},`+
		`{"at":"2026-05-23T14:31:10.000Z","data":{},"message":"proxy listening"},`+
		`{"at":"2026-05-23T14:31:11.000Z","data":{ "releaseId": "v2", "ports": {"web": 18182}, "ids": ["web", "worker#0"] },"message":"release activated"},`+
		`{"at":"2026-05-23T14:31:12.000Z","message":"shutdown requested"}]}`)

	const msg = "--limit must be a positive integer.\n"
	for _, limit := range []string{"0", "-1", "abc", "", "1.5", "2x"} {
		r := runCLI(t, dir, "events", "--limit", limit)
		if r.code != 1 || r.stdout != "" || r.stderr != msg {
			t.Errorf("--limit %q: code %d stdout %q stderr %q, want %q", limit, r.code, r.stdout, r.stderr, msg)
		}
		if reqs := d.take(); len(reqs) != 0 {
			t.Errorf("--limit %q reached the daemon: %q", limit, reqs)
		}
	}

	r := runCLI(t, dir, "events")
	want := "2026-05-23T14:31:09.512Z  control socket listening {\"path\":\"/tmp/c.sock\"}\n" +
		"2026-05-23T14:31:10.000Z  proxy listening\n" +
		"2026-05-23T14:31:11.000Z  release activated {\"releaseId\":\"v2\",\"ports\":{\"web\":18182},\"ids\":[\"web\",\"worker#0\"]}\n" +
		"2026-05-23T14:31:12.000Z  shutdown requested\n"
	if r.code != 0 || r.stderr != "" || r.stdout != want {
		t.Errorf("events: code %d stderr %q\n--- got ---\n%s--- want ---\n%s", r.code, r.stderr, r.stdout, want)
	}
	wantOneRequest(t, d, `{"command":"events"}`)

	r = runCLI(t, dir, "events", "--limit", "2")
	if r.code != 0 || r.stdout != want {
		t.Errorf("events --limit 2: code %d stderr %q", r.code, r.stderr)
	}
	wantOneRequest(t, d, `{"command":"events","limit":2}`)
	r = runCLI(t, dir, "events", "--limit", "1")
	if r.code != 0 {
		t.Errorf("events --limit 1: code %d stderr %q", r.code, r.stderr)
	}
	wantOneRequest(t, d, `{"command":"events","limit":1}`)

	r = runCLI(t, dir, "events", "--json")
	wantJSON := `[
  {
    "at": "2026-05-23T14:31:09.512Z",
    "data": {
      "path": "/tmp/c.sock"
    },
    "message": "control socket listening"
  },
  {
    "at": "2026-05-23T14:31:10.000Z",
    "data": {},
    "message": "proxy listening"
  },
  {
    "at": "2026-05-23T14:31:11.000Z",
    "data": {
      "releaseId": "v2",
      "ports": {
        "web": 18182
      },
      "ids": [
        "web",
        "worker#0"
      ]
    },
    "message": "release activated"
  },
  {
    "at": "2026-05-23T14:31:12.000Z",
    "message": "shutdown requested"
  }
]
`
	if r.code != 0 || r.stderr != "" || r.stdout != wantJSON {
		t.Errorf("events --json: code %d stderr %q\n--- got ---\n%s--- want ---\n%s", r.code, r.stderr, r.stdout, wantJSON)
	}
	wantOneRequest(t, d, `{"command":"events"}`)

	d.reply("events", `{"status":"success","events":[]}`)
	r = runCLI(t, dir, "events")
	if r.code != 0 || r.stderr != "" || r.stdout != "No events recorded yet.\n" {
		t.Errorf("events without history: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, dir, "events", "--json", "--limit", "5")
	if r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("events --json without history: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if reqs := d.take(); len(reqs) != 2 || !sameJSON(t, reqs[1], `{"command":"events","limit":5}`) {
		t.Errorf("requests %q", reqs)
	}
}

// TestCLIShutdown covers CLI-10: shutdown sends {"command":"shutdown"} and
// prints the reply {"status":"success","message":"shutdown"} as 2-space
// JSON (with or without --json, stdout not being a terminal).
func TestCLIShutdown(t *testing.T) {
	dir, d := specSetup(t)
	d.reply("shutdown", `{"status":"success","message":"shutdown"}`)
	const want = "{\n  \"status\": \"success\",\n  \"message\": \"shutdown\"\n}\n"
	for _, args := range [][]string{{"shutdown"}, {"shutdown", "--json"}} {
		r := runCLI(t, dir, args...)
		if r.code != 0 || r.stderr != "" || r.stdout != want {
			t.Errorf("%q: code %d stderr %q stdout %q, want %q", args, r.code, r.stderr, r.stdout, want)
		}
		wantOneRequest(t, d, `{"command":"shutdown"}`)
	}
}
