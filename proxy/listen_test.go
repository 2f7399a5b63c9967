package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestListenBindsWithoutActivation(t *testing.T) {
	t.Setenv("LISTEN_PID", "") // not activated, whatever the environment says
	ln, activated, err := Listen(context.Background(), "127.0.0.1", 0, DefaultFDName)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if activated {
		t.Fatal("activated = true without LISTEN_FDS")
	}
	if port := ln.Addr().(*net.TCPAddr).Port; port == 0 {
		t.Fatal("port 0 was not resolved to the bound port")
	}
	if _, _, err := Listen(context.Background(), "127.0.0.1", 70000, DefaultFDName); err == nil || !strings.Contains(err.Error(), "70000") {
		t.Fatalf("bad port: %v", err)
	}
}

// child is a re-executed test binary running childMain.
type child struct {
	cmd    *exec.Cmd
	line   string // its first stdout line
	stderr *strings.Builder
}

// startChild runs argv with the child environment and waits for its first
// output line. Every process it starts is killed by PID at cleanup.
func startChild(t *testing.T, argv []string, env []string, extra []*os.File, connectTo string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(argv[0], argv[1:]...), stderr: &strings.Builder{}}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.ExtraFiles = extra
	c.cmd.Stderr = c.stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
	})
	if connectTo != "" {
		// systemd-socket-activate starts the child on the first connection.
		go poke(connectTo)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- strings.TrimSpace(line)
		io.Copy(io.Discard, out)
	}()
	select {
	case c.line = <-lines:
	case <-time.After(10 * time.Second):
		t.Fatalf("child printed nothing; stderr: %s", c.stderr)
	}
	return c
}

func poke(addr string) {
	for range 100 {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			conn.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func childEnv(upstreamAddr string, more ...string) []string {
	return append([]string{"ROLLBRIDGE_PROXY_TEST_CHILD=1", "ROLLBRIDGE_PROXY_TEST_UPSTREAM=" + upstreamAddr}, more...)
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestSocketActivatedBySystemdSocketActivate(t *testing.T) {
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("SKIP (loud): systemd-socket-activate is not installed; the fake-protocol test still covers activation")
	}
	addr := freePort(t)
	up := named(t, "upstream-via-activation")
	var argv []string
	argv = append(argv, bin, "-l", addr, "--fdname=proxy")
	for _, e := range childEnv(up) {
		argv = append(argv, "-E", e)
	}
	argv = append(argv, os.Args[0], "-test.run=^$")
	c := startChild(t, argv, nil, nil, addr)
	if !strings.HasPrefix(c.line, "activated=true addr="+addr) {
		t.Fatalf("child said %q (stderr %s); want activated=true on %s", c.line, c.stderr, addr)
	}
	if status, body := get(t, "http://"+addr+"/"); status != 200 || body != "upstream-via-activation" {
		t.Fatalf("through the activated socket: %d %q", status, body)
	}
}

// TestSocketActivatedFakeProtocol passes a listening socket as fd 3 with
// LISTEN_FDS/LISTEN_FDNAMES, as systemd does (LISTEN_PID is set by the child
// itself, since only it knows its pid).
func TestSocketActivatedFakeProtocol(t *testing.T) {
	up := named(t, "upstream-via-fd")
	cases := []struct {
		name, fdnames, want string
		names               bool
		wantErr             string
	}{
		{name: "named", fdnames: "proxy", names: true, want: "activated=true"},
		{name: "single unnamed", names: false, want: "activated=true"},
		{name: "wrong name", fdnames: "control", names: true, wantErr: `no socket named "proxy" among control`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			f, err := ln.(*net.TCPListener).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			env := childEnv(up, "LISTEN_FDS=1", "ROLLBRIDGE_PROXY_TEST_FIX_LISTEN_PID=1")
			if tc.names {
				env = append(env, "LISTEN_FDNAMES="+tc.fdnames)
			}
			if tc.wantErr != "" {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), env...)
				cmd.ExtraFiles = []*os.File{f}
				out, err := cmd.CombinedOutput()
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), tc.wantErr) {
					t.Fatalf("child: %v, output %q; want exit 3 and %q", err, out, tc.wantErr)
				}
				return
			}
			c := startChild(t, []string{os.Args[0], "-test.run=^$"}, env, []*os.File{f}, "")
			if !strings.HasPrefix(c.line, tc.want+" addr="+ln.Addr().String()) {
				t.Fatalf("child said %q (stderr %s)", c.line, c.stderr)
			}
			if status, body := get(t, "http://"+ln.Addr().String()+"/"); status != 200 || body != "upstream-via-fd" {
				t.Fatalf("through the passed socket: %d %q", status, body)
			}
		})
	}
}

func TestListenFromLeavesOtherSockets(t *testing.T) {
	a, _ := net.Listen("tcp", "127.0.0.1:0")
	b, _ := net.Listen("tcp", "127.0.0.1:0")
	defer a.Close()
	defer b.Close()
	passed := map[string][]net.Listener{"proxy": {a}, "control": {b}}
	ln, activated, err := ListenFrom(context.Background(), passed, "", 0, "proxy")
	if err != nil || !activated || ln != a {
		t.Fatalf("ListenFrom = %v, %v, %v", ln, activated, err)
	}
	if _, ok := passed["control"]; !ok || len(passed) != 1 {
		t.Fatalf("remaining sockets %v; want only control", passed)
	}
	dup := map[string][]net.Listener{"proxy": {a, b}}
	if _, _, err := ListenFrom(context.Background(), dup, "", 0, "proxy"); err == nil {
		t.Fatal("two sockets with one name accepted")
	}
}
