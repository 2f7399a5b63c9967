package exec_test

// MEM-02 (spec §5.7) for the exec runner: the memory figure is the sum of
// VmRSS over every process of the instance's process group, and PIDs lists
// those processes sorted by pid (the release layer turns them into the
// status's children: release.TestMemoryChildrenSortedByPID).

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// groupMembers lists the live processes whose process group is pgid,
// sorted by pid.
func groupMembers(t *testing.T, pgid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:]) // state ppid pgrp …
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			out = append(out, pid)
		}
	}
	slices.Sort(out)
	return out
}

func sumRSS(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		sum += units.RSSBytes(pid)
	}
	return sum
}

// TestRSSSumsProcessGroup (MEM-02): an instance whose shell runs two
// sleeps and a sub-shell with a sleep of its own — five processes of one
// group — reports all five as PIDs, sorted, and MemoryBytes equal to the
// sum of their VmRSS (not the leader's alone).
func TestRSSSumsProcessGroup(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("tree")
	spec.Command = `sleep 301 & sleep 302 & sh -c 'sleep 303 & wait' & wait`
	st := e.start(spec)
	leader := st.MainPID
	name := spec.Identity.UnitName()

	var members []int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if members = groupMembers(t, leader); len(members) == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process group %d has %v, want 5 processes", leader, members)
		}
	}
	// Idle processes keep their RSS; retry in the unlikely case that one
	// changed between the two readings around Status.
	for attempt := 0; ; attempt++ {
		before := sumRSS(members)
		got, err := e.r.Status(e.ctx(), name)
		if err != nil {
			t.Fatal(err)
		}
		after := sumRSS(members)
		if !slices.Equal(got.PIDs, members) {
			t.Fatalf("PIDs %v, want the group's processes sorted by pid %v", got.PIDs, members)
		}
		if before != after && attempt < 10 {
			continue
		}
		leaderRSS := units.RSSBytes(leader)
		t.Logf("group RSS %d KiB, leader %d KiB, pids %v", got.MemoryBytes/1024, leaderRSS/1024, got.PIDs)
		if got.MemoryBytes != before || got.MemoryBytes <= leaderRSS {
			t.Errorf("MemoryBytes %d, want the VmRSS sum %d over %v (leader alone: %d)", got.MemoryBytes, before, members, leaderRSS)
		}
		break
	}
}
