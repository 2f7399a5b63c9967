package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsEcho is a WebSocket upstream that answers each message with
// "<name>:<message>" and reports when a connection ends, with its close status.
type wsEcho struct {
	name   string
	closed chan websocket.StatusCode
}

func newWSEcho(t *testing.T, name string) (*wsEcho, string) {
	e := &wsEcho{name: name, closed: make(chan websocket.StatusCode, 10)}
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, name)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(context.Background())
			if err != nil {
				e.closed <- websocket.CloseStatus(err)
				return
			}
			if err := c.Write(context.Background(), typ, append([]byte(name+":"), msg...)); err != nil {
				e.closed <- websocket.CloseStatus(err)
				return
			}
		}
	}))
	return e, addr
}

func dialWS(t *testing.T, base string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial websocket: %v (response %v)", err, res)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func echo(t *testing.T, c *websocket.Conn, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

func TestWebSocketSurvivesSwitchAndIsCountedOnItsRelease(t *testing.T) {
	p, base := startProxy(t, Options{})
	echoA, addrA := newWSEcho(t, "A")
	_, addrB := newWSEcho(t, "B")
	mustSwitch(t, p, "a", addrA)
	c := dialWS(t, base)
	if got := echo(t, c, "hi"); got != "A:hi" {
		t.Fatalf("echo %q", got)
	}
	mustSwitch(t, p, "b", addrB)
	if got := echo(t, c, "still there"); got != "A:still there" {
		t.Fatalf("after switch: %q; want the old upstream to keep serving", got)
	}
	if status, body := get(t, base+"/"); status != 200 || body != "B" {
		t.Fatalf("HTTP after switch: %d %q", status, body)
	}
	if h, ws := p.Connections("a"); h != 0 || ws != 1 {
		t.Fatalf("Connections(a) = %d, %d; want 0, 1", h, ws)
	}
	c.Close(websocket.StatusNormalClosure, "bye")
	if got := <-echoA.closed; got != websocket.StatusNormalClosure {
		t.Fatalf("upstream saw close status %v; want 1000 relayed", got)
	}
	waitFor(t, "websocket count to drop", func() bool { _, ws := p.Connections("a"); return ws == 0 })
	if r := p.Drain(context.Background(), "a", time.Now()); !r.Drained {
		t.Fatalf("Drain = %+v", r)
	}
}

func TestDrainCompletesWhenLastWebSocketCloses(t *testing.T) {
	p, base := startProxy(t, Options{})
	_, addrA := newWSEcho(t, "A")
	mustSwitch(t, p, "a", addrA)
	c := dialWS(t, base)
	echo(t, c, "x")
	mustSwitch(t, p, "b", named(t, "B"))
	drained := make(chan DrainResult, 1)
	go func() { drained <- p.Drain(context.Background(), "a", time.Now().Add(time.Minute)) }()
	time.Sleep(50 * time.Millisecond)
	c.Close(websocket.StatusNormalClosure, "")
	select {
	case r := <-drained:
		if !r.Drained || r.CutWebSocket != 0 {
			t.Fatalf("Drain = %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not end when the last WebSocket closed")
	}
}

func TestDrainDeadlineClosesWebSocketWith1001(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError, WebSocketCloseGrace: 2 * time.Second})
	echoA, addrA := newWSEcho(t, "A")
	mustSwitch(t, p, "a", addrA)
	c := dialWS(t, base)
	echo(t, c, "x")
	mustSwitch(t, p, "b", named(t, "B"))
	r := p.Drain(context.Background(), "a", time.Now().Add(100*time.Millisecond))
	if r.CutWebSocket != 1 || r.Drained {
		t.Fatalf("Drain = %+v; want one WebSocket cut", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := c.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
		t.Fatalf("client read after the drain deadline: %v (status %v); want close 1001", err, got)
	}
	select {
	case got := <-echoA.closed:
		if got != websocket.StatusGoingAway {
			t.Fatalf("upstream saw close status %v; want 1001", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream side not closed")
	}
	if e := errs.next(t); e.release != "a" || !errors.Is(e.err, ErrDrained) {
		t.Fatalf("OnError(%q, %v); want a and ErrDrained", e.release, e.err)
	}
	waitFor(t, "websocket count to drop", func() bool { _, ws := p.Connections("a"); return ws == 0 })
}

func TestWebSocketUpstreamRefusedClosesClientWithoutResponse(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError})
	mustSwitch(t, p, "a", closedPort(t))
	got := rawRequest(t, base, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	if got != "" {
		t.Fatalf("got %q; want the socket closed without a response", got)
	}
	if e := errs.next(t); e.release != "a" || !strings.Contains(e.err.Error(), "refused") {
		t.Fatalf("OnError(%q, %v)", e.release, e.err)
	}
}

func TestWebSocketRefusedByUpstreamIsRelayed(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "a", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no websockets here", http.StatusForbidden)
	})))
	got := rawRequest(t, base, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 403 Forbidden\r\n") || !strings.Contains(got, "no websockets here") {
		t.Fatalf("got %q; want the upstream's 403 relayed", got)
	}
}

func TestShutdownClosesWebSocketsWith1001(t *testing.T) {
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	_, addrA := newWSEcho(t, "A")
	mustSwitch(t, p, "a", addrA)
	c := dialWS(t, "http://"+ln.Addr().String())
	echo(t, c, "x")
	cancel()
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if _, _, err := c.Read(rctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("read during shutdown: %v; want close 1001", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// frame builds one WebSocket frame with the given payload.
func frame(opcode byte, payload []byte, masked bool) []byte {
	b := []byte{0x80 | opcode}
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n < 1<<16:
		b = append(b, maskBit|126, byte(n>>8), byte(n))
	default:
		b = append(b, maskBit|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	if masked {
		b = append(b, 1, 2, 3, 4)
	}
	return append(b, payload...)
}

func TestFrameTrackerFindsBoundariesInAnySplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var stream []byte
		var ends []int
		for range 1 + rng.IntN(6) {
			size := []int{0, 5, 125, 126, 300, 65535, 65536, 70000}[rng.IntN(8)]
			stream = append(stream, frame(0x2, bytes.Repeat([]byte{'x'}, size), rng.IntN(2) == 0)...)
			ends = append(ends, len(stream))
		}
		var f frameTracker
		var found []int
		pos := 0
		for pos < len(stream) {
			chunk := stream[pos:min(len(stream), pos+1+rng.IntN(200))]
			for len(chunk) > 0 {
				n := f.feed(chunk, true)
				if n == 0 { // at a boundary: step over the next byte
					n = f.feed(chunk[:1], false)
				}
				pos += n
				chunk = chunk[n:]
				if f.atBoundary() {
					found = append(found, pos)
				}
			}
		}
		if !slicesEqual(found, ends) {
			t.Fatalf("round %d: boundaries %v; want %v", round, found, ends)
		}
	}
}

func slicesEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRelayInjectsCloseOnlyAtFrameBoundary(t *testing.T) {
	client, peer := net.Pipe()
	defer client.Close()
	defer peer.Close()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(peer); got <- b }()
	d := &relay{dst: client}
	f1 := frame(0x1, []byte("hello world"), false)
	if err := d.write(f1[:5]); err != nil { // mid-frame
		t.Fatal(err)
	}
	d.requestClose() // must wait for the frame to complete
	f2 := frame(0x1, []byte("next"), false)
	err := d.write(append(f1[5:], f2...))
	if !errors.Is(err, errCloseSent) {
		t.Fatalf("write after close request: %v; want errCloseSent", err)
	}
	client.Close()
	want := append(append([]byte{}, f1...), closeFrame(false)...)
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("stream %q; want the first frame, then the close frame, and nothing of the next frame", b)
	}
}

// wsClientFrame is a masked text frame, as a client sends it (payload
// below 126 bytes).
func wsClientFrame(msg string) []byte {
	key := []byte{1, 2, 3, 4}
	f := []byte{0x81, 0x80 | byte(len(msg)), key[0], key[1], key[2], key[3]}
	for i := range len(msg) {
		f = append(f, msg[i]^key[i%4])
	}
	return f
}

// wsServerFrame is an unmasked text frame (payload below 126 bytes).
func wsServerFrame(msg string) []byte { return append([]byte{0x81, byte(len(msg))}, msg...) }

// rawWSUpstream accepts one WebSocket handshake on a raw socket, answers
// 101 followed by early (in the same write), then runs after; its error is
// sent on the returned channel.
func rawWSUpstream(t *testing.T, early []byte, after func(c net.Conn, br *bufio.Reader) error) (string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			if _, err := http.ReadRequest(br); err != nil {
				return err
			}
			if _, err := c.Write(append([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
				"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"), early...)); err != nil {
				return err
			}
			return after(c, br)
		}()
	}()
	return ln.Addr().String(), done
}

// rawWSDial sends a WebSocket handshake through the proxy at base,
// followed by early in the same write, and returns the connection after
// the 101.
func rawWSDial(t *testing.T, base string, early []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(append([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"), early...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", res, err)
	}
	return conn, br
}

// readExactly reads len(want) bytes from r and fails unless they are want.
func readExactly(r io.Reader, want []byte) error {
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("got %d bytes %.40q…, want %.40q…", len(got), got, want)
	}
	return nil
}

// TestWebSocketEarlyBytesAreRelayed: bytes that arrive with the handshake —
// a client frame sent with the upgrade request, a server frame sent with
// the 101 — sit in the connections' read buffers when the tunnel starts;
// they must be relayed first, then the sockets are copied directly.
func TestWebSocketEarlyBytesAreRelayed(t *testing.T) {
	addr, upstreamErr := rawWSUpstream(t, wsServerFrame("early-up"), func(c net.Conn, br *bufio.Reader) error {
		for _, want := range [][]byte{wsClientFrame("early-client"), wsClientFrame("later-client")} {
			if err := readExactly(br, want); err != nil {
				return fmt.Errorf("upstream: %w", err)
			}
		}
		_, err := c.Write(wsServerFrame("later-up"))
		return err
	})
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "a", addr)
	conn, br := rawWSDial(t, base, wsClientFrame("early-client"))
	if err := readExactly(br, wsServerFrame("early-up")); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(wsClientFrame("later-client")); err != nil {
		t.Fatal(err)
	}
	if err := readExactly(br, wsServerFrame("later-up")); err != nil {
		t.Fatal(err)
	}
	if err := <-upstreamErr; err != nil {
		t.Fatal(err)
	}
}

// TestWebSocketBurstsAndSmallFrames: a 4 MiB frame (read with a borrowed
// large buffer) and small frames before and after it (read with the
// tunnel's small one) cross the proxy intact, both ways.
func TestWebSocketBurstsAndSmallFrames(t *testing.T) {
	addr, upstreamErr := rawWSUpstream(t, nil, func(c net.Conn, br *bufio.Reader) error {
		_, err := io.Copy(c, br) // echo until the client closes
		return err
	})
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "a", addr)
	conn, br := rawWSDial(t, base, nil)

	payload := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{7}).Read(payload)
	big := append([]byte{0x82, 0xff, 0, 0, 0, 0, 0, byte(len(payload) >> 16), 0, 0, 9, 8, 7, 6}, payload...) // 64-bit length, masked
	big[9] = byte(len(payload))
	big[8] = byte(len(payload) >> 8)
	for _, f := range [][]byte{wsClientFrame("before"), big, wsClientFrame("after"), wsClientFrame("again")} {
		writeErr := make(chan error, 1)
		go func() { _, err := conn.Write(f); writeErr <- err }()
		if err := readExactly(br, f); err != nil {
			t.Fatalf("echo of a %d-byte frame: %v", len(f), err)
		}
		if err := <-writeErr; err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	if err := <-upstreamErr; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
}
