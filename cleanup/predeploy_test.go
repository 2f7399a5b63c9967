package cleanup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

func TestPredeployRefusesOtherListeners(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	opts := PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec}}

	foreignListener(t, cfg.Control.Path)
	_, err := Predeploy(ctxT(t), opts)
	if want := "A non-Rollbridge process is using " + cfg.Control.Path + "; refusing predeploy cleanup."; err == nil || err.Error() != want {
		t.Errorf("foreign: %v", err)
	}

	cfg.Control.Path = filepath.Join(dir, "other.sock")
	serveFake(t, cfg.Control.Path, func(*fakeDaemon, control.Request) (any, error) {
		return statusReply("billing", "r1", "127.0.0.1", 18480, "127.0.0.1", "dev"), nil
	})
	_, err = Predeploy(ctxT(t), opts)
	if want := `A Rollbridge daemon for "billing" is using ` + cfg.Control.Path + `; expected "` + cfg.Application + `".`; err == nil || err.Error() != want {
		t.Errorf("other application: %v", err)
	}
}

// TestPredeployDaemonAlreadyActive: the daemon owns the application as
// configured; nothing else happens — not even to legacy processes.
func TestPredeployDaemonAlreadyActive(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	m := marker(t)
	cfg.LegacyTakeover = &config.LegacyTakeover{Processes: []config.LegacyProcess{{Includes: []string{m}}}, ForceStopTimeout: time.Second}
	legacy := startProc(t, "sleep 300; : "+m)
	var shutdowns atomic.Int32
	serveFake(t, cfg.Control.Path, func(_ *fakeDaemon, req control.Request) (any, error) {
		if req.Command == control.CmdShutdown {
			shutdowns.Add(1)
		}
		return statusReply(cfg.Application, "r1", "127.0.0.1", 18480, "127.0.0.1", "1.4.0"), nil
	})
	release := t.TempDir()
	writeVersionBinary(t, release, "1.4.0")

	for name, o := range map[string]PredeployOptions{
		"no release path":     {},
		"same version":        {ReleasePath: release},
		"version unknown":     {ReleasePath: t.TempDir()},
		"daemon version dev":  {ReleasePath: release, ReleaseVersion: func(context.Context, string) string { return "" }},
		"injected same value": {ReleasePath: "/nonexistent", ReleaseVersion: func(context.Context, string) string { return "1.4.0" }},
	} {
		o.Options = Options{Config: cfg, Runner: RunnerExec}
		res, err := Predeploy(ctxT(t), o)
		if err != nil || res.Action != ActionDaemonActive || res.Recovered != 0 || len(res.LegacyProcesses) != 0 {
			t.Errorf("%s: %+v, %v", name, res, err)
		}
	}
	if n := shutdowns.Load(); n != 0 {
		t.Errorf("%d shutdown requests", n)
	}
	if gone(legacy.pid) {
		t.Error("legacy process stopped although the daemon is active")
	}
}

// writeVersionBinary installs <release>/bin/rollbridge printing version.
func writeVersionBinary(t *testing.T, release, version string) {
	t.Helper()
	bin := filepath.Join(release, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\n[ \"$1 $2\" = \"version --json\" ] || exit 2\necho '{\"version\": \"%s\", \"go\": \"go1.26\"}'\n", version)
	if err := os.WriteFile(filepath.Join(bin, "rollbridge"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestBinaryVersion(t *testing.T) {
	release := t.TempDir()
	if v := BinaryVersion(ctxT(t), release); v != "" {
		t.Errorf("no binary: %q", v)
	}
	writeVersionBinary(t, release, "2.0.1")
	if v := BinaryVersion(ctxT(t), release); v != "2.0.1" {
		t.Errorf("version %q", v)
	}
}

// TestPredeployStopsOutdatedDaemon: no active release, other proxy
// settings, or another Rollbridge version → shutdown, then wait until the
// socket is quiet (the fake answers probes for a while after its reply).
func TestPredeployStopsOutdatedDaemon(t *testing.T) {
	release := t.TempDir()
	writeVersionBinary(t, release, "1.5.0")
	cases := map[string]map[string]any{
		"no active release": statusReply("", nil, "127.0.0.1", 18480, "127.0.0.1", "1.5.0"),
		"other port":        statusReply("", "r1", "127.0.0.1", 18481, "127.0.0.1", "1.5.0"),
		"other host":        statusReply("", "r1", "0.0.0.0", 18480, "127.0.0.1", "1.5.0"),
		"other upstream":    statusReply("", "r1", "127.0.0.1", 18480, "127.0.0.2", "1.5.0"),
		"other version":     statusReply("", "r1", "127.0.0.1", 18480, "127.0.0.1", "1.4.0"),
	}
	for name, status := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(t, dir)
			status["application"] = cfg.Application
			var shutdowns atomic.Int32
			serveFake(t, cfg.Control.Path, func(f *fakeDaemon, req control.Request) (any, error) {
				if req.Command == control.CmdShutdown {
					shutdowns.Add(1)
					// Keep answering for a few polls after the reply.
					time.AfterFunc(300*time.Millisecond, f.stop)
					return map[string]any{"message": "shutdown"}, nil
				}
				return status, nil
			})
			start := time.Now()
			res, err := Predeploy(ctxT(t), PredeployOptions{
				Options:      Options{Config: cfg, Runner: RunnerExec},
				ReleasePath:  release,
				ShutdownPoll: 50 * time.Millisecond,
			})
			if err != nil || res.Action != ActionDaemonStopped {
				t.Fatalf("%+v, %v", res, err)
			}
			if shutdowns.Load() != 1 {
				t.Errorf("%d shutdown requests", shutdowns.Load())
			}
			if d := time.Since(start); d < 250*time.Millisecond {
				t.Errorf("returned after %v, before the socket went quiet", d)
			}
		})
	}
}

func TestPredeployShutdownTimeout(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	serveFake(t, cfg.Control.Path, func(_ *fakeDaemon, req control.Request) (any, error) {
		return statusReply(cfg.Application, nil, "127.0.0.1", 18480, "127.0.0.1", "dev"), nil
	})
	_, err := Predeploy(ctxT(t), PredeployOptions{
		Options:         Options{Config: cfg, Runner: RunnerExec},
		ShutdownTimeout: 400 * time.Millisecond,
		ShutdownPoll:    100 * time.Millisecond,
	})
	if want := "Timed out waiting for Rollbridge daemon at " + cfg.Control.Path + " to shut down."; err == nil || err.Error() != want {
		t.Errorf("err = %v", err)
	}
}

func TestPredeployShutdownRefused(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	serveFake(t, cfg.Control.Path, func(_ *fakeDaemon, req control.Request) (any, error) {
		if req.Command == control.CmdShutdown {
			return nil, errors.New("permission denied: uid 1001 may not control this daemon")
		}
		return statusReply(cfg.Application, nil, "127.0.0.1", 18480, "127.0.0.1", "dev"), nil
	})
	_, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec}})
	if err == nil || !strings.Contains(err.Error(), "permission denied: uid 1001") {
		t.Errorf("err = %v", err)
	}
}

// TestPredeployRecoversAndTakesOver: no daemon; a recorded process of a
// previous daemon and the legacy supervisor's processes are stopped.
func TestPredeployRecoversAndTakesOver(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StatePath = filepath.Join(dir, "state.json")
	m := marker(t)
	cfg.LegacyTakeover = &config.LegacyTakeover{
		Screens: []string{m + "-screen"},
		Processes: []config.LegacyProcess{
			{Name: "legacy web", Includes: []string{m + "-web", "--port 8082"}},
			{Name: "legacy worker", Includes: []string{m + "-worker"}},
		},
		ForceStopTimeout: 300 * time.Millisecond,
	}
	orphan := startProc(t, "exec sleep 300")
	writeState(t, cfg.StatePath, map[string]int{"web": orphan.pid})
	// Seeds run a child each (descendants); the worker ignores SIGTERM.
	screen := startProc(t, "sleep 300; : SCREEN -dmS "+m+"-screen")
	web := startProc(t, "sleep 300; : "+m+"-web --port 8082")
	worker := startProc(t, `trap "" TERM; sleep 300; : `+m+"-worker")
	other := startProc(t, "sleep 300; : "+m+"-web --port 9090") // not every include
	var want []int
	for _, p := range []*proc{screen, web, worker} {
		want = append(want, p.pid)
		want = append(want, children(t, p.pid, 1)...)
	}
	slices.Sort(want)

	res, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec}, Screen: "/nonexistent/screen"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != ActionNoDaemonCleaned || res.Recovered != 1 {
		t.Errorf("result %+v", res)
	}
	var got []int
	for _, p := range res.LegacyProcesses {
		got = append(got, p.PID)
		if p.Args == "" || p.ParentPID == 0 {
			t.Errorf("legacy process %+v", p)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("legacy processes %v, want %v (%+v)", got, want, res.LegacyProcesses)
	}
	for _, pid := range append(want, orphan.pid) {
		waitGone(t, pid)
	}
	if gone(other.pid) {
		t.Error("a process matching only some includes was stopped")
	}
	if _, err := os.Stat(cfg.StatePath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file: %v", err)
	}
}

func TestPredeployRecoverFailure(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.StatePath = filepath.Join(dir, "state.json")
	stuck := startProc(t, "exec sleep 300")
	writeState(t, cfg.StatePath, map[string]int{"web": stuck.pid})
	_, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec, Signal: eperm(stuck.pid)}})
	var rerr *RecoverError
	if !errors.As(err, &rerr) || err.Error() != "Could not stop 1 Rollbridge orphaned process(es)." || rerr.Remaining.Processes[0].PID != stuck.pid {
		t.Errorf("err = %v", err)
	}
}

// TestPredeployRefusesWhileLegacyRuns: processes that survive SIGKILL
// (simulated: signals are swallowed) are listed and the deploy refused.
func TestPredeployRefusesWhileLegacyRuns(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	m := marker(t)
	cfg.LegacyTakeover = &config.LegacyTakeover{Processes: []config.LegacyProcess{{Includes: []string{m}}}, ForceStopTimeout: 100 * time.Millisecond}
	p := startProc(t, "sleep 300; : "+m)
	child := children(t, p.pid, 1)[0]
	var sigs []string
	swallow := func(pid int, sig syscall.Signal) error {
		if sig != 0 {
			sigs = append(sigs, sig.String())
			return nil
		}
		return syscall.Kill(pid, 0)
	}
	_, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec, Signal: swallow}})
	want := fmt.Sprintf("Refusing Rollbridge deploy while legacy processes are still running:\n%d /bin/sh -c sleep 300; : %s\n%d sleep 300", p.pid, m, child)
	if !isErr[*LegacyRunningError](err) || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
	if !slices.Equal(sigs, []string{"terminated", "terminated", "killed", "killed"}) {
		t.Errorf("signals %q", sigs)
	}
}

// TestLegacyNeverSelf: the command's own process and its ancestors are
// never selected, even when they match (a deploy script running inside
// the legacy screen session).
func TestLegacyNeverSelf(t *testing.T) {
	lt := &config.LegacyTakeover{Screens: []string{"shop"}, Processes: []config.LegacyProcess{{Includes: []string{"ticket-server"}}}}
	procs := []LegacyProcess{
		{PID: 1, ParentPID: 0, Args: "/sbin/init"},
		{PID: 10, ParentPID: 1, Args: "SCREEN -dmS shop bash"},
		{PID: 11, ParentPID: 10, Args: "bash"},
		{PID: 12, ParentPID: 11, Args: "bash deploy.sh ticket-server"}, // ancestor of self
		{PID: 13, ParentPID: 12, Args: "rollbridge predeploy-cleanup -c ticket-server.js"},
		{PID: 14, ParentPID: 11, Args: "node ticket-server/server.js"},
		{PID: 15, ParentPID: 14, Args: "node worker"},
		{PID: 16, ParentPID: 13, Args: "screen -S shop -X quit"}, // a child of self
		{PID: 20, ParentPID: 1, Args: "SCREEN -dmS shopfront"},   // contains "SCREEN -dmS shop"
		{PID: 30, ParentPID: 1, Args: "sshd"},
	}
	var got []int
	for _, p := range legacyMatches(procs, lt, 13) {
		got = append(got, p.PID)
	}
	// 10 and 11 are ancestors of self; 14 matches; 15 descends from 14; 20
	// matches as a substring, as in the original.
	if want := []int{14, 15, 20}; !slices.Equal(got, want) {
		t.Errorf("matches %v, want %v", got, want)
	}
	// From outside the session, the whole tree goes — except the command.
	got = nil
	for _, p := range legacyMatches(procs, lt, 30) {
		got = append(got, p.PID)
	}
	if want := []int{10, 11, 12, 13, 14, 15, 16, 20}; !slices.Equal(got, want) {
		t.Errorf("matches %v, want %v", got, want)
	}
}

// TestLegacyNeverSelfReal runs the takeover with Self inside a matching
// process tree: nothing of it is signalled.
func TestLegacyNeverSelfReal(t *testing.T) {
	m := marker(t)
	lt := &config.LegacyTakeover{Processes: []config.LegacyProcess{{Includes: []string{m}}}, ForceStopTimeout: 100 * time.Millisecond}
	tree := startProc(t, "sleep 300; : "+m)
	child := children(t, tree.pid, 1)[0]
	cfg := testConfig(t, t.TempDir())
	found, err := takeover(ctxT(t), lt, PredeployOptions{Options: Options{Config: cfg}, Self: child})
	if err != nil || len(found) != 0 {
		t.Errorf("found %+v, %v", found, err)
	}
	if gone(tree.pid) || gone(child) {
		t.Error("self or its ancestor was stopped")
	}
}

func TestListProcesses(t *testing.T) {
	m := marker(t)
	p := startProc(t, "sleep 300; : "+m)
	procs, err := listProcesses("/proc")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(procs, func(lp LegacyProcess) bool { return lp.PID == p.pid })
	if i < 0 {
		t.Fatalf("pid %d not listed", p.pid)
	}
	if got := procs[i]; got.ParentPID != os.Getpid() || got.Args != "/bin/sh -c sleep 300; : "+m {
		t.Errorf("listed %+v", got)
	}
	self := slices.IndexFunc(procs, func(lp LegacyProcess) bool { return lp.PID == os.Getpid() })
	if self < 0 || procs[self].ParentPID != os.Getppid() {
		t.Errorf("own entry %v", self)
	}
}
