package units

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// RSSBytes is the VmRSS of pid in bytes, read from /proc/<pid>/status; 0
// when the process is gone or the figure unreadable. Runners without cgroup
// memory accounting sum it over an instance's processes.
func RSSBytes(pid int) uint64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "1234 kB"
		if len(fields) == 0 {
			return 0
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return 0
		}
		return kb * 1024
	}
	return 0
}
