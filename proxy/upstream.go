package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// slowAfter is how long an upstream read may block before the proxy starts
// watching the client connection for a close (see clientConn.startWatch).
// Fast exchanges never pay for the watcher goroutine.
const slowAfter = 100 * time.Millisecond

// aLongTimeAgo is a deadline in the past: setting it interrupts blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// connPool keeps idle keep-alive connections to one upstream address of one
// release, newest on top. Idle connections expire after
// Options.UpstreamIdleTimeout; a timer (armed only while something is idle)
// closes expired ones, so no goroutine runs per pool.
type connPool struct {
	p    *Proxy
	addr string

	mu     sync.Mutex
	idle   []*upConn
	timer  *time.Timer
	armed  bool
	closed bool
}

func newConnPool(p *Proxy, addr string) *connPool {
	cp := &connPool{p: p, addr: addr}
	cp.timer = time.AfterFunc(time.Hour, cp.sweep)
	cp.timer.Stop()
	return cp
}

// get returns an idle connection (reused = true) or dials a new one.
func (cp *connPool) get() (uc *upConn, reused bool, err error) {
	now := time.Now()
	var stale []*upConn
	cp.mu.Lock()
	if n := len(cp.idle); n > 0 {
		top := cp.idle[n-1]
		if now.Sub(top.idleSince) < cp.p.opts.UpstreamIdleTimeout {
			cp.idle = cp.idle[:n-1]
			cp.mu.Unlock()
			return top, true, nil
		}
		// The newest is expired, so all are.
		stale = cp.idle
		cp.idle = nil
	}
	cp.mu.Unlock()
	for _, s := range stale {
		s.conn.Close()
	}
	conn, err := cp.p.dialer.DialContext(context.Background(), "tcp", cp.addr)
	if err != nil {
		return nil, false, err
	}
	return newUpConn(conn, cp), false, nil
}

// put returns a healthy connection after a complete exchange.
func (cp *connPool) put(uc *upConn) {
	uc.idleSince = time.Now()
	cp.mu.Lock()
	if cp.closed || len(cp.idle) >= cp.p.opts.MaxIdleConnsPerUpstream {
		cp.mu.Unlock()
		uc.conn.Close()
		return
	}
	cp.idle = append(cp.idle, uc)
	if !cp.armed {
		cp.armed = true
		cp.timer.Reset(cp.p.opts.UpstreamIdleTimeout)
	}
	cp.mu.Unlock()
}

// sweep closes expired idle connections (oldest are at the bottom).
func (cp *connPool) sweep() {
	now := time.Now()
	timeout := cp.p.opts.UpstreamIdleTimeout
	cp.mu.Lock()
	i := 0
	for i < len(cp.idle) && now.Sub(cp.idle[i].idleSince) >= timeout {
		i++
	}
	expired := append([]*upConn(nil), cp.idle[:i]...)
	cp.idle = append(cp.idle[:0], cp.idle[i:]...)
	cp.armed = len(cp.idle) > 0
	if cp.armed {
		cp.timer.Reset(cp.idle[0].idleSince.Add(timeout).Sub(now))
	}
	cp.mu.Unlock()
	for _, uc := range expired {
		uc.conn.Close()
	}
}

// closeIdle closes every idle connection; with forever set the pool also
// refuses later ones (the release is forgotten).
func (cp *connPool) closeIdle(forever bool) {
	cp.mu.Lock()
	idle := cp.idle
	cp.idle = nil
	cp.closed = cp.closed || forever
	cp.armed = false
	cp.timer.Stop()
	cp.mu.Unlock()
	for _, uc := range idle {
		uc.conn.Close()
	}
}

// upConn is one upstream connection with its buffers.
type upConn struct {
	conn      net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	pool      *connPool
	idleSince time.Time

	// The fields below belong to the goroutine serving the exchange.

	x      *exchange // while set, Read watches for slow reads and interruptions
	headDL time.Time // response header deadline (Options.ResponseHeaderTimeout), zero if none
	curDL  time.Time // the read deadline last set
	nread  int64     // bytes read during the current exchange
	head   respHead  // the current response head (buffers reused)
	body   respBody  // its body reader
}

func newUpConn(conn net.Conn, cp *connPool) *upConn {
	uc := &upConn{conn: conn, pool: cp}
	uc.br = bufio.NewReaderSize(uc, 4<<10)
	uc.bw = bufio.NewWriterSize(conn, 4<<10)
	return uc
}

var (
	errClientGone  = errors.New("client went away")
	errHeadTimeout = &timeoutError{"timeout awaiting upstream response headers"}
)

type timeoutError struct{ msg string }

func (e *timeoutError) Error() string { return e.msg }
func (e *timeoutError) Timeout() bool { return true }

// Read is the upstream side of uc.br. While an exchange is attached it
// bounds every read by a short deadline: if the upstream is slow, it starts
// the client watcher once and keeps waiting; if the exchange was
// interrupted (drain cut, client gone) it returns that reason. The flag is
// checked after setting the deadline, so an interrupt's past deadline can
// never be overwritten unnoticed.
func (uc *upConn) Read(p []byte) (int, error) {
	x := uc.x
	if x == nil {
		return uc.conn.Read(p)
	}
	for {
		var dl time.Time
		if !x.watching {
			dl = time.Now().Add(slowAfter)
		}
		if !uc.headDL.IsZero() && (dl.IsZero() || uc.headDL.Before(dl)) {
			dl = uc.headDL
		}
		if !dl.Equal(uc.curDL) {
			uc.conn.SetReadDeadline(dl)
			uc.curDL = dl
		}
		if err := x.interrupted(); err != nil {
			return 0, err
		}
		n, err := uc.conn.Read(p)
		uc.nread += int64(n)
		if err == nil || !isTimeout(err) {
			return n, err
		}
		uc.curDL = aLongTimeAgo // the expired deadline is still set: force a new one
		if err := x.interrupted(); err != nil {
			return n, err
		}
		if !uc.headDL.IsZero() && !time.Now().Before(uc.headDL) {
			return n, errHeadTimeout
		}
		if !x.watching {
			x.cc.startWatch()
		}
		if n > 0 {
			return n, nil
		}
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
