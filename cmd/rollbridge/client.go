package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// loadConfig resolves and loads the config a command was pointed at.
func (a *app) loadConfig(ctx context.Context, explicit string) (*config.Config, error) {
	path, err := config.ResolvePath(explicit, a.cwd)
	if err != nil {
		return nil, err
	}
	return config.Load(ctx, a.abs(path), config.LoadOptions{Env: a.env})
}

// call loads the config to find control.path and sends one request.
func (a *app) call(ctx context.Context, explicit string, req control.Request) (json.RawMessage, *config.Config, error) {
	cfg, err := a.loadConfig(ctx, explicit)
	if err != nil {
		return nil, nil, err
	}
	reply, err := control.Call(ctx, cfg.Control.Path, req)
	return reply, cfg, err
}

// printReply prints a daemon reply as 2-space JSON in the daemon's key
// order (spec §6.0: "printed as received").
func printReply(w io.Writer, reply json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, reply, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// isTerminal reports whether w is a character device (an interactive
// terminal): commands that printed JSON in the original keep printing JSON
// whenever stdout is not one.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
