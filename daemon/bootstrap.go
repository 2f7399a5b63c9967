package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/release"
)

// Bootstrap is the release tuple of `daemon --release-path … --release-id …
// --revision … [--boot-attestation …] [--takeover-owner]` (spec §8.6, §8.7):
// a boot-time supervisor starts the daemon and activates an exact release in
// one step.
type Bootstrap struct {
	Attestation   string `json:"attestation,omitempty"`
	ReleaseID     string `json:"releaseId"`
	ReleasePath   string `json:"releasePath"`
	Revision      string `json:"revision"`
	TakeoverOwner bool   `json:"-"`
}

// BootstrapFlags are the raw daemon flags, with which of them were given.
type BootstrapFlags struct {
	Config, ReleasePath, ReleaseID, Revision, Attestation  string
	ConfigSet, PathSet, IDSet, RevisionSet, AttestationSet bool
	TakeoverOwner                                          bool
}

var (
	safeIdentifier = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$`)
	// AttestationPattern is the canonical boot attestation format.
	AttestationPattern = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// ValidateBootstrap checks the flags in the spec's order, before the config
// is loaded and before anything binds. It returns nil, nil for a plain
// daemon (no bootstrap flag given).
func ValidateBootstrap(f BootstrapFlags) (*Bootstrap, error) {
	anyRelease := f.PathSet || f.IDSet || f.RevisionSet
	complete := f.ConfigSet && f.PathSet && f.IDSet && f.RevisionSet
	if f.TakeoverOwner && (!complete || !f.AttestationSet) {
		return nil, errors.New("Daemon --takeover-owner requires the complete bootstrap release tuple and --boot-attestation.")
	}
	if f.AttestationSet && !anyRelease {
		return nil, errors.New("Daemon --boot-attestation is accepted only with --config, --release-path, --release-id, and --revision.")
	}
	if !anyRelease {
		return nil, nil
	}
	if !complete {
		return nil, errors.New("Daemon bootstrap options --config, --release-path, --release-id, and --revision must be provided together.")
	}
	for _, p := range []struct{ flag, value string }{{"--config", f.Config}, {"--release-path", f.ReleasePath}} {
		if !filepath.IsAbs(p.value) {
			return nil, fmt.Errorf("Daemon bootstrap %s must be an absolute path.", p.flag)
		}
		if filepath.Clean(p.value) != p.value {
			return nil, fmt.Errorf("Daemon bootstrap %s must be normalized and must not contain unsafe traversal segments.", p.flag)
		}
	}
	for _, p := range []struct{ flag, value string }{{"--release-id", f.ReleaseID}, {"--revision", f.Revision}} {
		if !safeIdentifier.MatchString(p.value) {
			return nil, fmt.Errorf("Daemon bootstrap %s must be a non-empty safe identifier containing only letters, numbers, dots, underscores, and hyphens.", p.flag)
		}
	}
	if f.AttestationSet && !AttestationPattern.MatchString(f.Attestation) {
		return nil, errors.New("Daemon bootstrap --boot-attestation must use the canonical sha256:<64 lowercase hex> format.")
	}
	fi, err := os.Stat(f.ReleasePath)
	if err != nil {
		reason := err.Error()
		var pe *os.PathError
		if errors.As(err, &pe) {
			reason = pe.Err.Error()
		}
		return nil, fmt.Errorf("Daemon bootstrap --release-path is not accessible: %s", reason)
	}
	if !fi.IsDir() {
		return nil, errors.New("Daemon bootstrap --release-path must name a directory.")
	}
	return &Bootstrap{Attestation: f.Attestation, ReleaseID: f.ReleaseID, ReleasePath: f.ReleasePath, Revision: f.Revision, TakeoverOwner: f.TakeoverOwner}, nil
}

// activate deploys the bootstrap release before the control socket exists.
// A failure stops what the attempt started and returns an error (exit 1);
// SIGTERM/SIGINT during the attempt stops everything and sets
// activationAborted (exit 0).
func (d *daemon) activate(ctx context.Context, b *Bootstrap) error {
	aborted := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		d.log.Info("signal received during bootstrap activation; shutting down")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		_ = d.stopAll(sctx)
		close(aborted)
	})
	_, err := d.mgr.Deploy(context.WithoutCancel(ctx), release.DeployRequest{ReleasePath: b.ReleasePath, ReleaseID: b.ReleaseID, Revision: b.Revision})
	if !stopWatch() {
		// The signal arrived: wait until its shutdown stopped everything,
		// including processes spawned while it began.
		<-aborted
		d.activationAborted = true
		d.stopProxy()
		return nil
	}
	if err != nil {
		d.events.Emit("bootstrap activation failed", map[string]any{"releaseId": b.ReleaseID, "status": "error"})
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		_ = d.stopAll(sctx)
		d.stopProxy()
		return fmt.Errorf("bootstrap activation of release %s failed: %w", b.ReleaseID, err)
	}
	d.bootstrap = b
	return nil
}

// retireOwner completes a takeover (spec §8.7): the new release runs, so ask
// the old owner to retire (it releases its control socket and proxy
// listener and drains its own processes in the background), then bind both.
func (d *daemon) retireOwner(ctx context.Context, b *Bootstrap, passed map[string][]net.Listener) error {
	fail := func(err error) error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		_ = d.stopAll(sctx)
		return err
	}
	req := control.Request{Command: control.CmdRetireOwner, Attestation: b.Attestation}
	if _, err := control.Call(ctx, d.cfg.Control.Path, req); err != nil {
		if isNoDaemon(err) {
			d.log.Info("no previous owner answers; taking the listeners directly", "path", d.cfg.Control.Path)
		} else {
			return fail(fmt.Errorf("retire the previous owner on %s: %w", d.cfg.Control.Path, err))
		}
	}
	// The old owner closes its listeners right after replying; retry the
	// bind briefly rather than racing it.
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err = d.bindProxy(ctx, passed); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fail(err)
		}
		time.Sleep(2 * time.Millisecond) // refused connections meanwhile: keep it short
	}
	d.serveProxy()
	return nil
}

func isNoDaemon(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// retire handles the retire-owner command on the old owner (spec §3.7):
// quiesce every instance, release the control socket and the proxy
// listener at once (existing proxied connections continue), stop everything
// gracefully in the background, and end the daemon when that is done.
func (d *daemon) retire(ctx context.Context, attestation string) (any, error) {
	if !AttestationPattern.MatchString(attestation) {
		return nil, errors.New("Owner retirement attestation must use the canonical sha256:<64 lowercase hex> format")
	}
	d.retireOnce.Do(func() {
		if d.state != nil {
			d.state.halt() // the file is left as is for the new owner
		}
		// Quiet every instance first (step 3), then release the
		// listeners (step 4): the quiet hooks run while this daemon still
		// owns its sockets.
		d.mgr.Quiesce(ctx)
		d.ctl.Stop(ctx)
		if err := os.Remove(d.cfg.Control.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("remove control socket", "error", err)
		}
		if ul, ok := d.ctlLn.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
		if d.proxyLn != nil {
			// Stop accepting before the reply (spec §3.7 step 4), so the new
			// owner's bind never races our accept loop; Serve then drains the
			// connections it has. (Serve may report the closed listener as
			// its error; retiring ignores it.)
			d.proxyCancel()
			d.proxyLn.Close()
		}
		d.events.Emit("external owner retired", map[string]any{"attestation": attestation, "status": "draining"})
		go func() {
			// Let the in-flight requests (the listener is closed already)
			// finish against the old release, bounded by the drain
			// timeout, before its processes stop: the new owner serves
			// new connections already.
			_ = d.stopProxy()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
			defer cancel()
			_ = d.stopAll(sctx)
			d.shutOnce.Do(func() { close(d.done) })
		}()
	})
	return map[string]string{"message": "owner retired"}, nil
}
