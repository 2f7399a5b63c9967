package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxHeaderBytes bounds a request's head, as net/http's default
// (DefaultMaxHeaderBytes plus its 4 KiB slack).
const maxHeaderBytes = http.DefaultMaxHeaderBytes + 4096

// Connection states, for shutdown.
const (
	connIdle   = iota // waiting for the next request
	connActive        // serving a request
	connTunnel        // relaying a WebSocket
)

// clientConn serves one client connection: one goroutine reads a request,
// forwards it, relays the response and loops, so a plain exchange involves
// no goroutine hand-off at all (net/http's server and transport use four
// goroutines per proxied request).
type clientConn struct {
	s    *server
	p    *Proxy
	conn net.Conn
	lim  limitReader // under br: caps the size of a request head
	br   *bufio.Reader
	bw   *bufio.Writer

	remoteIP  string // for X-Forwarded-For
	localPort string // for X-Forwarded-Port when a request has no Host

	state atomic.Int32
	// served: at least one request was handled. A connection that was
	// accepted but has not sent its first request yet is not "idle" for a
	// shutdown: its client expects an answer (a daemon reload must not
	// reset it).
	served atomic.Bool
	tun    atomic.Pointer[tunnel]
	x      exchange // the current exchange, reused per request

	// Per request, owned by the serving goroutine.
	linger    bool          // unread request data remains: linger before closing
	body      *bodyCopy     // the running request-body copy, or nil
	watchDone chan struct{} // closed when the client watcher exits, nil if none runs
	watchMu   sync.Mutex    // orders the watcher's start against the exchange's end
	expect100 bool          // the client waits for "100 Continue" before its body
	one       [1]byte       // what sleepIdle reads into
}

func newClientConn(s *server, conn net.Conn) *clientConn {
	cc := &clientConn{s: s, p: s.p, conn: conn}
	cc.x.cc = cc
	cc.lim.r = conn
	cc.lim.n = math.MaxInt64
	cc.br = s.p.getReader(&cc.lim)
	cc.bw = s.p.getWriter(conn)
	if host, _, err := net.SplitHostPort(conn.RemoteAddr().String()); err == nil {
		cc.remoteIP = host
	}
	if _, port, err := net.SplitHostPort(conn.LocalAddr().String()); err == nil {
		cc.localPort = port
	}
	return cc
}

// limitReader fails once n bytes were read through it. A byte read while
// the connection slept without buffers (see sleepIdle) is returned first.
type limitReader struct {
	r       io.Reader
	n       int64
	pending []byte
}

var errHeaderTooLarge = errors.New("request head too large")

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	if len(l.pending) > 0 && len(p) > 0 {
		n := copy(p, l.pending)
		l.pending = l.pending[n:]
		l.n -= int64(n)
		return n, nil
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (cc *clientConn) serve() {
	defer cc.s.remove(cc)
	defer cc.conn.Close()
	defer func() {
		if cc.linger {
			cc.lingerClose()
		}
	}()
	defer func() {
		// A bug must cost one connection, not the daemon (net/http's
		// server does the same).
		if r := recover(); r != nil {
			if l := cc.p.opts.Logger; l != nil {
				l.Error("proxy: panic serving connection", "remote", cc.remoteIP, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			}
		}
	}()
	for first := true; ; first = false {
		if !cc.waitRequest(first) {
			return
		}
		req, err := cc.readRequest()
		if err != nil {
			cc.reject(err)
			return
		}
		keep := cc.handle(req)
		cc.served.Store(true)
		if !keep || cc.s.shutting.Load() {
			return
		}
	}
}

// waitRequest waits for the first byte of the next request: up to
// ReadHeaderTimeout on a new connection, IdleTimeout between requests.
func (cc *clientConn) waitRequest(first bool) bool {
	o := &cc.p.opts
	cc.state.Store(connIdle)
	switch {
	case first && cc.s.shutting.Load():
		// Accepted just before the listener closed: serve its request.
		cc.conn.SetReadDeadline(time.Now().Add(min(o.ReadHeaderTimeout, newConnGrace)))
	case first:
		cc.conn.SetReadDeadline(time.Now().Add(o.ReadHeaderTimeout))
	case cc.s.shutting.Load():
		return false
	case o.IdleTimeout > o.idleShrink && cc.br.Buffered() == 0 && cc.body == nil && cc.watchDone == nil:
		// Wait with the buffers first; a connection still idle after
		// o.idleShrink gives them back and sleeps on a single byte.
		// (Checking shutting after setting the deadline orders this
		// against a shutdown's nudge.)
		cc.conn.SetReadDeadline(time.Now().Add(o.idleShrink))
		if cc.s.shutting.Load() {
			return false
		}
		if _, err := cc.br.Peek(1); err != nil {
			if !isTimeout(err) || !cc.sleepIdle(o.IdleTimeout-o.idleShrink) {
				return false
			}
		}
	default:
		cc.conn.SetReadDeadline(time.Now().Add(o.IdleTimeout))
		if cc.s.shutting.Load() {
			return false
		}
	}
	for {
		b, err := cc.br.Peek(1)
		if err != nil {
			return false
		}
		// RFC 9112 §2.2: ignore empty lines before a request line (old
		// clients send an extra CRLF after a POST body).
		if b[0] != '\r' && b[0] != '\n' {
			break
		}
		cc.br.Discard(1)
	}
	cc.state.Store(connActive)
	if !first && !headBuffered(cc.br) {
		// The head is still arriving: give it ReadHeaderTimeout. (A head
		// already complete in the buffer needs no further read, and no
		// deadline change.)
		cc.conn.SetReadDeadline(time.Now().Add(o.ReadHeaderTimeout))
	}
	return true
}

// idleShrinkAfter is how long a keep-alive connection waits for its next
// request holding its 8 KiB of read and write buffers by default; after
// that it returns them to the Proxy's pools (see sleepIdle). Busy
// connections never pay for it; many idle ones cost a quarter as much.
const idleShrinkAfter = time.Second

// sleepIdle waits up to d for the next request's first byte without
// buffers: they go back to the pools, the wait reads into one byte of cc,
// and fresh buffers are taken when the byte arrives (it is then read
// first, through cc.lim). It reports whether a request is arriving.
func (cc *clientConn) sleepIdle(d time.Duration) bool {
	p := cc.p
	p.putReader(cc.br)
	p.putWriter(cc.bw)
	cc.br, cc.bw = nil, nil
	cc.conn.SetReadDeadline(time.Now().Add(d))
	if cc.s.shutting.Load() {
		return false
	}
	n, err := cc.conn.Read(cc.one[:])
	if n == 0 {
		_ = err // closed, idle timeout or shutdown: the connection ends
		return false
	}
	cc.lim.pending = cc.one[:1]
	cc.br = p.getReader(&cc.lim)
	cc.bw = p.getWriter(cc.conn)
	return true
}

// headBuffered reports whether a complete request head is already buffered.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\r\n\r\n")) || bytes.Contains(b, []byte("\n\n"))
}

// statusError is a request the proxy answers itself.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func (cc *clientConn) readRequest() (*http.Request, error) {
	start := time.Now()
	cc.lim.n = maxHeaderBytes
	req, err := http.ReadRequest(cc.br)
	hit := cc.lim.n <= 0
	cc.lim.n = math.MaxInt64
	if err != nil {
		if hit {
			return nil, &statusError{http.StatusRequestHeaderFieldsTooLarge, "request header fields too large"}
		}
		return nil, err
	}
	if req.ProtoMajor != 1 {
		return nil, &statusError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	// textproto tolerates spaces in field names; net/http's server (and
	// RFC 9110 §5.1) does not.
	for k := range req.Header {
		if strings.IndexByte(k, ' ') >= 0 {
			return nil, &statusError{http.StatusBadRequest, "invalid header name"}
		}
	}
	// http.ReadRequest moved Host into req.Host (rejecting duplicates).
	if req.ProtoAtLeast(1, 1) && req.Host == "" {
		return nil, &statusError{http.StatusBadRequest, "missing required Host header"}
	}
	if !validHost(req.Host) {
		return nil, &statusError{http.StatusBadRequest, "malformed Host header"}
	}
	if req.Method == http.MethodConnect {
		return nil, &statusError{http.StatusMethodNotAllowed, "CONNECT is not supported by a reverse proxy"}
	}
	cc.expect100 = false
	if exp, ok := req.Header["Expect"]; ok {
		if len(exp) != 1 || !strings.EqualFold(exp[0], "100-continue") || !req.ProtoAtLeast(1, 1) {
			return nil, &statusError{http.StatusExpectationFailed, "unsupported Expect header"}
		}
		// The proxy answers 100 Continue itself when it starts reading the body.
		delete(req.Header, "Expect")
		cc.expect100 = true
	}
	if hasBody(req) {
		// The head deadline must not cut a long upload.
		var dl time.Time
		if d := cc.p.opts.ReadTimeout; d > 0 {
			dl = start.Add(d)
		}
		cc.conn.SetReadDeadline(dl)
	}
	return req, nil
}

func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody
}

// reject answers a request the proxy could not parse or refuses, then the
// connection closes. A client that went away gets nothing.
func (cc *clientConn) reject(err error) {
	var se *statusError
	switch {
	case errors.As(err, &se):
	case strings.Contains(err.Error(), "unsupported transfer encoding"):
		se = &statusError{http.StatusNotImplemented, err.Error()}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), isTimeout(err):
		return
	default:
		var ne *net.OpError
		if errors.As(err, &ne) {
			return
		}
		se = &statusError{http.StatusBadRequest, "malformed request"}
	}
	cc.linger = cc.writeSimple(se.code, []byte(strconv.Itoa(se.code)+" "+http.StatusText(se.code)+": "+se.msg+"\n"), true)
}

// lingerClose half-closes the connection and discards what the client
// still sends for a moment before the full close: closing a socket with
// unread input makes the kernel send a reset, which can destroy the error
// response before the client reads it (net/http does the same).
func (cc *clientConn) lingerClose() {
	type closeWriter interface{ CloseWrite() error }
	cw, ok := cc.conn.(closeWriter)
	if !ok {
		return
	}
	cw.CloseWrite()
	// Keep reading what the client still sends (an upload the upstream
	// answered early), so closing does not reset the connection before the
	// client read the response; bounded in time and bytes.
	cc.conn.SetReadDeadline(time.Now().Add(lingerTime))
	io.CopyN(io.Discard, cc.conn, lingerBytes)
}

// Bounds of lingerClose.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// handle serves one request; it reports whether the connection may carry
// another one.
func (cc *clientConn) handle(req *http.Request) (keep bool) {
	ws := isWebSocketUpgrade(req)
	x := &cc.x
	x.reset(ws)
	if !cc.p.route(x, req) {
		return cc.noRelease(req, ws)
	}
	defer func() {
		cc.p.finish(x)
		// A drain cut that reached the exchange after its response was
		// complete may have poisoned the client connection's write
		// deadline: do not reuse it. (Cuts run under the release lock,
		// like finish, so one that happened is visible here.)
		if x.stop.Load() != 0 {
			keep = false
		}
	}()
	if ws {
		cc.serveWebSocket(req)
		return false
	}
	return cc.forward(req)
}

var (
	noReleaseBody = []byte("No active release\n")
	noReleaseWS   = []byte("HTTP/1.1 503 Service Unavailable\r\n\r\n")
	badGateway    = []byte("Bad gateway\n")
	gwTimeout     = []byte("Gateway timeout\n")
)

func (cc *clientConn) noRelease(req *http.Request, ws bool) bool {
	if ws {
		// The original answers a bare status line and ends the socket.
		cc.bw.Write(noReleaseWS)
		cc.bw.Flush()
		return false
	}
	// An unread request body would be taken for the next request.
	closeAfter := req.Close || hasBody(req)
	cc.linger = hasBody(req)
	return cc.writeSimple(http.StatusServiceUnavailable, noReleaseBody, closeAfter) && !closeAfter
}

// writeSimple writes a complete text/plain response from the proxy itself.
func (cc *clientConn) writeSimple(code int, body []byte, closeAfter bool) bool {
	cc.x.status = int32(code)
	w := cc.bw
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(code))
	w.WriteByte(' ')
	w.WriteString(http.StatusText(code))
	w.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(body)))
	w.WriteString("\r\nDate: ")
	w.WriteString(time.Now().UTC().Format(http.TimeFormat))
	if closeAfter {
		w.WriteString("\r\nConnection: close")
	}
	w.WriteString("\r\n\r\n")
	w.Write(body)
	return w.Flush() == nil
}

// newConnGrace is how long a shutdown waits for the first request of a
// connection that was accepted but has not sent one yet.
const newConnGrace = 2 * time.Second

// shutdownNudge makes the connection notice a shutdown: an idle one wakes
// and closes (one that has not sent its first request yet gets
// newConnGrace to do so), a WebSocket is sent 1001, an active one closes
// after its response.
func (cc *clientConn) shutdownNudge() {
	switch cc.state.Load() {
	case connIdle:
		if !cc.served.Load() {
			cc.conn.SetReadDeadline(time.Now().Add(newConnGrace))
			return
		}
		cc.conn.SetReadDeadline(aLongTimeAgo)
	case connTunnel:
		if t := cc.tun.Load(); t != nil {
			go t.goingAway(cc.p.opts.WebSocketCloseGrace, nil)
		}
	}
}
