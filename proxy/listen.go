package proxy

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
)

// DefaultFDName is the FileDescriptorName= of the proxy socket in the
// packaged rollbridge.socket unit.
const DefaultFDName = "proxy"

// Listen returns the proxy's listening socket: the one systemd passed in by
// socket activation (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES) when present,
// else a new TCP listener bound to host:port (port 0 picks a free port;
// ln.Addr() has the real one). activated reports which.
//
// With activation, the listener named fdName is used; a single unnamed
// socket is accepted too. host and port are then ignored: the .socket unit
// decides the address. Listen consumes the whole activation environment
// (go-systemd unsets LISTEN_* and closes sockets it does not return), so a
// process that receives several sockets should call
// activation.ListenersWithNames once and pass the map to ListenFrom for
// each name.
func Listen(ctx context.Context, host string, port int, fdName string) (ln net.Listener, activated bool, err error) {
	passed, err := activation.ListenersWithNames()
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: %w", err)
	}
	ln, activated, err = ListenFrom(ctx, passed, host, port, fdName)
	for _, lns := range passed {
		for _, l := range lns {
			l.Close()
		}
	}
	return ln, activated, err
}

// ListenFrom is Listen over an already collected activation map (from
// activation.ListenersWithNames). The listener it returns is removed from
// the map, so the caller can hand the rest to other servers.
func ListenFrom(ctx context.Context, passed map[string][]net.Listener, host string, port int, fdName string) (net.Listener, bool, error) {
	if len(passed) > 0 {
		ln, err := pick(passed, fdName)
		if err != nil {
			return nil, false, err
		}
		return ln, true, nil
	}
	if port < 0 || port > 65535 {
		return nil, false, fmt.Errorf("proxy listen: port %d out of range 0-65535", port)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, false, fmt.Errorf("proxy listen on %s: %w", addr, err)
	}
	return ln, false, nil
}

func pick(passed map[string][]net.Listener, fdName string) (net.Listener, error) {
	if lns := passed[fdName]; len(lns) > 0 {
		if len(lns) > 1 {
			return nil, fmt.Errorf("socket activation: %d sockets are named %q; the proxy takes one (give each ListenStream= its own FileDescriptorName=)", len(lns), fdName)
		}
		delete(passed, fdName)
		return lns[0], nil
	}
	// systemd names an unnamed socket LISTEN_FD_<n>; go-systemd keeps that.
	if len(passed) == 1 {
		for name, lns := range passed {
			if strings.HasPrefix(name, "LISTEN_FD_") && len(lns) == 1 {
				delete(passed, name)
				return lns[0], nil
			}
		}
	}
	names := make([]string, 0, len(passed))
	for name := range passed {
		names = append(names, name)
	}
	sort.Strings(names)
	return nil, fmt.Errorf("socket activation: no socket named %q among %s; set FileDescriptorName=%s in the .socket unit", fdName, strings.Join(names, ", "), fdName)
}
