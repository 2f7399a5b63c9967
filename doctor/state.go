package doctor

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"syscall"
)

// orphan is a process recorded in the state file that is still alive.
type orphan struct {
	ID  string
	PID int
}

// checkOrphans is check 6: the processes a previous daemon recorded in
// statePath that are still alive. While this application's daemon runs,
// they are its own managed processes; the main processes of units the next
// daemon re-adopts are not orphans either (daemon.adopt).
func (d *doctor) checkOrphans(m *manager) {
	if d.sameDaemon() {
		d.add(CheckOrphans, true, "a daemon is running; its managed processes are not orphans")
		return
	}
	adopted := m.adoptedPIDs()
	var live []orphan
	for _, o := range liveProcesses(d.abs(d.cfg.StatePath)) {
		if !adopted[o.PID] {
			live = append(live, o)
		}
	}
	if len(live) == 0 {
		d.add(CheckOrphans, true, "no leftover processes from a previous daemon")
		return
	}
	parts := make([]string, len(live))
	for i, o := range live {
		parts[i] = fmt.Sprintf("%s (pid %d)", o.ID, o.PID)
	}
	d.add(CheckOrphans, false, fmt.Sprintf("%d possible orphaned process(es) still running: %s — verify and stop any leftovers",
		len(live), strings.Join(parts, ", ")))
}

// snapshot is the part of a persisted status object (spec §8.1) orphan
// detection reads. Fields are raw so one malformed entry is skipped, not
// fatal.
type snapshot struct {
	Orphans  []json.RawMessage `json:"orphans"`
	Releases []struct {
		Processes []json.RawMessage `json:"processes"`
	} `json:"releases"`
	Services   []persistent `json:"services"`
	Singletons []persistent `json:"singletons"`
}

type persistent struct {
	ID      string          `json:"id"`
	Process json.RawMessage `json:"process"`
}

// liveProcesses lists the live processes of the snapshot at path (spec
// §8.2): prior orphans, release processes, services and singletons, each
// pid once. A missing or malformed file yields none.
func liveProcesses(path string) []orphan {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var s snapshot
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil
	}
	var out []orphan
	seen := map[int]bool{}
	add := func(o orphan, ok bool) {
		if ok && !seen[o.PID] && alive(o.PID) {
			seen[o.PID] = true
			out = append(out, o)
		}
	}
	for _, r := range s.Orphans {
		add(parseOrphan(r))
	}
	for _, rel := range s.Releases {
		for _, p := range rel.Processes {
			id, pid, ok := idAndPID(p)
			add(orphan{ID: id, PID: pid}, ok)
		}
	}
	for _, list := range [][]persistent{s.Services, s.Singletons} {
		for _, sv := range list {
			id, pid, ok := idAndPID(sv.Process)
			if id == "" {
				id = sv.ID
			}
			add(orphan{ID: id, PID: pid}, ok)
		}
	}
	return out
}

// parseOrphan accepts an `orphans` entry with a string id, a numeric pid
// and a string-or-null releaseId.
func parseOrphan(raw json.RawMessage) (orphan, bool) {
	var e struct {
		ID        *string         `json:"id"`
		PID       *float64        `json:"pid"`
		ReleaseID json.RawMessage `json:"releaseId"`
	}
	if json.Unmarshal(raw, &e) != nil || e.ID == nil || e.PID == nil {
		return orphan{}, false
	}
	pid, ok := validPID(*e.PID)
	if !ok {
		return orphan{}, false
	}
	// releaseId must be present: a string, or null for services and
	// singletons.
	if strings.TrimSpace(string(e.ReleaseID)) != "null" {
		var s string
		if json.Unmarshal(e.ReleaseID, &s) != nil {
			return orphan{}, false
		}
	}
	return orphan{ID: *e.ID, PID: pid}, true
}

// idAndPID reads a process status object's id and numeric pid.
func idAndPID(raw json.RawMessage) (string, int, bool) {
	var p struct {
		ID  string   `json:"id"`
		PID *float64 `json:"pid"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &p) != nil || p.PID == nil {
		return "", 0, false
	}
	pid, ok := validPID(*p.PID)
	return p.ID, pid, ok
}

// validPID refuses values kill(2) would read as a process group or as
// "every process" (0, negatives), and fractions.
func validPID(f float64) (int, bool) {
	if f < 1 || f > math.MaxInt32 || f != math.Trunc(f) {
		return 0, false
	}
	return int(f), true
}

// alive is signal 0: success or EPERM (exists, other owner) means alive.
// Recycled pids are false positives; the check is advisory.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
