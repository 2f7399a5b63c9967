package proxy

import (
	"fmt"
	"log/slog"
	"time"
)

// Defaults for Options. The server-side values mirror the Node.js HTTP server
// the original ran on (spec §4.8); there is deliberately no default response
// timeout, so long polls and server-sent events keep working.
const (
	DefaultDialTimeout             = 5 * time.Second
	DefaultReadHeaderTimeout       = 60 * time.Second
	DefaultIdleTimeout             = 5 * time.Second
	DefaultUpstreamIdleTimeout     = 4 * time.Second
	DefaultMaxIdleConnsPerUpstream = 256
	DefaultWebSocketCloseGrace     = time.Second
	DefaultShutdownTimeout         = 10 * time.Second
)

// Balance selects an upstream when a release has more than one.
type Balance int

const (
	// LeastInFlight picks the upstream with the fewest open exchanges
	// (HTTP requests plus WebSockets); ties rotate.
	LeastInFlight Balance = iota
	// RoundRobin cycles through the upstreams in order.
	RoundRobin
)

func (b Balance) String() string {
	switch b {
	case LeastInFlight:
		return "least-in-flight"
	case RoundRobin:
		return "round-robin"
	}
	return fmt.Sprintf("Balance(%d)", int(b))
}

// Options configures a Proxy. The zero value is usable: zero durations and
// sizes take the Default* values above.
type Options struct {
	// DialTimeout bounds connecting to an upstream (default 5 s).
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// headers after the request was written. Zero (the default) means no
	// limit, which long polls need; a timeout is answered with 504.
	ResponseHeaderTimeout time.Duration
	// ReadHeaderTimeout bounds reading a client's request headers (default 60 s).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a client keep-alive connection that sends no new
	// request for this long (default 5 s).
	IdleTimeout time.Duration
	// ReadTimeout bounds reading a whole client request, body included.
	// Zero (the default) means no limit, so slow uploads keep streaming.
	ReadTimeout time.Duration
	// UpstreamIdleTimeout closes pooled idle upstream connections (default
	// 4 s: below the 5 s keep-alive timeout of Node.js servers, so the proxy
	// closes an idle connection before the upstream does and never sends a
	// request into a connection the upstream is closing).
	UpstreamIdleTimeout time.Duration
	// MaxIdleConnsPerUpstream bounds the keep-alive pool per upstream
	// address (default 256, enough for a few hundred concurrent clients).
	MaxIdleConnsPerUpstream int
	// WebSocketCloseGrace is how long a WebSocket cut at a drain deadline (or
	// at shutdown) gets to exchange close frames before both sockets are
	// closed (default 1 s).
	WebSocketCloseGrace time.Duration
	// ShutdownTimeout bounds the graceful shutdown that Serve performs when
	// its context ends (default 10 s); connections still open then are closed.
	ShutdownTimeout time.Duration
	// Balance picks among several upstreams of one release (default
	// LeastInFlight). A single upstream skips selection entirely.
	Balance Balance
	// OnError, if set, is called for every upstream failure and every
	// exchange cut at a drain deadline (errors.Is(err, ErrDrained)), with
	// the release the exchange was routed to. The daemon turns it into the
	// "proxy error" event (spec §4.7), or "proxy request drained" for a
	// drain cut. Client aborts are not reported. It
	// runs on the request goroutine and must not block.
	OnError func(release string, err error)
	// Logger, if set, receives the same errors at Warn level, accept
	// errors, drain cuts, and panics while serving a connection (with the
	// stack). Without it the proxy logs nothing.
	Logger *slog.Logger

	// idleShrink is how long a keep-alive connection waits for its next
	// request holding its buffers (default idleShrinkAfter; tests shorten
	// it).
	idleShrink time.Duration
}

func (o Options) withDefaults() (Options, error) {
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DialTimeout", &o.DialTimeout, DefaultDialTimeout},
		{"ResponseHeaderTimeout", &o.ResponseHeaderTimeout, 0},
		{"ReadHeaderTimeout", &o.ReadHeaderTimeout, DefaultReadHeaderTimeout},
		{"IdleTimeout", &o.IdleTimeout, DefaultIdleTimeout},
		{"ReadTimeout", &o.ReadTimeout, 0},
		{"UpstreamIdleTimeout", &o.UpstreamIdleTimeout, DefaultUpstreamIdleTimeout},
		{"WebSocketCloseGrace", &o.WebSocketCloseGrace, DefaultWebSocketCloseGrace},
		{"ShutdownTimeout", &o.ShutdownTimeout, DefaultShutdownTimeout},
		{"idleShrink", &o.idleShrink, idleShrinkAfter},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return o, fmt.Errorf("proxy options: %s is %v; it must not be negative (0 means the default %v)", d.name, *d.v, d.def)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.MaxIdleConnsPerUpstream < 0 {
		return o, fmt.Errorf("proxy options: MaxIdleConnsPerUpstream is %d; it must not be negative (0 means the default %d)", o.MaxIdleConnsPerUpstream, DefaultMaxIdleConnsPerUpstream)
	}
	if o.MaxIdleConnsPerUpstream == 0 {
		o.MaxIdleConnsPerUpstream = DefaultMaxIdleConnsPerUpstream
	}
	if o.Balance != LeastInFlight && o.Balance != RoundRobin {
		return o, fmt.Errorf("proxy options: unknown Balance %d; use LeastInFlight or RoundRobin", int(o.Balance))
	}
	return o, nil
}
