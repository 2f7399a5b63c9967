package dbusctl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Bus selects which systemd manager a Conn talks to, and how.
type Bus int

const (
	// BusAuto picks the user manager when DBUS_SESSION_BUS_ADDRESS or
	// XDG_RUNTIME_DIR point at a session bus, else the system manager when
	// running as root (falling back to /run/systemd/private when the system
	// bus is down), else the user manager.
	BusAuto Bus = iota
	// BusUser is the caller's user manager (systemd --user) on the session bus.
	BusUser
	// BusSystem is the system manager on the system bus.
	BusSystem
	// BusPrivate is the manager's private peer-to-peer socket
	// ($XDG_RUNTIME_DIR/systemd/private for a user manager,
	// /run/systemd/private for the system manager, root only). No bus daemon
	// is involved and every signal arrives without subscribing.
	BusPrivate
)

func (b Bus) String() string {
	switch b {
	case BusAuto:
		return "auto"
	case BusUser:
		return "user"
	case BusSystem:
		return "system"
	case BusPrivate:
		return "private"
	}
	return "Bus(" + strconv.Itoa(int(b)) + ")"
}

// DefaultConnectTimeout bounds Dial when Options.ConnectTimeout is zero.
const DefaultConnectTimeout = 5 * time.Second

// Options configure Dial.
type Options struct {
	Bus Bus
	// Address overrides the D-Bus address of the user or system bus
	// ("unix:path=…").
	Address string
	// PrivateSocket overrides the private socket path for BusPrivate.
	PrivateSocket string
	// ConnectTimeout bounds each (re)connect; DefaultConnectTimeout when 0.
	ConnectTimeout time.Duration
	// Logger receives reconnect notices; nil means silent.
	Logger *slog.Logger
}

// target is a resolved Options: where to dial and how.
type target struct {
	bus     Bus // BusUser, BusSystem or BusPrivate
	address string
	hello   bool // bus connections say Hello; the private socket does not
	user    bool // the peer is a user manager
	// fallback is tried when dialing address fails (root, Auto: system bus
	// down → /run/systemd/private).
	fallback *target
}

const (
	systemPrivateSocket = "/run/systemd/private"
	systemBusSocket     = "/run/dbus/system_bus_socket"
)

func resolve(opts Options) (target, error) {
	runtimeDir := os.Getenv("XDG_RUNTIME_DIR")
	userAddr := func() string {
		if opts.Address != "" {
			return opts.Address
		}
		if a := os.Getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
			return a
		}
		if runtimeDir != "" {
			if _, err := os.Stat(filepath.Join(runtimeDir, "bus")); err == nil {
				return "unix:path=" + filepath.Join(runtimeDir, "bus")
			}
		}
		return ""
	}
	systemAddr := func() string {
		if opts.Address != "" {
			return opts.Address
		}
		if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
			return a
		}
		return "unix:path=" + systemBusSocket
	}
	private := func() target {
		path := opts.PrivateSocket
		if path == "" {
			path = systemPrivateSocket
			if runtimeDir != "" {
				p := filepath.Join(runtimeDir, "systemd", "private")
				if _, err := os.Stat(p); err == nil {
					path = p
				}
			}
		}
		return target{bus: BusPrivate, address: "unix:path=" + path, user: path != systemPrivateSocket}
	}

	switch opts.Bus {
	case BusUser:
		a := userAddr()
		if a == "" {
			return target{}, errors.New("no user bus: set DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR (with a bus socket in it), or Options.Address")
		}
		return target{bus: BusUser, address: a, hello: true, user: true}, nil
	case BusSystem:
		return target{bus: BusSystem, address: systemAddr(), hello: true}, nil
	case BusPrivate:
		return private(), nil
	case BusAuto:
		if a := userAddr(); a != "" {
			return target{bus: BusUser, address: a, hello: true, user: true}, nil
		}
		if os.Geteuid() == 0 {
			fb := target{bus: BusPrivate, address: "unix:path=" + systemPrivateSocket}
			return target{bus: BusSystem, address: systemAddr(), hello: true, fallback: &fb}, nil
		}
		return target{}, errors.New("no systemd manager address: not root, and neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR point at a session bus")
	}
	return target{}, fmt.Errorf("unknown bus %v", opts.Bus)
}

// Conn is a connection to one systemd manager. It is safe for concurrent
// use. When the bus drops, the next call re-dials once and retries; there is
// no package-global connection.
type Conn struct {
	tgt     target
	timeout time.Duration
	log     *slog.Logger

	mu     sync.Mutex
	gen    *generation
	closed bool
	done   chan struct{} // closed by Close; ends watches

	verMu   sync.Mutex
	version int // 0 until read
}

// generation is one set of live connections. go-systemd's Conn owns two
// (calls, signals for job completion); raw is the calls connection, shared
// for the methods go-systemd does not wrap (GetUnit, GetAll).
type generation struct {
	sd     *sd.Conn
	raw    *godbus.Conn
	cancel context.CancelFunc
}

func (g *generation) connected() bool { return g.sd.Connected() && g.raw.Connected() }

func (g *generation) close() {
	g.sd.Close()
	g.cancel()
}

// Dial connects to the manager selected by opts. ctx bounds the connect only:
// the connection lives until Close (go-systemd ties a connection's life to
// the ctx it was dialed with, so Dial uses its own long-lived one).
func Dial(ctx context.Context, opts Options) (*Conn, error) {
	tgt, err := resolve(opts)
	if err != nil {
		return nil, fmt.Errorf("dbusctl: %w", err)
	}
	c := &Conn{
		tgt:     tgt,
		timeout: opts.ConnectTimeout,
		log:     opts.Logger,
		done:    make(chan struct{}),
	}
	if c.timeout <= 0 {
		c.timeout = DefaultConnectTimeout
	}
	g, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.gen = g
	c.tgt.fallback = nil // the choice is made; re-dials go to the same place
	if c.tgt.user && c.tgt.hello && os.Geteuid() != 0 && managerIsRoot(ctx, g.raw) {
		// A "session" address that leads to the system bus (say
		// DBUS_SESSION_BUS_ADDRESS set to the system bus socket): the
		// manager there is the system manager, which a user that is not
		// root may only ask through polkit.
		c.tgt.user = false
	}
	return c, nil
}

// managerIsRoot reports whether the bus name of the systemd manager is owned
// by uid 0; a user manager is owned by its user. Any error counts as no.
func managerIsRoot(ctx context.Context, raw *godbus.Conn) bool {
	var uid uint32
	err := raw.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, "org.freedesktop.systemd1").Store(&uid)
	return err == nil && uid == 0
}

// Bus reports which transport the connection uses (never BusAuto).
func (c *Conn) Bus() Bus { return c.tgt.bus }

// Address is the D-Bus address dialed.
func (c *Conn) Address() string { return c.tgt.address }

// UserManager reports whether the peer is a user manager (systemd --user),
// which cannot switch users and does not attach LogExtraFields to journal
// entries.
func (c *Conn) UserManager() bool { return c.tgt.user }

// Close closes the connection and ends every Watch started on it.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.done)
	if c.gen != nil {
		c.gen.close()
		c.gen = nil
	}
	return nil
}

var errConnClosed = errors.New("dbusctl: connection closed")

// connect dials the first generation within c.timeout and ctx, following
// the Auto fallback (Dial only: later re-dials use connectTarget(c.tgt)).
func (c *Conn) connect(ctx context.Context) (*generation, error) {
	g, err := c.connectTarget(ctx, c.tgt)
	if err != nil && c.tgt.fallback != nil {
		g2, err2 := c.connectTarget(ctx, *c.tgt.fallback)
		if err2 == nil {
			c.tgt = *c.tgt.fallback
			return g2, nil
		}
		err = fmt.Errorf("%w; fallback %s: %w", err, c.tgt.fallback.address, err2)
	}
	return g, err
}

func (c *Conn) connectTarget(ctx context.Context, t target) (*generation, error) {
	life, cancel := context.WithCancel(context.Background())
	g, err := withTimeout(ctx, c.timeout, cancel, func() (*generation, error) {
		raw, err := dialRaw(life, t)
		if err != nil {
			return nil, err
		}
		first := true
		// go-systemd asks for two independent connections (calls, signals);
		// the first becomes its calls connection, which we share.
		s, err := sd.NewConnection(func() (*godbus.Conn, error) {
			if first {
				first = false
				return raw, nil
			}
			return dialRaw(life, t)
		})
		if err != nil {
			raw.Close()
			return nil, err
		}
		return &generation{sd: s, raw: raw, cancel: cancel}, nil
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("dbusctl: connect %s manager at %s (uid %d): %w", t.bus, t.address, os.Getuid(), err)
	}
	return g, nil
}

// withTimeout runs fn, giving up after d or when ctx ends. On give-up it
// cancels the connection's life ctx (godbus then closes whatever fn is
// blocked on) and closes a late result.
func withTimeout(ctx context.Context, d time.Duration, cancel context.CancelFunc, fn func() (*generation, error)) (*generation, error) {
	type result struct {
		g   *generation
		err error
	}
	ch := make(chan result, 1)
	go func() {
		g, err := fn()
		ch <- result{g, err}
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	giveUp := func(err error) (*generation, error) {
		cancel()
		go func() {
			if r := <-ch; r.err == nil {
				r.g.close()
			}
		}()
		return nil, err
	}
	select {
	case r := <-ch:
		return r.g, r.err
	case <-ctx.Done():
		return giveUp(ctx.Err())
	case <-timer.C:
		return giveUp(fmt.Errorf("timed out after %v", d))
	}
}

// dialRaw opens and authenticates one godbus connection living until life
// ends. Signal deliveries keep their order (the sequential handler queues
// without dropping), which the watch state machine relies on.
func dialRaw(life context.Context, t target) (*godbus.Conn, error) {
	conn, err := godbus.Dial(t.address, godbus.WithContext(life),
		godbus.WithSignalHandler(godbus.NewSequentialSignalHandler()))
	if err != nil {
		return nil, err
	}
	// EXTERNAL with the numeric uid: no user-name lookup (works with CGO off).
	if err := conn.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("auth: %w", err)
	}
	if t.hello {
		if err := conn.Hello(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("hello: %w", err)
		}
	}
	return conn, nil
}

// current returns the live generation, dialing if there is none.
func (c *Conn) current(ctx context.Context) (*generation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errConnClosed
	}
	if c.gen == nil {
		g, err := c.connectTarget(ctx, c.tgt)
		if err != nil {
			return nil, err
		}
		c.gen = g
	}
	return c.gen, nil
}

// redial replaces old (if it is still current) with a fresh generation.
func (c *Conn) redial(ctx context.Context, old *generation) (*generation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errConnClosed
	}
	if c.gen != old && c.gen != nil {
		return c.gen, nil // someone else already reconnected
	}
	if old != nil {
		old.close()
	}
	c.gen = nil
	g, err := c.connectTarget(ctx, c.tgt)
	if err != nil {
		return nil, err
	}
	if c.log != nil {
		c.log.Info("dbusctl: reconnected to systemd manager", "bus", c.tgt.bus, "address", c.tgt.address)
	}
	c.gen = g
	return g, nil
}

// do runs op on the live generation; when it fails because the connection
// is gone (godbus ErrClosed or a dead transport), it re-dials once and
// retries (the model is runc's retryOnDisconnect).
func (c *Conn) do(ctx context.Context, op func(g *generation) error) error {
	g, err := c.current(ctx)
	if err != nil {
		return err
	}
	err = op(g)
	if err == nil || ctx.Err() != nil {
		return err
	}
	if !errors.Is(err, godbus.ErrClosed) && g.connected() {
		return err
	}
	g2, rerr := c.redial(ctx, g)
	if rerr != nil {
		return fmt.Errorf("%w (reconnect failed: %w)", err, rerr)
	}
	return op(g2)
}

func (g *generation) manager() godbus.BusObject {
	return g.raw.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
}

// SystemState returns the manager's SystemState ("running", "degraded",
// "starting", …). A bus without a systemd manager fails here, not at Dial.
func (c *Conn) SystemState(ctx context.Context) (string, error) {
	var state string
	err := c.do(ctx, func(g *generation) error {
		p, err := g.sd.SystemStateContext(ctx)
		if err != nil {
			return err
		}
		s, ok := p.Value.Value().(string)
		if !ok {
			return fmt.Errorf("SystemState has type %s", p.Value.Signature())
		}
		state = s
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("dbusctl: read SystemState: %w", err)
	}
	return state, nil
}

// Version returns the manager's major version (252 for "252.38-1~deb12u1").
// It is read once and cached; it gates properties newer systemd versions
// introduced (see TransientSpec).
func (c *Conn) Version(ctx context.Context) (int, error) {
	c.verMu.Lock()
	defer c.verMu.Unlock()
	if c.version != 0 {
		return c.version, nil
	}
	var raw string
	err := c.do(ctx, func(g *generation) error {
		var v godbus.Variant
		err := g.manager().CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0,
			"org.freedesktop.systemd1.Manager", "Version").Store(&v)
		if err != nil {
			return err
		}
		raw, _ = v.Value().(string)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("dbusctl: read manager Version: %w", err)
	}
	v, err := parseVersion(raw)
	if err != nil {
		return 0, fmt.Errorf("dbusctl: %w", err)
	}
	c.version = v
	return v, nil
}

// parseVersion reads the leading number of systemd's Version property, which
// looks like "252", "252.38-1~deb12u1" or "v255-rc1".
func parseVersion(s string) (int, error) {
	t := strings.TrimPrefix(strings.TrimSpace(s), "v")
	end := 0
	for end < len(t) && t[end] >= '0' && t[end] <= '9' {
		end++
	}
	v, err := strconv.Atoi(t[:end])
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("unrecognised systemd version %q", s)
	}
	return v, nil
}
