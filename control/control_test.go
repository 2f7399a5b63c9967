package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecodeRequestErrors(t *testing.T) {
	cases := []struct {
		line string
		want string // error text, "" = ok
	}{
		{`{"command":"status"}`, ""},
		{`{"command":"deploy","releasePath":"/srv/r1","releaseId":"v1"}`, ""},
		{`{not json`, "Invalid JSON in control request: "},
		{`{"command":"status"} {"x":1}`, "Invalid JSON in control request: unexpected data after the object"},
		{`123`, "Control command must be an object"},
		{`[1,2]`, "Control command must be an object"},
		{`"status"`, "Control command must be an object"},
		{`{"command":"explode"}`, "Unknown command: explode"},
		{`{}`, "Unknown command: undefined"},
		{`{"command":42}`, "Unknown command: 42"},
		{`{"command":"deploy"}`, "releasePath is required"},
		{`{"command":"deploy","releasePath":""}`, "releasePath is required"},
		{`{"command":"deploy","releasePath":7}`, "releasePath is required"},
		{`{"command":"deploy","releasePath":"/x","releaseId":5}`, "Expected string value"},
		{`{"command":"deploy","releasePath":"/x","releaseId":null}`, ""},
		{`{"command":"retire-owner"}`, "attestation is required"},
		{`{"command":"restart","policy":["x"]}`, "Expected string value"},
	}
	for _, c := range cases {
		_, err := DecodeRequest([]byte(c.line))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", c.line, err)
		case c.want != "" && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
			t.Errorf("%s: error %v, want prefix %q", c.line, err, c.want)
		}
	}
}

func TestDecodeEventsLimit(t *testing.T) {
	for line, want := range map[string]int{
		`{"command":"events","limit":5}`:    5,
		`{"command":"events","limit":0}`:    0,
		`{"command":"events","limit":-3}`:   0,
		`{"command":"events","limit":"10"}`: 0,
		`{"command":"events","limit":2.5}`:  0,
		`{"command":"events"}`:              0,
	} {
		req, err := DecodeRequest([]byte(line))
		if err != nil || req.Limit != want {
			t.Errorf("%s: limit %d err %v, want %d", line, req.Limit, err, want)
		}
	}
}

func TestSuccessEnvelope(t *testing.T) {
	got, err := Success(struct {
		ActiveReleaseID string  `json:"activeReleaseId"`
		PreviousRelease *string `json:"previousReleaseId"`
	}{"v2", nil})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"status":"success","activeReleaseId":"v2","previousReleaseId":null}`+"\n" {
		t.Errorf("got %s", got)
	}
	if got, _ := Success(nil); string(got) != `{"status":"success"}`+"\n" {
		t.Errorf("nil result: %s", got)
	}
	if _, err := Success([]int{1}); err == nil {
		t.Error("array result accepted")
	}
	if got := Failure("boom"); string(got) != `{"error":"boom","status":"error"}`+"\n" {
		t.Errorf("failure: %s", got)
	}
}

// startServer serves h on a fresh socket and returns its path.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rbctl")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "c.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		s.Wait()
		os.RemoveAll(dir)
	})
	return path
}

type recorder struct {
	failed chan string
}

func (r recorder) Handle(ctx context.Context, req Request, peer Peer) (any, error) {
	switch req.Command {
	case CmdStatus:
		return map[string]any{"application": "demo", "activeReleaseId": nil, "proxy": map[string]any{"host": "127.0.0.1", "port": 8182}, "uid": peer.UID}, nil
	case CmdDeploy:
		return nil, errors.New("deploy in progress")
	}
	return map[string]any{}, nil
}

func (r recorder) CommandFailed(_ context.Context, _ Request, err error) { r.failed <- err.Error() }

func TestServerRoundTrip(t *testing.T) {
	rec := recorder{failed: make(chan string, 10)}
	path := startServer(t, &Server{Handler: rec})
	ctx := context.Background()

	raw, err := Call(ctx, path, Request{Command: CmdStatus})
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(raw, &st); err != nil || st["status"] != "success" || st["application"] != "demo" {
		t.Fatalf("status reply %s (%v)", raw, err)
	}
	if int(st["uid"].(float64)) != os.Getuid() {
		t.Errorf("peer uid %v, want %d", st["uid"], os.Getuid())
	}
	_, err = Call(ctx, path, Request{Command: CmdDeploy, ReleasePath: "/x"})
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "deploy in progress" {
		t.Fatalf("deploy error %v", err)
	}
	if got := <-rec.failed; got != "deploy in progress" {
		t.Errorf("command failed reported %q", got)
	}

	// Malformed input on a raw connection: error reply, daemon stays up.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for _, line := range []string{"{oops\n", "123\n", `{"command":"nope"}` + "\n"} {
		c.Write([]byte(line))
		reply, err := r.ReadString('\n')
		if err != nil || !strings.Contains(reply, `"status":"error"`) {
			t.Fatalf("reply to %q: %q %v", line, reply, err)
		}
	}
	// Pipelined requests on one connection all get replies.
	c.Write([]byte(`{"command":"status"}` + "\n" + `{"command":"events"}` + "\n"))
	for range 2 {
		if reply, err := r.ReadString('\n'); err != nil || !strings.Contains(reply, `"status":"success"`) {
			t.Fatalf("pipelined reply %q %v", reply, err)
		}
	}
}

func TestServerRejectsOversizedRequest(t *testing.T) {
	path := startServer(t, &Server{Handler: recorder{failed: make(chan string, 10)}})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write([]byte(strings.Repeat("x", MaxRequestBytes+10) + "\n"))
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.Contains(reply, "exceeds") {
		t.Fatalf("oversized: %q %v", reply, err)
	}
}

func TestServerAuthorization(t *testing.T) {
	rec := recorder{failed: make(chan string, 10)}
	deny := func(p Peer) error {
		return Policy{DaemonUID: p.UID + 1, groupsOf: func(uint32) ([]uint32, error) { return nil, nil }}.Authorize(Peer{UID: p.UID + 1000})
	}
	path := startServer(t, &Server{Handler: rec, Authorize: deny})
	_, err := Call(context.Background(), path, Request{Command: CmdStatus})
	if err == nil || !strings.HasPrefix(err.Error(), "permission denied: uid ") {
		t.Fatalf("want permission denied, got %v", err)
	}
}

func TestPolicy(t *testing.T) {
	g := uint32(500)
	p := Policy{DaemonUID: 1000, Group: &g, GroupName: "deploy", groupsOf: func(uid uint32) ([]uint32, error) {
		if uid == 1002 {
			return []uint32{20, 500}, nil
		}
		return []uint32{20}, nil
	}}
	for _, c := range []struct {
		peer Peer
		ok   bool
	}{
		{Peer{UID: 0}, true},
		{Peer{UID: 1000, GID: 1000}, true},
		{Peer{UID: 1001, GID: 500}, true},
		{Peer{UID: 1002, GID: 1002}, true},
		{Peer{UID: 1003, GID: 1003}, false},
	} {
		err := p.Authorize(c.peer)
		if (err == nil) != c.ok {
			t.Errorf("peer %+v: err %v, want ok=%v", c.peer, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "member of group deploy") {
			t.Errorf("message does not name the group: %v", err)
		}
	}
}

func TestStopKeepsRequestingConnection(t *testing.T) {
	var srv *Server
	srv = &Server{Handler: HandlerFunc(func(ctx context.Context, req Request, _ Peer) (any, error) {
		if req.Command == CmdShutdown {
			srv.Stop(ctx)
			time.Sleep(50 * time.Millisecond) // "cleanup" while the other client is cut off
			return map[string]string{"message": "shutdown"}, nil
		}
		return map[string]any{}, nil
	})}
	path := startServer(t, srv)
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// Make sure the idle connection is registered before the shutdown.
	idle.Write([]byte(`{"command":"status"}` + "\n"))
	ir := bufio.NewReader(idle)
	if _, err := ir.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	raw, err := Call(context.Background(), path, Request{Command: CmdShutdown})
	if err != nil || !strings.Contains(string(raw), `"message":"shutdown"`) {
		t.Fatalf("shutdown reply %s %v", raw, err)
	}
	idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := ir.ReadString('\n'); err == nil {
		t.Error("idle client was not disconnected")
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Error("listener still accepting after Stop")
	}
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "rbprobe")
	defer os.RemoveAll(dir)

	res, err := Probe(ctx, filepath.Join(dir, "missing.sock"))
	if err != nil || res.Alive {
		t.Errorf("missing socket: %+v %v", res, err)
	}
	// A stale socket file nobody listens on → ECONNREFUSED → not alive.
	stale := filepath.Join(dir, "stale.sock")
	ln, _ := net.Listen("unix", stale)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if res, err := Probe(ctx, stale); err != nil || res.Alive {
		t.Errorf("stale socket: %+v %v", res, err)
	}
	// A silent foreign listener → alive, not Rollbridge, after ~1 s.
	foreign := filepath.Join(dir, "foreign.sock")
	fl, _ := net.Listen("unix", foreign)
	defer fl.Close()
	go func() {
		for {
			c, err := fl.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	res, err = Probe(ctx, foreign)
	if err != nil || !res.Alive || res.Rollbridge {
		t.Errorf("foreign: %+v %v", res, err)
	}
	t.Logf("silent listener classified after %v", time.Since(start).Round(time.Millisecond))

	path := startServer(t, &Server{Handler: recorder{failed: make(chan string, 1)}})
	res, err = Probe(ctx, path)
	if err != nil || !res.Rollbridge || res.Application != "demo" || res.ProxyPort != 8182 || res.ActiveReleaseID != nil {
		t.Errorf("rollbridge: %+v %v", res, err)
	}
}
