package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/cleanup"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
)

var execEnv = []string{"PATH=/usr/bin:/bin", envRunner + "=exec"}

// recDir writes a rollbridge.js for a unique application with the control
// socket in dir and extra top-level settings; it returns dir, the
// application and the socket path.
func recDir(t *testing.T, extra string) (string, string, string) {
	t.Helper()
	dir := t.TempDir()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	app := fmt.Sprintf("reccli%x", b)
	sock := filepath.Join(dir, "c.sock")
	js := fmt.Sprintf(`export default {
  application: %q,
  control: {path: %q},
  proxy: {port: 18480, forceStopTimeoutMs: 300},
  %s
  processes: [
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]
}
`, app, sock, extra)
	if err := os.WriteFile(filepath.Join(dir, "rollbridge.js"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, app, sock
}

// recProc starts /bin/sh -c script as a new process group, reaps it, and
// kills the group when the test ends.
func recProc(t *testing.T, script string) int {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	})
	return pid
}

// recFake serves a fake daemon on sock; it stops serving when stop is
// closed by handle (or at the end of the test).
func recFake(t *testing.T, sock string, handle func(req control.Request, stop func()) (any, error)) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	srv := &control.Server{Handler: control.HandlerFunc(func(_ context.Context, req control.Request, _ control.Peer) (any, error) {
		return handle(req, func() { go stop() })
	})}
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { stop(); srv.Wait(); ln.Close() })
}

func recStatus(app string, active any) map[string]any {
	return map[string]any{
		"activeReleaseId": active, "application": app,
		"daemonRuntime": map[string]any{"version": "dev"},
		"proxy":         map[string]any{"host": "127.0.0.1", "port": 18480, "upstreamHost": "127.0.0.1"},
	}
}

func TestRecoverCommandExecRunner(t *testing.T) {
	dir, _, _ := recDir(t, "")
	r := runCLIEnv(t, dir, execEnv, "recover")
	if r.code != 1 || r.stdout != "" || r.stderr != "error: No statePath is configured; set statePath in the config to enable recovery.\n" {
		t.Errorf("no statePath: %+v", r)
	}

	dir, appName, sock := recDir(t, `statePath: "state.json",`)
	state := filepath.Join(dir, "state.json")
	pid := recProc(t, "exec sleep 300")
	js := fmt.Sprintf(`{"releases": [{"releaseId": "r1", "processes": [{"id": "web", "pid": %d}]}], "services": [], "singletons": []}`, pid)
	if err := os.WriteFile(state, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}

	recFake(t, sock, func(control.Request, func()) (any, error) { return recStatus(appName, "r1"), nil })
	r = runCLIEnv(t, dir, execEnv, "recover", "--force")
	if want := "error: A daemon (or another process) is using " + sock + "; stop it before recovering — recover is for cleaning up after a crash.\n"; r.code != 1 || r.stderr != want {
		t.Errorf("daemon running: %+v", r)
	}
	if syscall.Kill(pid, 0) != nil {
		t.Error("the refused recover signalled")
	}
}

func TestRecoverCommandDryRunAndForce(t *testing.T) {
	dir, _, _ := recDir(t, `statePath: "state.json",`)
	state := filepath.Join(dir, "state.json")
	pid := recProc(t, "exec sleep 300")
	stubborn := recProc(t, `trap "" TERM; exec sleep 300`)
	js := fmt.Sprintf(`{"orphans": [{"id": "cron", "pid": %d, "releaseId": null}], "releases": [{"releaseId": "r1", "processes": [{"id": "web", "pid": %d}]}], "services": [], "singletons": []}`, stubborn, pid)
	if err := os.WriteFile(state, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := fmt.Sprintf("  cron (pid %d)\n  web (pid %d, release r1)\n", stubborn, pid)

	r := runCLIEnv(t, dir, execEnv, "recover")
	want := "Found 2 orphaned process(es) (run with --force to stop):\n" + lines +
		"Review the list first — a recycled pid could be an unrelated process.\n"
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Errorf("dry run: %+v\nwant %q", r, want)
	}
	if syscall.Kill(pid, 0) != nil || syscall.Kill(stubborn, 0) != nil {
		t.Fatal("the dry run signalled")
	}

	r = runCLIEnv(t, dir, execEnv, "recover", "--force", "-c", "rollbridge.js")
	if want := "Stopped 2 orphaned process(es):\n" + lines; r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Errorf("force: %+v\nwant %q", r, want)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file: %v", err)
	}

	r = runCLIEnv(t, dir, execEnv, "recover")
	if r.code != 0 || r.stdout != "No orphaned processes found.\n" {
		t.Errorf("dry run, nothing left: %+v", r)
	}
	r = runCLIEnv(t, dir, execEnv, "recover", "--force")
	if r.code != 0 || r.stdout != "No orphaned processes found; cleared the state file.\n" {
		t.Errorf("force, nothing left: %+v", r)
	}
}

// TestPrintRecoverRemaining: what could not be stopped goes to stderr, the
// state file stays, exit 1.
func TestPrintRecoverRemaining(t *testing.T) {
	rel := "r1"
	stopped := cleanup.Process{ID: "web", PID: 41, ReleaseID: &rel}
	stuck := cleanup.Process{ID: "worker", PID: 42, ReleaseID: &rel}
	unit := cleanup.Unit{Name: "rollbridge-shop-r1-cron.service", Instance: "cron", Release: "r1", PID: 43, Problem: "Access denied"}
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb}
	err := a.printRecover(cleanup.Report{
		Forced:    true,
		Found:     cleanup.Leftovers{Units: []cleanup.Unit{unit}, Processes: []cleanup.Process{stopped, stuck}},
		Stopped:   cleanup.Leftovers{Processes: []cleanup.Process{stopped}},
		Remaining: cleanup.Leftovers{Units: []cleanup.Unit{unit}, Processes: []cleanup.Process{stuck}},
		StateFile: "/var/lib/rollbridge/shop.json",
	})
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("err = %v", err)
	}
	if want := "Stopped 1 orphaned process(es):\n  web (pid 41, release r1)\n"; out.String() != want {
		t.Errorf("stdout %q", out.String())
	}
	want := "Could not stop 2 orphaned process(es) — still running (check permissions/ownership):\n" +
		"  cron (pid 43, release r1, unit rollbridge-shop-r1-cron.service) — Access denied\n" +
		"  worker (pid 42, release r1)\n" +
		"Left the state file in place so you can investigate and re-run recover.\n"
	if errb.String() != want {
		t.Errorf("stderr %q\nwant   %q", errb.String(), want)
	}
}

func TestPredeployCleanupCommand(t *testing.T) {
	marker := "rbcli-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	dir, appName, sock := recDir(t, fmt.Sprintf(`statePath: "state.json", legacyTakeover: {forceStopTimeoutMs: 200, processes: [{includes: [%q]}]},`, marker))
	legacy := recProc(t, "sleep 300; : "+marker) // the shell and its sleep
	orphan := recProc(t, "exec sleep 300")
	js := fmt.Sprintf(`{"releases": [{"releaseId": "r1", "processes": [{"id": "web", "pid": %d}]}]}`, orphan)
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}

	// The daemon serves an active release as configured: nothing happens.
	shutdown := make(chan struct{}, 1)
	active := true
	var mu sync.Mutex
	recFake(t, sock, func(req control.Request, stop func()) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		if req.Command == control.CmdShutdown {
			shutdown <- struct{}{}
			stop()
			return map[string]any{"message": "shutdown"}, nil
		}
		if active {
			return recStatus(appName, "r1"), nil
		}
		return recStatus(appName, nil), nil
	})
	r := runCLIEnv(t, dir, execEnv, "predeploy-cleanup", "--release-path", "releases/next")
	if r.code != 0 || r.stdout != "Rollbridge daemon already has an active release; no legacy cleanup needed.\n" || r.stderr != "" {
		t.Errorf("active daemon: %+v", r)
	}
	if syscall.Kill(legacy, 0) != nil || syscall.Kill(orphan, 0) != nil {
		t.Fatal("the no-op branch signalled")
	}

	// Without an active release the daemon is shut down, then the host
	// cleaned.
	mu.Lock()
	active = false
	mu.Unlock()
	r = runCLIEnv(t, dir, execEnv, "predeploy-cleanup")
	want := "Stopped existing Rollbridge daemon before deploy.\nRecovered 1 Rollbridge orphaned process(es).\nStopped 2 legacy process(es).\n"
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Errorf("outdated daemon: %+v", r)
	}
	select {
	case <-shutdown:
	default:
		t.Error("no shutdown request")
	}

	// Nothing left: no daemon, nothing to recover or stop.
	r = runCLIEnv(t, dir, execEnv, "predeploy-cleanup")
	want = "No active Rollbridge daemon found.\nRecovered 0 Rollbridge orphaned process(es).\nStopped 0 legacy process(es).\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("clean host: %+v", r)
	}
}

func TestPredeployCleanupRefusesForeignSocket(t *testing.T) {
	dir, _, sock := recDir(t, "")
	recFake(t, sock, func(control.Request, func()) (any, error) {
		return recStatus("billing", "r1"), nil
	})
	r := runCLIEnv(t, dir, execEnv, "predeploy-cleanup")
	if !strings.HasPrefix(r.stderr, `error: A Rollbridge daemon for "billing" is using `+sock+"; expected ") || r.code != 1 {
		t.Errorf("%+v", r)
	}
}

// TestRecoverCommandUnits lists and stops a unit left by a crashed daemon
// (systemd sandbox), without statePath.
func TestRecoverCommandUnits(t *testing.T) {
	conn := dbusctltest.Connect(t)
	dir, appName, _ := recDir(t, "")
	id := units.Identity{App: appName, Release: "r7", Process: "web", Replicas: 1}
	name := id.UnitName()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := conn.StartTransient(ctx, dbusctl.TransientSpec{
		Name: name, Slice: id.Slice(), Argv: []string{"/bin/sleep", "300"},
		WorkingDirectory: "/", Environment: units.WithIdentityEnv(nil, id),
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, u := range []string{name, id.Slice()} {
			if err := conn.Stop(ctx, u); err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) {
				t.Errorf("stop %s: %v", u, err)
			}
		}
	})
	st, err := conn.State(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/usr/bin:/bin"} // auto runner; the manager comes from the process environment
	line := fmt.Sprintf("  web (pid %d, release r7, unit %s)\n", st.MainPID, name)
	r := runCLIEnv(t, dir, env, "recover")
	want := "Found 1 orphaned process(es) (run with --force to stop):\n" + line + "Review the list first — a recycled pid could be an unrelated process.\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("dry run: %+v\nwant %q", r, want)
	}
	r = runCLIEnv(t, dir, env, "recover", "--force")
	if r.code != 0 || r.stdout != "Stopped 1 orphaned process(es):\n"+line {
		t.Errorf("force: %+v", r)
	}
	if st, err := conn.State(ctx, name); err == nil && st.Running() {
		t.Errorf("%s still %s", name, st.ActiveState)
	}
	r = runCLIEnv(t, dir, env, "recover", "--force")
	if r.code != 0 || r.stdout != "No orphaned processes found.\n" {
		t.Errorf("nothing left: %+v", r)
	}
}
