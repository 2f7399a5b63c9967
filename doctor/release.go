package doctor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rollbridge/rollbridge/config"
)

// checkRelease is checks 7–9: the release directory, every process's
// templates rendered as a deploy of it would render them, and the rendered
// working directories.
func (d *doctor) checkRelease() {
	path := d.abs(d.opts.ReleasePath)
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		d.add(CheckReleasePath, true, path+" exists")
	} else {
		d.add(CheckReleasePath, false, path+" is missing or not a directory")
	}

	// Release id: --release-id, else --revision, else the directory name
	// (deploy uses a timestamp instead, spec Appendix A.2).
	id := d.opts.ReleaseID
	if id == "" {
		id = d.opts.Revision
	}
	if id == "" {
		id = filepath.Base(path)
	}
	rc := d.cfg.ReleaseContext(id, path, d.opts.Revision, representativePorts(d.cfg), d.opts.Env)

	var built []config.Instance
	var failures []string
	for i := range d.cfg.Processes {
		p := &d.cfg.Processes[i]
		in, err := p.Build(rc, 0)
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", p.ID, err))
			continue
		}
		built = append(built, in)
	}
	if len(failures) == 0 {
		d.add(CheckTemplates, true, fmt.Sprintf("all %d process command/cwd/env templates resolve", len(d.cfg.Processes)))
	} else {
		d.add(CheckTemplates, false, "unresolved templates — "+strings.Join(failures, "; "))
	}

	var missing []string
	for _, in := range built {
		if st, err := os.Stat(in.Cwd); err != nil || !st.IsDir() {
			missing = append(missing, fmt.Sprintf("%s (%s)", in.ProcessID, in.Cwd))
		}
	}
	switch {
	case len(missing) > 0:
		d.add(CheckWorkingDirs, false, fmt.Sprintf("missing working %s: %s",
			plural(len(missing), "directory", "directories"), strings.Join(missing, ", ")))
	case len(built) == 1:
		d.add(CheckWorkingDirs, true, "all 1 process working directory exists")
	default:
		d.add(CheckWorkingDirs, true, fmt.Sprintf("all %d process working directories exist", len(built)))
	}
}

// representativePorts gives each ported process the low end of its range
// (0 for an OS-assigned port), standing in for the allocator.
func representativePorts(cfg *config.Config) map[string]int {
	ports := map[string]int{}
	for _, p := range cfg.Processes {
		if p.Port == nil {
			continue
		}
		if p.Port.From == 0 || p.Port.To == 0 {
			ports[p.ID] = 0
		} else {
			ports[p.ID] = p.Port.From
		}
	}
	return ports
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
