// Package e2e runs the real rollbridge binary: a daemon supervising the
// bundled demo app through the exec runner and, in the systemd sandbox,
// through transient units of a real systemd user manager.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
)

var (
	binDir   string // holds rollbridge and demo-app, built once
	rbBinary string
	appBin   string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rbe2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	rbBinary = filepath.Join(dir, "rollbridge")
	appBin = filepath.Join(dir, "demo-app")
	for _, b := range [][2]string{{rbBinary, "../cmd/rollbridge"}, {appBin, "../examples/demo-app"}} {
		cmd := exec.Command("go", "build", "-o", b[0], b[1])
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b[1], err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one daemon under test with its own app name, sockets and releases.
type env struct {
	t        *testing.T
	runner   string
	app      string
	dir      string
	config   string
	ctlPath  string
	daemon   *exec.Cmd
	logs     *lockedBuffer
	exited   chan struct{}
	extraEnv []string
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runners returns the runners to exercise: exec always, systemd when a
// manager answers (required under ROLLBRIDGE_REQUIRE_SYSTEMD=1).
func forEachRunner(t *testing.T, fn func(t *testing.T, runner string)) {
	t.Run("exec", func(t *testing.T) { fn(t, "exec") })
	t.Run("systemd", func(t *testing.T) {
		dbusctltest.Connect(t) // skips loudly, or fails when required
		fn(t, "systemd")
	})
}

// newEnv writes a config (processes is the JS array body) and starts the
// daemon with runner.
func newEnv(t *testing.T, runner, processes string) *env {
	t.Helper()
	return newEnvOpts(t, runner, processes, envOpts{})
}

// envOpts vary newEnv: a fixed proxy port, or no daemon started.
type envOpts struct {
	port    int
	noStart bool
}

func newEnvOpts(t *testing.T, runner, processes string, o envOpts) *env {
	t.Helper()
	app := fmt.Sprintf("e2e%d%04d", os.Getpid()%1000, rand.IntN(10000))
	dir, err := os.MkdirTemp("", "rbe2e-"+app)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, runner: runner, app: app, dir: dir, ctlPath: filepath.Join("/tmp", "rbe-"+app+".sock")}
	e.config = filepath.Join(dir, "rollbridge.js")
	src := fmt.Sprintf(`export default {
  application: %q,
  control: {path: %q},
  proxy: {port: %d, drainTimeoutMs: 15000, forceStopTimeoutMs: 5000},
  processes: %s
}
`, app, e.ctlPath, o.port, processes)
	if err := os.WriteFile(e.config, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cleanup)
	if !o.noStart {
		e.startDaemon()
	}
	return e
}

func (e *env) environ() []string {
	env := append(os.Environ(), "ROLLBRIDGE_RUNNER="+e.runner)
	if dir := dbusctltest.JournalDir(); dir != "" {
		env = append(env, "ROLLBRIDGE_JOURNAL_DIR="+dir)
	}
	return append(env, e.extraEnv...)
}

// spawnDaemon starts `rollbridge daemon` with extra flags as the env's
// daemon, without waiting for it to answer.
func (e *env) spawnDaemon(extra ...string) {
	e.t.Helper()
	e.logs = &lockedBuffer{}
	cmd := exec.Command(rbBinary, append([]string{"daemon", "-c", e.config, "--runner", e.runner}, extra...)...)
	cmd.Env = e.environ()
	cmd.Dir = e.dir
	cmd.Stdout, cmd.Stderr = e.logs, e.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon = cmd
	exited := make(chan struct{}) // this daemon's own, even if e.exited is replaced later
	e.exited = exited
	go func() { cmd.Wait(); close(exited) }()
}

func (e *env) startDaemon() {
	e.t.Helper()
	e.spawnDaemon()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := e.rbErr("status"); err == nil {
			return
		}
		select {
		case <-e.exited:
			e.t.Fatalf("daemon exited during start:\n%s", e.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("daemon did not answer:\n%s", e.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanup shuts the daemon down (SIGTERM if shutdown fails) and removes
// everything the test created.
func (e *env) cleanup() {
	if e.daemon != nil {
		select {
		case <-e.exited:
		default:
			_, _ = e.rbErr("shutdown")
			select {
			case <-e.exited:
			case <-time.After(30 * time.Second):
				e.daemon.Process.Signal(syscall.SIGTERM)
				select {
				case <-e.exited:
				case <-time.After(30 * time.Second):
					syscall.Kill(-e.daemon.Process.Pid, syscall.SIGKILL)
				}
			}
		}
	}
	// A daemon that replaced itself (reload) is not our child any more.
	if _, err := os.Stat(e.ctlPath); err == nil {
		_, _ = e.rbErr("shutdown")
	}
	if e.runner == "systemd" {
		e.stopLeftovers()
	}
	if e.t.Failed() && e.logs != nil {
		e.t.Logf("daemon log:\n%s", tail(e.logs.String(), 60))
	}
	os.Remove(e.ctlPath)
	os.RemoveAll(e.dir)
}

// stopLeftovers fails the test for any unit of the app, or its slice, still
// loaded after the daemon's shutdown, and stops them so nothing outlives
// the test.
func (e *env) stopLeftovers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		e.t.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	infos, err := conn.ListUnits(ctx, units.AppUnitPattern(e.app), units.AppSlice(e.app))
	if err != nil {
		e.t.Errorf("cleanup: %v", err)
		return
	}
	for _, u := range infos {
		e.t.Errorf("cleanup: %s is still %s after the daemon's shutdown; stopping it", u.Name, u.ActiveState)
		if err := conn.Stop(ctx, u.Name); err != nil {
			e.t.Errorf("cleanup: stop %s: %v", u.Name, err)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// rb runs the CLI and fails the test on a non-zero exit.
func (e *env) rb(args ...string) string {
	e.t.Helper()
	out, err := e.rbErr(args...)
	if err != nil {
		e.t.Fatalf("rollbridge %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) rbErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, rbBinary, append(args, "-c", e.config)...)
	cmd.Env = e.environ()
	cmd.Dir = e.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// release prepares a release directory holding the demo app.
func (e *env) release(id string) string {
	e.t.Helper()
	dir := filepath.Join(e.dir, "releases", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Link(appBin, filepath.Join(dir, "demo-app")); err != nil {
		if err := copyFile(appBin, filepath.Join(dir, "demo-app")); err != nil {
			e.t.Fatal(err)
		}
	}
	return dir
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (e *env) deploy(id string) {
	e.t.Helper()
	start := time.Now()
	e.rb("deploy", "--release-path", e.release(id), "--release-id", id)
	e.t.Logf("deploy %s took %v", id, time.Since(start).Round(time.Millisecond))
}

// status is the decoded status object.
type status struct {
	ActiveReleaseID *string `json:"activeReleaseId"`
	Proxy           struct {
		Port int `json:"port"`
	} `json:"proxy"`
	Runner   string `json:"runner"`
	Releases []struct {
		ReleaseID   string `json:"releaseId"`
		State       string `json:"state"`
		Connections struct {
			HTTP      int `json:"http"`
			WebSocket int `json:"websocket"`
		} `json:"connections"`
		Ports     map[string]int `json:"ports"`
		Processes []process      `json:"processes"`
	} `json:"releases"`
	Services   []struct{ Process process } `json:"services"`
	Singletons []struct{ Process process } `json:"singletons"`
}

type process struct {
	ID              string `json:"id"`
	State           string `json:"state"`
	PID             int    `json:"pid"`
	Unit            string `json:"unit"`
	LastStartReason string `json:"lastStartReason"`
	Restarts        int    `json:"restarts"`
	Command         string `json:"command"`
	Logs            []struct {
		Line string `json:"line"`
	} `json:"logs"`
}

func (e *env) status() status {
	e.t.Helper()
	var st status
	if err := json.Unmarshal([]byte(e.rb("status", "--json")), &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *env) proxyURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", e.status().Proxy.Port, path)
}

func (e *env) releaseState(id string) string {
	for _, r := range e.status().Releases {
		if r.ReleaseID == id {
			return r.State
		}
	}
	return ""
}

func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// events returns the daemon's event messages.
func (e *env) events() []string {
	var evs []struct {
		Message string         `json:"message"`
		Data    map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(e.rb("events", "--json")), &evs); err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Message)
	}
	return out
}
