package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// forward proxies one plain HTTP exchange and reports whether the client
// connection may carry another request.
func (cc *clientConn) forward(req *http.Request) bool {
	uc, err := cc.roundTrip(req)
	if err == nil && uc.head.status == http.StatusSwitchingProtocols {
		cc.detach(uc, false)
		err = errors.New("upstream switched protocols without an upgrade request")
	}
	if err != nil {
		complete := cc.endBody(nil)
		cc.stopWatch()
		return cc.failBeforeHead(req, err, complete)
	}
	return cc.relay(req, uc, true)
}

// roundTrip writes the request upstream and reads the response head. When
// the release has several upstreams, an exchange whose upstream failed
// before anything was relayed moves to another one (see tryUpstream for
// what may be retried).
func (cc *clientConn) roundTrip(req *http.Request) (*upConn, error) {
	for {
		uc, retry, err := cc.tryUpstream(req)
		if err == nil || !retry || !cc.p.failover(&cc.x) {
			return uc, err
		}
	}
}

// tryUpstream runs the exchange against its current upstream. A request
// without a body that fails on a reused keep-alive connection before any
// response byte arrived is retried once on a new connection (the upstream
// may have closed it just then), if it is idempotent. retry reports whether
// another upstream may be tried: always after a failed connect (nothing was
// sent), and for an idempotent request without a body that got no
// response byte (the upstream died with it).
func (cc *clientConn) tryUpstream(req *http.Request) (uc *upConn, retry bool, err error) {
	x := &cc.x
	body := hasBody(req)
	for attempt := 0; ; attempt++ {
		uc, reused, err := x.up.pool.get()
		if err != nil {
			if x.tgt.single == nil {
				x.up.markDown()
			}
			return nil, true, err
		}
		cc.attach(uc)
		cc.writeHead(uc.bw, req, body)
		if body {
			if cc.expect100 {
				cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
				cc.bw.Flush()
			}
			cc.startBody(req, uc)
		} else {
			err = uc.bw.Flush()
		}
		if err == nil {
			err = readHead(uc.br, &uc.head, req.Method)
		}
		if err == nil {
			uc.headDL = time.Time{}
			return uc, false, nil
		}
		if ierr := x.interrupted(); ierr != nil {
			err = ierr
		}
		clean := !body && uc.nread == 0 && idempotent(req) && x.interrupted() == nil
		cc.detach(uc, false)
		if !(clean && attempt == 0 && reused) {
			return nil, clean && !isTimeout(err), err
		}
	}
}

// attach makes uc the exchange's upstream connection.
func (cc *clientConn) attach(uc *upConn) {
	uc.x = &cc.x
	uc.nread = 0
	uc.headDL = time.Time{}
	if d := cc.p.opts.ResponseHeaderTimeout; d > 0 {
		uc.headDL = time.Now().Add(d)
	}
	cc.x.upc.Store(uc)
}

// detach ends the exchange's use of uc: back to its pool if reuse is set
// and nothing interrupted the exchange, else closed. upc is cleared before
// the check, so an interrupt either is seen here or finds no connection to
// poke (see exchange.interrupt).
func (cc *clientConn) detach(uc *upConn, reuse bool) {
	cc.x.upc.Store(nil)
	uc.x = nil
	if reuse && uc.pool != nil && cc.x.stop.Load() == 0 {
		uc.pool.put(uc)
		return
	}
	uc.conn.Close()
}

// writeHead writes the upstream request head: the original request line
// target, Host, the end-to-end headers, X-Forwarded-* and the body framing.
// It writes straight into the connection buffer: no header map is built.
func (cc *clientConn) writeHead(w *bufio.Writer, req *http.Request, body bool) {
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(requestTarget(req))
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(req.Host)
	w.WriteString("\r\n")
	h := req.Header
	drop := connectionListed(h["Connection"])
	for k, vv := range h {
		if isHopByHop(k) || isForwardedHeader(k) || drop != nil && listed(drop, k) {
			continue
		}
		for _, v := range vv {
			writeField(w, k, v)
		}
	}
	if te := h["Te"]; te != nil && hasToken(te, "trailers") {
		w.WriteString("Te: trailers\r\n")
	}
	if cc.x.ws {
		w.WriteString("Connection: Upgrade\r\nUpgrade: websocket\r\n")
	}
	cc.writeForwarded(w, req)
	if body && req.ContentLength < 0 {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	w.WriteString("\r\n")
}

// requestTarget is the original origin-form target ("/p?q", byte for byte),
// "*", or the path and query of an absolute-form target.
func requestTarget(req *http.Request) string {
	if t := req.RequestURI; t != "" && (t[0] == '/' || t == "*") {
		return t
	}
	return req.URL.RequestURI()
}

func isForwardedHeader(k string) bool {
	switch k {
	case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port":
		return true
	}
	return false
}

func writeField(w *bufio.Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(v)
	w.WriteString("\r\n")
}

// writeForwarded writes the X-Forwarded-* headers:
//
//   - X-Forwarded-For: the client IP appended to any incoming values
//     ("a, b, client"), so the chain of proxies is kept.
//   - X-Forwarded-Proto: incoming values are kept (a TLS-terminating front
//     proxy knows the real scheme); otherwise "http". Never appended to, so
//     the app never sees "https,http" (spec §11.2-10).
//   - X-Forwarded-Host: kept if present, else the incoming Host.
//   - X-Forwarded-Port: kept if present, else the port in Host, else the
//     default port of the scheme (443 for https, else 80); for a request
//     without Host, the port the client connected to.
//
// WebSocket upgrades get the same headers (the original used proto "ws" and
// no X-Forwarded-Host there; apps expect http/https).
func (cc *clientConn) writeForwarded(w *bufio.Writer, req *http.Request) {
	h := req.Header
	prior := h["X-Forwarded-For"]
	if len(prior) > 0 || cc.remoteIP != "" {
		w.WriteString("X-Forwarded-For: ")
		for i, v := range prior {
			if i > 0 {
				w.WriteString(", ")
			}
			w.WriteString(v)
		}
		if cc.remoteIP != "" {
			if len(prior) > 0 {
				w.WriteString(", ")
			}
			w.WriteString(cc.remoteIP)
		}
		w.WriteString("\r\n")
	}
	proto := "http"
	if v := h["X-Forwarded-Proto"]; len(v) > 0 {
		for _, s := range v {
			writeField(w, "X-Forwarded-Proto", s)
		}
		proto = v[0]
	} else {
		w.WriteString("X-Forwarded-Proto: http\r\n")
	}
	if v := h["X-Forwarded-Host"]; len(v) > 0 {
		for _, s := range v {
			writeField(w, "X-Forwarded-Host", s)
		}
	} else if req.Host != "" {
		writeField(w, "X-Forwarded-Host", req.Host)
	}
	if v := h["X-Forwarded-Port"]; len(v) > 0 {
		for _, s := range v {
			writeField(w, "X-Forwarded-Port", s)
		}
		return
	}
	port := hostPort(req.Host)
	switch {
	case port != "":
	case req.Host == "":
		port = cc.localPort
	default:
		first, _, _ := strings.Cut(proto, ",")
		if strings.EqualFold(strings.TrimSpace(first), "https") {
			port = "443"
		} else {
			port = "80"
		}
	}
	if port != "" {
		writeField(w, "X-Forwarded-Port", port)
	}
}

// bodyCopy is a request body streaming upstream on its own goroutine, so
// the response can be read while the client is still sending.
type bodyCopy struct {
	done      chan struct{}
	complete  bool  // the whole body went upstream
	clientErr error // reading the client failed
}

func (cc *clientConn) startBody(req *http.Request, uc *upConn) {
	b := &bodyCopy{done: make(chan struct{})}
	cc.body = b
	chunked := req.ContentLength < 0
	go func() {
		defer close(b.done)
		b.complete, b.clientErr = cc.copyRequestBody(uc.bw, req, chunked)
		if b.clientErr != nil {
			// The client left mid-upload: stop waiting for the upstream.
			cc.x.interrupt(stopGone)
		}
		// An upstream write error needs no action here: the response read
		// fails too, or the upstream answered early and closed.
	}()
}

// copyRequestBody streams the body, flushing every piece so the upstream
// sees data as it arrives.
func (cc *clientConn) copyRequestBody(w *bufio.Writer, req *http.Request, chunked bool) (complete bool, clientErr error) {
	bp := cc.p.bufs.Get().(*[]byte)
	defer cc.p.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := req.Body.Read(buf)
		if n > 0 {
			if chunked {
				writeChunkHeader(w, n)
			}
			w.Write(buf[:n])
			if chunked {
				w.WriteString("\r\n")
			}
			if w.Flush() != nil {
				return false, nil
			}
		}
		if rerr == io.EOF {
			if chunked {
				w.WriteString("0\r\n")
				writeTrailers(w, req.Trailer)
				w.WriteString("\r\n")
			}
			return w.Flush() == nil, nil
		}
		if rerr != nil {
			return false, rerr
		}
	}
}

func writeChunkHeader(w *bufio.Writer, n int) {
	var b [20]byte
	w.Write(strconv.AppendInt(b[:0], int64(n), 16))
	w.WriteString("\r\n")
}

func writeTrailers(w *bufio.Writer, t http.Header) {
	for k, vv := range t {
		for _, v := range vv {
			writeField(w, k, v)
		}
	}
}

// endBody waits for the request-body copy, first stopping it if the
// client is still sending (the exchange is over). It reports whether the
// whole body was read: if not, the connection cannot carry another request.
func (cc *clientConn) endBody(uc *upConn) bool {
	b := cc.body
	if b == nil {
		return true
	}
	cc.body = nil
	select {
	case <-b.done:
	default:
		cc.conn.SetReadDeadline(aLongTimeAgo)
		if uc != nil {
			uc.conn.SetWriteDeadline(aLongTimeAgo)
		}
		<-b.done
		if uc != nil && b.complete {
			// The copy had finished writing when it was poked: the
			// connection may go back to its pool, and must not carry the
			// past write deadline there (the next exchange's request would
			// fail to write and then wait for an answer forever).
			uc.conn.SetWriteDeadline(time.Time{})
		}
	}
	return b.complete
}

// startWatch starts watching the client connection for a close while the
// upstream is slow (long polls, slow handlers): net/http's server does this
// for every request with a background read; here only exchanges that wait
// longer than slowAfter pay for it. It runs on the serving goroutine.
func (cc *clientConn) startWatch() {
	cc.x.watching = true
	done := make(chan struct{})
	cc.watchDone = done
	var bodyDone <-chan struct{}
	if cc.body != nil {
		bodyDone = cc.body.done // the body copy owns the client reader until then
	}
	go cc.watch(done, bodyDone)
}

func (cc *clientConn) watch(done chan struct{}, bodyDone <-chan struct{}) {
	defer close(done)
	if bodyDone != nil {
		<-bodyDone
	}
	cc.watchMu.Lock()
	if cc.x.finishing {
		cc.watchMu.Unlock()
		return
	}
	cc.conn.SetReadDeadline(time.Time{})
	cc.watchMu.Unlock()
	if _, err := cc.br.Peek(1); err == nil {
		return // the client sent more (a pipelined request): it is alive
	}
	cc.watchMu.Lock()
	finishing := cc.x.finishing
	cc.watchMu.Unlock()
	if !finishing {
		cc.x.interrupt(stopGone)
	}
}

// stopWatch stops the client watcher, if one runs, and waits for it.
func (cc *clientConn) stopWatch() {
	if cc.watchDone == nil {
		return
	}
	cc.watchMu.Lock()
	cc.x.finishing = true
	cc.conn.SetReadDeadline(aLongTimeAgo)
	cc.watchMu.Unlock()
	<-cc.watchDone
	cc.watchDone = nil
}

// relay writes the upstream response to the client, flushing each piece
// as it arrives, then settles both connections. It reports whether the
// client connection may carry another request. pooled is false for a
// one-off upstream connection (a refused WebSocket upgrade).
func (cc *clientConn) relay(req *http.Request, uc *upConn, pooled bool) bool {
	x := &cc.x
	h := &uc.head
	bodyless := h.bodyless(req.Method)
	closeAfter := req.Close || !req.ProtoAtLeast(1, 1) || cc.s.shutting.Load()
	chunked := false
	if !bodyless && h.length < 0 {
		if req.ProtoAtLeast(1, 1) {
			chunked = true
		} else {
			closeAfter = true // an HTTP/1.0 client reads until close
		}
	}
	cc.writeResponseHead(h, chunked, closeAfter)
	x.headSent.Store(true)
	var upErr, clientErr error
	if bodyless {
		clientErr = cc.bw.Flush()
	} else {
		uc.body.reset(uc.br, h)
		upErr, clientErr = cc.copyResponseBody(&uc.body, chunked)
	}
	complete := cc.endBody(uc)
	cc.stopWatch()
	cc.linger = !complete && clientErr == nil
	ok := upErr == nil && clientErr == nil
	cc.detach(uc, pooled && ok && complete && !h.close)
	if ierr := x.interrupted(); ierr != nil {
		if errors.Is(ierr, ErrDrained) && !ok {
			cc.p.report(x, cc.describe(req, ierr))
		}
		return false
	}
	if upErr != nil {
		cc.p.report(x, cc.describe(req, fmt.Errorf("response aborted: %w", upErr)))
	}
	// After a failure the client connection is aborted: closing it is the
	// only way to tell the client that the body is incomplete.
	return ok && complete && !closeAfter
}

var (
	crlf      = []byte("\r\n")
	colonSP   = []byte(": ")
	http11SP  = []byte("HTTP/1.1 ")
	teChunked = []byte("Transfer-Encoding: chunked\r\n")
	connClose = []byte("Connection: close\r\n")
)

// writeResponseHead writes the status line and the relayed fields: all but
// hop-by-hop ones and those the upstream's Connection header listed, with
// the framing chosen for the client.
func (cc *clientConn) writeResponseHead(h *respHead, chunked, closeAfter bool) {
	cc.x.status = int32(h.status)
	w := cc.bw
	w.Write(http11SP)
	w.WriteString(strconv.Itoa(h.status))
	w.WriteByte(' ')
	if len(h.reason) > 0 {
		w.Write(h.reason)
	} else {
		w.WriteString(http.StatusText(h.status))
	}
	w.Write(crlf)
	for i := range h.fields {
		f := &h.fields[i]
		if f.kind == fieldHop || f.kind == fieldTrailer && !chunked {
			continue
		}
		writeFieldBytes(w, f)
	}
	if !h.hasDate {
		// RFC 9110 §6.6.1: a recipient with a clock adds a missing Date.
		writeField(w, "Date", time.Now().UTC().Format(http.TimeFormat))
	}
	cc.writeAffinityCookie(w)
	if chunked {
		w.Write(teChunked)
	}
	if closeAfter {
		w.Write(connClose)
	}
	w.Write(crlf)
}

// writeAffinityCookie sets the affinity cookie naming the exchange's
// upstream, when the route uses one and the request did not carry it.
func (cc *clientConn) writeAffinityCookie(w *bufio.Writer) {
	x := &cc.x
	if x.setCookie == "" {
		return
	}
	w.WriteString("Set-Cookie: ")
	w.WriteString(x.tgt.cookie)
	w.WriteByte('=')
	w.WriteString(x.setCookie)
	w.WriteString("; Path=/; HttpOnly; SameSite=Lax\r\n")
}

func writeFieldBytes(w *bufio.Writer, f *field) {
	w.Write(f.name)
	w.Write(colonSP)
	w.Write(f.value)
	w.Write(crlf)
}

// copyResponseBody streams the body, flushing whenever a read ends short of
// the end: what the upstream produced reaches the client at once (SSE,
// chunked, long polls), while a body that arrives in one read costs a
// single write for head and body together.
func (cc *clientConn) copyResponseBody(body *respBody, chunked bool) (upErr, clientErr error) {
	bp := cc.p.bufs.Get().(*[]byte)
	defer cc.p.bufs.Put(bp)
	buf := *bp
	w := cc.bw
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if chunked {
				writeChunkHeader(w, n)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return nil, err
			}
			if chunked {
				w.Write(crlf)
			}
			if rerr == nil {
				if err := w.Flush(); err != nil {
					return nil, err
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr, nil
		}
	}
	if chunked {
		w.WriteString("0\r\n")
		for i := range body.trailer.fields {
			writeFieldBytes(w, &body.trailer.fields[i])
		}
		w.Write(crlf)
	}
	return nil, w.Flush()
}

// failBeforeHead answers an exchange whose upstream failed before a
// response head arrived: 502 Bad gateway, 504 for timeouts and drain cuts,
// nothing for a client that left. It reports whether the connection may
// carry another request.
func (cc *clientConn) failBeforeHead(req *http.Request, err error, bodyComplete bool) bool {
	x := &cc.x
	code, body := http.StatusBadGateway, badGateway
	switch {
	case errors.Is(err, errClientGone) || x.stop.Load() == stopGone:
		return false
	case errors.Is(err, ErrDrained) || x.stop.Load() == stopCut:
		err = errCutAtDeadline
		code, body = http.StatusGatewayTimeout, gwTimeout
	case isTimeout(err):
		code, body = http.StatusGatewayTimeout, gwTimeout
	}
	cc.p.report(x, cc.describe(req, err))
	closeAfter := req.Close || !bodyComplete || cc.s.shutting.Load()
	cc.linger = !bodyComplete
	return cc.writeSimple(code, body, closeAfter) && !closeAfter
}

func (cc *clientConn) describe(req *http.Request, err error) error {
	return fmt.Errorf("%s %s via %s: %w", req.Method, req.URL.Path, cc.x.up.addr, err)
}
