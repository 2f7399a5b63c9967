package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
// each finishes (spec §7.1).
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

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{}
	stopping bool
	wg       sync.WaitGroup
}

type conn struct {
	net.Conn
	peer Peer
	wmu  sync.Mutex
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
		c := &conn{Conn: nc}
		if !s.track(c) {
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

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
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
	// Streams end when the client goes away (the read loop returns).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := bufio.NewReaderSize(c, 4096)
	for {
		line, err := readLine(r, MaxRequestBytes)
		if errors.Is(err, errLineTooLong) {
			_ = s.reply(c, Failure(fmt.Sprintf("Control request exceeds %d bytes", MaxRequestBytes)))
			return
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.connError(err)
			}
			return
		}
		if len(line) == 0 {
			continue
		}
		inflight.Go(func() { s.handleLine(ctx, c, line) })
	}
}

func (s *Server) handleLine(ctx context.Context, c *conn, line []byte) {
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
	result, err := s.Handler.Handle(context.WithValue(ctx, connKey{}, c), req, c.peer)
	if err != nil {
		s.fail(ctx, c, req, err)
		return
	}
	if stream, ok := result.(Stream); ok {
		err := stream(ctx, func(v any) error {
			line, err := Success(v)
			if err != nil {
				return err
			}
			return s.reply(c, line)
		})
		if err != nil && ctx.Err() == nil {
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
	if req.Command == CmdShutdown || req.Command == CmdRetireOwner {
		// The reply is the completion signal; the daemon ends the
		// connection after it (spec §7.3).
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
