// Package account resolves the user/group settings of a process (names or
// numeric ids) to the credential a child process runs with. The exec runner
// starts instances with it and the release layer runs lifecycle hooks with
// it, so a hook never has more rights than its process.
package account

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// Credential maps a user and group setting to the credential a child runs
// with; nil when both are empty (the daemon's own account). Names and
// numeric ids are accepted. A numeric user without a passwd entry runs with
// the group named, else with a gid equal to its uid. Only root can switch
// accounts; elsewhere a set user or group is an error rather than silently
// ignored.
func Credential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%s: only a daemon running as root can switch accounts; "+
			"run the daemon as root, use the systemd system manager, or remove user/group from the process in the config",
			Text(userName, groupName))
	}
	cred := &syscall.Credential{Uid: 0, Gid: 0}
	if userName != "" {
		uid, gid, groups, err := lookupUser(userName)
		if err != nil {
			return nil, err
		}
		cred.Uid, cred.Gid, cred.Groups = uid, gid, groups
	}
	if groupName != "" {
		gid, err := lookupGroup(groupName)
		if err != nil {
			return nil, err
		}
		cred.Gid = gid
		if userName == "" {
			// Root keeps uid 0 but should not keep root's supplementary
			// groups when asked to run as another group.
			cred.Groups = []uint32{gid}
		}
	}
	return cred, nil
}

// Text names a process's user/group settings for an error message:
// `user "shop"`, `group "web"` or `user "shop", group "web"`.
func Text(userName, groupName string) string {
	switch {
	case userName != "" && groupName != "":
		return fmt.Sprintf("user %q, group %q", userName, groupName)
	case userName != "":
		return fmt.Sprintf("user %q", userName)
	}
	return fmt.Sprintf("group %q", groupName)
}

// lookupError says plainly that an account is missing (the config names
// it; the lookup error alone reads "user: unknown user x").
func lookupError(what, name string, err error) error {
	var uu user.UnknownUserError
	var ug user.UnknownGroupError
	if errors.As(err, &uu) || errors.As(err, &ug) {
		return fmt.Errorf("%s %q: no such account on this machine; create it or fix user/group of the process in the config: %w", what, name, err)
	}
	return fmt.Errorf("%s %q: %w", what, name, err)
}

func lookupUser(name string) (uid, gid uint32, groups []uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		n, nerr := strconv.ParseUint(name, 10, 32)
		if nerr != nil {
			return 0, 0, nil, lookupError("user", name, err)
		}
		if u, err = user.LookupId(name); err != nil {
			return uint32(n), uint32(n), []uint32{}, nil
		}
	}
	uid64, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid64, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, nil, fmt.Errorf("user %q: non-numeric uid/gid %q/%q", name, u.Uid, u.Gid)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return 0, 0, nil, fmt.Errorf("user %q: supplementary groups: %w", name, err)
	}
	groups = make([]uint32, 0, len(ids))
	for _, id := range ids {
		if g, err := strconv.ParseUint(id, 10, 32); err == nil {
			groups = append(groups, uint32(g))
		}
	}
	return uint32(uid64), uint32(gid64), groups, nil
}

func lookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		if n, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
			return uint32(n), nil
		}
		return 0, lookupError("group", name, err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q: non-numeric gid %q", name, g.Gid)
	}
	return uint32(gid), nil
}
