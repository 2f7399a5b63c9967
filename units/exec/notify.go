package exec

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// EnvNotifySocket is the sd_notify socket variable (sd_notify(3)).
const EnvNotifySocket = "NOTIFY_SOCKET"

// notifySocket is the exec runner's own end of the sd_notify protocol for
// one run: a datagram socket in a private directory, passed to the instance
// as $NOTIFY_SOCKET. Any process of the instance may send to it (like
// systemd's NotifyAccess=all); READY=1 completes the start, STATUS=… lines
// are passed to onStatus.
type notifySocket struct {
	dir, path string
	conn      *net.UnixConn
	ready     chan struct{}
	readyOnce sync.Once
	closeOnce sync.Once
	done      chan struct{} // closed when serve returns

	mu       sync.Mutex
	onStatus func(string)
}

// newNotifySocket binds a socket in a new 0700 directory; with cred set
// (the instance runs as another user) the directory and socket are handed
// to that user so it can send.
func newNotifySocket(cred *syscall.Credential) (*notifySocket, error) {
	dir, err := os.MkdirTemp("", "rollbridge-notify-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if cred != nil {
		for _, p := range []string{dir, path} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				conn.Close()
				os.RemoveAll(dir)
				return nil, err
			}
		}
	}
	return &notifySocket{dir: dir, path: path, conn: conn, ready: make(chan struct{}), done: make(chan struct{})}, nil
}

// serve reads notifications until the socket is closed.
func (n *notifySocket) serve() {
	defer close(n.done)
	buf := make([]byte, 64<<10)
	for {
		k, err := n.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		for line := range strings.SplitSeq(string(buf[:k]), "\n") {
			switch {
			case line == "READY=1":
				n.readyOnce.Do(func() { close(n.ready) })
			case strings.HasPrefix(line, "STATUS="):
				n.mu.Lock()
				fn := n.onStatus
				n.mu.Unlock()
				if fn != nil {
					fn(strings.TrimPrefix(line, "STATUS="))
				}
			}
		}
	}
}

func (n *notifySocket) setOnStatus(fn func(string)) {
	n.mu.Lock()
	n.onStatus = fn
	n.mu.Unlock()
}

// close stops serving and removes the socket and its directory.
func (n *notifySocket) close() {
	n.closeOnce.Do(func() {
		n.conn.Close()
		<-n.done
		os.RemoveAll(n.dir)
	})
}

// withNotifySocket returns env with NOTIFY_SOCKET set to path.
func withNotifySocket(env []string, path string) []string {
	return append(withoutNotifySocket(env), EnvNotifySocket+"="+path)
}

// withoutNotifySocket drops NOTIFY_SOCKET (an inherited value points at the
// daemon's own manager).
func withoutNotifySocket(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvNotifySocket+"=") {
			out = append(out, kv)
		}
	}
	return out
}
