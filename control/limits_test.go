package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// The limits below are shortened to a fraction of a second; every wait for
// the server to act is bounded by patience instead, so a loaded machine
// slows the tests down without failing them.
const (
	shortTimeout = 200 * time.Millisecond
	patience     = 10 * time.Second
)

// connErrors collects OnConnError reports.
type connErrors struct {
	mu   sync.Mutex
	errs []error
}

func (c *connErrors) add(err error) {
	c.mu.Lock()
	c.errs = append(c.errs, err)
	c.mu.Unlock()
}

func (c *connErrors) list() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.errs...)
}

// readUntilClosed returns the lines the server sends until it closes the
// connection; it fails the test if that takes longer than patience.
func readUntilClosed(t *testing.T, c net.Conn, r *bufio.Reader) []string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(patience))
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			lines = append(lines, line)
		}
		if errors.Is(err, io.EOF) {
			return lines
		}
		if err != nil {
			t.Fatalf("connection not closed by the server (lines so far %q): %v", lines, err)
		}
	}
}

func dial(t *testing.T, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func TestServerClosesSlowRequest(t *testing.T) {
	errs := &connErrors{}
	path := startServer(t, &Server{
		Handler:     recorder{failed: make(chan string, 10)},
		ReadTimeout: shortTimeout,
		OnConnError: errs.add,
	})
	for name, sent := range map[string]string{
		"half a line": `{"command":"sta`,
		"nothing":     "",
		"blank lines": "\n\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, r := dial(t, path)
			if _, err := io.WriteString(c, sent); err != nil {
				t.Fatal(err)
			}
			lines := readUntilClosed(t, c, r)
			if len(lines) != 1 || !strings.Contains(lines[0], `"Control request not received within 200ms; closing the connection"`) ||
				!strings.Contains(lines[0], `"status":"error"`) {
				t.Fatalf("server sent %q, want one request-timeout error", lines)
			}
		})
	}
	// Each timeout is a `control connection error` event naming the peer.
	got := errs.list()
	if len(got) != 3 {
		t.Fatalf("reported %v, want 3 timeouts", got)
	}
	for _, err := range got {
		if !strings.Contains(err.Error(), "not received within") || !strings.Contains(err.Error(), "peer pid ") {
			t.Errorf("report %q", err)
		}
	}
}

func TestServerTimesOutHalfLineAfterRequests(t *testing.T) {
	path := startServer(t, &Server{
		Handler:     recorder{failed: make(chan string, 10)},
		ReadTimeout: shortTimeout,
		IdleTimeout: time.Hour,
	})
	c, r := dial(t, path)
	io.WriteString(c, `{"command":"status"}`+"\n")
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"status":"success"`) {
		t.Fatalf("status reply %q %v", line, err)
	}
	// Under a long idle timeout, a started line still has ReadTimeout.
	io.WriteString(c, `{"comm`)
	lines := readUntilClosed(t, c, r)
	if len(lines) != 1 || !strings.Contains(lines[0], "not received within 200ms") {
		t.Fatalf("server sent %q, want the request-timeout error", lines)
	}
}

func TestServerClosesIdleConnection(t *testing.T) {
	errs := &connErrors{}
	path := startServer(t, &Server{
		Handler:     recorder{failed: make(chan string, 10)},
		ReadTimeout: time.Hour,
		IdleTimeout: shortTimeout,
		OnConnError: errs.add,
	})
	c, r := dial(t, path)
	for range 2 {
		io.WriteString(c, `{"command":"status"}`+"\n")
		if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"status":"success"`) {
			t.Fatalf("status reply %q %v", line, err)
		}
	}
	// Closed without a line: no request asked for one.
	if lines := readUntilClosed(t, c, r); len(lines) != 0 {
		t.Fatalf("server sent %q to an idle connection", lines)
	}
	if got := errs.list(); len(got) != 0 {
		t.Errorf("an idle client was reported: %v", got)
	}
}

// A command that runs far longer than both timeouts, with the client silent
// meanwhile, still gets its reply: the timeouts bound reading a request,
// never waiting for a reply.
func TestServerTimeoutsDoNotCutReplies(t *testing.T) {
	const lines = 10
	srv := &Server{
		ReadTimeout: shortTimeout / 2,
		IdleTimeout: shortTimeout / 2,
		Handler: HandlerFunc(func(ctx context.Context, req Request, _ Peer) (any, error) {
			switch req.Command {
			case CmdDeploy:
				// A deploy that streams progress for 10 × ReadTimeout.
				return Stream(func(ctx context.Context, send func(any) error) error {
					for i := range lines {
						time.Sleep(shortTimeout / 2)
						if err := send(map[string]any{"progress": i}); err != nil {
							return err
						}
					}
					return send(map[string]any{"result": "done"})
				}), nil
			case CmdStop:
				// A single-reply command as slow.
				time.Sleep(5 * shortTimeout)
				return map[string]any{"stopped": true}, nil
			}
			return map[string]any{}, nil
		}),
	}
	path := startServer(t, srv)
	ctx := context.Background()

	var got []string
	err := StreamCall(ctx, path, Request{Command: CmdDeploy, ReleasePath: "/x", Progress: true}, func(raw json.RawMessage) error {
		got = append(got, string(raw))
		return nil
	})
	if err != nil || len(got) != lines+1 || !strings.Contains(got[lines], `"result":"done"`) {
		t.Fatalf("stream: %d lines %q, err %v; want %d progress lines and the result", len(got), got, err, lines)
	}

	raw, err := Call(ctx, path, Request{Command: CmdStop})
	if err != nil || !strings.Contains(string(raw), `"stopped":true`) {
		t.Fatalf("slow command: %s %v", raw, err)
	}
}

// A client that disconnects does not cancel its command (spec §7.3); only
// streams end with the connection.
func TestDisconnectDoesNotCancelCommand(t *testing.T) {
	streamEnded := make(chan struct{})
	deployErr := make(chan error, 1)
	path := startServer(t, &Server{Handler: HandlerFunc(func(ctx context.Context, req Request, _ Peer) (any, error) {
		switch req.Command {
		case CmdLogs:
			return Stream(func(ctx context.Context, _ func(any) error) error {
				<-ctx.Done()
				close(streamEnded)
				return nil
			}), nil
		case CmdDeploy:
			// The stream's end proves the server saw the disconnect.
			select {
			case <-streamEnded:
			case <-time.After(patience):
				deployErr <- errors.New("stream not ended after the client left")
				return nil, nil
			}
			deployErr <- ctx.Err()
			return map[string]any{}, nil
		}
		return map[string]any{}, nil
	})})
	c, _ := dial(t, path)
	io.WriteString(c, `{"command":"logs","follow":true}`+"\n"+`{"command":"deploy","releasePath":"/x"}`+"\n")
	c.Close()
	if err := <-deployErr; err != nil {
		t.Fatalf("deploy context after the client left: %v", err)
	}
}

func TestServerConnectionCap(t *testing.T) {
	const max = 3
	errs := &connErrors{}
	path := startServer(t, &Server{
		Handler:     recorder{failed: make(chan string, 10)},
		MaxConns:    max,
		OnConnError: errs.add,
	})
	ctx := context.Background()
	var held []net.Conn
	for range max {
		c, r := dial(t, path)
		// A reply proves the server accepted and counts the connection.
		io.WriteString(c, `{"command":"status"}`+"\n")
		if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, `"status":"success"`) {
			t.Fatalf("status reply %q %v", line, err)
		}
		held = append(held, c)
	}

	const busy = "Control socket busy: 3 connections open; retry later"
	for range 2 {
		_, err := Call(ctx, path, Request{Command: CmdStatus})
		var re *RemoteError
		if !errors.As(err, &re) || re.Message != busy {
			t.Fatalf("over the cap: %v, want %q", err, busy)
		}
	}
	// A raw client that sends nothing reads the same line, then EOF.
	c, r := dial(t, path)
	if lines := readUntilClosed(t, c, r); len(lines) != 1 || !strings.Contains(lines[0], busy) {
		t.Fatalf("raw client over the cap got %q", lines)
	}
	if res, err := Probe(ctx, path); err != nil || !res.Alive || !res.Busy || res.Rollbridge {
		t.Errorf("probe of a busy daemon: %+v %v", res, err)
	}
	// A flood is one event, not one per refused connection.
	if got := errs.list(); len(got) != 1 || !errors.Is(got[0], ErrBusy) {
		t.Errorf("reported %v, want one ErrBusy", got)
	}

	// Closing one connection frees its slot (once the server has seen the
	// close, hence the retries).
	held[0].Close()
	deadline := time.Now().Add(patience)
	for {
		_, err := Call(ctx, path, Request{Command: CmdStatus})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after a connection closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Saturating again is reported again. The slot of the Call above frees
	// asynchronously too, hence the retries.
	deadline = time.Now().Add(patience)
	for {
		extra, er := dial(t, path)
		io.WriteString(extra, `{"command":"status"}`+"\n")
		line, err := er.ReadString('\n')
		if err == nil && strings.Contains(line, `"status":"success"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("third slot: %q %v", line, err)
		}
		extra.Close()
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := Call(ctx, path, Request{Command: CmdStatus}); err == nil || !strings.Contains(err.Error(), busy) {
		t.Fatalf("over the cap again: %v", err)
	}
	got := errs.list()
	if len(got) < 2 {
		t.Errorf("reported %v, want another ErrBusy after the count fell below the cap", got)
	}
	for _, err := range got {
		if !errors.Is(err, ErrBusy) {
			t.Errorf("unexpected report %v", err)
		}
	}
}
