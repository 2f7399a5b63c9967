package proxy

import (
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
)

// target is what a request is routed to: one release and its upstreams.
// Switch builds a new target and publishes it with one atomic store, so a
// request sees either the old target or the new one, never a mix.
type target struct {
	rel       *release
	upstreams []*upstream
	// single is set when there is exactly one upstream: the fast path skips
	// selection and per-upstream counting.
	single  *upstream
	balance Balance
	cursor  atomic.Uint32
}

// upstream is one host:port of a release.
type upstream struct {
	addr string
	pool *connPool // keep-alive connections to addr, owned by the release
	// inFlight counts exchanges for LeastInFlight; only maintained when the
	// target has several upstreams.
	inFlight atomic.Int64
}

func newTarget(rel *release, addrs []string, b Balance) *target {
	t := &target{rel: rel, balance: b}
	for _, a := range addrs {
		t.upstreams = append(t.upstreams, &upstream{addr: a, pool: rel.poolFor(a)})
	}
	if len(t.upstreams) == 1 {
		t.single = t.upstreams[0]
	}
	return t
}

// pick selects the upstream for a new exchange. A WebSocket stays on the
// upstream picked here for its whole life (it is one TCP connection).
func (t *target) pick() *upstream {
	if t.single != nil {
		return t.single
	}
	n := uint32(len(t.upstreams))
	start := t.cursor.Add(1)
	if t.balance == RoundRobin {
		return t.upstreams[start%n]
	}
	best := t.upstreams[start%n]
	bestN := best.inFlight.Load()
	for i := uint32(1); i < n && bestN > 0; i++ {
		u := t.upstreams[(start+i)%n]
		if c := u.inFlight.Load(); c < bestN {
			best, bestN = u, c
		}
	}
	best.inFlight.Add(1)
	return best
}

// done releases what pick took.
func (t *target) done(u *upstream) {
	if t.single == nil && t.balance == LeastInFlight {
		u.inFlight.Add(-1)
	}
}

// validateUpstreams checks host:port syntax so a bad address fails at Switch
// time with a clear message instead of as 502s later.
func validateUpstreams(release string, addrs []string) error {
	if release == "" {
		return fmt.Errorf("proxy switch: release id is empty")
	}
	if len(addrs) == 0 {
		return fmt.Errorf("proxy switch to %q: no upstream addresses; pass at least one host:port", release)
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("proxy switch to %q: upstream %q: %w (want host:port)", release, a, err)
		}
		if host == "" {
			return fmt.Errorf("proxy switch to %q: upstream %q has no host", release, a)
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("proxy switch to %q: upstream %q: port must be 1-65535", release, a)
		}
	}
	return nil
}
