package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rollbridge/rollbridge/config"
)

// validateReport is the JSON shape of `validate --json` (spec §6.7); keys are
// in the original's (alphabetical) order.
type validateReport struct {
	Config *config.Summary `json:"config"`
	Issues []issueJSON     `json:"issues"`
	Path   *string         `json:"path"`
	Valid  bool            `json:"valid"`
}

type issueJSON struct {
	Fix     string `json:"fix"`
	Message string `json:"message"`
}

func (a *app) validateCommand() *cobra.Command {
	var path string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check rollbridge.js and list every problem with its fix",
		Long: `Evaluate the config file, normalise it and report every issue at once,
each with a fix. Does not contact the daemon. Exits 1 when there are issues.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.validate(cmd, path, asJSON)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func (a *app) validate(cmd *cobra.Command, explicit string, asJSON bool) error {
	path, err := config.ResolvePath(explicit, a.cwd)
	if err != nil {
		if asJSON {
			_ = writeJSON(a.stdout, validateReport{
				Issues: []issueJSON{{Fix: "Pass --config or add a rollbridge.js.", Message: err.Error()}},
			})
		} else {
			fmt.Fprintln(a.stderr, err)
		}
		return exitError{code: 1}
	}
	cfg, issues := config.Check(cmd.Context(), a.abs(path), config.LoadOptions{Env: a.env})
	if asJSON {
		report := validateReport{Path: &path, Valid: len(issues) == 0, Issues: []issueJSON{}}
		if cfg != nil && len(issues) == 0 {
			s := cfg.Summary()
			report.Config = &s
		}
		for _, is := range issues {
			report.Issues = append(report.Issues, issueJSON{Fix: is.Fix, Message: is.Message})
		}
		if err := writeJSON(a.stdout, report); err != nil {
			return err
		}
	} else if len(issues) == 0 {
		s := cfg.Summary()
		fmt.Fprintf(a.stdout, "%s is valid: %d %s, proxy on %s:%d.\n",
			path, s.Processes, plural(s.Processes, "process", "processes"), s.Proxy.Host, s.Proxy.Port)
	} else {
		fmt.Fprint(a.stderr, formatIssues(path, issues))
	}
	if len(issues) > 0 {
		return exitError{code: 1}
	}
	return nil
}

// formatIssues renders the numbered issue list of spec §6.7.
func formatIssues(path string, issues []config.Issue) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Found %d configuration %s in %s:\n", len(issues), plural(len(issues), "issue", "issues"), path)
	for i, is := range issues {
		fmt.Fprintf(&b, "\n%d. %s\n   Fix: %s\n", i+1, is.Message, is.Fix)
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// abs resolves a user-given path against the CLI's working directory; the
// path is still shown to the user as typed.
func (a *app) abs(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(a.cwd, p)
}
