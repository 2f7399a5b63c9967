package doctor

import (
	"fmt"
	"strings"

	"github.com/rollbridge/rollbridge/statefile"
)

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
	var live []statefile.Process
	for _, o := range statefile.LiveProcesses(d.abs(d.cfg.StatePath), statefile.Alive) {
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
