package main

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/control"
)

type logSource struct {
	ID     string     `json:"id"`
	Logs   []logEntry `json:"logs"`
	Source string     `json:"source"`
}

type logEntry struct {
	At     string `json:"at"`
	Line   string `json:"line"`
	Stream string `json:"stream"`
}

type statusProcess struct {
	ID   string     `json:"id"`
	Logs []logEntry `json:"logs"`
}

func (a *app) logsCommand() *cobra.Command {
	var path, process string
	var asJSON, follow bool
	var lines int
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Show the retained output of every managed process (--follow streams)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if follow {
				return a.followLogs(cmd, path, process, asJSON)
			}
			reply, _, err := a.call(cmd.Context(), path, control.Request{Command: control.CmdStatus})
			if err != nil {
				return err
			}
			sources, err := flattenLogs(reply, process)
			if err != nil {
				return err
			}
			if lines > 0 {
				for i := range sources {
					if n := len(sources[i].Logs); n > lines {
						sources[i].Logs = sources[i].Logs[n-lines:]
					}
				}
			}
			if asJSON {
				return writeJSON(a.stdout, sources)
			}
			switch {
			case len(sources) == 0 && process != "":
				fmt.Fprintf(a.stdout, "No process found with id %q.\n", process)
			case len(sources) == 0:
				fmt.Fprintln(a.stdout, "No managed processes.")
			}
			var blocks []string
			for _, s := range sources {
				var b strings.Builder
				fmt.Fprintf(&b, "== %s [%s] ==\n", s.ID, s.Source)
				if len(s.Logs) == 0 {
					b.WriteString("  (no recent output)\n")
				}
				for _, l := range s.Logs {
					fmt.Fprintf(&b, "  %s [%s] %s\n", l.At, l.Stream, l.Line)
				}
				blocks = append(blocks, b.String())
			}
			fmt.Fprint(a.stdout, strings.Join(blocks, "\n"))
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&process, "process", "", "only this instance id (exact match: worker does not match worker#0)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream new output until interrupted")
	cmd.Flags().IntVarP(&lines, "lines", "n", 0, "show at most the last N retained lines per process (0 = all retained, up to outputLines)")
	return cmd
}

// flattenLogs turns a status reply into log sources (spec §6.6): releases
// (including stopped ones), then services, then singletons.
func flattenLogs(reply json.RawMessage, process string) ([]logSource, error) {
	var st struct {
		Releases []struct {
			ReleaseID string          `json:"releaseId"`
			State     string          `json:"state"`
			Processes []statusProcess `json:"processes"`
		} `json:"releases"`
		Services   []struct{ Process statusProcess } `json:"services"`
		Singletons []struct{ Process statusProcess } `json:"singletons"`
	}
	if err := json.Unmarshal(reply, &st); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	out := []logSource{}
	add := func(p statusProcess, source string) {
		if process != "" && p.ID != process {
			return
		}
		if p.Logs == nil {
			p.Logs = []logEntry{}
		}
		out = append(out, logSource{ID: p.ID, Logs: p.Logs, Source: source})
	}
	for _, r := range st.Releases {
		for _, p := range r.Processes {
			add(p, fmt.Sprintf("release %s (%s)", r.ReleaseID, r.State))
		}
	}
	for _, s := range st.Services {
		add(s.Process, "service")
	}
	for _, s := range st.Singletons {
		add(s.Process, "singleton")
	}
	return out, nil
}

func (a *app) followLogs(cmd *cobra.Command, path, process string, asJSON bool) error {
	cfg, err := a.loadConfig(cmd.Context(), path)
	if err != nil {
		return err
	}
	req := control.Request{Command: control.CmdLogs, ProcessID: process, Follow: true}
	return control.StreamCall(cmd.Context(), cfg.Control.Path, req, func(raw json.RawMessage) error {
		var r struct {
			Log struct {
				ID     string `json:"id"`
				Source string `json:"source"`
				logEntry
			} `json:"log"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		if asJSON {
			b, _ := json.Marshal(r.Log)
			_, err := fmt.Fprintf(a.stdout, "%s\n", b)
			return err
		}
		_, err := fmt.Fprintf(a.stdout, "%s [%s] %s [%s] %s\n", r.Log.At, r.Log.ID, r.Log.Source, r.Log.Stream, r.Log.Line)
		return err
	})
}
