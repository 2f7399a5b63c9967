package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/doctor"
)

func (a *app) doctorCommand() *cobra.Command {
	var path, releasePath, releaseID, revision string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that the daemon could start: config, socket, port, state, release, systemd",
		Long: `Run every pre-flight check and print one line per check: the config validates,
the control socket path is free (or held by this application's own daemon)
and its directory writable, the proxy port can be bound, the statePath
directory is writable and no processes of a previous daemon are left; with
--release-path also that the release exists and every process's templates and
working directory resolve. Then the systemd side: which runner the daemon would
use (ROLLBRIDGE_RUNNER), transient units, journald, socket activation,
leftover units, the application slice and memory accounting. Only probes;
exits 1 if a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			report := a.doctor(cmd, path, doctor.Options{
				ReleasePath: releasePath,
				ReleaseID:   releaseID,
				Revision:    revision,
			})
			return a.printDoctor(report, asJSON)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&releasePath, "release-path", "", "also check this release directory (templates, working directories)")
	cmd.Flags().StringVar(&releaseID, "release-id", "", "release id for the templates (default: --revision, else the directory name)")
	cmd.Flags().StringVar(&revision, "revision", "", "revision for the templates (default: the release id)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// doctor resolves the config path and runs the checks; a config that cannot
// be found is a report with one failed check, not an error.
func (a *app) doctor(cmd *cobra.Command, explicit string, opts doctor.Options) doctor.Report {
	path, err := config.ResolvePath(explicit, a.cwd)
	if err != nil {
		return doctor.Failure(err)
	}
	opts.ConfigPath = a.abs(path)
	opts.WorkDir = a.cwd
	opts.Env = a.env
	opts.Runner = a.runnerDefault()
	opts.JournalDir = a.getenv(envJournalDir)
	return doctor.Run(cmd.Context(), opts)
}

// printDoctor prints the report (spec §6.8): JSON, or one ✓/✗ line per check,
// a blank line and the summary; any failed check exits 1.
func (a *app) printDoctor(r doctor.Report, asJSON bool) error {
	if asJSON {
		if err := writeJSON(a.stdout, r); err != nil {
			return err
		}
	} else {
		for _, c := range r.Checks {
			mark := "✓"
			if !c.OK {
				mark = "✗"
			}
			fmt.Fprintf(a.stdout, "%s %s: %s\n", mark, c.Name, c.Detail)
		}
		fmt.Fprintln(a.stdout)
		if failed := r.Failed(); failed > 0 {
			fmt.Fprintf(a.stderr, "%d check(s) failed.\n", failed)
		} else {
			fmt.Fprintln(a.stdout, "All checks passed.")
		}
	}
	if !r.OK {
		return exitError{code: 1}
	}
	return nil
}
