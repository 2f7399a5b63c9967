// Package statefile reads what a previous daemon persisted in statePath
// (spec §8.1): the processes it recorded that are still alive (spec §8.2,
// "orphans"). The daemon, doctor and recover/predeploy-cleanup share it.
// Standard library only.
package statefile

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Process is a live process a previous daemon recorded in its state file.
type Process struct {
	ID  string `json:"id"`
	PID int    `json:"pid"`
	// ReleaseID is nil for services, singletons and release-less orphans.
	ReleaseID *string `json:"releaseId"`
}

// String renders the spec's list entry: `<id> (pid <pid>[, release <id>])`.
func (p Process) String() string {
	s := p.ID + " (pid " + strconv.Itoa(p.PID)
	if p.ReleaseID != nil {
		s += ", release " + *p.ReleaseID
	}
	return s + ")"
}

// snapshot is the part of a persisted status object (spec §8.1) orphan
// detection reads. Entries stay raw so that one malformed entry is skipped
// instead of discarding the file.
type snapshot struct {
	Orphans  []json.RawMessage `json:"orphans"`
	Releases []struct {
		ReleaseID json.RawMessage   `json:"releaseId"`
		Processes []json.RawMessage `json:"processes"`
	} `json:"releases"`
	Services   []persistent `json:"services"`
	Singletons []persistent `json:"singletons"`
}

type persistent struct {
	ID      string          `json:"id"`
	Process json.RawMessage `json:"process"`
}

// LiveProcesses lists the live processes of the state file at path (spec
// §8.2): (a) `orphans` entries with a string id, a numeric pid and a
// string-or-null releaseId; (b) every release process with a numeric pid;
// (c) every service and singleton process with a numeric pid — each pid
// once, kept when alive tells it exists. A missing or malformed file
// yields none. Pids can be recycled: the list is advisory.
func LiveProcesses(path string, alive func(pid int) bool) []Process {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var s snapshot
	if json.Unmarshal(raw, &s) != nil {
		return nil
	}
	var out []Process
	seen := map[int]bool{}
	add := func(p Process, ok bool) {
		if ok && !seen[p.PID] && alive(p.PID) {
			seen[p.PID] = true
			out = append(out, p)
		}
	}
	for _, r := range s.Orphans {
		add(parseOrphan(r))
	}
	for _, rel := range s.Releases {
		var id *string
		if json.Unmarshal(rel.ReleaseID, &id) != nil {
			id = nil
		}
		for _, raw := range rel.Processes {
			pid, name, ok := idAndPID(raw)
			add(Process{ID: name, PID: pid, ReleaseID: id}, ok)
		}
	}
	for _, list := range [][]persistent{s.Services, s.Singletons} {
		for _, sv := range list {
			pid, name, ok := idAndPID(sv.Process)
			if name == "" {
				name = sv.ID
			}
			add(Process{ID: name, PID: pid}, ok)
		}
	}
	return out
}

// parseOrphan accepts an `orphans` entry with a string id, a numeric pid
// and a releaseId that is a string or null.
func parseOrphan(raw json.RawMessage) (Process, bool) {
	var e struct {
		ID        *string         `json:"id"`
		PID       *float64        `json:"pid"`
		ReleaseID json.RawMessage `json:"releaseId"`
	}
	if json.Unmarshal(raw, &e) != nil || e.ID == nil || e.PID == nil {
		return Process{}, false
	}
	pid, ok := validPID(*e.PID)
	if !ok {
		return Process{}, false
	}
	p := Process{ID: *e.ID, PID: pid}
	if strings.TrimSpace(string(e.ReleaseID)) != "null" {
		var s string
		if json.Unmarshal(e.ReleaseID, &s) != nil {
			return Process{}, false
		}
		p.ReleaseID = &s
	}
	return p, true
}

// idAndPID reads a process status object's id and numeric pid.
func idAndPID(raw json.RawMessage) (int, string, bool) {
	var p struct {
		ID  string   `json:"id"`
		PID *float64 `json:"pid"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &p) != nil || p.PID == nil {
		return 0, "", false
	}
	pid, ok := validPID(*p.PID)
	return pid, p.ID, ok
}

// validPID refuses values kill(2) would read as a process group or as
// "every process" (0, negatives), and fractions.
func validPID(f float64) (int, bool) {
	if f < 1 || f > math.MaxInt32 || f != math.Trunc(f) {
		return 0, false
	}
	return int(f), true
}

// Alive is signal 0: success or EPERM (exists, other owner) means alive.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
