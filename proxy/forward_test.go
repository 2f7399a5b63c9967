package proxy

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNoActiveReleaseAnswers503(t *testing.T) {
	_, base := startProxy(t, Options{})
	res, err := http.Get(base + "/x")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 503 || string(body) != "No active release\n" || res.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("got %d %q Content-Type %q; want 503 %q text/plain; charset=utf-8", res.StatusCode, body, res.Header.Get("Content-Type"), "No active release\n")
	}
}

func TestNoActiveReleaseWebSocketGetsRawStatusLine(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", named(t, "a"))
	p.Clear()
	got := rawRequest(t, base, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	if got != "HTTP/1.1 503 Service Unavailable\r\n\r\n" {
		t.Fatalf("got %q; want the bare 503 status line, then EOF", got)
	}
}

func TestRefusedUpstreamAnswers502AndReportsError(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError})
	mustSwitch(t, p, "r1", closedPort(t))
	res, err := http.Get(base + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 502 || string(body) != "Bad gateway\n" || res.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("got %d %q (%q); want 502 \"Bad gateway\\n\" text/plain", res.StatusCode, body, res.Header.Get("Content-Type"))
	}
	e := errs.next(t)
	if e.release != "r1" || !errors.Is(e.err, syscall.ECONNREFUSED) {
		t.Fatalf("OnError(%q, %v); want release r1 and a connection-refused error", e.release, e.err)
	}
	waitFor(t, "the count to return to zero", func() bool { h, ws := p.Connections("r1"); return h == 0 && ws == 0 })
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestUpstreamFailureAfterHeadersAbortsClient(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close() // reset mid-body
	})))
	res, err := http.Get(base + "/x")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || err == nil {
		t.Fatalf("status %d, body error %v; want 200 and a truncated body error", res.StatusCode, err)
	}
	if e := errs.next(t); e.release != "r1" || !strings.Contains(e.err.Error(), "response aborted") {
		t.Fatalf("OnError(%q, %v); want r1 and a response-aborted error", e.release, e.err)
	}
}

func TestForwardedHeadersAndHostPreserved(t *testing.T) {
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("Host", r.Host)
		json.NewEncoder(w).Encode(r.Header)
	}))
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", addr)

	seen := func(t *testing.T, req string) http.Header {
		t.Helper()
		raw := rawRequest(t, base, req)
		res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), nil)
		if err != nil {
			t.Fatalf("parse %q: %v", raw, err)
		}
		var h http.Header
		if err := json.NewDecoder(res.Body).Decode(&h); err != nil {
			t.Fatalf("decode %q: %v", raw, err)
		}
		return h
	}
	want := func(t *testing.T, h http.Header, key, value string) {
		t.Helper()
		if got := strings.Join(h[key], "|"); got != value {
			t.Errorf("%s = %q; want %q", key, got, value)
		}
	}

	t.Run("direct client", func(t *testing.T) {
		h := seen(t, "GET /a?b=c HTTP/1.1\r\nHost: app.test:8443\r\nConnection: close\r\n\r\n")
		want(t, h, "Host", "app.test:8443")
		want(t, h, "X-Forwarded-For", "127.0.0.1")
		want(t, h, "X-Forwarded-Proto", "http")
		want(t, h, "X-Forwarded-Host", "app.test:8443")
		want(t, h, "X-Forwarded-Port", "8443")
	})
	t.Run("behind a TLS front proxy", func(t *testing.T) {
		h := seen(t, "GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.9\r\n"+
			"X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.test\r\nConnection: close\r\n\r\n")
		want(t, h, "Host", "app.test")
		want(t, h, "X-Forwarded-For", "203.0.113.9, 127.0.0.1")
		want(t, h, "X-Forwarded-Proto", "https") // kept, never "https,http"
		want(t, h, "X-Forwarded-Host", "public.test")
		want(t, h, "X-Forwarded-Port", "443")
	})
	t.Run("front proxy sets the port", func(t *testing.T) {
		h := seen(t, "GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-Port: 8080\r\nConnection: close\r\n\r\n")
		want(t, h, "X-Forwarded-Port", "8080")
	})
	t.Run("hop-by-hop headers removed", func(t *testing.T) {
		h := seen(t, "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Private\r\nX-Private: secret\r\n"+
			"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\nUpgrade: h2c\r\n"+
			"Proxy-Authorization: Basic eA==\r\nX-End-To-End: yes\r\n\r\n")
		for _, k := range []string{"X-Private", "Keep-Alive", "Proxy-Connection", "Upgrade", "Proxy-Authorization"} {
			want(t, h, k, "")
		}
		want(t, h, "Te", "trailers")
		want(t, h, "X-End-To-End", "yes")
	})
}

func TestStreamingResponseIsNotBuffered(t *testing.T) {
	release := make(chan struct{})
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "data: last\n\n")
	})))
	defer close(release)
	res, err := http.Get(base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	// Reaching here while the upstream still holds the response open is the test.
	if h, _ := p.Connections("r1"); h != 1 {
		t.Fatalf("in-flight HTTP while streaming = %d; want 1", h)
	}
}

func TestRequestBodyIsStreamed(t *testing.T) {
	firstChunk := make(chan string, 1)
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 5)
		n, err := io.ReadFull(r.Body, buf)
		if err != nil {
			t.Errorf("upstream read: %v", err)
		}
		firstChunk <- string(buf[:n])
		rest, _ := io.ReadAll(r.Body)
		io.WriteString(w, string(buf[:n])+string(rest))
	})))
	pr, pw := io.Pipe()
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		res, err := http.Post(base+"/upload", "text/plain", pr)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		done <- result{string(b), err}
	}()
	io.WriteString(pw, "hello")
	select {
	case got := <-firstChunk:
		if got != "hello" {
			t.Fatalf("first chunk %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream did not see the first chunk while the client was still sending")
	}
	io.WriteString(pw, " world")
	pw.Close()
	if r := <-done; r.err != nil || r.body != "hello world" {
		t.Fatalf("echo %q, %v", r.body, r.err)
	}
}

func TestMethodQueryBodyAndStatusForwarded(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", r.Method+" "+r.URL.RequestURI()+" "+string(b))
		w.WriteHeader(http.StatusTeapot)
	})))
	req, _ := http.NewRequest("PUT", base+"/p%2Fq/r?x=1&y=%20", strings.NewReader("payload"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got := res.Header.Get("X-Seen"); res.StatusCode != 418 || got != "PUT /p%2Fq/r?x=1&y=%20 payload" {
		t.Fatalf("status %d, upstream saw %q", res.StatusCode, got)
	}
}

func TestNonWebSocketUpgradeIsForwardedAsPlainHTTP(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upgrade="+r.Header.Get("Upgrade"))
	})))
	got := rawRequest(t, base, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 200 OK") || !strings.HasSuffix(got, "upgrade=") {
		t.Fatalf("got %q; want a 200 without the Upgrade header upstream", got)
	}
}

func TestClientAbortReleasesCountAndCancelsUpstream(t *testing.T) {
	errs := newErrorLog()
	cancelled := make(chan struct{})
	p, base := startProxy(t, Options{OnError: errs.onError})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(cancelled)
	})))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, "the request to be in flight", func() bool { h, _ := p.Connections("r1"); return h == 1 })
	conn.Close()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request not cancelled after the client left")
	}
	waitFor(t, "the count to drop", func() bool { h, _ := p.Connections("r1"); return h == 0 })
	errs.none(t) // a client abort is not a proxy error
}

func TestResponseHeaderTimeoutAnswers504(t *testing.T) {
	p, base := startProxy(t, Options{ResponseHeaderTimeout: 50 * time.Millisecond})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})))
	if status, body := get(t, base+"/slow"); status != 504 || body != "Gateway timeout\n" {
		t.Fatalf("got %d %q; want 504", status, body)
	}
}

func TestTrailersForwarded(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r1", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
	})))
	res, err := http.Get(base + "/t")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(res.Body)
	res.Body.Close()
	if got := res.Trailer.Get("X-Sum"); got != "42" {
		t.Fatalf("trailer X-Sum = %q; want 42", got)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{{DialTimeout: -1}, {IdleTimeout: -time.Second}, {MaxIdleConnsPerUpstream: -1}, {Balance: 7}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted invalid options", o)
		}
	}
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		release string
		addrs   []string
	}{{"", []string{"127.0.0.1:1"}}, {"r", nil}, {"r", []string{"localhost"}}, {"r", []string{":80"}}, {"r", []string{"h:0"}}, {"r", []string{"h:x"}}} {
		if err := p.Switch(c.release, c.addrs); err == nil {
			t.Errorf("Switch(%q, %q) accepted bad input", c.release, c.addrs)
		}
	}
	if _, _, ok := p.Active(); ok {
		t.Fatal("a rejected Switch changed the active release")
	}
}
