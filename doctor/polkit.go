package doctor

import (
	"context"
	"fmt"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
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

// askPolkit asks polkit through dbusctl (see dbusctl.CheckAuthorization):
// nothing is prompted, started or changed.
func askPolkit(ctx context.Context, address string) (polkitAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, polkitTimeout)
	defer cancel()
	a, err := dbusctl.CheckAuthorization(ctx, address, manageUnitsAction)
	if err != nil {
		return polkitAnswer{}, err
	}
	return polkitAnswer{authorized: a.Authorized, challenge: a.Challenge}, nil
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
