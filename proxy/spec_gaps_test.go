package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingUpstream answers "ok" and counts the requests it receives.
func countingUpstream(t *testing.T) (string, *atomic.Int64) {
	var n atomic.Int64
	return startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.WriteString(w, "ok")
	})), &n
}

// closedWithin reads from conn until the proxy closes it and returns how
// long that took and what was read; it fails after limit.
func closedWithin(t *testing.T, conn net.Conn, limit time.Duration) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	b, err := io.ReadAll(conn)
	if err != nil {
		var ne net.Error
		if errorsAs(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v (read %q)", limit, b)
		}
		// A reset is a close too.
	}
	return time.Since(start), string(b)
}

func errorsAs(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

// TestReadHeaderTimeoutClosesIncompleteHead (PRX-13, spec §4.8): a client
// that does not complete its request head within ReadHeaderTimeout is
// disconnected — on a new connection, on a keep-alive connection's next
// request, and when it trickles bytes to stay "active" — and nothing
// reaches the upstream. A head completed in time is served.
func TestReadHeaderTimeoutClosesIncompleteHead(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	// IdleTimeout far above it: a close within the limit below can only be
	// the header timeout.
	p, base := startProxy(t, Options{ReadHeaderTimeout: headerTimeout, IdleTimeout: time.Minute})
	addr, hits := countingUpstream(t)
	mustSwitch(t, p, "r", addr)
	hostPort := strings.TrimPrefix(base, "http://")
	limit := 10 * time.Second

	dialProxy := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", hostPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("new connection", func(t *testing.T) {
		for _, partial := range []string{"G", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"} {
			c := dialProxy(t)
			io.WriteString(c, partial)
			took, got := closedWithin(t, c, limit)
			if took < headerTimeout/2 {
				t.Errorf("%q: closed after %v, before the header timeout", partial, took)
			}
			if strings.HasPrefix(got, "HTTP/1.1 2") {
				t.Errorf("%q: incomplete head answered %q", partial, got)
			}
			t.Logf("%q: closed after %v, read %q", partial, took.Round(time.Millisecond), got)
		}
	})

	t.Run("keep-alive connection", func(t *testing.T) {
		c := dialProxy(t)
		br := bufio.NewReader(c)
		io.WriteString(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(limit))
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("first request: %d", res.StatusCode)
		}
		before := hits.Load()
		io.WriteString(c, "GET /second HTTP/1.1\r\nHost: x\r\n")
		start := time.Now()
		c.SetReadDeadline(start.Add(limit))
		rest, err := io.ReadAll(br)
		took := time.Since(start)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("keep-alive connection with a half head still open after %v", limit)
			}
		}
		if took < headerTimeout/2 || len(rest) > 0 && strings.HasPrefix(string(rest), "HTTP/1.1 2") {
			t.Errorf("half head on a keep-alive connection: closed after %v, read %q", took, rest)
		}
		if hits.Load() != before {
			t.Error("the half head reached the upstream")
		}
	})

	t.Run("trickling client", func(t *testing.T) {
		before := hits.Load()
		c := dialProxy(t)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := fmt.Fprintf(c, "X-%d: y\r\n", i); err != nil {
					return
				}
			}
		}()
		took, _ := closedWithin(t, c, limit)
		// Bytes keep arriving every 50 ms: the deadline is for the head,
		// not per read.
		if took < headerTimeout/2 || took > 5*time.Second {
			t.Errorf("trickling client closed after %v; want about %v", took, headerTimeout)
		}
		if hits.Load() != before {
			t.Error("a trickled head reached the upstream")
		}
	})

	t.Run("head completed in time", func(t *testing.T) {
		c := dialProxy(t)
		io.WriteString(c, "GET /in-time HTTP/1.1\r\nHost: x\r\n")
		time.Sleep(headerTimeout / 3)
		io.WriteString(c, "Connection: close\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(limit))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("head completed within the timeout: %d %q", res.StatusCode, body)
		}
	})
}

// TestNoDefaultResponseTimeout (PRX-13, spec §4.8): the proxy has explicit
// header and idle timeouts by default but no response timeout and no
// request read timeout: an upstream answering, or streaming its body, or a
// client uploading, far slower than every configured timeout is still
// relayed in full.
func TestNoDefaultResponseTimeout(t *testing.T) {
	def, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if def.ResponseHeaderTimeout != 0 || def.ReadTimeout != 0 {
		t.Errorf("default ResponseHeaderTimeout %v, ReadTimeout %v; want none", def.ResponseHeaderTimeout, def.ReadTimeout)
	}
	if def.ReadHeaderTimeout != DefaultReadHeaderTimeout || def.ReadHeaderTimeout <= 0 || def.IdleTimeout != DefaultIdleTimeout || def.IdleTimeout <= 0 {
		t.Errorf("default ReadHeaderTimeout %v, IdleTimeout %v; want the explicit defaults %v, %v",
			def.ReadHeaderTimeout, def.IdleTimeout, DefaultReadHeaderTimeout, DefaultIdleTimeout)
	}

	// Every timeout the proxy has is short; the exchanges below are slower.
	const short = 100 * time.Millisecond
	const slow = 800 * time.Millisecond
	p, base := startProxy(t, Options{
		DialTimeout:         short,
		ReadHeaderTimeout:   short,
		IdleTimeout:         short,
		UpstreamIdleTimeout: short,
		WebSocketCloseGrace: short,
		idleShrink:          short / 2,
	})
	mustSwitch(t, p, "r", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/late-headers":
			time.Sleep(slow)
			io.WriteString(w, "late")
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(slow / 2)
			}
		case "/upload":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "got %d bytes", len(b))
		}
	})))

	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	if status, body := getWith(t, client, base+"/late-headers"); status != 200 || body != "late" {
		t.Errorf("response after %v: %d %q", slow, status, body)
	}
	if d := time.Since(start); d < slow {
		t.Errorf("late response came after %v", d)
	}

	if status, body := getWith(t, client, base+"/stream"); status != 200 || body != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
		t.Errorf("slow stream: %d %q", status, body)
	}

	pr, pw := io.Pipe()
	go func() {
		for range 4 {
			pw.Write([]byte(strings.Repeat("x", 10)))
			time.Sleep(slow / 4)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", base+"/upload", pr)
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("slow upload: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != "got 40 bytes" {
		t.Errorf("slow upload: %d %q", res.StatusCode, body)
	}
	client.CloseIdleConnections()
}
