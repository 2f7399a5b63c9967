package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/cleanup"
)

func (a *app) recoverCommand() *cobra.Command {
	var path string
	var force bool
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "List (or with --force stop) what a crashed daemon left running",
		Long: `Clean up after a crashed daemon. Refuses while anything answers on the
control socket. Lists the application's running rollbridge-<app>-*.service
units (when a systemd manager answers and ROLLBRIDGE_RUNNER is not exec) and
the processes recorded in statePath that are still alive; nothing is
signalled. With --force, stops them (units through systemd, whole cgroup;
processes by SIGTERM to their process group, SIGKILL after
proxy.forceStopTimeoutMs) and deletes the state file once nothing is left;
exits 1 when something could not be stopped.

Starting the daemon instead re-adopts the units its config still defines:
use recover --force only for a clean slate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd.Context(), path)
			if err != nil {
				return err
			}
			rep, err := cleanup.Recover(cmd.Context(), cleanup.Options{
				Config:  cfg,
				WorkDir: a.cwd,
				Runner:  a.runnerDefault(),
			}, force)
			if err != nil {
				return err
			}
			return a.printRecover(rep)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&force, "force", false, "stop the listed units and processes and clear the state file")
	return cmd
}

// printRecover renders the report with the spec's texts (§8.3); anything
// left running exits 1.
func (a *app) printRecover(rep cleanup.Report) error {
	found := rep.Found.Len()
	switch {
	case found == 0 && rep.Forced && rep.StateCleared:
		fmt.Fprintln(a.stdout, "No orphaned processes found; cleared the state file.")
		return nil
	case found == 0:
		fmt.Fprintln(a.stdout, "No orphaned processes found.")
		return nil
	case !rep.Forced:
		fmt.Fprintf(a.stdout, "Found %d orphaned process(es) (run with --force to stop):\n", found)
		printEntries(a.stdout, rep.Found)
		fmt.Fprintln(a.stdout, "Review the list first — a recycled pid could be an unrelated process.")
		return nil
	}
	if n := rep.Stopped.Len(); n > 0 {
		fmt.Fprintf(a.stdout, "Stopped %d orphaned process(es):\n", n)
		printEntries(a.stdout, rep.Stopped)
	}
	if n := rep.Remaining.Len(); n > 0 {
		fmt.Fprintf(a.stderr, "Could not stop %d orphaned process(es) — still running (check permissions/ownership):\n", n)
		printEntries(a.stderr, rep.Remaining)
		if rep.StateFile != "" {
			fmt.Fprintln(a.stderr, "Left the state file in place so you can investigate and re-run recover.")
		}
		return exitError{code: 1}
	}
	return nil
}

// printEntries prints one indented line per unit and process; a unit that
// could not be stopped also says why.
func printEntries(w io.Writer, l cleanup.Leftovers) {
	for _, u := range l.Units {
		if u.Problem != "" {
			fmt.Fprintf(w, "  %s — %s\n", u, u.Problem)
		} else {
			fmt.Fprintf(w, "  %s\n", u)
		}
	}
	for _, p := range l.Processes {
		fmt.Fprintf(w, "  %s\n", p)
	}
}
