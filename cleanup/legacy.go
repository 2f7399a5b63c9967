package cleanup

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/config"
)

// screenTimeout bounds one `screen -S <name> -X quit`.
const screenTimeout = 10 * time.Second

// LegacyProcess is a process of a legacy supervisor (spec §8.4): a row of
// `ps -eo pid=,ppid=,args=`.
type LegacyProcess struct {
	PID       int    `json:"pid"`
	ParentPID int    `json:"parentPid"`
	Args      string `json:"args"`
}

// LegacyRunningError: legacy processes survived SIGTERM and SIGKILL.
type LegacyRunningError struct {
	Processes []LegacyProcess
}

func (e *LegacyRunningError) Error() string {
	var b strings.Builder
	b.WriteString("Refusing Rollbridge deploy while legacy processes are still running:")
	for _, p := range e.Processes {
		fmt.Fprintf(&b, "\n%d %s", p.PID, p.Args)
	}
	return b.String()
}

// listProcesses reads every process from procDir: pid, parent pid (from
// stat, after the command name, which may contain spaces and parentheses)
// and args (cmdline with its NUL separators as spaces). Kernel threads and
// zombies have no cmdline and are left out: they cannot be legacy
// processes, and a zombie is already stopped.
func listProcesses(procDir string) ([]LegacyProcess, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []LegacyProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		dir := filepath.Join(procDir, e.Name())
		cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // gone meanwhile, kernel thread or zombie
		}
		ppid, ok := parentPID(filepath.Join(dir, "stat"))
		if !ok {
			continue
		}
		args := strings.ReplaceAll(string(bytes.TrimRight(cmdline, "\x00")), "\x00", " ")
		out = append(out, LegacyProcess{PID: pid, ParentPID: ppid, Args: args})
	}
	slices.SortFunc(out, func(a, b LegacyProcess) int { return a.PID - b.PID })
	return out, nil
}

// parentPID reads field 4 of /proc/<pid>/stat.
func parentPID(path string) (int, bool) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:]) // state ppid …
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// legacyMatches selects the legacy processes of procs: seeds are processes
// whose args contain `SCREEN -dmS <name>` for a configured screen, or every
// string of one matcher's includes; then every descendant of a seed,
// transitively. self and its ancestors are never selected (a deploy script
// may run inside the very screen session it replaces). The result is in
// pid order.
func legacyMatches(procs []LegacyProcess, lt *config.LegacyTakeover, self int) []LegacyProcess {
	parent := make(map[int]int, len(procs))
	children := map[int][]int{}
	for _, p := range procs {
		parent[p.PID] = p.ParentPID
		children[p.ParentPID] = append(children[p.ParentPID], p.PID)
	}
	protected := map[int]bool{}
	for pid := self; pid > 0 && !protected[pid]; pid = parent[pid] {
		protected[pid] = true
	}
	picked := map[int]bool{}
	var queue []int
	for _, p := range procs {
		if !protected[p.PID] && isSeed(p.Args, lt) {
			picked[p.PID] = true
			queue = append(queue, p.PID)
		}
	}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !picked[c] && !protected[c] {
				picked[c] = true
				queue = append(queue, c)
			}
		}
	}
	var out []LegacyProcess
	for _, p := range procs {
		if picked[p.PID] {
			out = append(out, p)
		}
	}
	return out
}

func isSeed(args string, lt *config.LegacyTakeover) bool {
	for _, name := range lt.Screens {
		if strings.Contains(args, "SCREEN -dmS "+name) {
			return true
		}
	}
	for _, m := range lt.Processes {
		if len(m.Includes) == 0 {
			continue
		}
		all := true
		for _, inc := range m.Includes {
			if !strings.Contains(args, inc) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// takeover stops the legacy processes (spec §8.4 step 4): quit every
// configured screen session, SIGTERM each matching process (individually),
// give them the full forceStopTimeoutMs, SIGKILL the rest, and refuse with a
// *LegacyRunningError when a match is still listed afterwards. It returns
// the processes it found.
func takeover(ctx context.Context, lt *config.LegacyTakeover, opts PredeployOptions) ([]LegacyProcess, error) {
	screen := opts.Screen
	if screen == "" {
		screen = "screen"
	}
	if path, err := exec.LookPath(screen); err == nil {
		for _, name := range lt.Screens {
			quitScreen(ctx, path, name)
		}
	}
	self := opts.Self
	if self == 0 {
		self = os.Getpid()
	}
	procs, err := listProcesses(opts.procDir())
	if err != nil {
		return nil, err
	}
	found := legacyMatches(procs, lt, self)
	kill := opts.kill()
	signalled := false
	for _, p := range found {
		if kill(p.PID, syscall.SIGTERM) == nil {
			signalled = true
		}
	}
	if signalled {
		if err := sleep(ctx, lt.ForceStopTimeout); err != nil {
			return found, err
		}
		for _, p := range found {
			_ = kill(p.PID, syscall.SIGKILL) // already gone is fine
		}
		// SIGKILL is delivered asynchronously: give the kernel a moment
		// before listing again, so a dying process is not reported.
		waitUntil(ctx, func() bool {
			for _, p := range found {
				if running(kill, opts.procDir(), p.PID) {
					return false
				}
			}
			return true
		}, KillConfirm)
	}
	procs, err = listProcesses(opts.procDir())
	if err != nil {
		return found, err
	}
	if left := legacyMatches(procs, lt, self); len(left) > 0 {
		return found, &LegacyRunningError{Processes: left}
	}
	return found, nil
}

// quitScreen asks a GNU screen session to quit; the result is ignored (the
// session may not exist), and the processes are matched afterwards anyway.
func quitScreen(ctx context.Context, path, name string) {
	sctx, cancel := context.WithTimeout(ctx, screenTimeout)
	defer cancel()
	_ = exec.CommandContext(sctx, path, "-S", name, "-X", "quit").Run()
}
