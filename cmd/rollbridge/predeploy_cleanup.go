package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/cleanup"
)

func (a *app) predeployCleanupCommand() *cobra.Command {
	var path, releasePath string
	cmd := &cobra.Command{
		Use:   "predeploy-cleanup",
		Short: "Before a deploy: stop an outdated daemon, its leftovers and legacy processes",
		Long: `Make way for a Rollbridge deploy, e.g. the first one after migrating from GNU
screen or another supervisor. If this application's daemon already serves an
active release with the configured proxy settings (and, with --release-path,
the same Rollbridge version as <release>/bin/rollbridge), nothing is done.
Otherwise a running daemon is shut down, what a previous daemon left running
is stopped (as recover --force does), and the processes of legacyTakeover are
stopped: each screen session is told to quit, matching processes and their
descendants get SIGTERM, then SIGKILL after legacyTakeover.forceStopTimeoutMs.
Fails while any of them is still running.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig(cmd.Context(), path)
			if err != nil {
				return err
			}
			opts := cleanup.PredeployOptions{Options: cleanup.Options{
				Config:  cfg,
				WorkDir: a.cwd,
				Runner:  a.runnerDefault(),
			}}
			if releasePath != "" {
				opts.ReleasePath = a.abs(releasePath)
			}
			res, err := cleanup.Predeploy(cmd.Context(), opts)
			var rerr *cleanup.RecoverError
			if errors.As(err, &rerr) {
				// Say what is still running, then the spec's message.
				fmt.Fprintf(a.stderr, "error: %v\n", err)
				printEntries(a.stderr, rerr.Remaining)
				return exitError{code: 1}
			}
			if err != nil {
				return err
			}
			switch res.Action {
			case cleanup.ActionDaemonActive:
				fmt.Fprintln(a.stdout, "Rollbridge daemon already has an active release; no legacy cleanup needed.")
				return nil
			case cleanup.ActionDaemonStopped:
				fmt.Fprintln(a.stdout, "Stopped existing Rollbridge daemon before deploy.")
			default:
				fmt.Fprintln(a.stdout, "No active Rollbridge daemon found.")
			}
			fmt.Fprintf(a.stdout, "Recovered %d Rollbridge orphaned process(es).\n", res.Recovered)
			fmt.Fprintf(a.stdout, "Stopped %d legacy process(es).\n", len(res.LegacyProcesses))
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&releasePath, "release-path", "", "the release about to be deployed (its bin/rollbridge version is compared with the daemon's)")
	return cmd
}
