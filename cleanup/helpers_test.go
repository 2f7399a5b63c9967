package cleanup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// marker returns a string unique to this test run, so process matchers
// never select anything the test did not start.
func marker(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "rbtest-" + hex.EncodeToString(b)
}

// proc is a process tree the test started: /bin/sh -c script as the
// leader of a new process group, reaped by a goroutine so that it never
// lingers as a zombie.
type proc struct {
	pid  int
	done chan struct{}
}

func startProc(t *testing.T, script string) *proc {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", script, err)
	}
	p := &proc{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		// The group the test created: the shell and whatever it forked.
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("process %d was not reaped", p.pid)
		}
	})
	return p
}

// children lists the live pids whose parent is pid, waiting up to 5 s for
// want of them (a fresh shell forks its commands a moment later).
func children(t *testing.T, pid, want int) []int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs, err := listProcesses("/proc")
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for _, p := range procs {
			if p.ParentPID == pid {
				out = append(out, p.PID)
			}
		}
		if len(out) >= want || time.Now().After(deadline) {
			if len(out) < want {
				t.Fatalf("process %d has %d children, want %d", pid, len(out), want)
			}
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone reports whether pid has exited (a zombie counts as exited).
func gone(pid int) bool { return !running(syscall.Kill, "/proc", pid) }

// waitGone waits up to 5 s for pid to exit.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testConfig is a minimal loaded config with a control socket in dir.
func testConfig(t *testing.T, dir string) *config.Config {
	t.Helper()
	return &config.Config{
		Application: "cleanup" + strconv.Itoa(os.Getpid()),
		Control:     config.Control{Path: filepath.Join(dir, "c.sock")},
		Proxy: config.Proxy{Host: "127.0.0.1", Port: 18480, UpstreamHost: "127.0.0.1",
			ForceStopTimeout: 300 * time.Millisecond},
	}
}

// writeState writes a state file recording the given processes under
// release r1 and returns its path.
func writeState(t *testing.T, path string, pids map[string]int) {
	t.Helper()
	var procs []string
	for id, pid := range pids {
		procs = append(procs, fmt.Sprintf(`{"id": %q, "pid": %d, "state": "running"}`, id, pid))
	}
	js := fmt.Sprintf(`{
  "activeReleaseId": "r1",
  "orphans": [],
  "releases": [{"releaseId": "r1", "processes": [%s]}],
  "services": [],
  "singletons": []
}
`, strings.Join(procs, ", "))
	if err := os.WriteFile(path, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeDaemon serves the control protocol on path with handle until the
// test ends or stop is called.
type fakeDaemon struct {
	srv    *control.Server
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func serveFake(t *testing.T, path string, handle func(s *fakeDaemon, req control.Request) (any, error)) *fakeDaemon {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeDaemon{cancel: cancel, done: make(chan struct{})}
	f.srv = &control.Server{Handler: control.HandlerFunc(func(_ context.Context, req control.Request, _ control.Peer) (any, error) {
		return handle(f, req)
	})}
	go func() {
		defer close(f.done)
		_ = f.srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		f.stop()
		f.srv.Wait()
		ln.Close()
	})
	return f
}

// stop stops accepting (the listener's close removes the socket file).
func (f *fakeDaemon) stop() {
	f.once.Do(func() {
		f.cancel()
		<-f.done
	})
}

// statusReply is what a daemon of app answers to status.
func statusReply(app string, active any, host string, port int, upstream, version string) map[string]any {
	return map[string]any{
		"activeReleaseId": active,
		"application":     app,
		"daemonRuntime":   map[string]any{"version": version},
		"proxy":           map[string]any{"host": host, "port": port, "upstreamHost": upstream},
	}
}

// foreignListener accepts on path and answers every connection with a line
// that is not a Rollbridge status.
func foreignListener(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("220 hello\n"))
			c.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// eperm wraps kill(2) so that signals to target (its pid or its group)
// fail with EPERM, as for a process of another user; signal 0 still
// reports it alive.
func eperm(target int) func(int, syscall.Signal) error {
	return func(pid int, sig syscall.Signal) error {
		if (pid == target || pid == -target) && sig != 0 {
			return syscall.EPERM
		}
		return syscall.Kill(pid, sig)
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func isErr[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}
