package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
	uexec "github.com/rollbridge/rollbridge/units/exec"
	"github.com/rollbridge/rollbridge/units/systemd"
)

// Runner kinds accepted by --runner / ROLLBRIDGE_RUNNER.
const (
	RunnerAuto    = "auto"
	RunnerSystemd = "systemd"
	RunnerExec    = "exec"
)

// RunnerOptions selects and configures the process runtime.
type RunnerOptions struct {
	// Kind is auto (systemd when a manager answers, else exec), systemd or exec.
	Kind string
	// JournalDir is read by journalctl --directory (tests); "" = default journal.
	JournalDir string
	Logger     *slog.Logger
}

// systemdProbeTimeout bounds the auto-detection of a systemd manager.
const systemdProbeTimeout = 3 * time.Second

// NewRunner is the one place that picks a runner (style anchors guideline 4):
// systemd when asked for (failing loudly when no manager answers), exec when
// asked for, and under "auto" systemd if a manager answers, else exec.
func NewRunner(ctx context.Context, app string, opts RunnerOptions) (units.Runner, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch opts.Kind {
	case RunnerExec:
		return uexec.New(app, uexec.Options{})
	case RunnerSystemd, RunnerAuto, "":
	default:
		return nil, fmt.Errorf("unknown runner %q: use auto, systemd or exec", opts.Kind)
	}
	pctx, cancel := context.WithTimeout(ctx, systemdProbeTimeout)
	defer cancel()
	r, err := systemd.New(pctx, app, systemd.Options{Bus: dbusctl.BusAuto, JournalDir: opts.JournalDir, Logger: log})
	if err == nil {
		return r, nil
	}
	if opts.Kind == RunnerSystemd {
		return nil, fmt.Errorf("systemd runner: %w (run under a systemd manager, or pass --runner exec)", err)
	}
	log.Info("no systemd manager answers; using the exec runner", "reason", err.Error())
	return uexec.New(app, uexec.Options{})
}
