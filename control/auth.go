package control

import (
	"fmt"
	"os/user"
	"slices"
	"strconv"
)

// Policy is the control socket's authorization rule (issue: peer
// credentials): root, the daemon's own uid, or a member of the configured
// control group may send commands.
type Policy struct {
	DaemonUID uint32
	// Group is the control.group gid; nil when no group is configured.
	Group *uint32
	// GroupName is used in the error message.
	GroupName string
	// groupsOf returns the gids a uid belongs to (primary and
	// supplementary); replaceable in tests.
	groupsOf func(uid uint32) ([]uint32, error)
}

// Authorize implements Server.Authorize.
func (p Policy) Authorize(peer Peer) error {
	if peer.UID == 0 || peer.UID == p.DaemonUID {
		return nil
	}
	if p.Group != nil {
		if peer.GID == *p.Group {
			return nil
		}
		lookup := p.groupsOf
		if lookup == nil {
			lookup = userGroups
		}
		if gids, err := lookup(peer.UID); err == nil && slices.Contains(gids, *p.Group) {
			return nil
		}
	}
	who := "the daemon's user"
	if p.Group != nil {
		name := p.GroupName
		if name == "" {
			name = strconv.FormatUint(uint64(*p.Group), 10)
		}
		who += fmt.Sprintf(" or a member of group %s", name)
	}
	return fmt.Errorf("permission denied: uid %d may not control this daemon; only root, %s may (set control.group and add the user to it)", peer.UID, who)
}

func userGroups(uid uint32) ([]uint32, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return nil, err
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, err
	}
	out := make([]uint32, 0, len(ids))
	for _, s := range ids {
		if v, err := strconv.ParseUint(s, 10, 32); err == nil {
			out = append(out, uint32(v))
		}
	}
	return out, nil
}
