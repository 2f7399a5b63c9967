package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Peer is the credentials of the process at the other end of a control
// connection (SO_PEERCRED).
type Peer struct {
	PID      int32
	UID, GID uint32
}

// Handler executes one decoded request. The returned result is merged into
// the success reply; an error becomes {"status":"error","error":…}.
type Handler interface {
	Handle(ctx context.Context, req Request, peer Peer) (any, error)
}

// Stream is a handler result that sends several reply lines: the server
// calls it with send, which writes one success line per value, until it
// returns or the client disconnects (ctx ends). Used by `logs --follow`.
type Stream func(ctx context.Context, send func(v any) error) error

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req Request, peer Peer) (any, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, req Request, peer Peer) (any, error) {
	return f(ctx, req, peer)
}

// Server serves the control protocol on a listener. Each connection may
// carry several requests; they run concurrently and replies are written as
// each finishes (spec §7.1). Reading requests is bounded in size, time and
// connection count (docs/control.md, Limits) so that clients which connect
// and stall cannot pile up goroutines and descriptors; replies are not.
type Server struct {
	Handler Handler
	// Authorize decides whether a peer may send commands; nil allows every
	// peer (file permissions of the socket then are the only guard).
	Authorize func(Peer) error
	// OnConnError reports connection-level failures (the daemon's
	// `control connection error` event); may be nil.
	OnConnError func(error)
	// WriteTimeout bounds writing one reply to a slow client (default 10 s).
	WriteTimeout time.Duration
	// ReadTimeout bounds reading one request line: the first line must be
	// complete within it of the accept, a later one within it of its first
	// byte (default DefaultReadTimeout). Replies are never bounded by it.
	ReadTimeout time.Duration
	// IdleTimeout closes a connection that has no request in flight and
	// does not start another one within it of its last reply (default
	// DefaultIdleTimeout). A connection waiting for a reply or holding a
	// stream is never idle.
	IdleTimeout time.Duration
	// MaxConns caps the connections open at once (default DefaultMaxConns);
	// beyond it a new connection gets an error line and is closed.
	MaxConns int

	mu        sync.Mutex
	ln        net.Listener
	conns     map[*conn]struct{}
	stopping  bool
	saturated bool // a refusal was reported since the count last fell below MaxConns
	wg        sync.WaitGroup
}

// Defaults of the Server's limits.
const (
	// DefaultReadTimeout leaves a human typing into `socat` time for a
	// line while a client that never finishes one frees its slot soon.
	DefaultReadTimeout = 30 * time.Second
	// DefaultIdleTimeout: the CLI sends one request per connection, so
	// only hand-held or scripted sessions ever sit idle.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultMaxConns is far above what deploys, status polls, log
	// followers and probes use together, and bounds a flood.
	DefaultMaxConns = 64
)

type conn struct {
	net.Conn
	peer Peer
	wmu  sync.Mutex

	// The read deadline follows the connection's phase (see deadline);
	// rmu guards the phase, which both the read loop and finishing
	// handlers change.
	rmu      sync.Mutex
	lineAt   time.Time // when the pending request line began; zero between lines
	idleAt   time.Time // when the last in-flight request finished (or the accept)
	inflight int
}

type connKey struct{}

// Serve accepts connections until ctx ends or Stop is called. It returns nil
// after a Stop and the accept error otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.conns = make(map[*conn]struct{})
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { s.Stop(ctx) })
	defer stop()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			stopping := s.stopping
			s.mu.Unlock()
			if stopping {
				return nil
			}
			return fmt.Errorf("accept control connection: %w", err)
		}
		// The first request line is timed from the accept; blank lines
		// before it do not restart the idle clock either.
		now := time.Now()
		c := &conn{Conn: nc, lineAt: now, idleAt: now}
		ok, busy, report := s.track(c)
		if busy {
			s.refuse(nc, report)
		}
		if !ok {
			nc.Close()
			continue
		}
		s.wg.Go(func() { s.serveConn(ctx, c) })
	}
}

// Stop stops accepting and closes every connection except the one ctx was
// handed to (the connection of the request that asked for the stop, which
// is kept as the completion channel, spec §3.6 step 2).
func (s *Server) Stop(ctx context.Context) {
	keep, _ := ctx.Value(connKey{}).(*conn)
	s.mu.Lock()
	s.stopping = true
	ln := s.ln
	var toClose []*conn
	for c := range s.conns {
		if c != keep {
			toClose = append(toClose, c)
		}
	}
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, c := range toClose {
		c.Close()
	}
}

// Wait blocks until every connection handler has returned.
func (s *Server) Wait() { s.wg.Wait() }

// track registers c. It returns ok false when c must be closed instead:
// the server is stopping, or busy (MaxConns reached; report is true for the
// first refusal since the count was last below the cap, so a flood yields
// one event, not one per connection).
func (s *Server) track(c *conn) (ok, busy, report bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false, false, false
	}
	if len(s.conns) >= s.maxConns() {
		report = !s.saturated
		s.saturated = true
		return false, true, report
	}
	s.conns[c] = struct{}{}
	return true, false, false
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if len(s.conns) < s.maxConns() {
		s.saturated = false
	}
	s.mu.Unlock()
}

// ErrBusy is reported (OnConnError) when connections are refused because
// MaxConns are open.
var ErrBusy = errors.New("control socket busy")

// refuse answers a connection over the cap with an error line; the caller
// closes it. It runs in the accept loop: a fresh connection's send buffer
// is empty, so the write does not block, and the short deadline guarantees
// it. Closing at once (no lingering to read the request) keeps a flood from
// holding descriptors; the client reads the line even if its own write
// failed (see Call).
func (s *Server) refuse(nc net.Conn, report bool) {
	_ = nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = nc.Write(Failure(fmt.Sprintf("%s: %d connections open; retry later", busyMessage, s.maxConns())))
	if report {
		s.connError(fmt.Errorf("refuse control connections: %w (%d open)", ErrBusy, s.maxConns()))
	}
}

// busyMessage starts the error reply of a refused connection (Probe
// recognizes it).
const busyMessage = "Control socket busy"

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return DefaultMaxConns
}

func (s *Server) readTimeout() time.Duration {
	if s.ReadTimeout > 0 {
		return s.ReadTimeout
	}
	return DefaultReadTimeout
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (s *Server) serveConn(ctx context.Context, c *conn) {
	defer s.untrack(c)
	defer c.Close()
	peer, err := peerCredentials(c.Conn)
	if err != nil {
		s.connError(fmt.Errorf("read peer credentials: %w", err))
		return
	}
	c.peer = peer
	var inflight sync.WaitGroup
	defer inflight.Wait()
	// A client that disconnects does not cancel its commands (spec §7.3):
	// they get ctx, which only the server's own end cancels. Streams get
	// streamCtx and end when the client goes away (the read loop returns).
	ctx = context.WithValue(ctx, connKey{}, c)
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := bufio.NewReaderSize(c, 4096)
	for {
		line, err := s.nextLine(c, r)
		var te *timeoutError
		switch {
		case errors.As(err, &te):
			// Close at once rather than after the commands still in
			// flight; a client that broke off a request is told why.
			if te.report {
				_ = s.reply(c, Failure(te.msg))
				s.connError(fmt.Errorf("peer pid %d uid %d: %w", c.peer.PID, c.peer.UID, err))
			}
			c.Close()
			return
		case errors.Is(err, errLineTooLong):
			_ = s.reply(c, Failure(fmt.Sprintf("Control request exceeds %d bytes", MaxRequestBytes)))
			c.Close()
			return
		case err != nil:
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.connError(err)
			}
			return
		case len(line) == 0:
			continue
		}
		inflight.Go(func() {
			defer c.finished(s)
			s.handleLine(ctx, streamCtx, c, line)
		})
	}
}

// nextLine reads the next request line under the read and idle timeouts.
// On success the line's request counts as in flight (unless it is blank);
// the handler calls c.finished.
func (s *Server) nextLine(c *conn, r *bufio.Reader) ([]byte, error) {
	for {
		c.rmu.Lock()
		waiting := c.lineAt.IsZero()
		c.rmu.Unlock()
		if !waiting {
			break
		}
		c.arm(s)
		if _, err := r.Peek(1); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, err
			}
			if c.expired(s) {
				// The normal end of a connection that is done: closed
				// without a reply line, which no request asked for (a
				// stream reader sees the end of its stream).
				return nil, &timeoutError{msg: fmt.Sprintf("control connection idle for %v", s.idleTimeout()), err: err}
			}
			continue // a request finished meanwhile and moved the deadline
		}
		c.rmu.Lock()
		c.lineAt = time.Now()
		c.rmu.Unlock()
	}
	c.arm(s)
	line, err := readLine(r, MaxRequestBytes)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, &timeoutError{
			msg:    fmt.Sprintf("Control request not received within %v; closing the connection", s.readTimeout()),
			report: true,
			err:    err,
		}
	}
	// A blank line is no request: the clock of the line phase keeps
	// running, so blank lines cannot keep a connection open.
	if err != nil || len(line) > 0 {
		c.rmu.Lock()
		c.lineAt = time.Time{}
		if err == nil {
			c.inflight++
		}
		c.rmu.Unlock()
	}
	return line, err
}

// timeoutError ends a connection whose client did not keep to the time
// limits.
type timeoutError struct {
	msg string
	// report: a request not received is answered with msg and reported;
	// an idle connection is just closed.
	report bool
	err    error
}

func (e *timeoutError) Error() string { return e.msg }
func (e *timeoutError) Unwrap() error { return e.err }

// deadline is the read deadline of c's current phase (rmu held): reading a
// request line, ReadTimeout from its start (from the accept for the first
// one); between lines with a request in flight, none (the client is waiting
// for a reply or a stream, maybe for minutes); otherwise IdleTimeout from
// the last reply.
func (c *conn) deadline(s *Server) time.Time {
	switch {
	case !c.lineAt.IsZero():
		return c.lineAt.Add(s.readTimeout())
	case c.inflight > 0:
		return time.Time{}
	default:
		return c.idleAt.Add(s.idleTimeout())
	}
}

// arm sets the read deadline for c's current phase.
func (c *conn) arm(s *Server) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	_ = c.SetReadDeadline(c.deadline(s))
}

// expired tells whether the deadline of c's current phase has passed, as
// opposed to a deadline that was moved after the read had failed.
func (c *conn) expired(s *Server) bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	dl := c.deadline(s)
	return !dl.IsZero() && !time.Now().Before(dl)
}

// finished ends one in-flight request; the last one starts the idle timer.
// Setting the deadline here interrupts nothing: it only ever goes from none
// to a time in the future.
func (c *conn) finished(s *Server) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.inflight--
	if c.inflight == 0 {
		c.idleAt = time.Now()
		if c.lineAt.IsZero() {
			_ = c.SetReadDeadline(c.deadline(s))
		}
	}
}

func (s *Server) handleLine(ctx, streamCtx context.Context, c *conn, line []byte) {
	req, err := DecodeRequest(line)
	if err != nil {
		s.fail(ctx, c, req, err)
		return
	}
	if s.Authorize != nil {
		if err := s.Authorize(c.peer); err != nil {
			s.fail(ctx, c, req, err)
			return
		}
	}
	result, err := s.Handler.Handle(ctx, req, c.peer)
	if err != nil {
		s.fail(ctx, c, req, err)
		endAfterReply(c, req)
		return
	}
	if stream, ok := result.(Stream); ok {
		err := stream(streamCtx, func(v any) error {
			line, err := Success(v)
			if err != nil {
				return err
			}
			return s.reply(c, line)
		})
		if err != nil && streamCtx.Err() == nil {
			s.fail(ctx, c, req, err)
		}
		return
	}
	out, err := Success(result)
	if err != nil {
		s.fail(ctx, c, req, err)
		return
	}
	_ = s.reply(c, out)
	endAfterReply(c, req)
}

// endAfterReply closes the connection after the reply to a shutdown or
// retire-owner, success or error: the reply is the completion signal and
// the daemon ends the connection after it (spec §3.6 step 9, §7.3), so a
// client holding it open cannot delay the daemon's exit.
func endAfterReply(c *conn, req Request) {
	if req.Command == CmdShutdown || req.Command == CmdRetireOwner {
		c.Close()
	}
}

// ErrorReporter is implemented by handlers that record failed commands
// (the daemon's `command failed` event).
type ErrorReporter interface {
	CommandFailed(ctx context.Context, req Request, err error)
}

func (s *Server) fail(ctx context.Context, c *conn, req Request, err error) {
	if rep, ok := s.Handler.(ErrorReporter); ok {
		rep.CommandFailed(ctx, req, err)
	}
	_ = s.reply(c, Failure(err.Error()))
}

func (s *Server) reply(c *conn, line []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	timeout := s.WriteTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	// A client that went away does not cancel the command; its reply is
	// simply dropped (spec §7.3).
	_, err := c.Write(line)
	return err
}

func (s *Server) connError(err error) {
	if s.OnConnError != nil {
		s.OnConnError(err)
	}
}

var errLineTooLong = errors.New("line too long")

// readLine reads one '\n'-terminated line of at most limit bytes (without
// the newline). A final line without newline is returned with io.EOF unset.
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > limit+1 {
			return nil, errLineTooLong
		}
		switch {
		case err == nil:
			return trimEOL(line), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return trimEOL(line), nil
		default:
			return nil, err
		}
	}
}

func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func peerCredentials(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, fmt.Errorf("not a unix connection (%T)", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if credErr != nil {
		return Peer{}, credErr
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}
