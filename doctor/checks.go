package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// abs resolves p against WorkDir (or the process's working directory).
func (d *doctor) abs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	if d.opts.WorkDir != "" {
		return filepath.Join(d.opts.WorkDir, p)
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// checkConfig is check 1; it reports whether the run may go on.
func (d *doctor) checkConfig(ctx context.Context) bool {
	cfg, issues := config.Check(ctx, d.abs(d.opts.ConfigPath), config.LoadOptions{Env: d.opts.Env})
	if len(issues) > 0 || cfg == nil {
		d.add(CheckConfig, false, fmt.Sprintf("%d issue(s) — run \"rollbridge validate\" for details", len(issues)))
		return false
	}
	d.cfg = cfg
	d.add(CheckConfig, true, fmt.Sprintf("valid: %d process(es), proxy on %s:%d", len(cfg.Processes), cfg.Proxy.Host, cfg.Proxy.Port))
	return true
}

// checkControlSocket is check 2 (spec §7.5 probe). A daemon of this very
// application is healthy: doctor runs next to a live daemon all the time.
func (d *doctor) checkControlSocket(ctx context.Context) {
	path := d.cfg.Control.Path
	d.probe, d.probeErr = control.Probe(ctx, path)
	switch p := d.probe; {
	case d.probeErr != nil:
		d.add(CheckControlSocket, false, fmt.Sprintf("could not probe %s: %v", path, d.probeErr))
	case !p.Alive:
		d.add(CheckControlSocket, true, fmt.Sprintf("no daemon running; %s is free to bind", path))
	case p.Rollbridge && p.Application == d.cfg.Application:
		d.add(CheckControlSocket, true, fmt.Sprintf("Rollbridge daemon for %q is running on %s", p.Application, path))
	case p.Rollbridge:
		d.add(CheckControlSocket, false, fmt.Sprintf("a Rollbridge daemon for %q is already running on %s; stop it before starting another", p.Application, path))
	default:
		d.add(CheckControlSocket, false, fmt.Sprintf("another process is already listening on %s; the daemon would fail to bind it", path))
	}
}

// checkControlDir is check 3: binding a socket needs write and search
// permission on its directory.
func (d *doctor) checkControlDir() {
	dir := filepath.Dir(d.abs(d.cfg.Control.Path))
	if writableDir(dir) {
		d.add(CheckControlDir, true, dir+" is writable")
		return
	}
	d.add(CheckControlDir, false, dir+" is missing or not writable")
}

// checkStateDir is check 5: the state file is written as a temp file in
// its directory and renamed over statePath (spec §8.1).
func (d *doctor) checkStateDir() {
	dir := filepath.Dir(d.abs(d.cfg.StatePath))
	if writableDir(dir) {
		d.add(CheckStateDir, true, dir+" is writable")
		return
	}
	d.add(CheckStateDir, false, dir+" is missing or not writable; state cannot be persisted")
}

// writableDir reports whether dir is a directory the caller may create
// entries in (write and search permission, as access(2) sees it).
func writableDir(dir string) bool {
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return false
	}
	return unix.Access(dir, unix.W_OK|unix.X_OK) == nil
}

// checkProxyPort is check 4: a test bind, unless this application's daemon
// reports exactly the configured host and port (it holds them itself).
func (d *doctor) checkProxyPort(ctx context.Context) {
	host, port := d.cfg.Proxy.Host, d.cfg.Proxy.Port
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	shown := fmt.Sprintf("%s:%d", host, port)
	if d.sameDaemon() && d.probe.ProxyHost == host && d.probe.ProxyPort == port {
		d.add(CheckProxyPort, true, shown+" is already held by the running Rollbridge daemon")
		return
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		d.add(CheckProxyPort, false, fmt.Sprintf("%s is unavailable (%s)", shown, errCode(err)))
		return
	}
	ln.Close()
	d.add(CheckProxyPort, true, shown+" is available")
}

// errCode names a bind failure the way Node does: the errno name
// (EADDRINUSE, EACCES, EADDRNOTAVAIL, …), ENOTFOUND for an unresolvable
// host, else the error text.
func errCode(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
		return "errno " + strconv.Itoa(int(errno))
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return "ENOTFOUND"
	}
	return err.Error()
}
