package release

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/rollbridge/rollbridge/config"
)

// portAllocation is the result of spec §3.8 for one release. Unlike the
// original, which probes a port and releases it at once, each chosen port
// stays bound by Rollbridge until just before the instance that owns it is
// started (take), which narrows the check-then-use race to the moment of the
// start itself.
type portAllocation struct {
	ports map[string]int
	// replicaPorts holds one port per replica of the proxied process when
	// it has several replicas (ports then holds replica 0's).
	replicaPorts map[string][]int
	holds        map[string][]net.Listener
}

// allocatePorts allocates a port for every ported definition, in config
// order, and one per replica for a proxied process with replicas. stable
// maps persistent-service ids to ports they already own; those are reused
// without a bind test (the service holds them).
func allocatePorts(ctx context.Context, host string, defs []config.Process, stable map[string]int) (*portAllocation, error) {
	a := &portAllocation{ports: map[string]int{}, replicaPorts: map[string][]int{}, holds: map[string][]net.Listener{}}
	reserved := map[int]bool{}
	for _, p := range stable {
		reserved[p] = true
	}
	for i := range defs {
		d := &defs[i]
		if d.Port == nil {
			continue
		}
		if p, ok := stable[d.ID]; ok {
			a.ports[d.ID] = p
			continue
		}
		n := 1
		if d.Policy == config.Proxied {
			n = max(d.Replicas, 1)
		}
		for replica := range n {
			port, ln, err := bindInRange(ctx, host, *d.Port, reserved)
			if err != nil {
				a.releaseAll()
				return nil, err
			}
			reserved[port] = true
			a.holds[d.ID] = append(a.holds[d.ID], ln)
			if replica == 0 {
				a.ports[d.ID] = port
			}
			if n > 1 {
				a.replicaPorts[d.ID] = append(a.replicaPorts[d.ID], port)
			}
		}
	}
	return a, nil
}

// take releases the holds on id's ports so its processes can bind them.
func (a *portAllocation) take(id string) {
	for _, ln := range a.holds[id] {
		ln.Close()
	}
	delete(a.holds, id)
}

func (a *portAllocation) releaseAll() {
	for id := range a.holds {
		a.take(id)
	}
}

// allocateReplacementPort finds a free port in r for a replacement
// instance, avoiding the ports in use, and keeps it bound until the caller
// closes the returned listener (just before the start).
func allocateReplacementPort(ctx context.Context, host string, r config.PortRange, inUse []int) (int, net.Listener, error) {
	reserved := map[int]bool{}
	for _, p := range inUse {
		reserved[p] = true
	}
	return bindInRange(ctx, host, r, reserved)
}

func bindInRange(ctx context.Context, host string, r config.PortRange, reserved map[int]bool) (int, net.Listener, error) {
	var lc net.ListenConfig
	if r.From == 0 || r.To == 0 {
		ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, nil, fmt.Errorf("Unable to allocate an ephemeral port on %s (%s)", host, errnoName(err))
		}
		return ln.Addr().(*net.TCPAddr).Port, ln, nil
	}
	var inReserve, inUse, unbindable int
	var example string
	for port := r.From; port <= r.To; port++ {
		if reserved[port] {
			inReserve++
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return port, ln, nil
		}
		if errors.Is(err, syscall.EADDRINUSE) {
			inUse++
			continue
		}
		unbindable++
		if example == "" {
			example = errnoName(err)
		}
	}
	n := r.To - r.From + 1
	msg := fmt.Sprintf("No available ports in range %d-%d (%d %s on %s): %d reserved by this deploy, %d already in use",
		r.From, r.To, n, plural(n, "port", "ports"), host, inReserve, inUse)
	if unbindable > 0 {
		msg += fmt.Sprintf(", %d could not be bound (e.g. %s)", unbindable, example)
	}
	return 0, nil, errors.New(msg + ". Widen the port range, free a port, or check bind permissions.")
}

// errnoName returns the errno's symbolic name (EADDRINUSE, EACCES, …) when
// err wraps one, else the error text.
func errnoName(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	switch errno {
	case syscall.EADDRINUSE:
		return "EADDRINUSE"
	case syscall.EACCES:
		return "EACCES"
	case syscall.EADDRNOTAVAIL:
		return "EADDRNOTAVAIL"
	case syscall.EPERM:
		return "EPERM"
	case syscall.EAFNOSUPPORT:
		return "EAFNOSUPPORT"
	}
	return errno.Error()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
