package cleanup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/control"
)

func TestStateProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	js := `{
  "orphans": [
    {"id": "old-web", "pid": 11, "releaseId": "r0"},
    {"id": "old-svc", "pid": 12, "releaseId": null},
    {"id": "no-release-key", "pid": 13},
    {"id": 5, "pid": 14, "releaseId": null},
    {"id": "fraction", "pid": 15.5, "releaseId": null},
    {"id": "group", "pid": -16, "releaseId": null},
    "junk"
  ],
  "releases": [
    {"releaseId": "r1", "processes": [{"id": "web", "pid": 21}, {"id": "worker#0", "pid": 22}, {"id": "stopped", "pid": null}, {"id": "dup", "pid": 11}]},
    {"releaseId": "r2", "processes": [{"id": "dead", "pid": 23}]}
  ],
  "services": [{"id": "redis", "process": {"id": "redis", "pid": 31}}],
  "singletons": [{"id": "cron", "process": {"pid": 32}}]
}`
	if err := os.WriteFile(path, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	alive := func(pid int) bool { return pid != 23 }
	var got []string
	for _, p := range StateProcesses(path, alive) {
		got = append(got, p.String())
	}
	want := []string{
		"old-web (pid 11, release r0)",
		"old-svc (pid 12)",
		"web (pid 21, release r1)",
		"worker#0 (pid 22, release r1)",
		"redis (pid 31)",
		"cron (pid 32)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("live processes\n got %q\nwant %q", got, want)
	}

	for _, content := range []string{"", "{not json", `[1, 2]`} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := StateProcesses(path, alive); len(got) != 0 {
			t.Errorf("malformed %q: %v", content, got)
		}
	}
	if got := StateProcesses(filepath.Join(t.TempDir(), "missing.json"), alive); len(got) != 0 {
		t.Errorf("missing file: %v", got)
	}
}

func TestRecoverRefusesWhileSocketInUse(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StatePath = filepath.Join(dir, "state.json")
	want := "A daemon (or another process) is using " + cfg.Control.Path + "; stop it before recovering — recover is for cleaning up after a crash."
	opts := Options{Config: cfg, Runner: RunnerExec}

	// A Rollbridge daemon (even of this application).
	f := serveFake(t, cfg.Control.Path, func(_ *fakeDaemon, _ control.Request) (any, error) {
		return statusReply(cfg.Application, "r1", "127.0.0.1", 18480, "127.0.0.1", "dev"), nil
	})
	_, err := Recover(ctxT(t), opts, true)
	if !isErr[*InUseError](err) || err.Error() != want {
		t.Errorf("daemon answering: %v", err)
	}
	f.stop()

	// Any other listener.
	foreignListener(t, cfg.Control.Path)
	if _, err := Recover(ctxT(t), opts, false); err == nil || err.Error() != want {
		t.Errorf("foreign listener: %v", err)
	}

	// A probe that cannot tell (the socket's directory is a file: ENOTDIR).
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Control.Path = filepath.Join(file, "c.sock")
	_, err = Recover(ctxT(t), opts, false)
	if !errors.Is(err, syscall.ENOTDIR) || !strings.HasPrefix(err.Error(), "A daemon (or another process) is using "+cfg.Control.Path+";") {
		t.Errorf("unprobeable socket: %v", err)
	}
}

func TestRecoverNeedsStatePathWithoutSystemd(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	_, err := Recover(ctxT(t), Options{Config: cfg, Runner: RunnerExec}, true)
	if !errors.Is(err, ErrNoStatePath) || err.Error() != "No statePath is configured; set statePath in the config to enable recovery." {
		t.Errorf("err = %v", err)
	}
	if _, err := Recover(ctxT(t), Options{Config: cfg, Runner: "podman"}, true); err == nil || !strings.Contains(err.Error(), `unknown runner "podman"`) {
		t.Errorf("unknown runner: %v", err)
	}
}

func TestRecoverDryRunThenForce(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StatePath = "state.json" // relative: resolved against WorkDir
	statePath := filepath.Join(dir, "state.json")
	opts := Options{Config: cfg, WorkDir: dir, Runner: RunnerExec}

	web := startProc(t, "exec sleep 300")
	// Ignores SIGTERM: stopped by SIGKILL after forceStopTimeoutMs.
	stubborn := startProc(t, `trap "" TERM; exec sleep 300`)
	// The leader stops on SIGTERM, a member of its group ignores it: the
	// member must not be left behind.
	group := startProc(t, `(trap "" TERM; exec sleep 300) & exec sleep 301`)
	member := children(t, group.pid, 1)[0]
	dead := startProc(t, "exit 0")
	<-dead.done
	writeState(t, statePath, map[string]int{"web": web.pid, "worker#0": stubborn.pid, "worker#1": group.pid, "gone": dead.pid})

	rep, err := Recover(ctxT(t), opts, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Forced || rep.StateFile != statePath || rep.Found.Len() != 3 || len(rep.Found.Units) != 0 || rep.Stopped.Len() != 0 {
		t.Fatalf("dry run report %+v", rep)
	}
	for _, line := range rep.Found.Lines() {
		if !strings.HasSuffix(line, ", release r1)") {
			t.Errorf("line %q", line)
		}
	}
	for _, p := range []int{web.pid, stubborn.pid, group.pid, member} {
		if gone(p) {
			t.Errorf("dry run stopped pid %d", p)
		}
	}
	if _, err := os.Stat(statePath); err != nil {
		t.Errorf("dry run touched the state file: %v", err)
	}

	start := time.Now()
	rep, err = Recover(ctxT(t), opts, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("forced recover of 3 processes (two need SIGKILL after 300 ms) took %v", time.Since(start))
	if rep.Stopped.Len() != 3 || rep.Remaining.Len() != 0 || !rep.StateCleared {
		t.Fatalf("forced report %+v", rep)
	}
	for _, p := range []int{web.pid, stubborn.pid, group.pid, member} {
		waitGone(t, p)
	}
	if _, err := os.Stat(statePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file not removed: %v", err)
	}

	// Nothing left: the dry run and the forced run say so.
	rep, err = Recover(ctxT(t), opts, true)
	if err != nil || rep.Found.Len() != 0 || !rep.StateCleared {
		t.Errorf("empty forced run: %+v, %v", rep, err)
	}
}

func TestRecoverKeepsStateWhenAProcessCannotBeStopped(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StatePath = filepath.Join(dir, "state.json")
	stuck := startProc(t, "exec sleep 300")
	ok := startProc(t, "exec sleep 300")
	writeState(t, cfg.StatePath, map[string]int{"stuck": stuck.pid, "ok": ok.pid})

	rep, err := Recover(ctxT(t), Options{Config: cfg, Runner: RunnerExec, Signal: eperm(stuck.pid)}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Remaining.Processes) != 1 || rep.Remaining.Processes[0].PID != stuck.pid ||
		len(rep.Stopped.Processes) != 1 || rep.Stopped.Processes[0].PID != ok.pid || rep.StateCleared {
		t.Fatalf("report %+v", rep)
	}
	waitGone(t, ok.pid)
	if gone(stuck.pid) {
		t.Error("the EPERM process was stopped")
	}
	if _, err := os.Stat(cfg.StatePath); err != nil {
		t.Errorf("state file must stay: %v", err)
	}
}

func TestStopProcessSignals(t *testing.T) {
	// Scripted kill(2): the pid leads no group (ESRCH for -pid), takes
	// SIGTERM and dies only on SIGKILL.
	const pid = 4_000_001
	var sent []string
	alive := true
	kill := func(p int, sig syscall.Signal) error {
		if p == -pid {
			return syscall.ESRCH
		}
		if sig != 0 {
			sent = append(sent, strconv.Itoa(p)+":"+sig.String())
		}
		if !alive {
			return syscall.ESRCH
		}
		if sig == syscall.SIGKILL {
			alive = false
		}
		return nil
	}
	if !stopProcess(ctxT(t), kill, t.TempDir(), pid, 120*time.Millisecond) {
		t.Fatal("not stopped")
	}
	if want := []string{"4000001:terminated", "4000001:killed"}; !slices.Equal(sent, want) {
		t.Errorf("signals %q, want %q", sent, want)
	}

	// Already gone: stopped, without further signals.
	sent, alive = nil, false
	if !stopProcess(ctxT(t), kill, t.TempDir(), pid, time.Second) || len(sent) != 1 {
		t.Errorf("gone process: signals %q", sent)
	}

	// EPERM on SIGTERM: cannot stop, no SIGKILL tried.
	calls := 0
	refuse := func(int, syscall.Signal) error { calls++; return syscall.EPERM }
	if stopProcess(ctxT(t), refuse, t.TempDir(), pid, time.Second) || calls != 1 {
		t.Errorf("EPERM: calls %d", calls)
	}
}
