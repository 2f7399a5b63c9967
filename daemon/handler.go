package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/release"
	"github.com/rollbridge/rollbridge/snapshot"
	"github.com/rollbridge/rollbridge/units"
)

// Handle executes one control command (spec §7.3).
func (d *daemon) Handle(ctx context.Context, req control.Request, _ control.Peer) (any, error) {
	switch req.Command {
	case control.CmdStatus:
		return d.status(ctx), nil
	case control.CmdEvents:
		return map[string]any{"events": d.events.Recent(req.Limit)}, nil
	case control.CmdDeploy:
		run := func(ctx context.Context) (release.DeployResult, error) {
			return d.mgr.Deploy(ctx, release.DeployRequest{ReleasePath: req.ReleasePath, ReleaseID: req.ReleaseID, Revision: req.Revision})
		}
		if req.Progress {
			return d.withProgress(run), nil
		}
		return run(ctx)
	case control.CmdRollback:
		run := func(ctx context.Context) (release.DeployResult, error) { return d.mgr.Rollback(ctx, req.ReleaseID) }
		if req.Progress {
			return d.withProgress(run), nil
		}
		return run(ctx)
	case control.CmdStop:
		if _, err := d.mgr.Stop(ctx, req.ReleaseID); err != nil {
			return nil, err
		}
		return d.status(ctx), nil
	case control.CmdRestart:
		return d.mgr.Restart(ctx, req.ProcessID, req.Policy)
	case control.CmdShutdown:
		if err := d.shutdown(ctx); err != nil {
			return nil, err
		}
		return map[string]string{"message": "shutdown"}, nil
	case control.CmdLogs:
		return d.logStream(req), nil
	case control.CmdRetireOwner:
		return d.retire(ctx, req.Attestation)
	}
	return nil, fmt.Errorf("Unknown command: %s", req.Command)
}

// CommandFailed records the `command failed` event (spec §7.2).
func (d *daemon) CommandFailed(_ context.Context, _ control.Request, err error) {
	d.events.Emit("command failed", map[string]any{"error": err.Error()})
}

// Status is the full status object of spec §6.5 (keys in the original's
// order), plus the runner in use.
type Status struct {
	ActiveReleaseID *string                 `json:"activeReleaseId"`
	Application     string                  `json:"application"`
	Bootstrap       *Bootstrap              `json:"bootstrap,omitempty"`
	Control         controlStatus           `json:"control"`
	DaemonRuntime   snapshot.Identity       `json:"daemonRuntime"`
	Orphans         []orphan                `json:"orphans"`
	Proxy           proxyStatus             `json:"proxy"`
	Releases        []release.ReleaseStatus `json:"releases"`
	Runner          string                  `json:"runner"`
	Services        []release.NamedProcess  `json:"services"`
	Singletons      []release.NamedProcess  `json:"singletons"`
}

type controlStatus struct {
	Group any    `json:"group,omitempty"`
	Mode  *int   `json:"mode,omitempty"`
	Owner any    `json:"owner,omitempty"`
	Path  string `json:"path"`
}

type proxyStatus struct {
	Host         string `json:"host"`
	Port         int    `json:"port"`
	UpstreamHost string `json:"upstreamHost"`
}

func (d *daemon) status(ctx context.Context) Status {
	ms := d.mgr.Status(ctx)
	cfg := d.cfg
	cs := controlStatus{Path: cfg.Control.Path}
	if cfg.Control.Mode != nil {
		m := int(*cfg.Control.Mode)
		cs.Mode = &m
	}
	if cfg.Control.Owner != nil {
		cs.Owner = principalJSON(*cfg.Control.Owner)
	}
	if cfg.Control.Group != nil {
		cs.Group = principalJSON(*cfg.Control.Group)
	}
	port := cfg.Proxy.Port
	if d.proxyAddr != nil {
		port = d.proxyAddr.Port
	}
	return Status{
		ActiveReleaseID: ms.ActiveReleaseID,
		Application:     cfg.Application,
		Bootstrap:       d.bootstrap,
		Control:         cs,
		DaemonRuntime:   d.runtime,
		Orphans:         d.orphans.live(),
		Proxy:           proxyStatus{Host: cfg.Proxy.Host, Port: port, UpstreamHost: cfg.Proxy.UpstreamHost},
		Releases:        ms.Releases,
		Runner:          d.runner.Kind(),
		Services:        ms.Services,
		Singletons:      ms.Singletons,
	}
}

func principalJSON(p config.Principal) any {
	if p.Name == "" {
		return p.ID
	}
	return p.Name
}

// LogLine is one streamed line of `logs --follow`.
type LogLine struct {
	ID     string `json:"id"`
	Source string `json:"source"`
	At     string `json:"at"`
	Line   string `json:"line"`
	Stream string `json:"stream"`
}

// logStream follows the output of every instance (or those whose id equals
// req.ProcessID) that exists when the request arrives.
func (d *daemon) logStream(req control.Request) control.Stream {
	return func(ctx context.Context, send func(any) error) error {
		targets := d.logTargets(ctx, req.ProcessID)
		if len(targets) == 0 {
			if req.ProcessID != "" {
				return fmt.Errorf("No process found with id %q.", req.ProcessID)
			}
			return errors.New("No managed processes.")
		}
		lines := make(chan LogLine, 256)
		fctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for _, t := range targets {
			go func() {
				_ = d.runner.Follow(fctx, t.unit, func(l units.LogLine) {
					select {
					case lines <- LogLine{ID: t.id, Source: t.source, At: release.Timestamp(l.At), Line: l.Line, Stream: string(l.Stream)}:
					case <-fctx.Done():
					}
				})
			}()
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case l := <-lines:
				if err := send(map[string]any{"log": l}); err != nil {
					return nil
				}
			}
		}
	}
}

type logTarget struct{ id, source, unit string }

func (d *daemon) logTargets(ctx context.Context, processID string) []logTarget {
	st := d.mgr.Status(ctx)
	var out []logTarget
	add := func(p release.ProcessStatus, source string) {
		if processID == "" || processID == p.ID {
			out = append(out, logTarget{id: p.ID, source: source, unit: p.Unit})
		}
	}
	for _, r := range st.Releases {
		if r.State == "stopped" {
			continue
		}
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
	return out
}

// snapshot is what statePath holds: the status object plus the event
// history and persistedAt (sanitized before writing).
func (d *daemon) snapshot(ctx context.Context) any {
	return struct {
		Status
		Events      []release.Event `json:"events"`
		PersistedAt string          `json:"persistedAt"`
	}{d.status(ctx), d.events.Recent(0), release.Timestamp(time.Now())}
}

// withProgress runs a deploy or rollback and streams every event (and
// health probe) that happens meanwhile as {"progress": event} lines, then
// the result as {"result": …}. The operation is not cancelled when the
// client goes away.
func (d *daemon) withProgress(run func(context.Context) (release.DeployResult, error)) control.Stream {
	return func(ctx context.Context, send func(any) error) error {
		evs, cancel := d.events.Subscribe()
		defer cancel()
		type outcome struct {
			res release.DeployResult
			err error
		}
		done := make(chan outcome, 1)
		go func() {
			res, err := run(context.WithoutCancel(ctx))
			done <- outcome{res, err}
		}()
		for {
			select {
			case ev := <-evs:
				_ = send(map[string]any{"progress": ev})
			case o := <-done:
				// Flush what was published before the result.
				for {
					select {
					case ev := <-evs:
						_ = send(map[string]any{"progress": ev})
						continue
					default:
					}
					break
				}
				if o.err != nil {
					return o.err
				}
				return send(map[string]any{"result": o.res})
			}
		}
	}
}
