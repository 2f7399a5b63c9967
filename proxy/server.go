package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// server is one Serve call: a listener and the connections it accepted.
type server struct {
	p        *Proxy
	ln       net.Listener
	shutting atomic.Bool

	mu    sync.Mutex
	conns map[*clientConn]struct{}
	wg    sync.WaitGroup
}

// Serve accepts HTTP/1.1 connections on ln until ctx ends, then shuts them
// down: it stops accepting, closes idle keep-alive connections, lets
// in-flight requests finish (up to Options.ShutdownTimeout, then closes
// what is left) and closes open WebSockets with a 1001 close frame.
// Shutdown does not drain releases (spec §4.6). Serve may run for several
// listeners at once; each shuts down with its own ctx. It returns nil after
// a shutdown, or the error that stopped ln.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	s := &server{p: p, ln: ln, conns: map[*clientConn]struct{}{}}
	stop := context.AfterFunc(ctx, func() {
		s.shutting.Store(true)
		ln.Close()
	})
	defer stop()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				s.shutdown()
				return nil
			}
			if isTemporaryAccept(err) {
				// Out of file descriptors and the like: back off as
				// net/http does instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.logWarn("proxy accept", err)
				time.Sleep(delay)
				continue
			}
			s.shutting.Store(true)
			s.shutdown()
			return fmt.Errorf("proxy accept on %s: %w", ln.Addr(), err)
		}
		delay = 0
		cc := newClientConn(s, conn)
		s.mu.Lock()
		s.conns[cc] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go cc.serve()
	}
}

func isTemporaryAccept(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var ne net.Error
	return isTemporaryErrno(err) || errors.As(err, &ne) && ne.Timeout()
}

func (s *server) remove(cc *clientConn) {
	s.mu.Lock()
	delete(s.conns, cc)
	s.mu.Unlock()
	s.wg.Done()
}

// shutdown wakes idle connections (they close), asks WebSockets to go away,
// lets active requests finish, and closes whatever is left at the timeout.
func (s *server) shutdown() {
	s.mu.Lock()
	for cc := range s.conns {
		cc.shutdownNudge()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	t := time.NewTimer(s.p.opts.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	s.mu.Lock()
	for cc := range s.conns {
		cc.conn.Close()
	}
	s.mu.Unlock()
	<-done
}

func (p *Proxy) logWarn(msg string, err error) {
	if p.opts.Logger != nil {
		p.opts.Logger.Warn(msg, "error", err.Error())
	}
}
