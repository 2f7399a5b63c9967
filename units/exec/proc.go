package exec

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"syscall"

	"github.com/rollbridge/rollbridge/units"
)

// procInfo is the part of /proc/<pid>/stat the runner needs.
type procInfo struct {
	pid, ppid, pgid int
	// dead is true for zombies (Z) and dying processes (X): they hold a
	// pid but run no code, so they do not keep a stop waiting.
	dead bool
	// start is the start time in clock ticks since boot. With pid it
	// identifies one process even after its pid is reused.
	start uint64
}

type procKey struct {
	pid   int
	start uint64
}

func (p procInfo) key() procKey { return procKey{p.pid, p.start} }

// parseStat parses the content of /proc/<pid>/stat. The command name is in
// parentheses and may itself contain spaces and ')', so fields are counted
// from the last ')'.
func parseStat(pid int, b []byte) (procInfo, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	// f[0] is field 3 (state); starttime is field 22. Only the first 20
	// fields after the name are split, without allocating.
	var f [20][]byte
	n := 0
	for rest := b[i+1:]; n < len(f); n++ {
		rest = bytes.TrimLeft(rest, " \n")
		if len(rest) == 0 {
			break
		}
		end := bytes.IndexAny(rest, " \n")
		if end < 0 {
			end = len(rest)
		}
		f[n], rest = rest[:end], rest[end:]
	}
	if n < len(f) {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, n+2)
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgid, err2 := strconv.Atoi(string(f[2]))
	start, err3 := strconv.ParseUint(string(f[19]), 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	state := string(f[0])
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, start: start, dead: state == "Z" || state == "X" || state == "x"}, nil
}

func readProc(pid int) (procInfo, error) {
	var buf [1024]byte
	return readProcBuf(pid, buf[:])
}

// readProcBuf reads /proc/<pid>/stat with raw syscalls into buf: a scan
// reads every process on the host every 10 ms during a stop, and
// os.ReadFile's stat and allocations double its cost.
func readProcBuf(pid int, buf []byte) (procInfo, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return procInfo{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return procInfo{}, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	return parseStat(pid, buf[:n])
}

// scanProcs reads every process of the host. Processes that vanish during
// the scan are skipped.
func scanProcs() ([]procInfo, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	procs := make([]procInfo, 0, len(names))
	buf := make([]byte, 1024)
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		if p, err := readProcBuf(pid, buf); err == nil {
			procs = append(procs, p)
		}
	}
	return procs, nil
}

// treeOf returns the live processes belonging to an instance whose process
// group is pgid: every live member of the group, and every live descendant
// (through ppid links, any depth, whatever group or session it moved to) of
// a group member or of one of the roots. roots are processes known to
// belong to the instance (its main process while not reaped, and descendants
// that left the group seen by earlier scans); they are matched by pid and
// start time, so a reused pid is never mistaken for one of them. The result
// is sorted by pid.
func treeOf(procs []procInfo, pgid int, roots map[procKey]struct{}) []procInfo {
	children := make(map[int][]procInfo)
	var queue []procInfo
	seen := make(map[int]bool)
	add := func(p procInfo) {
		if !seen[p.pid] {
			seen[p.pid] = true
			queue = append(queue, p)
		}
	}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p)
		if _, ok := roots[p.key()]; (ok || p.pgid == pgid) && !p.dead {
			add(p)
		}
	}
	for i := 0; i < len(queue); i++ {
		for _, c := range children[queue[i].pid] {
			if !c.dead {
				add(c)
			}
		}
	}
	slices.SortFunc(queue, func(a, b procInfo) int { return a.pid - b.pid })
	return queue
}

// signalTree sends sig to the process group and to each member that left
// it. ESRCH (the process is already gone) is not an error.
func signalTree(pgid int, members []procInfo, sig syscall.Signal) error {
	var errs []error
	group := false
	for _, m := range members {
		var err error
		switch {
		case m.pgid == pgid && group:
			continue
		case m.pgid == pgid:
			group = true
			err = syscall.Kill(-pgid, sig)
		default:
			err = syscall.Kill(m.pid, sig)
		}
		if err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signal pid %d: %w", m.pid, err))
		}
	}
	return errors.Join(errs...)
}

// rssBytes sums VmRSS over pids; unreadable processes count as 0.
func rssBytes(members []procInfo) uint64 {
	var sum uint64
	for _, m := range members {
		sum += units.RSSBytes(m.pid)
	}
	return sum
}

func pidsOf(members []procInfo) []int {
	pids := make([]int, len(members))
	for i, m := range members {
		pids[i] = m.pid
	}
	return pids
}
