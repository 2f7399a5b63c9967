// Package daemon is the composition root of `rollbridge daemon`: it picks
// the process runner, obtains the proxy listener (systemd socket activation
// or its own bind), binds the control socket, wires the release manager to
// the proxy and the control API, reports readiness to systemd, and runs the
// ordered shutdown of spec §3.6.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/proxy"
	"github.com/rollbridge/rollbridge/proxy/health"
	"github.com/rollbridge/rollbridge/release"
	"github.com/rollbridge/rollbridge/snapshot"
	"github.com/rollbridge/rollbridge/units"
)

// Options configures Run.
type Options struct {
	// ConfigPath is the absolute path of rollbridge.js; it is re-evaluated
	// before every deploy and rollback.
	ConfigPath string
	// Runner is auto, systemd or exec.
	Runner string
	// JournalDir is handed to journalctl --directory ("" = default journal).
	JournalDir string
	// Env is the daemon's environment (process.env of the config and the
	// base of every instance's environment).
	Env []string
	// Log receives the daemon's JSON log lines (stdout / the journal).
	Log io.Writer
	// Version is reported in status.daemonRuntime.
	Version string
	// Bootstrap activates an exact release before the control socket
	// exists (spec §8.6); nil for a plain daemon.
	Bootstrap *Bootstrap
	// MetricsListen, when set, serves Prometheus metrics on this TCP
	// address (path /metrics).
	MetricsListen string
}

// Run runs the daemon until ctx ends (SIGINT/SIGTERM) or a shutdown command
// completes, then stops everything it owns. It returns nil after a clean
// shutdown.
func Run(ctx context.Context, opts Options) error {
	opts.Env = cleanEnv(opts.Env)
	loadOpts := config.LoadOptions{Env: opts.Env}
	cfg, err := config.Load(ctx, opts.ConfigPath, loadOpts)
	if err != nil {
		return err
	}
	logw := opts.Log
	if logw == nil {
		logw = os.Stdout
	}
	log := slog.New(slog.NewJSONHandler(logw, nil))
	events := release.NewEvents(log, nil)
	d := &daemon{cfg: cfg, opts: opts, log: log, events: events, done: make(chan struct{})}
	return d.run(ctx, loadOpts)
}

type daemon struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	events  *release.Events
	runner  units.Runner
	proxy   *proxy.Proxy
	mgr     *release.Manager
	ctl     *control.Server
	runtime snapshot.Identity
	orphans orphanSet
	state   *stateStore

	proxyLn     net.Listener
	ctlLn       net.Listener
	metricsLn   net.Listener // nil unless the metrics endpoint serves
	endMetrics  func()       // set with metricsLn; use stopMetrics
	proxyAddr   *net.TCPAddr
	serveProxy  func()
	serving     bool
	proxyCancel context.CancelFunc
	proxyDone   chan error
	proxyStop   sync.Once // stopProxy runs once (a drain-on-shutdown stops it early)
	proxyErr    error

	// bootstrap is reported in status after a successful activation.
	bootstrap         *Bootstrap
	activationAborted bool
	retireOnce        sync.Once

	shutOnce sync.Once
	shutErr  error
	done     chan struct{}
}

func (d *daemon) run(ctx context.Context, loadOpts config.LoadOptions) (err error) {
	if d.runtime, err = currentRuntime(d.opts.Version); err != nil {
		return err
	}
	runner, err := NewRunner(ctx, d.cfg.Application, RunnerOptions{Kind: d.opts.Runner, JournalDir: d.opts.JournalDir, Logger: d.log})
	if err != nil {
		return err
	}
	d.runner = runner
	defer runner.Close()
	d.log.Info("process runner selected", "runner", runner.Kind())

	passed, err := inheritedListeners()
	if err != nil {
		return err
	}
	if err := d.newProxy(); err != nil {
		return err
	}
	b := d.opts.Bootstrap
	takeover := b != nil && b.TakeoverOwner
	if !takeover {
		// The proxy is bound before activation; a takeover binds it only
		// after the old owner released it.
		if err := d.bindProxy(ctx, passed); err != nil {
			return err
		}
	}
	// The manager and everything it starts live until the shutdown ends,
	// not until ctx (a signal) ends.
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	d.mgr, err = release.New(release.Options{
		Config: d.cfg,
		Reload: func(ctx context.Context) (*config.Config, error) {
			return config.Load(ctx, d.opts.ConfigPath, loadOpts)
		},
		Runner:  runner,
		Traffic: trafficAdapter{d.proxy, d.log},
		Health:  d.checkHealth,
		Events:  d.events,
		Env:     d.opts.Env,
		Logger:  d.log,
		OnChange: func() {
			if d.state != nil {
				d.state.write(context.Background())
			}
		},
	})
	if err != nil {
		d.stopProxy()
		return err
	}
	if err := d.mgr.Run(life); err != nil {
		d.stopProxy()
		return err
	}
	var mx *metrics
	if d.opts.MetricsListen != "" {
		mx = newMetrics(d)
		go mx.follow(life)
	}
	if !takeover {
		// A takeover must not adopt: the old owner still supervises its units.
		if err := d.adopt(ctx); err != nil {
			d.stopProxy()
			return err
		}
		d.serveProxy()
	}
	if b != nil {
		if err := d.activate(ctx, b); err != nil {
			return err
		}
		if d.activationAborted {
			return nil // SIGTERM during activation: clean shutdown, exit 0
		}
	}
	if takeover {
		if err := d.retireOwner(ctx, b, passed); err != nil {
			return err
		}
	}
	ln, err := d.controlListener(ctx, passed)
	if err != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		_ = d.stopAll(sctx)
		cancel()
		d.stopProxy()
		return err
	}
	d.ctlLn = ln
	d.events.Emit("control socket listening", map[string]any{"path": d.cfg.Control.Path})
	d.ctl = &control.Server{
		Handler:   d,
		Authorize: d.authorizer().Authorize,
		OnConnError: func(err error) {
			d.events.Emit("control connection error", map[string]any{"code": errCode(err), "error": err.Error()})
		},
	}
	if d.cfg.StatePath != "" {
		// Persistence starts once the control socket is exposed (spec
		// §8.1), and before the first request is served: a shutdown must
		// find the store to finish it, or the file would be written after
		// the shutdown and left behind.
		d.state = &stateStore{
			path:     d.cfg.StatePath,
			snapshot: d.snapshot,
			onError: func(err error) {
				d.events.Emit("state persist failed", map[string]any{"error": err.Error()})
			},
		}
		d.state.write(life)
		go d.state.run(life)
	}
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- d.ctl.Serve(life, ln) }()
	if mx != nil {
		d.startMetrics(ctx, life, mx, passed)
	} else {
		for _, unused := range passed[metricsFDName] {
			unused.Close() // passed on, but metrics are off
		}
	}
	d.announceReady()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				if err := d.reload(life); err != nil {
					d.log.Error("reload failed; this daemon keeps running", "error", err)
					d.events.Emit("daemon reload failed", map[string]any{"error": err.Error()})
				}
			case <-d.done:
				return
			}
		}
	}()

	select {
	case <-ctx.Done():
		d.log.Info("signal received; shutting down")
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		err = d.shutdown(shutCtx)
		cancel()
	case <-d.done:
		err = d.shutErr
	}
	// The requesting connection gets its reply before the server goes.
	d.ctl.Wait()
	endLife()
	<-ctlDone
	d.stopMetrics()
	return err
}

// shutdownTimeout bounds a signal-driven shutdown (every graceful stop
// window is inside it).
const shutdownTimeout = 10 * time.Minute

// newProxy creates the proxy (not yet bound).
func (d *daemon) newProxy() error {
	p, err := proxy.New(proxy.Options{
		// On shutdown or a reload handover, in-flight requests get up to
		// the drain timeout to finish.
		ShutdownTimeout:       d.cfg.Proxy.DrainTimeout,
		DialTimeout:           d.cfg.Proxy.ConnectTimeout,
		ResponseHeaderTimeout: d.cfg.Proxy.ResponseHeaderTimeout,
		OnError:               d.proxyError,
	})
	if err != nil {
		return fmt.Errorf("create proxy: %w", err)
	}
	d.proxy = p
	return nil
}

// Proxy failure events. A drain cut is the configured drainTimeoutMs doing
// its job, not an upstream fault, so it gets its own event (and counter):
// operators alerting on proxy errors must not be paged by every deploy.
const (
	evProxyError   = "proxy error"
	evProxyDrained = "proxy request drained"
)

// proxyError is the proxy's OnError hook; it runs on the request goroutine
// and must not block (Emit does not).
func (d *daemon) proxyError(release string, err error) {
	if errors.Is(err, proxy.ErrDrained) {
		d.events.Emit(evProxyDrained, map[string]any{"error": err.Error(), "reason": "drained", "releaseId": release})
		return
	}
	d.events.Emit(evProxyError, map[string]any{"error": err.Error(), "releaseId": release})
}

// bindProxy takes the proxy listener (passed socket or own bind). Serving
// starts later, in serveProxy, once units are re-adopted: a connection
// accepted earlier would get 503 although a release is running (after a
// reload, the predecessor keeps accepting meanwhile).
func (d *daemon) bindProxy(ctx context.Context, passed map[string][]net.Listener) error {
	ln, activated, err := proxy.ListenFrom(ctx, passed, d.cfg.Proxy.Host, d.cfg.Proxy.Port, proxy.DefaultFDName)
	if err != nil {
		return fmt.Errorf("bind proxy %s: %w", net.JoinHostPort(d.cfg.Proxy.Host, strconv.Itoa(d.cfg.Proxy.Port)), err)
	}
	d.proxyLn = ln
	d.proxyAddr, _ = ln.Addr().(*net.TCPAddr)
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.proxyCancel = cancel
	d.proxyDone = make(chan error, 1)
	host, port := d.cfg.Proxy.Host, 0
	if d.proxyAddr != nil {
		port = d.proxyAddr.Port
		if activated {
			host = d.proxyAddr.IP.String()
		}
	}
	d.serveProxy = func() {
		d.serving = true
		go func() { d.proxyDone <- d.proxy.Serve(pctx, ln) }()
	}
	d.events.Emit("proxy listening", map[string]any{"host": host, "port": port, "socketActivated": activated})
	return nil
}

// stopProxy stops accepting, lets in-flight requests finish (bounded by
// proxy.drainTimeoutMs; WebSockets get a 1001 close) and returns when the
// proxy is done. Later calls return the first call's result.
func (d *daemon) stopProxy() error {
	if d.proxyLn == nil {
		return nil // never bound (takeover not reached)
	}
	d.proxyStop.Do(func() {
		d.proxyCancel()
		if !d.serving {
			d.proxyErr = d.proxyLn.Close()
			return
		}
		if err := <-d.proxyDone; err != nil && !errors.Is(err, context.Canceled) {
			d.proxyErr = err
		}
	})
	return d.proxyErr
}

// stopAll stops every managed process (Manager.Shutdown) and then, with
// nothing left in it, the application's slice, so no path out of the
// daemon leaves an empty slice active.
func (d *daemon) stopAll(ctx context.Context) error {
	if err := d.mgr.Shutdown(ctx); err != nil {
		return err
	}
	if s, ok := d.runner.(interface{ StopSlice(context.Context) error }); ok {
		if err := s.StopSlice(ctx); err != nil {
			d.log.Warn("stopping the application slice failed", "error", err.Error())
		}
	}
	return nil
}

// shutdown is spec §3.6: stop accepting control connections (keeping the
// requester's), remove the socket file, stop every process in parallel,
// close the proxy. Concurrent calls share one run.
func (d *daemon) shutdown(ctx context.Context) error {
	d.shutOnce.Do(func() {
		_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
		var errs []error
		if d.ctl != nil {
			d.ctl.Stop(ctx)
		}
		if err := os.Remove(d.cfg.Control.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("control socket unlink failed: %w", err))
		}
		if d.state != nil {
			// No state writes while stopping (spec §3.6 step 4): finish
			// below deletes or rewrites the file once.
			d.state.halt()
		}
		closeProxy := func() {
			if err := d.stopProxy(); err != nil {
				errs = append(errs, fmt.Errorf("proxy close failed: %w", err))
			}
		}
		// proxy.drainOnShutdown (spec §11.3): the proxy closes first, so
		// no new connections arrive and the requests in flight finish
		// before their processes stop. Otherwise (the original) the
		// processes stop first.
		drainFirst := d.cfg.Proxy.DrainOnShutdown
		if drainFirst {
			start := time.Now()
			closeProxy()
			d.log.Info("proxy drained for shutdown", "elapsed", time.Since(start).String())
		}
		if err := d.stopAll(ctx); err != nil {
			errs = append(errs, err)
		}
		if !drainFirst {
			closeProxy()
		}
		if d.state != nil {
			if err := d.state.finish(d.orphans.live()); err != nil {
				errs = append(errs, fmt.Errorf("persistent state cleanup failed: %w", err))
			}
		}
		if len(errs) > 0 {
			msgs := make([]string, len(errs))
			for i, e := range errs {
				msgs[i] = e.Error()
			}
			d.shutErr = errors.New(strings.Join(msgs, "; "))
		}
		close(d.done)
	})
	<-d.done
	return d.shutErr
}

func errCode(err error) any {
	var errno interface{ Errno() uintptr }
	if errors.As(err, &errno) {
		return strconv.FormatUint(uint64(errno.Errno()), 10)
	}
	return nil
}

func (d *daemon) authorizer() control.Policy {
	p := control.Policy{DaemonUID: uint32(os.Getuid())}
	if g := d.cfg.Control.Group; g != nil {
		if id, err := resolvePrincipal(*g, true); err == nil {
			p.Group = &id
			p.GroupName = g.String()
		}
	}
	return p
}

// checkHealth adapts proxy/health to the manager; every probe is published
// (not recorded) for live deploy progress.
func (d *daemon) checkHealth(ctx context.Context, url string, h config.Health) error {
	start := time.Now()
	return health.Check(ctx, health.Options{URL: url, Interval: h.Interval, Timeout: h.Timeout, StartDelay: h.StartDelay,
		OnProbe: func(p health.ProbeResult) {
			d.events.Publish("health probe", map[string]any{"url": p.URL, "attempt": p.Attempt, "healthy": p.Healthy,
				"reason": p.Reason, "elapsedMs": time.Since(start).Milliseconds(), "timeoutMs": (h.StartDelay + h.Timeout).Milliseconds()})
		}})
}

// trafficAdapter adapts *proxy.Proxy to release.Traffic.
type trafficAdapter struct {
	p   *proxy.Proxy
	log *slog.Logger
}

func (t trafficAdapter) Switch(release string, rt release.Route) {
	pr := proxy.Route{Upstreams: rt.Upstreams}
	if rt.Balance == config.RoundRobin {
		pr.Balance = proxy.RoundRobin
	}
	if s := rt.Stickiness; s != nil {
		pr.Affinity = proxy.Affinity{Cookie: s.Cookie, ClientIP: s.ClientIP}
	}
	if err := t.p.SwitchRoute(release, pr); err != nil {
		t.log.Error("switch traffic", "release", release, "error", err)
	}
}
func (t trafficAdapter) Clear() { t.p.Clear() }
func (t trafficAdapter) Connections(release string) (int, int) {
	return t.p.Connections(release)
}
func (t trafficAdapter) UpstreamConnections(rel string) map[string]release.Connections {
	out := map[string]release.Connections{}
	for addr, c := range t.p.UpstreamConnections(rel) {
		out[addr] = release.Connections{HTTP: c.HTTP, WebSocket: c.WebSocket}
	}
	return out
}
func (t trafficAdapter) Drain(ctx context.Context, release string, deadline time.Time) {
	t.p.Drain(ctx, release, deadline)
}
func (t trafficAdapter) DrainUpstream(ctx context.Context, release, upstream string, deadline time.Time) {
	if res := t.p.DrainUpstream(ctx, release, upstream, deadline); res.Err != nil {
		t.log.Warn("drain replica", "release", release, "upstream", upstream, "error", res.Err)
	}
}
func (t trafficAdapter) Forget(release string) { t.p.Forget(release) }

// currentRuntime is status.daemonRuntime (spec §8.5): the identity of the
// binary this daemon runs. A daemon started by ensure-daemon from a runtime
// snapshot verifies the snapshot's manifest and refuses to start when it
// does not match; one started directly describes its own binary.
func currentRuntime(version string) (snapshot.Identity, error) {
	exe, err := os.Executable()
	if err != nil {
		return snapshot.Identity{}, fmt.Errorf("find the running binary: %w", err)
	}
	if manifest := os.Getenv(snapshot.ManifestEnv); manifest != "" {
		return snapshot.Verify(manifest, exe)
	}
	return snapshot.Describe(exe, version)
}

// adopt re-adopts the live units of a previous daemon (systemd runner: they
// survive a daemon crash or restart) and reports, as advisory orphans, the
// processes of the previous daemon's snapshot that are alive but were not
// adopted (exec runner children, spec §8.2).
func (d *daemon) adopt(ctx context.Context) error {
	prior := readPriorState(d.cfg.StatePath)
	res, err := d.mgr.Adopt(ctx, prior)
	if err != nil {
		return err
	}
	if len(res.Instances) > 0 {
		d.log.Info("re-adopted running units", "count", len(res.Instances), "active", res.Active)
	}
	if d.cfg.StatePath == "" {
		return nil
	}
	adopted := map[int]bool{}
	for _, pid := range res.PIDs {
		adopted[pid] = true
	}
	for _, o := range readOrphans(d.cfg.StatePath) {
		if !adopted[o.PID] {
			d.orphans.list = append(d.orphans.list, o)
		}
	}
	reportOrphans(d.events, d.orphans.list)
	return nil
}
