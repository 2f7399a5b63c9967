package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The nginx example of docs/nginx.md, between these marker comments, is the
// configuration this test runs: the doc cannot drift from what is tested.
const (
	nginxDoc         = "../docs/nginx.md"
	nginxBeginMarker = "# BEGIN rollbridge-nginx-example"
	nginxEndMarker   = "# END rollbridge-nginx-example"
	// Literals of the documented block that the test replaces with its own
	// loopback ports; each must occur exactly once.
	nginxDocListen   = "listen 80;"
	nginxDocUpstream = "server 127.0.0.1:8182;"
)

// TestNginxFrontEnd runs a real nginx, configured with the documented
// example, in front of the Rollbridge proxy: five deploys under load through
// nginx lose no request, and a WebSocket opened through nginx keeps talking
// to its release across a deploy until the drain deadline closes it with
// 1001.
func TestNginxFrontEnd(t *testing.T) {
	nginx := nginxBinary(t)
	block := nginxExample(t)
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnv(t, runner, "["+webProcess+"]")
		e.deploy("v1")
		port := startNginx(t, nginx, block, e.status().Proxy.Port)
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		if code, body, err := get(base + "/"); err != nil || code != 200 || !strings.Contains(body, "release v1") {
			t.Fatalf("v1 through nginx: %d %q %v", code, body, err)
		}

		l := startLoad(base+"/", 16, 4)
		// Slow requests are in flight on the old release at every switch.
		slow := startLoad(base+"/slow?ms=300", 4, 0)
		start := time.Now()
		for i := 2; i <= 6; i++ {
			e.deploy(fmt.Sprintf("v%d", i))
		}
		time.Sleep(500 * time.Millisecond) // keep the load on while the last retirement drains
		l.finish()
		slow.finish()
		elapsed := time.Since(start)
		total := l.ok.Load() + l.errs.Load() + l.non2xx.Load()
		slowTotal := slow.ok.Load() + slow.errs.Load() + slow.non2xx.Load()
		t.Logf("%s runner, through nginx: %d requests during 5 deploys in %v (%.0f req/s): %d transport errors, %d non-2xx",
			runner, total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), l.errs.Load(), l.non2xx.Load())
		if l.errs.Load() != 0 || l.non2xx.Load() != 0 {
			t.Errorf("requests failed through nginx during deploys; first failure: %v", l.firstErr.Load())
		}
		t.Logf("slow requests (300 ms, in flight at every switch): %d, %d transport errors, %d non-2xx", slowTotal, slow.errs.Load(), slow.non2xx.Load())
		if slow.errs.Load() != 0 || slow.non2xx.Load() != 0 {
			t.Errorf("slow requests failed through nginx during deploys; first failure: %v", slow.firstErr.Load())
		}
		if total < 500 || slowTotal < 4 {
			t.Errorf("only %d fast and %d slow requests were made; the load generator did not run", total, slowTotal)
		}
		if _, body, _ := get(base + "/"); !strings.Contains(body, "release v6") {
			t.Errorf("after the deploys nginx serves %q, want release v6", body)
		}

		nginxWebSocketAcrossDeploy(t, e, base)
	})
}

// nginxWebSocketAcrossDeploy opens a WebSocket on v6 through nginx, deploys
// v7 and checks that the socket stays on v6 while new ones reach v7, then
// that the drain deadline (drainTimeoutMs 15 s in newEnv) ends it with 1001.
func nginxWebSocketAcrossDeploy(t *testing.T, e *env, base string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	wsURL := strings.Replace(base, "http://", "ws://", 1) + "/ws"
	dial := func() *websocket.Conn {
		c, resp, err := websocket.Dial(ctx, wsURL, nil)
		if err != nil {
			t.Fatalf("websocket through nginx: %v (response %v)", err, resp)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	echo := func(c *websocket.Conn, msg string) string {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("websocket write: %v", err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("websocket read: %v", err)
		}
		return string(got)
	}
	old := dial()
	if got := echo(old, "hi"); got != "v6: hi" {
		t.Fatalf("echo before the deploy: %q", got)
	}
	e.deploy("v7")
	if got := echo(old, "still there"); got != "v6: still there" {
		t.Errorf("websocket through nginx after the switch: %q, want it still on v6", got)
	}
	if got := echo(dial(), "new"); got != "v7: new" {
		t.Errorf("new websocket through nginx: %q, want v7", got)
	}
	if _, body, _ := get(base + "/"); !strings.Contains(body, "release v7") {
		t.Errorf("new requests through nginx: %q, want release v7", body)
	}
	if st := e.releaseState("v6"); st != "draining" {
		t.Errorf("v6 is %q while its websocket is open, want draining", st)
	}

	// The drain deadline sends 1001 "going away"; nginx must relay it.
	start := time.Now()
	_, _, err := old.Read(ctx)
	if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
		t.Errorf("old websocket ended with %v (close status %d), want close 1001 at the drain deadline", err, code)
	} else {
		t.Logf("old websocket closed with 1001 through nginx %v after the deploy", time.Since(start).Round(time.Millisecond))
	}
	e.waitFor("v6 stopped after its drain", 30*time.Second, func() bool { return e.releaseState("v6") == "stopped" })
}

// nginxBinary finds nginx or skips loudly.
func nginxBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Skip("SKIPPING the nginx end-to-end test: nginx is not installed (apt-get install -y nginx; scripts/test installs it as root)")
	return ""
}

// nginxExample returns the tested block of docs/nginx.md.
func nginxExample(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(nginxDoc)
	if err != nil {
		t.Fatalf("read the documented nginx config: %v", err)
	}
	text := string(doc)
	begin := strings.Index(text, nginxBeginMarker)
	end := strings.Index(text, nginxEndMarker)
	if begin < 0 || end < 0 || end < begin {
		t.Fatalf("%s must hold the example between %q and %q", nginxDoc, nginxBeginMarker, nginxEndMarker)
	}
	block := text[begin : end+len(nginxEndMarker)]
	for _, lit := range []string{nginxDocListen, nginxDocUpstream} {
		if n := strings.Count(block, lit); n != 1 {
			t.Fatalf("the example in %s must contain %q exactly once (found %d): the test substitutes its ports there", nginxDoc, lit, n)
		}
	}
	return block
}

// startNginx runs nginx in the foreground (daemon off) with the documented
// block inside a private http context: its own pid file, logs and temp
// paths in a temp dir, listening on a free loopback port. It is stopped by
// its PID when the test ends. It returns nginx's port.
func startNginx(t *testing.T, nginx, block string, proxyPort int) int {
	t.Helper()
	dir, err := os.MkdirTemp("", "rbe2e-nginx")
	if err != nil {
		t.Fatal(err)
	}
	// Workers run as an unprivileged user when nginx starts as root; they
	// must reach the temp paths.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	site := strings.Replace(block, nginxDocListen, fmt.Sprintf("listen 127.0.0.1:%d;", port), 1)
	site = strings.Replace(site, nginxDocUpstream, fmt.Sprintf("server 127.0.0.1:%d;", proxyPort), 1)
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
%[2]s
}
`, dir, site)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o777); err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath}
	if out, err := exec.Command(nginx, append([]string{"-t"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t rejects the documented config: %v\n%s\n--- config ---\n%s", err, out, conf)
	}

	cmd := exec.Command(nginx, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Graceful stop of the master (it ends its workers), then SIGKILL
		// of the group it leads if it hangs.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "error.log")); err == nil {
				t.Logf("nginx error.log:\n%s", tail(string(b), 40))
			}
		}
		os.RemoveAll(dir)
	})

	deadline := time.Now().Add(10 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", port))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return port
			}
			err = errors.New(resp.Status)
		}
		select {
		case <-exited:
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited during start: %s\n%s", logs.String(), errLog)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx on port %d did not serve /ping: %v", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
