package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	godbus "github.com/godbus/dbus/v5"
)

// manageUnitsAction is the polkit action systemd checks for
// StartTransientUnit from a caller that is not root.
const manageUnitsAction = "org.freedesktop.systemd1.manage-units"

// polkitTimeout bounds the polkit question, which includes dialing the bus.
const polkitTimeout = 5 * time.Second

// polkitAnswer is polkit's verdict on manageUnitsAction for this process.
type polkitAnswer struct {
	// authorized: systemd would accept StartTransientUnit.
	authorized bool
	// challenge: only after interactive authentication, which a daemon
	// cannot provide.
	challenge bool
}

// authorizeFunc asks polkit, on the bus at address, about manageUnitsAction
// for the calling process.
type authorizeFunc func(ctx context.Context, address string) (polkitAnswer, error)

// askPolkit asks polkit with CheckAuthorization, with our own bus name as
// the subject (what systemd itself checks) and no interaction allowed, so
// nothing is prompted, started or changed. A separate connection is used:
// dbusctl does not expose its raw one.
func askPolkit(ctx context.Context, address string) (polkitAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, polkitTimeout)
	defer cancel()
	conn, err := godbus.Dial(address, godbus.WithContext(ctx))
	if err != nil {
		return polkitAnswer{}, fmt.Errorf("dial %s: %w", address, err)
	}
	defer conn.Close()
	if err := conn.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		return polkitAnswer{}, fmt.Errorf("auth on %s: %w", address, err)
	}
	if err := conn.Hello(); err != nil {
		return polkitAnswer{}, fmt.Errorf("hello on %s: %w", address, err)
	}
	names := conn.Names()
	if len(names) == 0 {
		return polkitAnswer{}, errors.New("the bus assigned no unique name")
	}
	subject := struct {
		Kind    string
		Details map[string]godbus.Variant
	}{"system-bus-name", map[string]godbus.Variant{"name": godbus.MakeVariant(names[0])}}
	var result struct {
		Authorized bool
		Challenge  bool
		Details    map[string]string
	}
	obj := conn.Object("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority")
	const noInteraction = uint32(0)
	err = obj.CallWithContext(ctx, "org.freedesktop.PolicyKit1.Authority.CheckAuthorization", 0,
		subject, manageUnitsAction, map[string]string{}, noInteraction, "").Store(&result)
	if err != nil {
		return polkitAnswer{}, fmt.Errorf("polkit CheckAuthorization: %w", err)
	}
	return polkitAnswer{authorized: result.Authorized, challenge: result.Challenge}, nil
}

// transientPermission decides whether the manager would start transient
// units for uid euid: a user manager does for its own user, the system
// manager for root and otherwise only when polkit grants manageUnitsAction
// without interaction.
func transientPermission(ctx context.Context, user bool, euid int, address string, authorize authorizeFunc) (bool, string) {
	const fix = "run the daemon as root or under a user manager (XDG_RUNTIME_DIR), or add a polkit rule granting " + manageUnitsAction + " to this user"
	switch {
	case user:
		return true, fmt.Sprintf("the user manager starts transient units as uid %d without extra privileges", euid)
	case euid == 0:
		return true, "the system manager accepts transient units from root"
	}
	a, err := authorize(ctx, address)
	switch {
	case err != nil:
		return false, fmt.Sprintf("the system manager and uid %d is not root: StartTransientUnit needs root or polkit's %s, and polkit could not be asked (%v) — %s", euid, manageUnitsAction, err, fix)
	case a.authorized:
		return true, fmt.Sprintf("the system manager: uid %d is not root, but polkit grants it %s", euid, manageUnitsAction)
	case a.challenge:
		return false, fmt.Sprintf("the system manager and uid %d is not root: polkit grants %s only after interactive authentication, which a daemon cannot give — %s", euid, manageUnitsAction, fix)
	default:
		return false, fmt.Sprintf("the system manager and uid %d is not root: polkit does not grant it %s — %s", euid, manageUnitsAction, fix)
	}
}
