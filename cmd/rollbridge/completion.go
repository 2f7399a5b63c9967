package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) completionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "completion <shell>",
		Short: "Print a shell completion script (bash, zsh or fish)",
		Long: `Print a completion script generated from the live command and flag
definitions. Install it, for example:

  rollbridge completion bash > /etc/bash_completion.d/rollbridge
  rollbridge completion zsh > "${fpath[1]}/_rollbridge"
  rollbridge completion fish > ~/.config/fish/completions/rollbridge.fish`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			case "fish":
				return root.GenFishCompletion(a.stdout, true)
			default:
				fmt.Fprintf(a.stderr, "Unsupported shell %q. Supported shells: bash, zsh, fish.\n", args[0])
				return exitError{code: 1}
			}
		},
	}
}
