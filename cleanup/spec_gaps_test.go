package cleanup

// PDC-05 (spec §8.4 step 4): predeploy-cleanup asks every configured GNU
// screen session to quit with `screen -S <name> -X quit` (result ignored)
// before it lists and signals the legacy processes.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
)

// fakeScreen puts an executable named screen first on PATH that appends
// its argv (each argument in brackets) to the returned log file and exits
// with status 1 for a session named in fail (as the real screen does for
// a session that does not exist).
func fakeScreen(t *testing.T, fail string) string {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "screen.log")
	script := `#!/bin/sh
line=
for a in "$@"; do line="$line[$a]"; done
echo "$line" >> ` + log + `
[ "$2" = "` + fail + `" ] && exit 1
exit 0
`
	if err := os.WriteFile(filepath.Join(dir, "screen"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return log
}

func readScreenLog(t *testing.T, log string) []string {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// TestPredeployQuitsScreens (PDC-05): with legacyTakeover.screens set,
// `screen -S <name> -X quit` runs once per configured screen, in config
// order, through the screen found on PATH, before the first legacy process
// is signalled; a failing quit is ignored (the session's processes are
// still matched and stopped).
func TestPredeployQuitsScreens(t *testing.T) {
	m := marker(t)
	first, second := m+"-a", m+"-b"
	log := fakeScreen(t, second)
	cfg := testConfig(t, t.TempDir())
	cfg.LegacyTakeover = &config.LegacyTakeover{
		Screens:          []string{first, second},
		ForceStopTimeout: 100 * time.Millisecond,
	}
	// The session of the second screen survives its quit (the fake screen
	// does nothing): it is matched as a seed and stopped.
	session := startProc(t, "sleep 300; : SCREEN -dmS "+second)
	child := children(t, session.pid, 1)[0]

	var mu sync.Mutex
	var atFirstSignal []string
	kill := func(pid int, sig syscall.Signal) error {
		mu.Lock()
		if sig != 0 && atFirstSignal == nil {
			atFirstSignal = append([]string{}, readScreenLog(t, log)...)
		}
		mu.Unlock()
		return syscall.Kill(pid, sig)
	}
	res, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec, Signal: kill}})
	if err != nil {
		t.Fatalf("predeploy: %v (a failing screen quit must be ignored)", err)
	}
	want := []string{"[-S][" + first + "][-X][quit]", "[-S][" + second + "][-X][quit]"}
	if got := readScreenLog(t, log); !slices.Equal(got, want) {
		t.Errorf("screen calls %q, want %q", got, want)
	}
	mu.Lock()
	if !slices.Equal(atFirstSignal, want) {
		t.Errorf("screen calls before the first signal %q, want %q", atFirstSignal, want)
	}
	mu.Unlock()
	var got []int
	for _, p := range res.LegacyProcesses {
		got = append(got, p.PID)
	}
	if wantPIDs := []int{session.pid, child}; !slices.Equal(got, wantPIDs) {
		t.Errorf("legacy processes %v, want %v", got, wantPIDs)
	}
	waitGone(t, session.pid)
	waitGone(t, child)
}

// TestPredeployWithoutScreensCallsNoScreen: no configured screens, no
// screen call (the matchers alone select processes).
func TestPredeployWithoutScreensCallsNoScreen(t *testing.T) {
	log := fakeScreen(t, "")
	cfg := testConfig(t, t.TempDir())
	cfg.LegacyTakeover = &config.LegacyTakeover{
		Processes:        []config.LegacyProcess{{Includes: []string{marker(t)}}},
		ForceStopTimeout: 100 * time.Millisecond,
	}
	if _, err := Predeploy(ctxT(t), PredeployOptions{Options: Options{Config: cfg, Runner: RunnerExec}}); err != nil {
		t.Fatal(err)
	}
	if got := readScreenLog(t, log); len(got) != 0 {
		t.Errorf("screen calls %q without configured screens", got)
	}
}
