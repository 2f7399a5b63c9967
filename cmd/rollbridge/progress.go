package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// progressView renders a deploy's progress stream for people: one line per
// phase, the health wait updated in place on a terminal, then the drain of
// the previous release with live connection counts, and a summary.
type progressView struct {
	w        io.Writer
	terminal bool
	start    time.Time
	// open is true while the last line is a provisional one (no newline).
	open bool
	// cfg labels a start with its policy and replica count; started
	// counts the starts per process.
	cfg     *config.Config
	started map[string]int
}

func newProgressView(w io.Writer, terminal bool, cfg *config.Config) *progressView {
	return &progressView{w: w, terminal: terminal, start: time.Now(), cfg: cfg, started: map[string]int{}}
}

// startedLabel names what a started instance is: "companion 2/4" for the
// second of four worker replicas, "proxied" for a single web process.
func (v *progressView) startedLabel(id string) string {
	if v.cfg == nil {
		return ""
	}
	def, _ := v.cfg.Instance(id)
	if def == nil {
		return ""
	}
	label := string(def.Policy)
	if def.Replicas > 1 {
		v.started[def.ID]++
		label += fmt.Sprintf(" %d/%d", v.started[def.ID], def.Replicas)
	}
	return label
}

// orDash prints a JSON value of an event, "-" when it is absent or null.
func orDash(v any) any {
	if v == nil {
		return "-"
	}
	return v
}

func (v *progressView) line(format string, args ...any) {
	if v.open {
		fmt.Fprint(v.w, "\r\033[K")
		v.open = false
	}
	fmt.Fprintf(v.w, format+"\n", args...)
}

// provisional prints a line that the next one replaces (terminal only).
func (v *progressView) provisional(format string, args ...any) {
	if !v.terminal {
		return
	}
	fmt.Fprint(v.w, "\r\033[K")
	fmt.Fprintf(v.w, format, args...)
	v.open = true
}

type progressEvent struct {
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

func (v *progressView) event(ev progressEvent) {
	d := ev.Data
	switch ev.Message {
	case "deploy starting":
		v.line("Deploying release %v from %v", d["releaseId"], d["releasePath"])
	case "rollback starting":
		v.line("Rolling back to release %v (%v)", d["releaseId"], d["releasePath"])
	case "process started":
		id, _ := d["id"].(string)
		if label := v.startedLabel(id); label != "" {
			v.line("  ✓ started %s (%s, pid %v)", id, label, orDash(d["pid"]))
		} else {
			v.line("  ✓ started %s (pid %v)", id, orDash(d["pid"]))
		}
	case "process exited":
		v.line("  · %v exited (code %v, signal %v)", d["id"], orDash(d["code"]), orDash(d["signal"]))
	case "health probe":
		secs := func(k string) float64 { f, _ := d[k].(float64); return f / 1000 }
		if healthy, _ := d["healthy"].(bool); healthy {
			v.line("  ✓ healthy: %v after %.1fs", d["url"], secs("elapsedMs"))
			return
		}
		v.provisional("  … waiting for %v: %v (%.1fs / %.0fs)", d["url"], d["reason"], secs("elapsedMs"), secs("timeoutMs"))
	case "traffic switched":
		prev := d["previousReleaseId"]
		if prev == nil {
			prev = "none"
		}
		v.line("  ✓ traffic switched: %v → %v", prev, d["releaseId"])
	case "release startup failed":
		if d["phase"] == "before cleanup" {
			v.line("  ✗ start failed: %v", d["error"])
		} else {
			v.line("  · stopped everything this deploy started")
		}
	case "deploy failed":
		v.line("  ✗ deploy failed: %v", d["error"])
	}
}

// deployWithProgress sends req with progress on, renders the stream, waits
// for the previous release's drain and prints a summary.
func (a *app) deployWithProgress(ctx context.Context, cfg *config.Config, req control.Request, quiet bool) error {
	v := newProgressView(a.stdout, isTerminal(a.stdout), cfg)
	if quiet {
		v.w = io.Discard
	}
	req.Progress = true
	var result map[string]any
	errDone := errors.New("done")
	err := control.StreamCall(ctx, cfg.Control.Path, req, func(raw json.RawMessage) error {
		var line struct {
			Progress *progressEvent `json:"progress"`
			Result   map[string]any `json:"result"`
		}
		if err := json.Unmarshal(raw, &line); err != nil {
			return err
		}
		if line.Progress != nil {
			v.event(*line.Progress)
		}
		if line.Result != nil {
			result = line.Result
			return errDone
		}
		return nil
	})
	if err != nil && !errors.Is(err, errDone) {
		if v.open {
			fmt.Fprintln(v.w)
		}
		return err
	}
	if result == nil {
		return errors.New("the daemon closed the connection before the deploy finished")
	}
	prev, _ := result["previousReleaseId"].(string)
	if prev != "" && !quiet {
		v.waitDrain(ctx, cfg.Control.Path, prev, cfg.Proxy.DrainTimeout)
	}
	summary := fmt.Sprintf("Release %v is active", result["activeReleaseId"])
	if prev != "" {
		summary += fmt.Sprintf(" (previous: %s)", prev)
	}
	fmt.Fprintf(a.stdout, "%s; took %.1fs.\n", summary, time.Since(v.start).Seconds())
	return nil
}

// waitDrain follows the previous release until it has stopped.
func (v *progressView) waitDrain(ctx context.Context, path, prev string, drainTimeout time.Duration) {
	start := time.Now()
	deadline := start.Add(drainTimeout + time.Minute)
	for time.Now().Before(deadline) {
		raw, err := control.Call(ctx, path, control.Request{Command: control.CmdStatus})
		if err != nil {
			return
		}
		var st struct {
			Releases []struct {
				ReleaseID   string `json:"releaseId"`
				State       string `json:"state"`
				Connections struct {
					HTTP      int `json:"http"`
					WebSocket int `json:"websocket"`
				} `json:"connections"`
			} `json:"releases"`
		}
		if json.Unmarshal(raw, &st) != nil {
			return
		}
		found := false
		for _, r := range st.Releases {
			if r.ReleaseID != prev {
				continue
			}
			found = true
			if r.State == "stopped" {
				v.line("  ✓ %s drained and stopped (%.1fs)", prev, time.Since(start).Seconds())
				return
			}
			v.provisional("  … draining %s: %d http, %d websocket (%.1fs / %.0fs)", prev, r.Connections.HTTP, r.Connections.WebSocket,
				time.Since(start).Seconds(), drainTimeout.Seconds())
		}
		if !found {
			v.line("  ✓ %s retired", prev)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
