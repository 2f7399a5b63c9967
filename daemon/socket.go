package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// listenControl binds the control socket per spec §7.4: refuse when a daemon
// (or anything) answers, remove a stale file, bind, chmod, chown.
func listenControl(ctx context.Context, c config.Control) (net.Listener, error) {
	probe, err := control.Probe(ctx, c.Path)
	if err != nil {
		return nil, fmt.Errorf("probe control socket %s: %w", c.Path, err)
	}
	if probe.Rollbridge {
		active := "no active release"
		if probe.ActiveReleaseID != nil {
			active = "active release: " + *probe.ActiveReleaseID
		}
		return nil, fmt.Errorf("A Rollbridge daemon for application %q is already running on %s (%s). Run \"rollbridge status\" to inspect it or \"rollbridge shutdown\" to stop it, or set a different control.path.", probe.Application, c.Path, active)
	}
	if probe.Alive {
		return nil, fmt.Errorf("The control socket %s is already in use by another process. Stop that process or set a different control.path.", c.Path)
	}
	if err := os.Remove(c.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket %s: %w", c.Path, err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", c.Path)
	if err != nil {
		return nil, fmt.Errorf("bind control socket %s: %w (check that its directory exists and is writable, or set control.path)", c.Path, err)
	}
	if err := applySocketOwnership(c); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func applySocketOwnership(c config.Control) error {
	if c.Mode != nil {
		if err := os.Chmod(c.Path, fs.FileMode(*c.Mode)); err != nil {
			return fmt.Errorf("chmod control socket %s: %w", c.Path, err)
		}
	}
	if c.Owner == nil && c.Group == nil {
		return nil
	}
	uid, gid := -1, -1
	if c.Owner != nil {
		id, err := resolvePrincipal(*c.Owner, false)
		if err != nil {
			return err
		}
		uid = int(id)
	}
	if c.Group != nil {
		id, err := resolvePrincipal(*c.Group, true)
		if err != nil {
			return err
		}
		gid = int(id)
	}
	if err := os.Chown(c.Path, uid, gid); err != nil {
		return fmt.Errorf("Could not set control socket owner/group on %s: %v. Run the daemon as a user allowed to chown it (for example root, or a member of the target group).", c.Path, err)
	}
	return nil
}

// resolvePrincipal turns a control.owner/group into a numeric id; names are
// looked up in /etc/passwd and /etc/group (spec §2.3).
func resolvePrincipal(p config.Principal, group bool) (uint32, error) {
	if id, ok := p.Numeric(); ok {
		return id, nil
	}
	if group {
		g, err := user.LookupGroup(p.Name)
		if err != nil {
			return 0, fmt.Errorf("Unknown group %q. Use a numeric id, or ensure the group exists in /etc/group (name resolution covers local groups only).", p.Name)
		}
		id, _ := strconv.ParseUint(g.Gid, 10, 32)
		return uint32(id), nil
	}
	u, err := user.Lookup(p.Name)
	if err != nil {
		return 0, fmt.Errorf("Unknown user %q. Use a numeric id, or ensure the user exists in /etc/passwd (name resolution covers local users only).", p.Name)
	}
	id, _ := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(id), nil
}
