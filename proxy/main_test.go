package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary double as a socket-activated proxy process
// (see socket activation tests): with ROLLBRIDGE_PROXY_TEST_CHILD set it runs
// childMain instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("ROLLBRIDGE_PROXY_TEST_CHILD") != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// childMain takes its listener with Listen, proxies to
// $ROLLBRIDGE_PROXY_TEST_UPSTREAM and serves until SIGTERM. It reports
// "activated=<bool> addr=<addr>" on stdout, or the Listen error on stderr
// (exit 3).
func childMain() int {
	if os.Getenv("ROLLBRIDGE_PROXY_TEST_FIX_LISTEN_PID") != "" {
		// Faking the protocol from a parent: the pid is only known here.
		os.Setenv("LISTEN_PID", fmt.Sprint(os.Getpid()))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Port 1 would fail to bind as non-root and is never what activation
	// passes: a served request proves the passed socket was used.
	ln, activated, err := Listen(ctx, "127.0.0.1", 1, envOr("ROLLBRIDGE_PROXY_TEST_FDNAME", DefaultFDName))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Printf("activated=%v addr=%s\n", activated, ln.Addr())
	p, err := New(Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}
	if err := p.Switch("child", []string{os.Getenv("ROLLBRIDGE_PROXY_TEST_UPSTREAM")}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}
	if err := p.Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 5
	}
	return 0
}

func envOr(k, def string) string {
	if v, ok := os.LookupEnv(k); ok {
		return v
	}
	return def
}

// startProxy serves a new Proxy on 127.0.0.1:0 until the test ends and
// returns it with its base URL.
func startProxy(t *testing.T, opts Options) (*Proxy, string) {
	t.Helper()
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
	})
	return p, "http://" + ln.Addr().String()
}

// startUpstream starts an httptest server and returns its host:port.
func startUpstream(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

// named is an upstream answering its name to every request.
func named(t *testing.T, name string) string {
	return startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	}))
}

func mustSwitch(t *testing.T, p *Proxy, release string, addrs ...string) {
	t.Helper()
	if err := p.Switch(release, addrs); err != nil {
		t.Fatal(err)
	}
}

// get fetches url with a fresh client and returns status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return getWith(t, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}, url)
}

func getWith(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return res.StatusCode, string(b)
}

// fetchResult is the outcome of fetchAsync.
type fetchResult struct {
	status int
	body   string
	err    error
}

// fetchAsync GETs url in a goroutine that never touches t (it may outlive
// the test); the result arrives on the returned channel.
func fetchAsync(url string) <-chan fetchResult {
	ch := make(chan fetchResult, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}
		res, err := c.Get(url)
		if err != nil {
			ch <- fetchResult{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		ch <- fetchResult{res.StatusCode, string(b), err}
	}()
	return ch
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitCounts waits until a release's counts are http, ws: an exchange is
// finished just after its response reached the client.
func waitCounts(t *testing.T, p *Proxy, release string, http, ws int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("Connections(%s) = %d, %d", release, http, ws), func() bool {
		h, w := p.Connections(release)
		return h == http && w == ws
	})
}

// errorLog collects OnError calls.
type errorLog struct {
	ch chan releaseErr
}

type releaseErr struct {
	release string
	err     error
}

func newErrorLog() *errorLog { return &errorLog{ch: make(chan releaseErr, 100)} }

func (l *errorLog) onError(release string, err error) { l.ch <- releaseErr{release, err} }

func (l *errorLog) next(t *testing.T) releaseErr {
	t.Helper()
	select {
	case e := <-l.ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no OnError call")
		return releaseErr{}
	}
}

func (l *errorLog) none(t *testing.T) {
	t.Helper()
	select {
	case e := <-l.ch:
		t.Fatalf("unexpected OnError(%q, %v)", e.release, e.err)
	default:
	}
}

// rawRequest writes a raw HTTP request to addr and returns everything read
// until the server closes the connection (or 10 s pass).
func rawRequest(t *testing.T, base, req string) string {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read raw response: %v (got %q)", err, b)
	}
	return string(b)
}
