package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawUpstream answers every request head it reads with respond(requestHead),
// written verbatim, then closes if respond says so.
func rawUpstream(t *testing.T, respond func(head string) (raw string, closeAfter bool)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
					}
					raw, closeAfter := respond(head.String())
					io.WriteString(c, raw)
					if closeAfter {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// exchange sends raw requests on one connection and reads len(methods)
// responses.
func exchangeRaw(t *testing.T, base, raw string, methods ...string) []*http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, raw)
	br := bufio.NewReader(conn)
	var out []*http.Response
	for _, m := range methods {
		res, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("response %d: %v", len(out)+1, err)
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("response %d body: %v", len(out)+1, err)
		}
		res.Body = io.NopCloser(strings.NewReader(string(b)))
		res.Header.Set("X-Test-Body", string(b))
		out = append(out, res)
	}
	return out
}

func TestBodylessResponses(t *testing.T) {
	addr := rawUpstream(t, func(head string) (string, bool) {
		switch {
		case strings.HasPrefix(head, "HEAD"):
			return "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Kind: head\r\n\r\n", false
		case strings.Contains(head, "/204"):
			return "HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n", false
		default:
			return "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", false
		}
	})
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", addr)
	rs := exchangeRaw(t, base, "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD", "GET", "GET")
	if rs[0].StatusCode != 200 || rs[0].ContentLength != 1234 || rs[0].Header.Get("X-Kind") != "head" {
		t.Errorf("HEAD: %d, length %d", rs[0].StatusCode, rs[0].ContentLength)
	}
	if rs[1].StatusCode != 204 || rs[2].StatusCode != 304 || rs[2].Header.Get("Etag") != `"x"` {
		t.Errorf("204/304: %d %d %v", rs[1].StatusCode, rs[2].StatusCode, rs[2].Header)
	}
}

func TestChunkedAndCloseDelimitedUpstreamBodies(t *testing.T) {
	addr := rawUpstream(t, func(head string) (string, bool) {
		if strings.Contains(head, "/chunked") {
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Check\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Check: ok\r\n\r\n", false
		}
		// HTTP/1.0 style: no length, the body ends when the connection closes.
		return "HTTP/1.0 200 OK\r\n\r\nuntil close", true
	})
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", addr)
	rs := exchangeRaw(t, base, "GET /chunked HTTP/1.1\r\nHost: x\r\n\r\nGET /eof HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "GET", "GET")
	for _, i := range []int{0, 2} {
		if b := rs[i].Header.Get("X-Test-Body"); b != "hello world" || rs[i].Trailer.Get("X-Check") != "ok" {
			t.Errorf("chunked response %d: body %q trailer %v", i, b, rs[i].Trailer)
		}
	}
	if b := rs[1].Header.Get("X-Test-Body"); b != "until close" || rs[1].TransferEncoding == nil {
		t.Errorf("close-delimited upstream body: %q, TE %v; want it re-framed as chunked", b, rs[1].TransferEncoding)
	}
}

func TestInterimResponsesAreSkipped(t *testing.T) {
	addr := rawUpstream(t, func(head string) (string, bool) {
		return "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
	})
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", addr)
	if status, body := get(t, base+"/"); status != 200 || body != "ok" {
		t.Fatalf("%d %q", status, body)
	}
}

func TestMalformedUpstreamResponseIs502(t *testing.T) {
	errs := newErrorLog()
	addr := rawUpstream(t, func(head string) (string, bool) {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", true
	})
	p, base := startProxy(t, Options{OnError: errs.onError})
	mustSwitch(t, p, "r", addr)
	if status, body := get(t, base+"/"); status != 502 || body != "Bad gateway\n" {
		t.Fatalf("%d %q", status, body)
	}
	errs.next(t)
}

func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	})))
	var raw strings.Builder
	var methods []string
	for i := range 5 {
		fmt.Fprintf(&raw, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		methods = append(methods, "GET")
	}
	for i, res := range exchangeRaw(t, base, raw.String(), methods...) {
		if b := res.Header.Get("X-Test-Body"); b != fmt.Sprintf("/%d", i) {
			t.Fatalf("response %d: %q", i, b)
		}
	}
}

func TestExpectContinue(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s expect=%q", b, r.Header.Get("Expect"))
	})))
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}}
	req, _ := http.NewRequest("POST", base+"/", strings.NewReader("data"))
	req.Header.Set("Expect", "100-continue")
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != `data expect=""` || time.Since(start) > 4*time.Second {
		t.Fatalf("got %q after %v; want the body sent after a prompt 100 Continue", b, time.Since(start))
	}
	got := rawRequest(t, base, "POST / HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\nContent-Length: 0\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 417 ") {
		t.Fatalf("unknown expectation: %q", got)
	}
}

func TestHTTP10Client(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", rawUpstream(t, func(head string) (string, bool) {
		return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false
	}))
	got := rawRequest(t, base, "GET / HTTP/1.0\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") || strings.Contains(got, "chunked") || !strings.HasSuffix(got, "\r\n\r\nabc") {
		t.Fatalf("HTTP/1.0 client got %q; want an unchunked body ended by close", got)
	}
}

func TestMalformedRequestsAreRejected(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", named(t, "x"))
	cases := []struct{ raw, want string }{
		{"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},                           // no Host
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "HTTP/1.1 400 "},              // bad Host
		{"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "HTTP/1.1 400 "},     // two Hosts
		{"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "HTTP/1.1 400 "}, // invalid field name
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "HTTP/1.1 400 "},
		{"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501 "},
		{"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", "HTTP/1.1 405 "},
		{"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", "HTTP/1.1 431 "},
	}
	for _, c := range cases {
		if got := rawRequest(t, base, c.raw); !strings.HasPrefix(got, c.want) {
			t.Errorf("%.60q → %.80q; want %q", c.raw, got, c.want)
		}
	}
}

func TestAbsoluteFormAndAsteriskTargets(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", rawUpstream(t, func(head string) (string, bool) {
		line, _, _ := strings.Cut(head, "\r\n")
		host := ""
		for _, l := range strings.Split(head, "\r\n") {
			if v, ok := strings.CutPrefix(l, "Host: "); ok {
				host = v
			}
		}
		body := line + " host=" + host
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body), false
	}))
	rs := exchangeRaw(t, base, "GET http://app.test/p?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "OPTIONS")
	if b := rs[0].Header.Get("X-Test-Body"); b != "GET /p?q=1 HTTP/1.1 host=app.test" {
		t.Errorf("absolute-form: upstream saw %q", b)
	}
	if b := rs[1].Header.Get("X-Test-Body"); b != "OPTIONS * HTTP/1.1 host=x" {
		t.Errorf("asterisk-form: upstream saw %q", b)
	}
}

func TestStaleKeepAliveConnectionIsRetried(t *testing.T) {
	var served atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.WriteString(w, "fresh")
	}))
	srv.Config.IdleTimeout = 20 * time.Millisecond // the upstream drops idle connections quickly
	srv.Start()
	t.Cleanup(srv.Close)
	p, base := startProxy(t, Options{UpstreamIdleTimeout: time.Minute})
	mustSwitch(t, p, "r", srv.Listener.Addr().String())
	for i := range 3 {
		if status, body := get(t, base+"/"); status != 200 || body != "fresh" {
			t.Fatalf("request %d after the upstream closed the pooled connection: %d %q", i, status, body)
		}
		time.Sleep(60 * time.Millisecond)
	}
}

func TestIdleClientConnectionClosedAfterIdleTimeout(t *testing.T) {
	p, base := startProxy(t, Options{IdleTimeout: 50 * time.Millisecond})
	mustSwitch(t, p, "r", named(t, "x"))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(res.Body)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v; want EOF after the idle timeout", err)
	}
}

func TestShutdownLetsActiveRequestFinish(t *testing.T) {
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	g, addr := newGate(t, "A")
	mustSwitch(t, p, "r", addr)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	base := "http://" + ln.Addr().String()
	idle, err := net.Dial("tcp", ln.Addr().String()) // an idle keep-alive connection
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	res := fetchAsync(base + "/slow")
	g.waitArrivals(t, 1)
	cancel()
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection at shutdown: %v; want closed", err)
	}
	g.release()
	if r := <-res; r.err != nil || r.status != 200 || r.body != "A" {
		t.Fatalf("request in flight at shutdown: %+v", r)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("listener still accepting after shutdown")
	}
}

func TestSlowResponsesKeepTheConnectionUsable(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(250 * time.Millisecond) // longer than slowAfter: the client watcher runs
		io.WriteString(w, r.URL.Path)
	})))
	// The second request is pipelined while the first is still waiting.
	rs := exchangeRaw(t, base, "GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "GET")
	if a, b := rs[0].Header.Get("X-Test-Body"), rs[1].Header.Get("X-Test-Body"); a != "/one" || b != "/two" {
		t.Fatalf("got %q, %q", a, b)
	}
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for range 2 {
		if status, body := getWith(t, client, base+"/again"); status != 200 || body != "/again" {
			t.Fatalf("keep-alive request after a slow one: %d %q", status, body)
		}
	}
}

func TestEarlyResponseToUploadReachesClient(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too big", http.StatusRequestEntityTooLarge) // without reading the body
	})))
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		chunk := strings.Repeat("x", 64<<10)
		for i := 0; i < 100; i++ {
			if _, err := io.WriteString(pw, chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	res, err := http.Post(base+"/upload", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d; want the upstream's early 413", res.StatusCode)
	}
}

func TestChunkedRequestTrailersForwarded(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s sum=%s", b, r.Trailer.Get("X-Sum"))
	})))
	rs := exchangeRaw(t, base, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
		"4\r\ndata\r\n0\r\nX-Sum: 7\r\n\r\n", "POST")
	if b := rs[0].Header.Get("X-Test-Body"); b != "data sum=7" {
		t.Fatalf("upstream saw %q", b)
	}
}

func TestForwardedPortFromListenerWithoutHost(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-Port")+" host="+r.Header.Get("X-Forwarded-Host"))
	})))
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	got := rawRequest(t, base, "GET / HTTP/1.0\r\n\r\n")
	if !strings.HasSuffix(got, "\r\n\r\n"+port+" host=") {
		t.Fatalf("got %q; want X-Forwarded-Port %s from the listener", got, port)
	}
}

// readBody reads one response from br and returns its status and body.
func readBody(t *testing.T, br *bufio.Reader) (int, string) {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b)
}

// TestIdleConnectionSleepsWithoutBuffers: a keep-alive connection idle past
// idleShrink gives its buffers back and waits on one byte; the next
// request — its first byte alone, then the rest, then two pipelined — is
// served as if it had never slept, and the idle timeout still applies.
func TestIdleConnectionSleepsWithoutBuffers(t *testing.T) {
	p, base := startProxy(t, Options{idleShrink: 20 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.URL.Path)
	})))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	io.WriteString(conn, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, body := readBody(t, br); code != 200 || body != "GET /1" {
		t.Fatalf("first request: %d %q", code, body)
	}

	time.Sleep(100 * time.Millisecond) // asleep without buffers
	io.WriteString(conn, "G")
	time.Sleep(50 * time.Millisecond) // the woken connection waits for the rest
	io.WriteString(conn, "ET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, body := readBody(t, br); code != 200 || body != "GET /2" {
		t.Fatalf("request after sleeping, first byte alone: %d %q", code, body)
	}

	time.Sleep(100 * time.Millisecond)
	io.WriteString(conn, "GET /3 HTTP/1.1\r\nHost: x\r\n\r\nGET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
	for i := 3; i <= 4; i++ {
		if code, body := readBody(t, br); code != 200 || body != fmt.Sprintf("GET /%d", i) {
			t.Fatalf("pipelined request %d after sleeping: %d %q", i, code, body)
		}
	}

	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v; want EOF after the idle timeout", err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("closed after %v of idleness, before the 500ms idle timeout", d)
	}
}

// TestShutdownClosesSleepingIdleConnection: a shutdown reaches a keep-alive
// connection sleeping without buffers at once, not at its idle timeout.
func TestShutdownClosesSleepingIdleConnection(t *testing.T) {
	p, err := New(Options{idleShrink: 20 * time.Millisecond, IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	mustSwitch(t, p, "r", named(t, "x"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel()
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx, ln) }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, body := readBody(t, br); code != 200 || body != "x" {
		t.Fatalf("request: %d %q", code, body)
	}
	time.Sleep(100 * time.Millisecond) // asleep without buffers
	start := time.Now()
	cancel()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("sleeping idle connection at shutdown: %v; want closed", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("closed %v after the shutdown began", d)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}
