package proxy

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Route is what Switch routes a release's new traffic to: its upstreams
// and how to choose among them.
type Route struct {
	// Upstreams are the "host:port" addresses of the release's replicas.
	Upstreams []string
	// Balance picks among several upstreams.
	Balance Balance
	// Affinity keeps a client on one upstream (optional).
	Affinity Affinity
}

// Affinity keeps a client on the upstream that served it first, for apps
// that keep per-process state. At most one of the two is set. Both only
// apply when a release has more than one upstream; when the remembered
// upstream has left the route, the client is balanced again.
type Affinity struct {
	// Cookie names a cookie the proxy sets on the first response of a
	// client (Path=/, HttpOnly, SameSite=Lax, session lifetime). Its value
	// identifies the upstream; later requests carrying it go there.
	Cookie string
	// ClientIP hashes the client address over the upstreams (rendezvous
	// hashing, so an upstream leaving moves only its own clients). The
	// address is the TCP peer, or, when the peer is a loopback address (a
	// front proxy such as nginx on the same host), X-Real-IP or the last
	// X-Forwarded-For entry.
	ClientIP bool
}

// target is what a request is routed to: one release and its upstreams.
// Switch builds a new target and publishes it with one atomic store, so a
// request sees either the old target or the new one, never a mix.
type target struct {
	rel       *release
	upstreams []*upstream
	// single is set when there is exactly one upstream: the fast path skips
	// selection, affinity and per-upstream counting.
	single   *upstream
	balance  Balance
	cursor   atomic.Uint32
	cookie   string               // Affinity.Cookie
	clientIP bool                 // Affinity.ClientIP
	byKey    map[string]*upstream // cookie value → upstream
}

// upstream is one host:port of a release. Re-switching a release to a
// route that keeps an address keeps its upstream object, so in-flight
// counts and failure marks carry over.
type upstream struct {
	addr string
	pool *connPool // keep-alive connections to addr, owned by the release
	// inFlight counts exchanges for LeastInFlight; only maintained when the
	// target has several upstreams.
	inFlight atomic.Int64
	// key is the affinity cookie value naming this upstream; hash seeds
	// client-IP hashing.
	key  string
	hash uint64
	// downUntil (unix nanoseconds) is set when connecting failed: selection
	// avoids the upstream until then, unless every upstream is down.
	downUntil atomic.Int64
}

// downFor is how long an upstream that refused a connection is avoided
// (the daemon normally removes a dead replica from the route sooner).
const downFor = time.Second

func newTarget(rel *release, prev *target, rt Route) *target {
	t := &target{rel: rel, balance: rt.Balance, cookie: rt.Affinity.Cookie, clientIP: rt.Affinity.ClientIP}
	old := map[string]*upstream{}
	if prev != nil && prev.rel == rel {
		for _, u := range prev.upstreams {
			old[u.addr] = u
		}
	}
	for _, a := range rt.Upstreams {
		u := old[a]
		if u == nil {
			h := fnv.New64a()
			h.Write([]byte(rel.id + "\x00" + a))
			sum := h.Sum64()
			u = &upstream{addr: a, pool: rel.poolFor(a), hash: sum, key: strconv.FormatUint(sum, 36)}
		}
		t.upstreams = append(t.upstreams, u)
	}
	if len(t.upstreams) == 1 {
		t.single = t.upstreams[0]
	}
	if t.cookie != "" && t.single == nil {
		t.byKey = make(map[string]*upstream, len(t.upstreams))
		for _, u := range t.upstreams {
			t.byKey[u.key] = u
		}
	}
	return t
}

// pickFor selects the upstream for a new exchange of a target with several
// upstreams, honouring affinity; x.setCookie is set when the response must
// (re)set the affinity cookie. A WebSocket stays on the upstream picked
// here for its whole life (it is one TCP connection).
func (t *target) pickFor(x *exchange, req *http.Request) *upstream {
	var u *upstream
	switch {
	case t.byKey != nil:
		if v, ok := cookieValue(req.Header["Cookie"], t.cookie); ok {
			if c := t.byKey[v]; c != nil && !c.isDown() {
				u = c
			}
		}
		if u == nil {
			u = t.balanced(nil)
			x.setCookie = u.key
		}
	case t.clientIP:
		u = t.hashed(clientAddr(req, x.cc.remoteIP), nil)
	default:
		u = t.balanced(nil)
	}
	t.take(u)
	return u
}

// take counts a picked upstream for LeastInFlight; done releases it.
func (t *target) take(u *upstream) {
	if t.single == nil && t.balance == LeastInFlight {
		u.inFlight.Add(1)
	}
}

// done releases what pickFor (or take) took.
func (t *target) done(u *upstream) {
	if t.single == nil && t.balance == LeastInFlight {
		u.inFlight.Add(-1)
	}
}

// balanced picks by the target's balance, skipping upstreams marked down
// and those in skip; nil only when skip excludes every upstream.
func (t *target) balanced(skip []*upstream) *upstream {
	n := uint32(len(t.upstreams))
	start := t.cursor.Add(1)
	var best, fallback *upstream
	var bestN int64
	for i := range n {
		u := t.upstreams[(start+i)%n]
		if contains(skip, u) {
			continue
		}
		if u.isDown() {
			if fallback == nil {
				fallback = u
			}
			continue
		}
		if t.balance == RoundRobin {
			return u
		}
		c := u.inFlight.Load()
		if best == nil || c < bestN {
			best, bestN = u, c
			if c == 0 {
				break
			}
		}
	}
	if best == nil {
		return fallback
	}
	return best
}

// hashed picks by rendezvous hashing of addr over the live upstreams.
func (t *target) hashed(addr string, skip []*upstream) *upstream {
	h := fnv.New64a()
	h.Write([]byte(addr))
	key := h.Sum64()
	var best, fallback *upstream
	var bestScore uint64
	for _, u := range t.upstreams {
		if contains(skip, u) {
			continue
		}
		if u.isDown() {
			if fallback == nil {
				fallback = u
			}
			continue
		}
		if s := mix64(key ^ u.hash); best == nil || s > bestScore {
			best, bestScore = u, s
		}
	}
	if best == nil {
		return fallback
	}
	return best
}

// another picks a replacement for an exchange whose upstream failed before
// anything reached the client, or nil when every upstream was tried.
func (t *target) another(x *exchange) *upstream {
	if t.single != nil || x.ntried >= len(x.tried) {
		return nil
	}
	x.tried[x.ntried] = x.up
	x.ntried++
	skip := x.tried[:x.ntried]
	var u *upstream
	if t.clientIP && t.byKey == nil {
		u = t.hashed(clientAddr(x.req, x.cc.remoteIP), skip)
	} else {
		u = t.balanced(skip)
	}
	if u == nil {
		return nil
	}
	if t.byKey != nil {
		x.setCookie = u.key
	}
	t.take(u)
	return u
}

func contains(s []*upstream, u *upstream) bool {
	for _, v := range s {
		if v == u {
			return true
		}
	}
	return false
}

func (u *upstream) isDown() bool {
	d := u.downUntil.Load()
	return d != 0 && time.Now().UnixNano() < d
}

func (u *upstream) markDown() {
	u.downUntil.Store(time.Now().Add(downFor).UnixNano())
}

// mix64 is the splitmix64 finalizer: it spreads hash bits so rendezvous
// scores of neighbouring keys are independent.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// cookieValue finds name's value in Cookie header lines without
// allocating.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimSpace(part)
			k, v, ok := strings.Cut(part, "=")
			if ok && k == name {
				return strings.Trim(v, `"`), true
			}
		}
	}
	return "", false
}

// clientAddr is the client address used for IP affinity (see
// Affinity.ClientIP).
func clientAddr(req *http.Request, remote string) string {
	if ip, err := netip.ParseAddr(remote); err == nil && ip.IsLoopback() {
		if v := req.Header["X-Real-Ip"]; len(v) > 0 && strings.TrimSpace(v[0]) != "" {
			return strings.TrimSpace(v[0])
		}
		if v := req.Header["X-Forwarded-For"]; len(v) > 0 {
			last := v[len(v)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if s := strings.TrimSpace(last); s != "" {
				return s
			}
		}
	}
	return remote
}

// validateRoute checks host:port syntax so a bad address fails at Switch
// time with a clear message instead of as 502s later.
func validateRoute(release string, rt Route) error {
	if release == "" {
		return fmt.Errorf("proxy switch: release id is empty")
	}
	if len(rt.Upstreams) == 0 {
		return fmt.Errorf("proxy switch to %q: no upstream addresses; pass at least one host:port", release)
	}
	seen := make(map[string]bool, len(rt.Upstreams))
	for _, a := range rt.Upstreams {
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
		if seen[a] {
			return fmt.Errorf("proxy switch to %q: upstream %q is listed twice", release, a)
		}
		seen[a] = true
	}
	if rt.Balance != LeastInFlight && rt.Balance != RoundRobin {
		return fmt.Errorf("proxy switch to %q: unknown Balance %d; use LeastInFlight or RoundRobin", release, int(rt.Balance))
	}
	if rt.Affinity.Cookie != "" && rt.Affinity.ClientIP {
		return fmt.Errorf("proxy switch to %q: set either Affinity.Cookie or Affinity.ClientIP, not both", release)
	}
	if c := rt.Affinity.Cookie; c != "" && strings.ContainsAny(c, "=;, \t\r\n\"") {
		return fmt.Errorf("proxy switch to %q: affinity cookie name %q is not a valid token", release, c)
	}
	return nil
}
