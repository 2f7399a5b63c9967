package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/control"
)

func (a *app) deployCommand() *cobra.Command {
	var path, releasePath, releaseID, revision string
	var ensure ensureFlags
	var ensureDaemon, asJSON, quiet, progress bool
	cmd := &cobra.Command{
		Use:   "deploy --release-path DIR",
		Short: "Start a release, health-check it, switch traffic to it and drain the previous one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if ensureDaemon {
				if _, err := a.ensureDaemon(ctx, path, ensure); err != nil {
					return err
				}
			}
			abs, err := filepath.Abs(a.abs(releasePath))
			if err != nil {
				return err
			}
			req := control.Request{Command: control.CmdDeploy, ReleasePath: abs, ReleaseID: releaseID, Revision: revision}
			if !asJSON && (progress || isTerminal(a.stdout)) {
				cfg, err := a.loadConfig(ctx, path)
				if err != nil {
					return err
				}
				return a.deployWithProgress(ctx, cfg, req, quiet)
			}
			reply, _, err := a.call(ctx, path, req)
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, summarizeDeploy)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&releasePath, "release-path", "", "directory of the prepared release (made absolute)")
	cmd.Flags().StringVar(&releaseID, "release-id", "", "release id (default: --revision, else a UTC timestamp)")
	cmd.Flags().StringVar(&revision, "revision", "", "revision, e.g. the commit (default: the release id)")
	cmd.Flags().BoolVar(&ensureDaemon, "ensure-daemon", false, "start the daemon first if none answers")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "on a terminal, print only the summary line")
	cmd.Flags().BoolVar(&progress, "progress", false, "show live progress even when stdout is not a terminal")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	ensure.register(cmd)
	_ = cmd.MarkFlagRequired("release-path")
	return cmd
}

func summarizeDeploy(reply map[string]any) string {
	prev := "none"
	if p, ok := reply["previousReleaseId"].(string); ok {
		prev = p
	}
	return fmt.Sprintf("Release %v is active (previous: %s).\n", reply["activeReleaseId"], prev)
}

func (a *app) rollbackCommand() *cobra.Command {
	var path, releaseID string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Re-deploy a retained release (default: the most recently retired one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reply, _, err := a.call(cmd.Context(), path, control.Request{Command: control.CmdRollback, ReleaseID: releaseID})
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, summarizeDeploy)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&releaseID, "release-id", "", "release to roll back to")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	return cmd
}

func (a *app) statusCommand() *cobra.Command {
	var path string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show releases, processes, services, singletons and connections",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reply, _, err := a.call(cmd.Context(), path, control.Request{Command: control.CmdStatus})
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, formatStatus)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	return cmd
}

func (a *app) stopCommand() *cobra.Command {
	var path, releaseID string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop a release (default: the active one) without draining",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reply, _, err := a.call(cmd.Context(), path, control.Request{Command: control.CmdStop, ReleaseID: releaseID})
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, formatStatus)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&releaseID, "release-id", "", "release to stop")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	return cmd
}

func (a *app) restartCommand() *cobra.Command {
	var path, process, policy string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Restart companions, services or singletons in place, or replace proxied replicas, one at a time",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch policy {
			case "", "companion", "singleton", "service", "proxied":
			default:
				fmt.Fprintln(a.stderr, "--policy must be one of: companion, singleton, service, proxied.")
				return exitError{code: 1}
			}
			reply, _, err := a.call(cmd.Context(), path, control.Request{Command: control.CmdRestart, ProcessID: process, Policy: policy})
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, func(m map[string]any) string {
				return fmt.Sprintf("Restarted: %v\n", m["restarted"])
			})
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&process, "process", "", "process id (all replicas) or instance id such as worker#1 or web#2")
	cmd.Flags().StringVar(&policy, "policy", "", "companion, singleton, service or proxied (proxied replicas are replaced start-first)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	return cmd
}

func (a *app) shutdownCommand() *cobra.Command {
	var path string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "shutdown",
		Short: "Stop every managed process and the daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reply, _, err := a.call(cmd.Context(), path, control.Request{Command: control.CmdShutdown})
			if err != nil {
				return err
			}
			return a.printResult(reply, asJSON, func(map[string]any) string { return "Rollbridge daemon stopped.\n" })
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON even on a terminal")
	return cmd
}

func (a *app) eventsCommand() *cobra.Command {
	var path, limit string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the daemon's recent events",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := control.Request{Command: control.CmdEvents}
			if cmd.Flags().Changed("limit") {
				n, err := strconv.Atoi(limit)
				if err != nil || n < 1 {
					fmt.Fprintln(a.stderr, "--limit must be a positive integer.")
					return exitError{code: 1}
				}
				req.Limit = n
			}
			reply, _, err := a.call(cmd.Context(), path, req)
			if err != nil {
				return err
			}
			var r struct {
				Events []json.RawMessage `json:"events"`
			}
			if err := json.Unmarshal(reply, &r); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, rawList(r.Events))
			}
			if len(r.Events) == 0 {
				fmt.Fprintln(a.stdout, "No events recorded yet.")
				return nil
			}
			for _, raw := range r.Events {
				var ev struct {
					At      string          `json:"at"`
					Data    json.RawMessage `json:"data"`
					Message string          `json:"message"`
				}
				if err := json.Unmarshal(raw, &ev); err != nil {
					return err
				}
				line := ev.At + "  " + ev.Message
				// Compact JSON of non-empty data (spec §6.9), however the
				// daemon spaced its reply.
				var data bytes.Buffer
				if json.Compact(&data, ev.Data) == nil {
					if d := data.String(); d != "{}" && d != "null" {
						line += " " + d
					}
				}
				fmt.Fprintln(a.stdout, line)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&limit, "limit", "", "show only the newest N events")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// rawList keeps raw JSON elements as they are and renders [] for none.
func rawList(items []json.RawMessage) []json.RawMessage {
	if items == nil {
		return []json.RawMessage{}
	}
	return items
}

// printResult prints a daemon reply: JSON unless stdout is a terminal and
// --json was not given, in which case human renders the reply.
func (a *app) printResult(reply json.RawMessage, asJSON bool, human func(map[string]any) string) error {
	if asJSON || human == nil || !isTerminal(a.stdout) {
		return printReply(a.stdout, reply)
	}
	var m map[string]any
	if err := json.Unmarshal(reply, &m); err != nil {
		return errors.New("decode daemon reply: " + err.Error())
	}
	_, err := fmt.Fprint(a.stdout, human(m))
	return err
}
