package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
)

// ensure-daemon against spec §8.5 (checklist ENS-01, ENS-05, ENS-06,
// ENS-07) with the real binary: the snapshot it prepares, the detached
// daemon it starts, the readiness wait and the runtime re-check after a
// start. Where the test needs to see who contacts the control socket, and
// when, an ensFakeControl stands on the socket path: it records the peer of
// every connection (SO_PEERCRED and /proc/<pid>/cmdline), so the CLI's
// probes and polls are told apart from a started daemon's own probe.
//
// Every test leaves nothing behind: ensCleanup shuts a started daemon
// down, waits for its process to end, removes its pid and log files and
// checks that its systemd unit is gone; closing an ensFakeControl removes its
// socket.

const ensureProcesses = `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}]`

// ensMismatchMessage is the refusal of a daemon with another runtime.
const ensMismatchMessage = "The running Rollbridge daemon has a legacy or mismatched runtime. The deploy was not sent. Keep the current release active, then explicitly stop and restart the daemon with this Rollbridge installation before retrying."

// newEnsureEnv is an env with a config (proxy on port, 0 for any) and no
// daemon: ensure-daemon is to start it.
func newEnsureEnv(t *testing.T, runner string, port int) *env {
	t.Helper()
	e := newEnvOpts(t, runner, ensureProcesses, envOpts{port: port, noStart: true})
	e.logs = &lockedBuffer{} // env.cleanup prints it when the test failed
	return e
}

// ensCLI runs bin (the rollbridge binary or a copy) with args and the env's
// config and environment; stdout and stderr are kept apart.
func (e *env) ensCLI(bin string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "-c", e.config)...)
	cmd.Env = e.environ()
	cmd.Dir = e.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// ensDaemonUnit is the transient unit ensure-daemon starts the daemon in under
// systemd.
func (e *env) ensDaemonUnit() string { return "rollbridge-" + e.app + ".service" }

// ensCleanup registers the cleanup of a daemon that ensure-daemon may
// start with these pid and log paths; it runs before the env's own cleanup.
// A daemon still answering is shut down; the process named by the pid file
// must end; the pid and log files are removed; the daemon unit must not
// stay loaded (a failed one is reset, and is an error unless unitMayFail).
func (e *env) ensCleanup(pidPath, logPath string, unitMayFail bool) {
	t := e.t
	t.Cleanup(func() {
		if _, err := os.Stat(e.ctlPath); err == nil {
			if out, err := e.rbErr("shutdown"); err != nil {
				t.Logf("cleanup: shutdown: %v\n%s", err, out)
			}
		}
		if b, err := os.ReadFile(pidPath); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				if !ensWaitGone(pid, 30*time.Second) {
					t.Errorf("cleanup: daemon pid %d still runs after its shutdown; killing it", pid)
					syscall.Kill(pid, syscall.SIGKILL)
					ensWaitGone(pid, 10*time.Second)
				}
			}
		}
		if e.t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("ensured daemon log %s:\n%s", logPath, tail(string(b), 40))
			}
		}
		os.Remove(pidPath)
		os.Remove(logPath)
		if e.runner == "systemd" {
			e.ensDaemonUnitGone(unitMayFail)
		}
	})
}

// ensDaemonUnitGone waits until the daemon unit is no longer loaded, resetting
// it when it failed (an error unless mayFail).
func (e *env) ensDaemonUnitGone(mayFail bool) {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	for {
		infos, err := conn.ListUnits(ctx, e.ensDaemonUnit())
		if err != nil {
			t.Errorf("cleanup: list %s: %v", e.ensDaemonUnit(), err)
			return
		}
		if len(infos) == 0 {
			return
		}
		u := infos[0]
		if u.ActiveState == "failed" {
			if !mayFail {
				t.Errorf("cleanup: %s failed", u.Name)
			}
			if err := conn.ResetFailed(ctx, u.Name); err != nil {
				t.Errorf("cleanup: reset %s: %v", u.Name, err)
				return
			}
			continue
		}
		if ctx.Err() != nil {
			t.Errorf("cleanup: %s is still %s; stopping it", u.Name, u.ActiveState)
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			conn.Stop(sctx, u.Name)
			scancel()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ensUnitLoaded reports whether the daemon unit is loaded now.
func (e *env) ensUnitLoaded() bool {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	infos, err := conn.ListUnits(ctx, e.ensDaemonUnit())
	if err != nil {
		e.t.Fatal(err)
	}
	return len(infos) > 0
}

// ensWaitGone waits until pid has exited (a zombie counts as exited: the
// daemon is not our child and whoever inherits it reaps it).
func ensWaitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if st, err := ensProcStat(pid); err != nil || st.state == "Z" {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type ensProcStatus struct {
	state            string
	ppid, pgrp, sess int
}

// ensProcStat reads the fields of /proc/<pid>/stat after the command name.
func ensProcStat(pid int) (ensProcStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ensProcStatus{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ensProcStatus{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return ensProcStatus{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	var st ensProcStatus
	st.state = f[0]
	st.ppid, _ = strconv.Atoi(f[1])
	st.pgrp, _ = strconv.Atoi(f[2])
	st.sess, _ = strconv.Atoi(f[3])
	return st, nil
}

func ensProcArgv(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// ensReadPidFile reads a pid file that must hold exactly "<pid>\n".
func ensReadPidFile(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	s := string(b)
	pid, err := strconv.Atoi(strings.TrimSuffix(s, "\n"))
	if err != nil || pid <= 0 || !strings.HasSuffix(s, "\n") || strings.Count(s, "\n") != 1 {
		t.Fatalf("pid file %s holds %q, want \"<pid>\\n\"", path, s)
	}
	return pid
}

// ensPeer is one connection an ensFakeControl accepted.
type ensPeer struct {
	pid  int
	argv []string
	at   time.Time
	line string // the request line read by the handler ("" if none)
}

// command is the CLI command of the peer ("ensure-daemon", "daemon", …).
func (p ensPeer) command() string {
	if len(p.argv) > 1 {
		return p.argv[1]
	}
	return ""
}

// ensFakeControl listens on a control socket path in place of a daemon.
type ensFakeControl struct {
	ln     *net.UnixListener
	handle func(p *ensPeer, n int, c *net.UnixConn)
	wg     sync.WaitGroup

	mu    sync.Mutex
	peers []ensPeer
	count map[string]int // connections so far per peer command
}

// newEnsFakeControl serves path until the test ends. handle is called for
// every connection with its peer, the index of that connection among the
// peer command's connections, and the connection (closed afterwards).
func newEnsFakeControl(t *testing.T, path string, handle func(p *ensPeer, n int, c *net.UnixConn)) *ensFakeControl {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f := &ensFakeControl{ln: ln, handle: handle, count: map[string]int{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close() // also removes the socket file
		f.wg.Wait()
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("cleanup: %s left behind", path)
		}
	})
	return f
}

func (f *ensFakeControl) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.AcceptUnix()
		if err != nil {
			return
		}
		p := ensPeer{at: time.Now()}
		if raw, err := c.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
					p.pid = int(cred.Pid)
				}
			})
		}
		p.argv = ensProcArgv(p.pid)
		f.mu.Lock()
		n := f.count[p.command()]
		f.count[p.command()]++
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			f.handle(&p, n, c)
			f.mu.Lock()
			f.peers = append(f.peers, p)
			f.mu.Unlock()
		}()
	}
}

// seen returns the connections handled so far, in the order they were
// accepted.
func (f *ensFakeControl) seen() []ensPeer {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.peers)
	slices.SortFunc(out, func(a, b ensPeer) int { return a.at.Compare(b.at) })
	return out
}

// expectStartedDaemonGaveUp: the daemon ensure-daemon started (its pid in
// pidPath) probed the fake socket once, saw it answered, and exited.
func (f *ensFakeControl) expectStartedDaemonGaveUp(t *testing.T, pidPath, why string) {
	t.Helper()
	pid := ensReadPidFile(t, pidPath)
	if !ensWaitGone(pid, 10*time.Second) {
		t.Errorf("the daemon that %s still runs (pid %d)", why, pid)
	}
	if d := f.of("daemon"); len(d) != 1 {
		t.Errorf("the started daemon probed the socket %d times, want once", len(d))
	}
}

func (f *ensFakeControl) of(command string) []ensPeer {
	var out []ensPeer
	for _, p := range f.seen() {
		if p.command() == command {
			out = append(out, p)
		}
	}
	return out
}

// ensReadRequest reads the request line of c into p.line.
func ensReadRequest(p *ensPeer, c *net.UnixConn) {
	line, _ := bufio.NewReader(c).ReadString('\n')
	p.line = strings.TrimSuffix(line, "\n")
}

// ensFakeStatus is a status reply of a daemon of app with runtime rt (none
// when nil).
func ensFakeStatus(app string, rt map[string]any) string {
	st := map[string]any{
		"status": "success", "application": app, "activeReleaseId": nil,
		"proxy": map[string]any{"host": "127.0.0.1", "port": 1}, "releases": []any{}, "runner": "exec",
	}
	if rt != nil {
		st["daemonRuntime"] = rt
	}
	b, _ := json.Marshal(st)
	return string(b)
}

// ensPreparedRuntime returns the runtime.json of the one snapshot under base
// (nil if there is none, or more than one).
func ensPreparedRuntime(base string) map[string]any {
	ms, _ := filepath.Glob(filepath.Join(base, "*", "runtime.json"))
	if len(ms) != 1 {
		return nil
	}
	b, err := os.ReadFile(ms[0])
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

// TestEnsureDaemonPreparesSnapshotBeforeContact covers ENS-01 end to end:
// the snapshot exists, complete, by the time ensure-daemon first connects to
// the control socket — also when a daemon already answers there (and is
// then refused) — and a snapshot that cannot be prepared aborts before the
// socket is touched. In neither case is a daemon started (no pid or log
// file, no unit).
func TestEnsureDaemonPreparesSnapshotBeforeContact(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		t.Run("daemon answers", func(t *testing.T) {
			e := newEnsureEnv(t, runner, 0)
			base := filepath.Join(e.dir, "runtime")
			logPath, pidPath := filepath.Join(e.dir, "daemon.log"), filepath.Join(e.dir, "daemon.pid")
			e.ensCleanup(pidPath, logPath, false)
			var ready []bool // per connection: was the snapshot complete then?
			var mu sync.Mutex
			f := newEnsFakeControl(t, e.ctlPath, func(p *ensPeer, _ int, c *net.UnixConn) {
				staging, _ := filepath.Glob(filepath.Join(base, ".prepare-*"))
				mu.Lock()
				ready = append(ready, ensPreparedRuntime(base) != nil && len(staging) == 0)
				mu.Unlock()
				ensReadRequest(p, c)
				fmt.Fprintln(c, ensFakeStatus(e.app, nil)) // a legacy daemon
			})
			stdout, stderr, err := e.ensCLI(rbBinary, "ensure-daemon", "--json", "--daemon-runtime-path", base,
				"--daemon-log-path", logPath, "--daemon-pid-path", pidPath)
			if err == nil || stderr != "error: "+ensMismatchMessage+"\n" || stdout != "" {
				t.Errorf("ensure-daemon against a legacy daemon: %v\nstdout %q\nstderr %q", err, stdout, stderr)
			}
			peers := f.seen()
			if len(peers) != 1 || peers[0].command() != "ensure-daemon" || peers[0].line != `{"command":"status"}` {
				t.Fatalf("connections %+v, want the CLI's one status request", peers)
			}
			mu.Lock()
			defer mu.Unlock()
			if !ready[0] {
				t.Errorf("the control socket was contacted before the runtime snapshot was complete")
			}
			if ensPreparedRuntime(base) == nil {
				t.Errorf("no snapshot under %s", base)
			}
			e.ensWantNotStarted(logPath, pidPath)
		})
		t.Run("snapshot fails", func(t *testing.T) {
			e := newEnsureEnv(t, runner, 0)
			base := filepath.Join(e.dir, "shared")
			if err := os.Mkdir(base, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(base, 0o777); err != nil {
				t.Fatal(err)
			}
			logPath, pidPath := filepath.Join(e.dir, "daemon.log"), filepath.Join(e.dir, "daemon.pid")
			e.ensCleanup(pidPath, logPath, false)
			f := newEnsFakeControl(t, e.ctlPath, func(p *ensPeer, _ int, c *net.UnixConn) {
				ensReadRequest(p, c)
				fmt.Fprintln(c, ensFakeStatus(e.app, nil))
			})
			stdout, stderr, err := e.ensCLI(rbBinary, "ensure-daemon", "--json", "--daemon-runtime-path", base,
				"--daemon-log-path", logPath, "--daemon-pid-path", pidPath)
			want := fmt.Sprintf("error: unsafe Rollbridge daemon runtime path %s: %s is group- or other-writable (mode 0777); point --daemon-runtime-path at a private directory\n", base, base)
			if err == nil || stderr != want || stdout != "" {
				t.Errorf("ensure-daemon with an unsafe runtime path: %v\nstdout %q\nstderr %q\nwant   %q", err, stdout, stderr, want)
			}
			if peers := f.seen(); len(peers) != 0 {
				t.Errorf("the control socket was contacted: %+v", peers)
			}
			if ents, _ := os.ReadDir(base); len(ents) != 0 {
				t.Errorf("the refused runtime path got entries: %v", ents)
			}
			e.ensWantNotStarted(logPath, pidPath)
		})
	})
}

// ensWantNotStarted checks that no daemon was started: no log or pid file at
// the given or the default paths, no daemon unit.
func (e *env) ensWantNotStarted(logPath, pidPath string) {
	e.t.Helper()
	for _, p := range []string{logPath, pidPath, "/tmp/rollbridge-" + e.app + ".log", "/tmp/rollbridge-" + e.app + ".pid"} {
		if _, err := os.Lstat(p); err == nil {
			e.t.Errorf("%s exists: a daemon was started", p)
		}
	}
	if e.runner == "systemd" && e.ensUnitLoaded() {
		e.t.Errorf("%s is loaded: a daemon was started", e.ensDaemonUnit())
	}
}

// TestEnsureDaemonDetachedStart covers ENS-05 on the exec runner (no
// systemd unit): the daemon runs `<snapshot>/rollbridge daemon --config
// <config>` in a new session with stdin on /dev/null, stdout and stderr
// appended to the log file, ROLLBRIDGE_DAEMON_RUNTIME_MANIFEST set; its pid
// is written to the pid file as "<pid>\n". The defaults are
// /tmp/rollbridge-<app>.log and .pid; --daemon-log-path and
// --daemon-pid-path override them (missing parent directories are
// created). The daemon keeps running when the release the CLI came from is
// deleted, and an ensured daemon carries no bootstrap.
func TestEnsureDaemonDetachedStart(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		e := newEnsureEnv(t, "exec", 0)
		logPath, pidPath := "/tmp/rollbridge-"+e.app+".log", "/tmp/rollbridge-"+e.app+".pid"
		e.ensCleanup(pidPath, logPath, false)
		// The CLI runs from a release directory that is deleted later.
		release := filepath.Join(e.dir, "releases", "r1")
		cli := filepath.Join(release, "bin", "rollbridge")
		if err := os.MkdirAll(filepath.Dir(cli), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := copyFile(rbBinary, cli); err != nil {
			t.Fatal(err)
		}
		base := filepath.Join(e.dir, "runtime")
		stdout, stderr, err := e.ensCLI(cli, "ensure-daemon", "--json", "--daemon-runtime-path", base)
		if err != nil {
			t.Fatalf("ensure-daemon: %v\n%s%s", err, stdout, stderr)
		}
		snap := ensSnapshot(t, stdout, base)
		pid := ensReadPidFile(t, pidPath)
		e.ensCheckDetached(pid, snap, logPath)
		if err := os.RemoveAll(release); err != nil {
			t.Fatal(err)
		}
		if out, err := e.rbErr("status", "--json"); err != nil {
			t.Fatalf("status after the CLI's release was deleted: %v\n%s", err, out)
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != filepath.Join(snap, "rollbridge") {
			t.Errorf("daemon executable %q after the release was deleted, want %s", exe, filepath.Join(snap, "rollbridge"))
		}
		e.ensShutdown(pid)
	})
	t.Run("overrides", func(t *testing.T) {
		e := newEnsureEnv(t, "exec", 0)
		logPath := filepath.Join(e.dir, "logs", "a", "b", "daemon.log")
		pidPath := filepath.Join(e.dir, "run", "c", "daemon.pid")
		e.ensCleanup(pidPath, logPath, false)
		defaults := []string{"/tmp/rollbridge-" + e.app + ".log", "/tmp/rollbridge-" + e.app + ".pid"}
		t.Cleanup(func() {
			for _, p := range defaults {
				os.Remove(p)
			}
		})
		base := filepath.Join(e.dir, "runtime")
		var pids []int
		for round := 1; round <= 2; round++ {
			stdout, stderr, err := e.ensCLI(rbBinary, "ensure-daemon", "--json", "--daemon-runtime-path", base,
				"--daemon-log-path", logPath, "--daemon-pid-path", pidPath)
			if err != nil {
				t.Fatalf("ensure-daemon (round %d): %v\n%s%s", round, err, stdout, stderr)
			}
			snap := ensSnapshot(t, stdout, base)
			pid := ensReadPidFile(t, pidPath)
			e.ensCheckDetached(pid, snap, logPath)
			for _, p := range defaults {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written although the path was overridden", p)
				}
			}
			pids = append(pids, pid)
			e.ensShutdown(pid)
		}
		// The second daemon appended to the first one's log and replaced
		// the pid file.
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), `"msg":"control socket listening"`); n != 2 {
			t.Errorf("log holds %d starts, want both daemons' (appended):\n%s", n, b)
		}
		if pids[0] == pids[1] {
			t.Errorf("both rounds report pid %d", pids[0])
		}
	})
}

// ensSnapshot decodes ensure-daemon's status output and returns the
// snapshot directory it reports, which must lie under base; the status must
// not carry a bootstrap.
func ensSnapshot(t *testing.T, stdout, base string) string {
	t.Helper()
	var st map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("ensure-daemon output: %v\n%s", err, stdout)
	}
	if b, ok := st["bootstrap"]; ok && string(b) != "null" {
		t.Errorf("an ensured daemon reports bootstrap %s", b)
	}
	var rt struct {
		Digest, Path, Version string
		Format                int
	}
	if err := json.Unmarshal(st["daemonRuntime"], &rt); err != nil || rt.Format != 1 || rt.Path != filepath.Join(base, rt.Digest) || rt.Digest == "" {
		t.Fatalf("daemonRuntime %s (%v), want a snapshot under %s", st["daemonRuntime"], err, base)
	}
	return rt.Path
}

// ensCheckDetached checks the process of a daemon ensure-daemon started
// detached from snapshot snap with its output in logPath.
func (e *env) ensCheckDetached(pid int, snap, logPath string) {
	t := e.t
	t.Helper()
	bin := filepath.Join(snap, "rollbridge")
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != bin {
		t.Errorf("pid %d runs %q (%v), want the snapshot's %s", pid, exe, err, bin)
	}
	if got, want := ensProcArgv(pid), []string{bin, "daemon", "--config", e.config, "--runner", "exec"}; !reflect.DeepEqual(got, want) {
		t.Errorf("daemon argv %q, want %q", got, want)
	}
	st, err := ensProcStat(pid)
	if err != nil {
		t.Fatalf("daemon pid %d: %v", pid, err)
	}
	if st.sess != pid || st.pgrp != pid {
		t.Errorf("daemon pid %d: session %d, process group %d; want a new session it leads", pid, st.sess, st.pgrp)
	}
	fds := map[int]string{0: os.DevNull, 1: logPath, 2: logPath}
	for fd, want := range fds {
		if got, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); err != nil || got != want {
			t.Errorf("daemon fd %d is %q (%v), want %s", fd, got, err, want)
		}
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(string(env), "\x00")
	if want := "ROLLBRIDGE_DAEMON_RUNTIME_MANIFEST=" + filepath.Join(snap, "runtime.json"); !slices.Contains(vars, want) {
		t.Errorf("daemon environment lacks %s", want)
	}
	if want := "ROLLBRIDGE_RUNNER=exec"; !slices.Contains(vars, want) {
		t.Errorf("daemon environment lacks the CLI's %s", want)
	}
	b, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(b), `"msg":"control socket listening"`) {
		t.Errorf("daemon log %s (%v) lacks the daemon's output:\n%s", logPath, err, b)
	}
}

// ensShutdown shuts the env's daemon down and waits for pid to end.
func (e *env) ensShutdown(pid int) {
	e.t.Helper()
	e.rb("shutdown")
	if !ensWaitGone(pid, 30*time.Second) {
		e.t.Fatalf("daemon pid %d still runs after shutdown", pid)
	}
	e.waitFor("socket removed", 10*time.Second, func() bool { _, err := os.Lstat(e.ctlPath); return err != nil })
}

// TestEnsureDaemonReadinessTimeout covers ENS-06 with a daemon that cannot
// come up (the proxy port is taken): ensure-daemon waits the
// --daemon-start-timeout-ms and fails with `Rollbridge daemon did not
// become ready within <ms>ms. Last error: <last status error>`, followed by
// where the daemon's output went (docs/troubleshooting.md): the log file, or
// the unit's journal under systemd.
func TestEnsureDaemonReadinessTimeout(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		hold, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hold.Close()
		port := hold.Addr().(*net.TCPAddr).Port
		e := newEnsureEnv(t, runner, port)
		logPath, pidPath := filepath.Join(e.dir, "daemon.log"), filepath.Join(e.dir, "daemon.pid")
		e.ensCleanup(pidPath, logPath, true)
		base := filepath.Join(e.dir, "runtime")
		start := time.Now()
		stdout, stderr, err := e.ensCLI(rbBinary, "ensure-daemon", "--json", "--daemon-runtime-path", base,
			"--daemon-log-path", logPath, "--daemon-pid-path", pidPath, "--daemon-start-timeout-ms", "700")
		took := time.Since(start)
		hint := "Inspect its log: " + logPath
		if runner == "systemd" {
			hint = "Inspect it with: journalctl -u " + e.ensDaemonUnit() + " (or --user-unit for a user manager)."
		}
		want := fmt.Sprintf("error: Rollbridge daemon did not become ready within 700ms. Last error: dial unix %s: connect: no such file or directory %s\n", e.ctlPath, hint)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || stderr != want || stdout != "" {
			t.Errorf("ensure-daemon: %v\nstdout %q\nstderr %q\nwant   %q", err, stdout, stderr, want)
		}
		// The prepare (copy, digest, --help) comes before the wait.
		if took < 700*time.Millisecond || took > 700*time.Millisecond+10*time.Second {
			t.Errorf("ensure-daemon gave up after %v, want the 700ms wait", took)
		}
		bindErr := fmt.Sprintf("bind proxy 127.0.0.1:%d", port)
		if runner == "exec" {
			pid := ensReadPidFile(t, pidPath)
			if !ensWaitGone(pid, 10*time.Second) {
				t.Errorf("the daemon that could not bind still runs (pid %d)", pid)
			}
			if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), bindErr) {
				t.Errorf("daemon log lacks %q:\n%s", bindErr, b)
			}
		} else {
			for _, p := range []string{logPath, pidPath} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s written although the daemon ran as a unit", p)
				}
			}
		}
		if _, err := os.Lstat(e.ctlPath); err == nil {
			t.Errorf("control socket %s exists", e.ctlPath)
		}
	})
}

// TestEnsureDaemonReadinessPolling covers the default wait of ENS-06 and
// its polling: something that accepts connections but never answers holds
// the control socket, so the started daemon refuses to run and
// ensure-daemon, without --daemon-start-timeout-ms, polls status every
// 100 ms for 10000 ms, then fails with the last read error.
func TestEnsureDaemonReadinessPolling(t *testing.T) {
	e := newEnsureEnv(t, "exec", 0)
	logPath, pidPath := filepath.Join(e.dir, "daemon.log"), filepath.Join(e.dir, "daemon.pid")
	e.ensCleanup(pidPath, logPath, false)
	f := newEnsFakeControl(t, e.ctlPath, func(p *ensPeer, _ int, c *net.UnixConn) {
		ensReadRequest(p, c) // and close without a reply
	})
	base := filepath.Join(e.dir, "runtime")
	start := time.Now()
	stdout, stderr, err := e.ensCLI(rbBinary, "ensure-daemon", "--json", "--daemon-runtime-path", base,
		"--daemon-log-path", logPath, "--daemon-pid-path", pidPath)
	took := time.Since(start)
	want := fmt.Sprintf("error: Rollbridge daemon did not become ready within 10000ms. Last error: read status reply from %s: EOF Inspect its log: %s\n", e.ctlPath, logPath)
	if err == nil || stderr != want || stdout != "" {
		t.Errorf("ensure-daemon: %v\nstdout %q\nstderr %q\nwant   %q", err, stdout, stderr, want)
	}
	cli := f.of("ensure-daemon")
	if len(cli) < 2 {
		t.Fatalf("the CLI connected %d times", len(cli))
	}
	// cli[0] is the probe before the start; the rest are the polls.
	polls := cli[1:]
	waited := polls[len(polls)-1].at.Sub(polls[0].at)
	var gaps []time.Duration
	for i := 1; i < len(polls); i++ {
		gaps = append(gaps, polls[i].at.Sub(polls[i-1].at))
	}
	slices.Sort(gaps)
	median := gaps[len(gaps)/2]
	t.Logf("%d polls over %v (ensure-daemon took %v); poll gaps min %v, median %v, max %v",
		len(polls), waited, took, gaps[0], median, gaps[len(gaps)-1])
	// The polls span the whole default wait (the first one comes right
	// after the start, the last one before the deadline)…
	if waited < 9500*time.Millisecond || waited > 10200*time.Millisecond {
		t.Errorf("polled for %v, want the default 10000ms", waited)
	}
	// …100ms apart plus the time of a status call: never more than 101.
	if median < 95*time.Millisecond || median > 150*time.Millisecond {
		t.Errorf("median poll gap %v, want 100ms plus a status call", median)
	}
	if len(polls) < 60 || len(polls) > 101 {
		t.Errorf("%d polls in 10000ms, want about 100", len(polls))
	}
	for _, p := range cli {
		if p.line != `{"command":"status"}` {
			t.Errorf("CLI request %q, want status", p.line)
		}
	}
	// The started daemon saw the socket in use and gave up.
	f.expectStartedDaemonGaveUp(t, pidPath, "found the socket in use")
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "is already in use by another process") {
		t.Errorf("daemon log:\n%s", b)
	}
}

// TestEnsureDaemonRechecksRuntimeAfterStart covers ENS-07: when no daemon
// answers at first, ensure-daemon starts one, and the daemon that answers
// its poll may be another starter's (here a fake that takes the socket
// between the probe and the polls; the daemon this ensure-daemon started
// finds it and gives up, as the loser of a real race does). That daemon's
// runtime is checked again: a different digest, version or format, or none,
// is refused with the mismatch text and no status is printed (deploy
// --ensure-daemon sends no deploy); the same runtime is accepted and its
// status printed.
func TestEnsureDaemonRechecksRuntimeAfterStart(t *testing.T) {
	cases := []struct {
		name    string
		command string
		edit    func(rt map[string]any) map[string]any // the winner's runtime from the prepared one
		ok      bool
	}{
		{"same runtime", "ensure-daemon", func(rt map[string]any) map[string]any { return rt }, true},
		{"same runtime other path", "ensure-daemon", func(rt map[string]any) map[string]any {
			rt["path"] = "/elsewhere/" + rt["digest"].(string)
			return rt
		}, true},
		{"other digest", "ensure-daemon", func(rt map[string]any) map[string]any {
			rt["digest"] = strings.Repeat("0", 64)
			return rt
		}, false},
		{"other version", "ensure-daemon", func(rt map[string]any) map[string]any {
			rt["version"] = "0.0.0-other"
			return rt
		}, false},
		{"other format", "ensure-daemon", func(rt map[string]any) map[string]any {
			rt["format"] = 2
			return rt
		}, false},
		{"no runtime", "ensure-daemon", func(map[string]any) map[string]any { return nil }, false},
		{"deploy, other digest", "deploy", func(rt map[string]any) map[string]any {
			rt["digest"] = strings.Repeat("0", 64)
			return rt
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnsureEnv(t, "exec", 0)
			logPath, pidPath := filepath.Join(e.dir, "daemon.log"), filepath.Join(e.dir, "daemon.pid")
			e.ensCleanup(pidPath, logPath, false)
			base := filepath.Join(e.dir, "runtime")
			var mu sync.Mutex
			var winner string // the status the winning daemon answers
			f := newEnsFakeControl(t, e.ctlPath, func(p *ensPeer, n int, conn *net.UnixConn) {
				ensReadRequest(p, conn)
				if p.command() == c.command && n == 0 {
					return // the probe before the start finds no daemon
				}
				mu.Lock()
				if winner == "" {
					// The CLI prepared its snapshot before its probe.
					if rt := ensPreparedRuntime(base); rt != nil {
						winner = ensFakeStatus(e.app, c.edit(rt))
					}
				}
				reply := winner
				mu.Unlock()
				if reply != "" {
					fmt.Fprintln(conn, reply)
				}
			})
			args := []string{"ensure-daemon", "--json"}
			if c.command == "deploy" {
				args = []string{"deploy", "--json", "--ensure-daemon", "--release-path", e.release("v1"), "--release-id", "v1"}
			}
			args = append(args, "--daemon-runtime-path", base, "--daemon-log-path", logPath, "--daemon-pid-path", pidPath)
			stdout, stderr, err := e.ensCLI(rbBinary, args...)
			if c.ok {
				if err != nil || stderr != "" || !ensSameJSON(stdout, winner) {
					t.Errorf("a daemon with the same runtime was not accepted: %v\nstdout %q\nstderr %q\nwant stdout %s", err, stdout, stderr, winner)
				}
			} else if err == nil || stderr != "error: "+ensMismatchMessage+"\n" || stdout != "" {
				t.Errorf("the winner's other runtime was not refused: %v\nstdout %q\nstderr %q", err, stdout, stderr)
			}
			cli := f.of(c.command)
			if len(cli) < 2 {
				t.Errorf("the CLI connected %d times, want its probe and at least one poll", len(cli))
			}
			for _, p := range cli {
				if p.line != `{"command":"status"}` {
					t.Errorf("CLI request %q, want only status requests", p.line)
				}
			}
			// This ensure-daemon did start a daemon, which lost the race
			// (it may probe after the CLI got its answer).
			f.expectStartedDaemonGaveUp(t, pidPath, "lost the race")
			if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "is already running on "+e.ctlPath) {
				t.Errorf("daemon log:\n%s", b)
			}
		})
	}
}

// ensSameJSON reports whether two JSON texts hold the same value.
func ensSameJSON(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
