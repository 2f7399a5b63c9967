package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/control"
)

// fixture is one config file in a temp dir plus the values it names.
type fixture struct {
	dir, path   string
	app         string
	controlPath string
	port        int
}

// processesJS is a valid process list: a proxied web process with a port
// range and a worker.
const processesJS = `[
    {id: "worker", command: "bin/worker"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`

// newFixture writes a config with the given extra top-level fields (JS,
// each ending in a comma) and processes. The proxy port is a free one.
func newFixture(t *testing.T, extra, processes string) fixture {
	t.Helper()
	dir := t.TempDir()
	f := fixture{
		dir:         dir,
		path:        filepath.Join(dir, "rollbridge.js"),
		app:         "doc" + strconv.Itoa(os.Getpid()) + strings.ToLower(strings.NewReplacer("/", "", "_", "").Replace(t.Name())),
		controlPath: filepath.Join(dir, "c.sock"),
		port:        freePort(t),
	}
	if len(f.app) > 40 {
		f.app = f.app[:40]
	}
	js := fmt.Sprintf(`export default {
  application: %q,
  control: {path: %q},
  proxy: {port: %d},
  %s
  processes: %s
}
`, f.app, f.controlPath, f.port, extra, processes)
	if err := os.WriteFile(f.path, []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// options are the run options of f with the exec runner, so the spec's
// checks are tested without a systemd manager in the way.
func (f fixture) options() Options {
	return Options{ConfigPath: f.path, WorkDir: f.dir, Env: []string{"PATH=/usr/bin:/bin"}, Runner: RunnerExec}
}

func run(t *testing.T, opts Options) Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := Run(ctx, opts)
	for _, c := range r.Checks {
		t.Logf("%v %s: %s", c.OK, c.Name, c.Detail)
	}
	return r
}

// check returns the named check, failing the test when it is absent.
func check(t *testing.T, r Report, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %q check in %+v", name, r.Checks)
	return Check{}
}

func expect(t *testing.T, r Report, name string, ok bool, detail string) {
	t.Helper()
	c := check(t, r, name)
	if c.OK != ok || c.Detail != detail {
		t.Errorf("%s = (%v, %q), want (%v, %q)", name, c.OK, c.Detail, ok, detail)
	}
}

func names(r Report) []string {
	var out []string
	for _, c := range r.Checks {
		out = append(out, c.Name)
	}
	return out
}

var systemdChecks = []string{CheckSystemdManager, CheckTransientUnits, CheckJournald, CheckSocketActivation, CheckLeftoverUnits, CheckSlice, CheckMemoryAccounting}

func TestAllChecksPass(t *testing.T) {
	f := newFixture(t, `statePath: "state/rb.json",`, `[
    {id: "worker", command: "bin/worker {{releaseId}}", cwd: "jobs"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`)
	release := filepath.Join(f.dir, "releases", "r1")
	for _, d := range []string{filepath.Join(f.dir, "state"), filepath.Join(release, "jobs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := f.options()
	opts.ReleasePath = "releases/r1" // relative to WorkDir
	r := run(t, opts)
	if !r.OK || r.Failed() != 0 {
		t.Fatalf("report not ok: %+v", r.Checks)
	}
	want := append([]string{CheckConfig, CheckControlSocket, CheckControlDir, CheckProxyPort, CheckStateDir, CheckOrphans,
		CheckReleasePath, CheckTemplates, CheckWorkingDirs}, systemdChecks...)
	if got := names(r); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("checks %q, want %q", got, want)
	}
	expect(t, r, CheckConfig, true, fmt.Sprintf("valid: 2 process(es), proxy on 127.0.0.1:%d", f.port))
	expect(t, r, CheckControlSocket, true, "no daemon running; "+f.controlPath+" is free to bind")
	expect(t, r, CheckControlDir, true, f.dir+" is writable")
	expect(t, r, CheckProxyPort, true, fmt.Sprintf("127.0.0.1:%d is available", f.port))
	expect(t, r, CheckStateDir, true, filepath.Join(f.dir, "state")+" is writable")
	expect(t, r, CheckOrphans, true, "no leftover processes from a previous daemon")
	expect(t, r, CheckReleasePath, true, release+" exists")
	expect(t, r, CheckTemplates, true, "all 2 process command/cwd/env templates resolve")
	expect(t, r, CheckWorkingDirs, true, "all 2 process working directories exist")
}

func TestOptionalChecksAbsent(t *testing.T) {
	f := newFixture(t, "", processesJS)
	r := run(t, f.options())
	want := append([]string{CheckConfig, CheckControlSocket, CheckControlDir, CheckProxyPort}, systemdChecks...)
	if got := names(r); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("without statePath and --release-path: checks %q, want %q", got, want)
	}
}

func TestInvalidConfigStopsTheRun(t *testing.T) {
	f := newFixture(t, "", `[{id: "a", command: "x"}, {id: "a", command: "y"}]`)
	r := run(t, f.options())
	if r.OK || len(r.Checks) != 1 {
		t.Fatalf("want only a failed config check, got %+v", r.Checks)
	}
	expect(t, r, CheckConfig, false, `2 issue(s) — run "rollbridge validate" for details`)

	opts := f.options()
	opts.ConfigPath = filepath.Join(f.dir, "missing.js")
	r = run(t, opts)
	if len(r.Checks) != 1 {
		t.Fatalf("unreadable config: %+v", r.Checks)
	}
	expect(t, r, CheckConfig, false, `1 issue(s) — run "rollbridge validate" for details`)
}

func TestFailureReport(t *testing.T) {
	r := Failure(fmt.Errorf("No config file found in /x. Pass --config <path> or add one of: rollbridge.js."))
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"checks":[{"detail":"No config file found in /x. Pass --config \u003cpath\u003e or add one of: rollbridge.js.","name":"config","ok":false}],"ok":false}`
	if string(raw) != want {
		t.Errorf("json %s\nwant %s", raw, want)
	}
}

// fakeDaemon serves the control protocol on path and answers status like a
// Rollbridge daemon of app holding host:port.
func fakeDaemon(t *testing.T, path, app, host string, port int) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &control.Server{Handler: control.HandlerFunc(func(context.Context, control.Request, control.Peer) (any, error) {
		return map[string]any{
			"activeReleaseId": "r1",
			"application":     app,
			"proxy":           map[string]any{"host": host, "port": port},
		}, nil
	})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Wait()
		ln.Close()
		os.Remove(path)
	})
}

// foreignListener accepts on path and never answers.
func foreignListener(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
}

// holdPort listens on 127.0.0.1:port until the test ends.
func holdPort(t *testing.T, port int) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

func TestControlSocket(t *testing.T) {
	t.Run("same application daemon is healthy", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		holdPort(t, f.port) // the daemon holds the proxy port
		fakeDaemon(t, f.controlPath, f.app, "127.0.0.1", f.port)
		r := run(t, f.options())
		expect(t, r, CheckControlSocket, true, fmt.Sprintf("Rollbridge daemon for %q is running on %s", f.app, f.controlPath))
		expect(t, r, CheckProxyPort, true, fmt.Sprintf("127.0.0.1:%d is already held by the running Rollbridge daemon", f.port))
		if !r.OK {
			t.Errorf("a healthy same-application daemon failed the report")
		}
	})
	t.Run("other application daemon", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		fakeDaemon(t, f.controlPath, "someone-else", "127.0.0.1", f.port)
		r := run(t, f.options())
		expect(t, r, CheckControlSocket, false, fmt.Sprintf(`a Rollbridge daemon for "someone-else" is already running on %s; stop it before starting another`, f.controlPath))
		if r.OK {
			t.Error("report ok")
		}
	})
	t.Run("foreign listener", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		foreignListener(t, f.controlPath)
		r := run(t, f.options())
		expect(t, r, CheckControlSocket, false, "another process is already listening on "+f.controlPath+"; the daemon would fail to bind it")
	})
	t.Run("probe error", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "plain")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, "", processesJS)
		rewriteControlPath(t, f, filepath.Join(file, "c.sock")) // ENOTDIR on connect
		r := run(t, f.options())
		c := check(t, r, CheckControlSocket)
		if c.OK || !strings.HasPrefix(c.Detail, "could not probe "+filepath.Join(file, "c.sock")+": ") {
			t.Errorf("probe error: %+v", c)
		}
		expect(t, r, CheckControlDir, false, file+" is missing or not writable")
	})
}

// rewriteControlPath points f's config at another control socket path.
func rewriteControlPath(t *testing.T, f fixture, path string) {
	t.Helper()
	raw, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	js := strings.Replace(string(raw), strconv.Quote(f.controlPath), strconv.Quote(path), 1)
	if err := os.WriteFile(f.path, []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestControlSocketDirectoryMissing(t *testing.T) {
	f := newFixture(t, "", processesJS)
	missing := filepath.Join(f.dir, "nope")
	rewriteControlPath(t, f, filepath.Join(missing, "c.sock"))
	r := run(t, f.options())
	expect(t, r, CheckControlDir, false, missing+" is missing or not writable")
	// A missing directory is "nothing listening" to the probe.
	expect(t, r, CheckControlSocket, true, "no daemon running; "+filepath.Join(missing, "c.sock")+" is free to bind")
}

func TestProxyPort(t *testing.T) {
	t.Run("busy port", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		holdPort(t, f.port)
		r := run(t, f.options())
		expect(t, r, CheckProxyPort, false, fmt.Sprintf("127.0.0.1:%d is unavailable (EADDRINUSE)", f.port))
		if r.OK {
			t.Error("report ok with a busy port")
		}
	})
	t.Run("same daemon on another port does not own it", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		holdPort(t, f.port)
		fakeDaemon(t, f.controlPath, f.app, "127.0.0.1", f.port+1)
		r := run(t, f.options())
		expect(t, r, CheckControlSocket, true, fmt.Sprintf("Rollbridge daemon for %q is running on %s", f.app, f.controlPath))
		expect(t, r, CheckProxyPort, false, fmt.Sprintf("127.0.0.1:%d is unavailable (EADDRINUSE)", f.port))
	})
	t.Run("other application daemon does not own it", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		holdPort(t, f.port)
		fakeDaemon(t, f.controlPath, "someone-else", "127.0.0.1", f.port)
		r := run(t, f.options())
		expect(t, r, CheckProxyPort, false, fmt.Sprintf("127.0.0.1:%d is unavailable (EADDRINUSE)", f.port))
	})
	t.Run("address not on this host", func(t *testing.T) {
		f := newFixture(t, `proxy: {host: "192.0.2.1", port: 8080},`, processesJS)
		// The fixture's own proxy line comes first; the later one wins.
		r := run(t, f.options())
		expect(t, r, CheckProxyPort, false, "192.0.2.1:8080 is unavailable (EADDRNOTAVAIL)")
	})
}

func TestStatePath(t *testing.T) {
	t.Run("directory missing", func(t *testing.T) {
		f := newFixture(t, `statePath: "nodir/state.json",`, processesJS)
		r := run(t, f.options())
		expect(t, r, CheckStateDir, false, filepath.Join(f.dir, "nodir")+" is missing or not writable; state cannot be persisted")
		expect(t, r, CheckOrphans, true, "no leftover processes from a previous daemon")
	})
	t.Run("malformed state file", func(t *testing.T) {
		f := newFixture(t, `statePath: "state.json",`, processesJS)
		live := sleeper(t)
		writeState(t, filepath.Join(f.dir, "state.json"), fmt.Sprintf(`{"releases": {"processes": [{"id": "web", "pid": %d}]}}`, live))
		r := run(t, f.options())
		expect(t, r, CheckOrphans, true, "no leftover processes from a previous daemon")
	})
}

// sleeper starts a child that lives until the test ends and returns its pid.
func sleeper(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// deadPID returns the pid of a child that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func writeState(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestOrphans(t *testing.T) {
	f := newFixture(t, `statePath: "state.json",`, processesJS)
	a, b, c := sleeper(t), sleeper(t), sleeper(t)
	dead := deadPID(t)
	state := fmt.Sprintf(`{
  "orphans": [
    {"id": "old", "pid": %[1]d, "releaseId": "r0"},
    {"id": "gone", "pid": %[4]d, "releaseId": null},
    {"id": "no-release-id", "pid": %[2]d},
    {"id": "bad-pid", "pid": "%[2]d", "releaseId": "r0"},
    {"id": 7, "pid": %[2]d, "releaseId": "r0"}
  ],
  "releases": [
    {"releaseId": "r1", "state": "active", "processes": [
      {"id": "web", "pid": %[4]d, "state": "running"},
      {"id": "worker", "pid": %[2]d, "state": "running"},
      {"id": "never-started", "state": "stopped"},
      {"id": "dup", "pid": %[1]d}
    ]}
  ],
  "services": [{"id": "beacon", "process": {"id": "beacon", "pid": %[4]d}}],
  "singletons": [{"id": "scheduler", "process": {"id": "scheduler", "pid": %[3]d}}]
}
`, a, b, c, dead)
	writeState(t, filepath.Join(f.dir, "state.json"), state)
	r := run(t, f.options())
	expect(t, r, CheckOrphans, false, fmt.Sprintf(
		"3 possible orphaned process(es) still running: old (pid %d), worker (pid %d), scheduler (pid %d) — verify and stop any leftovers", a, b, c))
	expect(t, r, CheckStateDir, true, f.dir+" is writable")

	// While this application's daemon runs, they are its processes.
	fakeDaemon(t, f.controlPath, f.app, "127.0.0.1", f.port)
	r = run(t, f.options())
	expect(t, r, CheckOrphans, true, "a daemon is running; its managed processes are not orphans")
}

func TestReleaseChecks(t *testing.T) {
	t.Run("missing release path", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		opts := f.options()
		opts.ReleasePath = filepath.Join(f.dir, "releases", "gone")
		r := run(t, opts)
		expect(t, r, CheckReleasePath, false, opts.ReleasePath+" is missing or not a directory")
		expect(t, r, CheckTemplates, true, "all 2 process command/cwd/env templates resolve")
		expect(t, r, CheckWorkingDirs, false, fmt.Sprintf("missing working directories: worker (%[1]s), web (%[1]s)", opts.ReleasePath))
	})
	t.Run("release path is a file", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		opts := f.options()
		opts.ReleasePath = f.path
		r := run(t, opts)
		expect(t, r, CheckReleasePath, false, f.path+" is missing or not a directory")
	})
	t.Run("unresolved templates", func(t *testing.T) {
		f := newFixture(t, "", `[
    {id: "worker", command: "bin/worker {{env.DOCTOR_UNSET}}"},
    {id: "cron", command: "bin/cron", cwd: "{{ missing.key }}"},
    {id: "ok", command: "bin/ok {{env.DOCTOR_SET}}"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`)
		opts := f.options()
		opts.Env = append(opts.Env, "DOCTOR_SET=1")
		opts.ReleasePath = f.dir
		r := run(t, opts)
		expect(t, r, CheckTemplates, false, "unresolved templates — worker: Missing template value for {{env.DOCTOR_UNSET}}; cron: Missing template value for {{ missing.key }}")
		// Only rendered processes are counted.
		expect(t, r, CheckWorkingDirs, true, "all 2 process working directories exist")
	})
	t.Run("one rendered process", func(t *testing.T) {
		f := newFixture(t, "", `[
    {id: "worker", command: "bin/worker {{env.DOCTOR_UNSET}}"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`)
		opts := f.options()
		opts.ReleasePath = f.dir
		r := run(t, opts)
		expect(t, r, CheckWorkingDirs, true, "all 1 process working directory exists")
	})
	t.Run("missing working directory", func(t *testing.T) {
		f := newFixture(t, "", `[
    {id: "worker", command: "bin/worker", cwd: "jobs"},
    {id: "abs", command: "bin/abs", cwd: "/nonexistent/doctor"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`)
		opts := f.options()
		opts.ReleasePath = f.dir
		r := run(t, opts)
		expect(t, r, CheckWorkingDirs, false, fmt.Sprintf("missing working directories: worker (%s), abs (/nonexistent/doctor)", filepath.Join(f.dir, "jobs")))
		if err := os.Mkdir(filepath.Join(f.dir, "jobs"), 0o755); err != nil {
			t.Fatal(err)
		}
		r = run(t, opts)
		expect(t, r, CheckWorkingDirs, false, "missing working directory: abs (/nonexistent/doctor)")
	})
}

// TestReleaseRendering pins the representative values: the release id
// defaults, the low end of each port range (0 when ephemeral) and replica 0
// with the configured count. The rendered cwd shows them in the report.
func TestReleaseRendering(t *testing.T) {
	f := newFixture(t, "", `[
    {id: "worker", command: "w", replicas: 3, cwd: "{{releaseId}}_{{revision}}_{{replicaIndex}}of{{replicaCount}}_{{ports.web}}_{{ports.eph}}"},
    {id: "eph", command: "e", policy: "service", port: 0},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`)
	release := filepath.Join(f.dir, "rel-dir")
	if err := os.Mkdir(release, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ id, rev, want string }{
		{"", "", "rel-dir_rel-dir"},
		{"", "abc123", "abc123_abc123"},
		{"v7", "abc123", "v7_abc123"},
		{"v7", "", "v7_v7"},
	} {
		opts := f.options()
		opts.ReleasePath, opts.ReleaseID, opts.Revision = release, c.id, c.rev
		r := run(t, opts)
		want := fmt.Sprintf("missing working directory: worker (%s)", filepath.Join(release, c.want+"_0of3_18390_0"))
		expect(t, r, CheckWorkingDirs, false, want)
	}
}

func TestCheckJSONShape(t *testing.T) {
	raw, err := json.Marshal(Report{Checks: []Check{{Name: "config", OK: true, Detail: "d"}}, OK: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"checks":[{"detail":"d","name":"config","ok":true}],"ok":true}`; string(raw) != want {
		t.Errorf("json %s, want %s", raw, want)
	}
}

// TestFailingReportJSONShape: a report with a broken check keeps the shape
// `doctor --json` prints: {"checks": [{"detail", "name", "ok"}…], "ok"}.
func TestFailingReportJSONShape(t *testing.T) {
	f := newFixture(t, `statePath: "nodir/state.json",`, processesJS)
	r := run(t, f.options())
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || string(top["ok"]) != "false" || top["checks"] == nil {
		t.Fatalf("report %s", raw)
	}
	var checks []map[string]any
	if err := json.Unmarshal(top["checks"], &checks); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, c := range checks {
		_, d := c["detail"].(string)
		_, n := c["name"].(string)
		ok, o := c["ok"].(bool)
		if len(c) != 3 || !d || !n || !o {
			t.Errorf("check %v: want exactly detail (string), name (string), ok (bool)", c)
		}
		if !ok {
			failed++
		}
	}
	if failed != 1 || r.Failed() != 1 {
		t.Errorf("%d failed checks in JSON, %d in the report; want 1", failed, r.Failed())
	}
}
