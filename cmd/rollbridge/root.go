package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// Help and completion list the commands in registration order, which is the
// original's order (spec §6.0), not alphabetically.
func init() { cobra.EnableCommandSorting = false }

// app carries what every command needs; there is no package-level state so
// tests can run commands in parallel with their own streams and working dir.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// cwd is where a missing --config is looked up (rollbridge.js).
	cwd string
	// env is the environment handed to config evaluation (process.env).
	env []string
}

// exitError ends the process with code after the command already printed
// everything the user needs (validate's issue list, for example).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Execute runs the CLI with args and returns the process exit code.
func Execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(stderr, "error: cannot determine the working directory: %v\n", err)
		return 1
	}
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, cwd: cwd, env: os.Environ()}
	return a.run(ctx, args)
}

func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(a.stderr, "error: %v\n", err)
	return 1
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "rollbridge <command> [options]",
		Short: "Zero-downtime deploys for Linux hosts, the systemd way",
		Long: `Rollbridge runs an application's processes (web server, workers, brokers,
schedulers) as transient systemd units, health-checks a new release, switches
the traffic of one stable proxy port to it and drains the old release.`,
		Version:       buildVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		// No command: show help on stderr and fail, as the original does.
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			_ = cmd.Help()
			return exitError{code: 1}
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	// Commands are added in the spec's registration order; commands that
	// later issues implement are not registered until they work.
	root.AddCommand(
		a.daemonCommand(),
		a.deployCommand(),
		a.rollbackCommand(),
		a.ensureDaemonCommand(),
		a.statusCommand(),
		a.stopCommand(),
		a.restartCommand(),
		a.shutdownCommand(),
		a.validateCommand(),
		a.doctorCommand(),
		a.logsCommand(),
		a.eventsCommand(),
		a.predeployCleanupCommand(),
		a.recoverCommand(),
		a.systemdUnitsCommand(),
		a.completionCommand(),
		a.versionCommand(),
		a.manCommand(),
	)
	return root
}

// addConfigFlag gives cmd the -c/--config flag every command but completion has.
func addConfigFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", "", "path to rollbridge.js (default ./rollbridge.js)")
}
