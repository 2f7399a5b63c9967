package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
)

// TestRetireOwnerRejectsMalformedAttestation (OWN-01, spec §3.7): an
// attestation that is not exactly sha256:<64 lowercase hex> is refused with
// the spec's message before anything is touched (the zero daemon would
// panic on any step of the retirement).
func TestRetireOwnerRejectsMalformedAttestation(t *testing.T) {
	const want = "Owner retirement attestation must use the canonical sha256:<64 lowercase hex> format"
	hex64 := strings.Repeat("0123456789abcdef", 4)
	valid := "sha256:" + hex64
	if !AttestationPattern.MatchString(valid) {
		t.Fatalf("canonical attestation %q does not match", valid)
	}
	for _, bad := range []string{
		"",
		"sha256:",
		"sha256:00",
		"sha256:" + hex64[:63],
		"sha256:" + hex64 + "0",
		"sha256:" + strings.ToUpper(hex64),
		"SHA256:" + hex64,
		"sha512:" + hex64,
		"sha256-" + hex64,
		hex64,
		"sha256:" + hex64[:63] + "g",
		" " + valid,
		valid + " ",
		valid + "\n",
		"sha256:" + hex64 + "\nsha256:" + hex64,
	} {
		d := &daemon{}
		res, err := d.Handle(context.Background(), control.Request{Command: control.CmdRetireOwner, Attestation: bad}, control.Peer{})
		if err == nil || err.Error() != want {
			t.Errorf("attestation %q: result %v, error %v; want %q", bad, res, err, want)
		}
	}
}

// fakeDaemon serves a control socket at path whose status answers like a
// Rollbridge daemon of application app with the given active release.
func fakeDaemon(t *testing.T, path, app string, active *string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &control.Server{Handler: control.HandlerFunc(func(context.Context, control.Request, control.Peer) (any, error) {
		return map[string]any{"activeReleaseId": active, "application": app, "proxy": map[string]any{"host": "127.0.0.1", "port": 8182}}, nil
	})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Wait()
	})
}

// socketDir is a short temp dir (socket paths are limited to 108 bytes).
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rbsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// answers reports whether a status request on path gets a reply.
func answers(path string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := control.Call(ctx, path, control.Request{Command: control.CmdStatus})
	return err == nil
}

// TestListenControlRefusesLiveSocket (CTL-06, spec §7.4 step 1): a path a
// Rollbridge daemon answers on is refused with the daemon's application
// and active release; any other listener with the generic message. The
// refused path keeps working for its owner (nothing removed it).
func TestListenControlRefusesLiveSocket(t *testing.T) {
	ctx := context.Background()
	dir := socketDir(t)
	r7 := "r7"
	for _, c := range []struct {
		name   string
		active *string
		desc   string
	}{
		{"no active release", nil, "no active release"},
		{"active release", &r7, "active release: r7"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".sock")
			fakeDaemon(t, path, "shop", c.active)
			ln, err := listenControl(ctx, config.Control{Path: path})
			if err == nil {
				ln.Close()
				t.Fatal("bound a socket a live daemon answers on")
			}
			want := fmt.Sprintf(`A Rollbridge daemon for application "shop" is already running on %s (%s). Run "rollbridge status" to inspect it or "rollbridge shutdown" to stop it, or set a different control.path.`, path, c.desc)
			if err.Error() != want {
				t.Errorf("error:\n %s\nwant:\n %s", err, want)
			}
			if !answers(path) {
				t.Error("the running daemon's socket stopped answering after the refused start")
			}
		})
	}

	t.Run("foreign listener", func(t *testing.T) {
		for _, reply := range []string{"", "hello\n", "{\"status\":\"success\"}\n"} {
			path := filepath.Join(dir, "foreign.sock")
			fl, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for {
					c, err := fl.Accept()
					if err != nil {
						return
					}
					if reply != "" {
						c.Write([]byte(reply))
					}
					// Silent ones stay open past the probe's 1 s.
					go func() { time.Sleep(2 * time.Second); c.Close() }()
				}
			}()
			ln, err := listenControl(ctx, config.Control{Path: path})
			if err == nil {
				ln.Close()
			}
			want := fmt.Sprintf("The control socket %s is already in use by another process. Stop that process or set a different control.path.", path)
			if err == nil || err.Error() != want {
				t.Errorf("listener replying %q: error %v\nwant %s", reply, err, want)
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Errorf("the foreign socket file was touched: %v %v", fi, err)
			}
			fl.Close()
		}
	})
}

// TestListenControlReplacesStaleFile (CTL-06, spec §7.4 step 2): a socket
// file nobody listens on (a crashed daemon's), or any other leftover file,
// is removed and the path bound afresh.
func TestListenControlReplacesStaleFile(t *testing.T) {
	ctx := context.Background()
	dir := socketDir(t)
	for _, kind := range []string{"stale socket", "regular file"} {
		t.Run(kind, func(t *testing.T) {
			path := filepath.Join(dir, "c.sock")
			switch kind {
			case "stale socket":
				old, err := net.Listen("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				old.(*net.UnixListener).SetUnlinkOnClose(false)
				old.Close()
				if _, err := net.Dial("unix", path); !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("stale socket: dial %v, want connection refused", err)
				}
			case "regular file":
				if err := os.WriteFile(path, []byte("leftover"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ln, err := listenControl(ctx, config.Control{Path: path})
			if err != nil {
				t.Fatalf("%s at the path: %v", kind, err)
			}
			defer ln.Close()
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Fatalf("path after the bind: %v %v, want a socket", fi, err)
			}
			accepted := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					c.Close()
				}
				accepted <- err
			}()
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dial the new socket: %v", err)
			}
			c.Close()
			if err := <-accepted; err != nil {
				t.Fatalf("accept on the new socket: %v", err)
			}
		})
	}
}

// withoutCaps runs fn on a locked OS thread whose effective capability set
// lacks caps (the thread ends with it), as a daemon not allowed to chown
// (or to chmod a file it does not own) would run. Only root can drop what
// it has; others run fn unchanged and report false.
func withoutCaps(t *testing.T, caps []int, fn func()) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		fn()
		return false
	}
	var capErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if capErr = unix.Capget(&hdr, &data[0]); capErr != nil {
			return
		}
		for _, c := range caps {
			data[c/32].Effective &^= 1 << (c % 32)
		}
		if capErr = unix.Capset(&hdr, &data[0]); capErr != nil {
			return
		}
		fn()
	}()
	<-done
	if capErr != nil {
		t.Fatalf("drop capabilities %v: %v", caps, capErr)
	}
	return true
}

func ptr[T any](v T) *T { return &v }

// TestListenControlAppliesModeThenOwnership (CTL-07, spec §2.3, §7.4 step
// 3): control.mode is applied to the bound socket (not left to the umask),
// then owner and group, each side only when configured.
func TestListenControlAppliesModeThenOwnership(t *testing.T) {
	ctx := context.Background()
	dir := socketDir(t)
	path := filepath.Join(dir, "c.sock")
	bind := func(c config.Control) fs.FileInfo {
		t.Helper()
		c.Path = path
		ln, err := listenControl(ctx, c)
		if err != nil {
			t.Fatalf("listenControl(%+v): %v", c, err)
		}
		fi, err := os.Stat(path)
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	for _, mode := range []uint32{0o600, 0o660, 0o666, 0o777, 0} {
		if got := bind(config.Control{Mode: ptr(mode)}).Mode(); got.Type() != fs.ModeSocket || uint32(got.Perm()) != mode {
			t.Errorf("control.mode %#o: socket mode %v", mode, got)
		}
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	if os.Geteuid() != 0 {
		// Only root can give the socket away; the own ids still go through chown.
		st := bind(config.Control{Owner: &config.Principal{ID: uid}, Group: &config.Principal{ID: gid}}).Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("owner/group %d/%d: socket %d/%d", uid, gid, st.Uid, st.Gid)
		}
		t.Skip("not root: ownership changes to other ids are not testable")
	}
	for _, c := range []struct {
		owner, group     *config.Principal
		wantUID, wantGID uint32
	}{
		{&config.Principal{ID: 12345}, &config.Principal{ID: 23456}, 12345, 23456},
		{&config.Principal{ID: 12345}, nil, 12345, gid},
		{nil, &config.Principal{ID: 23456}, uid, 23456},
		{&config.Principal{Name: "54321"}, &config.Principal{Name: "root"}, 54321, 0},
	} {
		st := bind(config.Control{Mode: ptr(uint32(0o660)), Owner: c.owner, Group: c.group}).Sys().(*syscall.Stat_t)
		if st.Uid != c.wantUID || st.Gid != c.wantGID || st.Mode&0o777 != 0o660 {
			t.Errorf("owner %v group %v: socket uid %d gid %d mode %#o, want %d %d 0660", c.owner, c.group, st.Uid, st.Gid, st.Mode&0o777, c.wantUID, c.wantGID)
		}
	}
	// The order: without CAP_FOWNER, chmod works only while the daemon
	// still owns the file, so a chown first would make the chmod fail.
	var fi fs.FileInfo
	var err error
	withoutCaps(t, []int{unix.CAP_FOWNER}, func() {
		var ln net.Listener
		ln, err = listenControl(ctx, config.Control{Path: path, Mode: ptr(uint32(0o640)), Owner: &config.Principal{ID: 12345}})
		if err == nil {
			fi, err = os.Stat(path)
			ln.Close()
		}
	})
	if err != nil {
		t.Fatalf("mode and owner without CAP_FOWNER (chown before chmod?): %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 12345 || st.Mode&0o777 != 0o640 {
		t.Errorf("mode and owner without CAP_FOWNER: uid %d mode %#o", st.Uid, st.Mode&0o777)
	}
}

// TestListenControlChownFailureAbortsStart (CTL-07, spec §2.3): a chown the
// daemon is not allowed to do aborts the start with the spec's message and
// leaves no socket listening. As root the failure is provoked by dropping
// CAP_CHOWN from the calling thread; otherwise chown to root fails anyway.
func TestListenControlChownFailureAbortsStart(t *testing.T) {
	ctx := context.Background()
	dir := socketDir(t)
	path := filepath.Join(dir, "c.sock")
	target := uint32(12345)
	if os.Geteuid() != 0 {
		target = 0
	}
	for _, c := range []config.Control{
		{Path: path, Owner: &config.Principal{ID: target}},
		{Path: path, Mode: ptr(uint32(0o660)), Group: &config.Principal{ID: target}},
	} {
		var ln net.Listener
		var err error
		withoutCaps(t, []int{unix.CAP_CHOWN}, func() { ln, err = listenControl(ctx, c) })
		if err == nil {
			ln.Close()
			t.Fatalf("%+v: bound although chown must fail", c)
		}
		prefix := "Could not set control socket owner/group on " + path + ": "
		suffix := ". Run the daemon as a user allowed to chown it (for example root, or a member of the target group)."
		if msg := err.Error(); !strings.HasPrefix(msg, prefix) || !strings.HasSuffix(msg, suffix) || !strings.Contains(msg, "operation not permitted") {
			t.Errorf("error %q\nwant %q<reason: operation not permitted>%q", msg, prefix, suffix)
		}
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			t.Error("a socket still listens after the failed start")
		}
		// The next start is not blocked by what the failed one left.
		ln, err = listenControl(ctx, config.Control{Path: path})
		if err != nil {
			t.Fatalf("start after a chown failure: %v", err)
		}
		ln.Close()
	}
}
