package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// tunnelBufferSize is the per-direction copy buffer an open WebSocket
// holds. It is small because WebSockets are long-lived, numerous and mostly
// quiet; a read that fills it borrows a pooled copyBufferSize buffer for
// the rest of the burst (see pump).
const tunnelBufferSize = 512

// serveWebSocket forwards a WebSocket upgrade on its own upstream
// connection (not from the keep-alive pool) and, after a 101, relays bytes
// both ways while tracking frame boundaries, so a drain deadline or a
// shutdown can close the socket with a proper 1001 close frame. The client
// connection ends with the tunnel.
func (cc *clientConn) serveWebSocket(req *http.Request) {
	x := &cc.x
	conn, err := cc.p.dialer.DialContext(context.Background(), "tcp", x.up.addr)
	for err != nil && x.tgt.single == nil {
		x.up.markDown()
		if !cc.p.failover(x) {
			break
		}
		conn, err = cc.p.dialer.DialContext(context.Background(), "tcp", x.up.addr)
	}
	if err != nil {
		cc.wsFail(req, err)
		return
	}
	uc := newUpConn(conn, nil)
	cc.attach(uc)
	cc.writeHead(uc.bw, req, false)
	err = uc.bw.Flush()
	if err == nil {
		err = readHead(uc.br, &uc.head, req.Method)
	}
	cc.stopWatch()
	if ierr := x.interrupted(); ierr != nil {
		err = ierr
	}
	if err != nil {
		cc.detach(uc, false)
		cc.wsFail(req, err)
		return
	}
	if uc.head.status != http.StatusSwitchingProtocols {
		// The upstream refused the upgrade: relay its answer, then close.
		req.Close = true
		cc.relay(req, uc, false)
		return
	}
	if !uc.head.upgradeWS {
		cc.detach(uc, false)
		cc.wsFail(req, errors.New("upstream switched to another protocol than websocket"))
		return
	}
	uc.x = nil // plain reads from now on
	cc.conn.SetDeadline(time.Time{})
	uc.conn.SetDeadline(time.Time{})
	cc.writeSwitch(&uc.head)
	if err := cc.bw.Flush(); err != nil {
		cc.detach(uc, false)
		return
	}
	// The tunnel copies with buffers of its own and writes to the sockets
	// directly: the connections' buffers go (back to the pools) unless
	// they still hold early bytes to relay.
	cc.p.putWriter(cc.bw)
	cc.bw = nil
	uc.bw = nil
	fromClient := cc.p.unbuffered(cc.br, cc.conn)
	if fromClient != io.Reader(cc.br) {
		cc.br = nil
	}
	fromBackend := cc.p.unbuffered(uc.br, uc.conn)
	if fromBackend != io.Reader(uc.br) {
		uc.br = nil
	}
	t := newTunnel(&cc.p.bufs, cc.conn, fromClient, uc.conn, fromBackend)
	cc.tun.Store(t)
	cc.state.Store(connTunnel)
	// From attach on, a drain cut goes to t; one that came earlier is
	// honoured here (its past deadline was just overwritten).
	if !x.rel.attach(x, t) || x.stop.Load() == stopCut {
		go t.goingAway(cc.p.opts.WebSocketCloseGrace, errCutAtDeadline)
	} else if cc.s.shutting.Load() {
		go t.goingAway(cc.p.opts.WebSocketCloseGrace, nil)
	}
	if err := t.run(); err != nil {
		cc.p.report(x, cc.describe(req, fmt.Errorf("websocket: %w", err)))
	}
}

// unbuffered returns conn itself when br holds no unread byte, having given
// br back to the pool (nothing may use it afterwards), else br.
func (p *Proxy) unbuffered(br *bufio.Reader, conn net.Conn) io.Reader {
	if br.Buffered() > 0 {
		return br
	}
	p.putReader(br)
	return conn
}

// writeSwitch writes the upstream's 101 head as received (its Connection
// and Upgrade fields are what the client must see).
func (cc *clientConn) writeSwitch(h *respHead) {
	w := cc.bw
	w.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	for i := range h.fields {
		writeFieldBytes(w, &h.fields[i])
	}
	cc.writeAffinityCookie(w)
	w.Write(crlf)
}

// wsFail ends a WebSocket upgrade that failed before the tunnel was up: the
// client connection is closed without a response (spec §4.4, §4.7).
func (cc *clientConn) wsFail(req *http.Request, err error) {
	x := &cc.x
	switch {
	case x.stop.Load() == stopGone || errors.Is(err, errClientGone):
		return
	case x.stop.Load() == stopCut:
		err = errCutAtDeadline
	}
	cc.p.report(x, cc.describe(req, fmt.Errorf("websocket: %w", err)))
}

// tunnel relays an established WebSocket.
type tunnel struct {
	bufs                    *sync.Pool // the Proxy's copyBufferSize buffers
	client, backend         net.Conn
	fromClient, fromBackend io.Reader // buffered readers: they may hold early bytes
	toClient, toBackend     relay

	going     atomic.Bool // goingAway was called: close frames are on their way
	why       error       // why goingAway was called (ErrDrained, or nil at shutdown); set before going
	closing   atomic.Bool // closeBoth was called: later I/O errors are ours
	goingOnce sync.Once
	closeOnce sync.Once
}

func newTunnel(bufs *sync.Pool, client net.Conn, fromClient io.Reader, backend net.Conn, fromBackend io.Reader) *tunnel {
	t := &tunnel{bufs: bufs, client: client, backend: backend, fromClient: fromClient, fromBackend: fromBackend}
	t.toClient.dst = client
	t.toBackend.dst = backend
	t.toBackend.mask = true // frames a client (here: the proxy) sends are masked
	return t
}

// run relays until either side ends, then closes both sockets. It returns
// an upstream failure worth reporting, or nil for a normal end.
func (t *tunnel) run() error {
	clientDone := make(chan error, 1)
	go func() {
		_, werr := t.pump(t.fromClient, &t.toBackend, t.bufs)
		if !t.going.Load() {
			t.closeBoth()
		}
		clientDone <- werr
	}()
	rerr, _ := t.pump(t.fromBackend, &t.toClient, t.bufs)
	if !t.going.Load() {
		t.closeBoth()
	}
	// When going away, the client gets until the grace deadline (set by
	// goingAway) to answer the close frame; its pump ends then at the latest.
	werr := <-clientDone
	t.closeBoth()
	if t.going.Load() {
		return t.why
	}
	if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed) {
		return fmt.Errorf("read from upstream: %w", rerr)
	}
	if werr != nil && !errors.Is(werr, net.ErrClosed) && !errors.Is(werr, errCloseSent) {
		return fmt.Errorf("write to upstream: %w", werr)
	}
	return nil
}

// pump copies src into d until either fails. readErr is src's error,
// writeErr d's; errors caused by closeBoth are dropped.
//
// It reads into a small buffer of its own; a read that fills it means a
// burst, so the following reads use a buffer borrowed from the pool, given
// back once a read returns less than the small buffer holds (the burst is
// over). A quiet WebSocket holds 2 × tunnelBufferSize, not 2 × 32 KiB.
func (t *tunnel) pump(src io.Reader, d *relay, pool *sync.Pool) (readErr, writeErr error) {
	small := make([]byte, tunnelBufferSize)
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			pool.Put(big)
		}
	}()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := d.write(buf[:n]); werr != nil {
				if t.closing.Load() {
					return nil, nil
				}
				return nil, werr
			}
		}
		switch {
		case big == nil && n == len(small):
			big = pool.Get().(*[]byte)
			buf = *big
		case big != nil && n < len(small):
			pool.Put(big)
			big, buf = nil, small
		}
		if err != nil {
			if t.closing.Load() {
				return nil, nil
			}
			return err, nil
		}
	}
}

// goingAway closes the tunnel gently: a 1001 close frame to both sides (at
// the next frame boundary of each direction), then both sockets close once
// the client has answered or grace has passed.
func (t *tunnel) goingAway(grace time.Duration, why error) {
	t.goingOnce.Do(func() {
		t.why = why
		t.going.Store(true)
		dl := time.Now().Add(grace)
		t.client.SetDeadline(dl) // also unblocks a write to a client that stopped reading
		t.backend.SetDeadline(dl)
		t.toClient.requestClose()
		t.toBackend.requestClose()
	})
}

func (t *tunnel) closeBoth() {
	t.closeOnce.Do(func() {
		t.closing.Store(true)
		t.client.Close()
		t.backend.Close()
	})
}

var errCloseSent = errors.New("websocket close frame sent")

// relay is one direction of a tunnel. It tracks frame boundaries so a close
// frame can be injected without corrupting a frame in transit.
type relay struct {
	mu      sync.Mutex
	dst     net.Conn
	frames  frameTracker
	mask    bool
	pending bool // a close frame waits for the next frame boundary
	sent    bool // the close frame went out; later data is dropped
}

func (d *relay) write(p []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sent {
		return errCloseSent
	}
	if d.pending {
		n := d.frames.feed(p, true)
		if n > 0 {
			if _, err := d.dst.Write(p[:n]); err != nil {
				return err
			}
		}
		if d.frames.atBoundary() {
			return d.sendCloseLocked()
		}
		return nil
	}
	d.frames.feed(p, false)
	_, err := d.dst.Write(p)
	return err
}

// requestClose sends the close frame now if the stream is between frames,
// else as soon as the frame in transit is complete.
func (d *relay) requestClose() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sent || d.pending {
		return
	}
	if d.frames.atBoundary() {
		d.sendCloseLocked()
		return
	}
	d.pending = true
}

func (d *relay) sendCloseLocked() error {
	d.sent, d.pending = true, false
	if _, err := d.dst.Write(closeFrame(d.mask)); err != nil {
		return err
	}
	return errCloseSent
}

// closeFrame is a WebSocket close frame with status 1001 (going away),
// masked when sent towards the upstream (RFC 6455 §5.3).
func closeFrame(masked bool) []byte {
	payload := []byte{0x03, 0xe9, 'g', 'o', 'i', 'n', 'g', ' ', 'a', 'w', 'a', 'y'}
	if !masked {
		return append([]byte{0x88, byte(len(payload))}, payload...)
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	b := append([]byte{0x88, 0x80 | byte(len(payload))}, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// frameTracker follows WebSocket frame boundaries in a byte stream (RFC 6455
// §5.2) without buffering: it only needs each frame's header to know how
// many payload bytes to skip.
type frameTracker struct {
	hdr     [14]byte
	hdrLen  int    // header bytes of the current frame seen so far
	payload uint64 // payload bytes of the current frame still to come
}

func (f *frameTracker) atBoundary() bool { return f.hdrLen == 0 && f.payload == 0 }

// feed consumes p and returns how many bytes it took: all of p, or with
// stop set, only up to the first frame boundary (0 if already at one).
func (f *frameTracker) feed(p []byte, stop bool) int {
	n := 0
	for n < len(p) {
		if stop && f.atBoundary() {
			return n
		}
		if f.payload > 0 {
			k := min(uint64(len(p)-n), f.payload)
			f.payload -= k
			n += int(k)
			continue
		}
		f.hdr[f.hdrLen] = p[n]
		f.hdrLen++
		n++
		if size := f.headerSize(); size > 0 && f.hdrLen == size {
			f.payload = f.payloadLen()
			f.hdrLen = 0
		}
	}
	return n
}

// headerSize is the full header length, known once two bytes are in.
func (f *frameTracker) headerSize() int {
	if f.hdrLen < 2 {
		return 0
	}
	size := 2
	switch f.hdr[1] & 0x7f {
	case 126:
		size += 2
	case 127:
		size += 8
	}
	if f.hdr[1]&0x80 != 0 {
		size += 4
	}
	return size
}

func (f *frameTracker) payloadLen() uint64 {
	switch l := f.hdr[1] & 0x7f; l {
	case 126:
		return uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
	case 127:
		return binary.BigEndian.Uint64(f.hdr[2:10])
	default:
		return uint64(l)
	}
}
