package daemon

// Checklist gaps of the daemon's composition (docs/checklist.md): ordered
// shutdown (SHD-02, SHD-05, SHD-06), owner retirement (OWN-03), the proxy
// start (PRX-01) and connection counts (PRX-10), state persistence and
// orphans (STA-01, STA-04..06) and bootstrap (BOO-02, BOO-04).
//
// Most tests run the whole daemon in-process (Run, exec runner) against
// real child processes: `sleep`, or this test binary re-executed as a small
// HTTP app (see TestMain). The shutdown-failure tests build the daemon by
// hand around a fake runner to inject failures.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/control"
	"github.com/rollbridge/rollbridge/release"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

// testAppEnv makes this test binary run as a small HTTP app listening on
// 127.0.0.1:<value> instead of running tests; testAppDelayEnv delays its
// bind by that many milliseconds.
const (
	testAppEnv      = "RB_DAEMON_TEST_APP_PORT"
	testAppDelayEnv = "RB_DAEMON_TEST_APP_DELAY_MS"
)

func TestMain(m *testing.M) {
	if port := os.Getenv(testAppEnv); port != "" {
		runTestApp(port)
		return
	}
	os.Exit(m.Run())
}

// runTestApp serves /ping, / (the release id), /hold (answers only when
// the client goes away) and /ws (a raw WebSocket handshake, then holds the
// connection until the client closes it). It exits 0 on SIGTERM.
func runTestApp(port string) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; os.Exit(0) }()
	if ms, _ := strconv.Atoi(os.Getenv(testAppDelayEnv)); ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pong\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "release %s\n", os.Getenv(units.EnvReleaseID))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(800 * time.Millisecond)
		io.WriteString(w, "slow done\n")
	})
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "holding\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(io.Discard, brw)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, (&http.Server{Handler: mux}).Serve(ln))
	os.Exit(1)
}

// appProcess is a proxied process running runTestApp; extraEnv is put in
// front of the command.
func appProcess(t *testing.T, extraEnv string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := fmt.Sprintf("%s %s={{port}} exec '%s'", extraEnv, testAppEnv, exe)
	return fmt.Sprintf(`{id: "web", policy: "proxied", command: %s, port: {from: 0, to: 0}, health: {path: "/ping", intervalMs: 20, startDelayMs: 0, timeoutMs: 20000}}`, jsString(cmd))
}

// sleeperProcess is a proxied process without health check that serves
// nothing (enough where no request reaches it).
const sleeperProcess = `{id: "web", policy: "proxied", command: "exec sleep 1000", port: {from: 0, to: 0}, health: false}`

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// logRecord is one JSON line of the daemon's log; events carry their data
// in "data".
type logRecord struct {
	Msg  string         `json:"msg"`
	Data map[string]any `json:"data"`
}

// hookLog is the daemon's log writer: it keeps every record and calls hook
// synchronously, on the emitting goroutine, at the moment of the emission.
type hookLog struct {
	mu      sync.Mutex
	records []logRecord
	hook    func(logRecord)
}

func (l *hookLog) Write(p []byte) (int, error) {
	var r logRecord
	if json.Unmarshal(p, &r) == nil {
		l.mu.Lock()
		l.records = append(l.records, r)
		hook := l.hook
		l.mu.Unlock()
		if hook != nil {
			hook(r)
		}
	}
	return len(p), nil
}

// find returns every record with message msg.
func (l *hookLog) find(msg string) []logRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logRecord
	for _, r := range l.records {
		if r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// index returns the position of the first record with message msg, -1 if
// there is none.
func (l *hookLog) index(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range l.records {
		if r.Msg == msg {
			return i
		}
	}
	return -1
}

func (l *hookLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, r := range l.records {
		fmt.Fprintf(&b, "%s %v\n", r.Msg, r.Data)
	}
	return b.String()
}

// inproc is one daemon run in-process by Run with the exec runner.
type inproc struct {
	t         *testing.T
	dir       string // the test's scratch dir (releases live below it)
	config    string
	ctlPath   string
	statePath string // "" = statePath not configured
	log       *hookLog
	metrics   string
	cancel    context.CancelFunc
	done      chan error // receives Run's result
	result    *error     // set once done delivered
}

// inprocOpts vary newInproc.
type inprocOpts struct {
	processes string // JS array body
	statePath string // "" = none; "auto" = <dir>/state.json
	hook      func(logRecord)
	metrics   string // Options.MetricsListen
	proxy     string // extra fields of the proxy object, e.g. "drainOnShutdown: true"
}

// newInproc writes the config; start runs the daemon.
func newInproc(t *testing.T, o inprocOpts) *inproc {
	t.Helper()
	dir := socketDir(t)
	d := &inproc{t: t, dir: dir, config: filepath.Join(dir, "rollbridge.js"), ctlPath: filepath.Join(dir, "c.sock"), log: &hookLog{hook: o.hook}, metrics: o.metrics}
	state := ""
	switch o.statePath {
	case "":
	case "auto":
		d.statePath = filepath.Join(dir, "state.json")
		state = fmt.Sprintf("statePath: %s,\n", jsString(d.statePath))
	default:
		d.statePath = o.statePath
		state = fmt.Sprintf("statePath: %s,\n", jsString(d.statePath))
	}
	src := fmt.Sprintf(`export default {
  application: "spec",
  control: {path: %s},
  proxy: {port: 0, drainTimeoutMs: 10000, forceStopTimeoutMs: 500, %s},
  %sprocesses: [%s]
}
`, jsString(d.ctlPath), o.proxy, state, o.processes)
	if err := os.WriteFile(d.config, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// release creates an (empty) release directory.
func (d *inproc) release(id string) string {
	d.t.Helper()
	dir := filepath.Join(d.dir, "releases", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		d.t.Fatal(err)
	}
	return dir
}

// start runs the daemon (with a bootstrap tuple when b is set) without
// waiting for it to answer. The test's cleanup ends it.
func (d *inproc) start(b *Bootstrap) {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.done = make(chan error, 1)
	go func() {
		d.done <- Run(ctx, Options{ConfigPath: d.config, Runner: RunnerExec, Env: os.Environ(), Log: d.log, Version: "test", Bootstrap: b, MetricsListen: d.metrics})
	}()
	d.t.Cleanup(func() {
		cancel()
		if _, ok := d.wait(60 * time.Second); !ok {
			d.t.Errorf("the daemon did not end after cancel:\n%s", d.log)
		}
		if d.t.Failed() {
			d.t.Logf("daemon events:\n%s", d.log)
		}
	})
}

// startReady starts the daemon and waits until its control socket answers.
func (d *inproc) startReady() {
	d.t.Helper()
	d.start(nil)
	d.waitAnswer()
}

func (d *inproc) waitAnswer() {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !answers(d.ctlPath) {
		if err, ended := d.wait(0); ended {
			d.t.Fatalf("the daemon ended before answering: %v\n%s", err, d.log)
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("the daemon does not answer:\n%s", d.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wait waits up to timeout for Run to return.
func (d *inproc) wait(timeout time.Duration) (error, bool) {
	if d.result != nil {
		return *d.result, true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-d.done:
		d.result = &err
		return err, true
	case <-t.C:
		return nil, false
	}
}

// mustEnd waits for Run to return and returns its result.
func (d *inproc) mustEnd() error {
	d.t.Helper()
	err, ok := d.wait(30 * time.Second)
	if !ok {
		d.t.Fatalf("the daemon did not end:\n%s", d.log)
	}
	return err
}

// call sends one control request and returns the raw reply.
func (d *inproc) call(req control.Request) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return control.Call(ctx, d.ctlPath, req)
}

func (d *inproc) mustCall(req control.Request) json.RawMessage {
	d.t.Helper()
	raw, err := d.call(req)
	if err != nil {
		d.t.Fatalf("%s: %v\n%s", req.Command, err, d.log)
	}
	return raw
}

func (d *inproc) deploy(id string) {
	d.t.Helper()
	d.mustCall(control.Request{Command: control.CmdDeploy, ReleasePath: d.release(id), ReleaseID: id})
}

// statusMap is the status reply decoded generically.
func (d *inproc) statusMap() map[string]any {
	d.t.Helper()
	var m map[string]any
	if err := json.Unmarshal(d.mustCall(control.Request{Command: control.CmdStatus}), &m); err != nil {
		d.t.Fatal(err)
	}
	return m
}

// events returns the event history (the events command), oldest first,
// only the events with message msg unless msg is "".
func (d *inproc) events(msg string) []logRecord {
	d.t.Helper()
	var reply struct {
		Events []struct {
			Message string         `json:"message"`
			Data    map[string]any `json:"data"`
		} `json:"events"`
	}
	if err := json.Unmarshal(d.mustCall(control.Request{Command: control.CmdEvents}), &reply); err != nil {
		d.t.Fatal(err)
	}
	var out []logRecord
	for _, ev := range reply.Events {
		if msg == "" || ev.Message == msg {
			out = append(out, logRecord{Msg: ev.Message, Data: ev.Data})
		}
	}
	return out
}

func (d *inproc) proxyPort() int {
	d.t.Helper()
	port, _ := d.statusMap()["proxy"].(map[string]any)["port"].(float64)
	return int(port)
}

// readState decodes the state file (nil when it does not exist).
func (d *inproc) readState() map[string]any {
	d.t.Helper()
	raw, err := os.ReadFile(d.statePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		d.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		d.t.Fatalf("state file: %v\n%s", err, raw)
	}
	return m
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// dialable reports whether something accepts TCP connections on port.
func dialable(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// releaseOf returns release id's entry of a status or snapshot map.
func releaseOf(m map[string]any, id string) map[string]any {
	rels, _ := m["releases"].([]any)
	for _, r := range rels {
		if r, ok := r.(map[string]any); ok && r["releaseId"] == id {
			return r
		}
	}
	return nil
}

// sleeper is a process of "a previous daemon": a child of the test that
// the daemon under test must never signal.
type sleeper struct {
	pid    int
	exited chan struct{}
	cmd    *exec.Cmd
}

func startSleeper(t *testing.T) *sleeper {
	t.Helper()
	c := exec.Command("sleep", "300")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sleeper{pid: c.Process.Pid, exited: make(chan struct{}), cmd: c}
	go func() { c.Wait(); close(s.exited) }()
	t.Cleanup(s.kill)
	return s
}

// alive reports whether the sleeper still runs (it is reaped at once when
// it ends, so a signal would be seen here).
func (s *sleeper) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

func (s *sleeper) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

// deadPID is the pid of a process that ended and was reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.ProcessState.Pid()
}

// writeJSON writes v as a state file a previous daemon might have left
// and returns the bytes written.
func writeJSON(t *testing.T, path string, v any) []byte {
	t.Helper()
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return raw
}

// orphanIDs lists the "id:pid" of the orphans array of a status or
// snapshot map, sorted.
func orphanIDs(m map[string]any) []string {
	var out []string
	list, _ := m["orphans"].([]any)
	for _, o := range list {
		o, _ := o.(map[string]any)
		out = append(out, fmt.Sprintf("%v:%d", o["id"], num(o["pid"])))
	}
	slices.Sort(out)
	return out
}

// TestProxyBoundBeforeControlSocket (PRX-01, spec §4.1): at start the proxy
// is bound before the control socket exists, and `proxy listening` carries
// the port actually bound (config port 0), the one status reports.
func TestProxyBoundBeforeControlSocket(t *testing.T) {
	var (
		mu                sync.Mutex
		eventPort         int
		socketAtProxy     = true
		proxyAcceptsEarly bool
		proxyAtControl    bool
	)
	var d *inproc
	d = newInproc(t, inprocOpts{processes: sleeperProcess, hook: func(r logRecord) {
		mu.Lock()
		defer mu.Unlock()
		switch r.Msg {
		case "proxy listening":
			eventPort = num(r.Data["port"])
			socketAtProxy = exists(d.ctlPath)
			proxyAcceptsEarly = eventPort != 0 && dialable(eventPort)
		case "control socket listening":
			proxyAtControl = eventPort != 0 && dialable(eventPort)
		}
	}})
	d.startReady()
	mu.Lock()
	defer mu.Unlock()
	if socketAtProxy {
		t.Error("the control socket existed when the proxy listening event was emitted")
	}
	if !proxyAcceptsEarly {
		t.Errorf("the proxy (port %d) did not accept connections when it reported listening", eventPort)
	}
	if !proxyAtControl {
		t.Error("the proxy did not accept connections when the control socket was bound")
	}
	if p, c := d.log.index("proxy listening"), d.log.index("control socket listening"); p < 0 || c < 0 || p > c {
		t.Errorf("event order: proxy listening at %d, control socket listening at %d", p, c)
	}
	ev := d.log.find("proxy listening")
	if len(ev) != 1 {
		t.Fatalf("proxy listening events: %+v", ev)
	}
	if eventPort == 0 || ev[0].Data["host"] != "127.0.0.1" || ev[0].Data["socketActivated"] != false {
		t.Errorf("proxy listening %v: want the real port (config port 0), host 127.0.0.1, not socket-activated", ev[0].Data)
	}
	if got := d.proxyPort(); got != eventPort {
		t.Errorf("status proxy.port %d, event port %d", got, eventPort)
	}
}

// openWebSocket does a WebSocket handshake through the proxy and returns
// the open connection.
func openWebSocket(t *testing.T, port int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: spec\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		t.Fatalf("WebSocket handshake through the proxy: %v %v", resp, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// openHold starts GET /hold through the proxy and returns once the
// response headers arrived (the exchange stays in flight until the
// returned connection is closed).
func openHold(t *testing.T, port int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /hold HTTP/1.1\r\nHost: spec\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		t.Fatalf("GET /hold through the proxy: %v %v", resp, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// connCounts is a release's connections and connectionCount in a status
// map; ok is false when a key is missing.
func connCounts(rel map[string]any) (http, ws, count int, ok bool) {
	conns, ok1 := rel["connections"].(map[string]any)
	c, ok2 := rel["connectionCount"].(float64)
	if !ok1 || !ok2 {
		return 0, 0, 0, false
	}
	_, okH := conns["http"].(float64)
	_, okW := conns["websocket"].(float64)
	return num(conns["http"]), num(conns["websocket"]), int(c), okH && okW
}

// TestStatusReportsReleaseConnections (PRX-10, spec §4.5): status shows
// for every release connections {http, websocket} and their sum
// connectionCount, live: in-flight exchanges and open WebSockets of a
// draining release stay counted on it while the new release has its own.
func TestStatusReportsReleaseConnections(t *testing.T) {
	d := newInproc(t, inprocOpts{processes: appProcess(t, "")})
	d.startReady()
	d.deploy("v1")
	port := d.proxyPort()
	want := func(what string, counts map[string][3]int) {
		t.Helper()
		var last map[string]any
		deadline := time.Now().Add(10 * time.Second)
		for {
			st := d.statusMap()
			last = st
			ok := true
			for id, w := range counts {
				rel := releaseOf(st, id)
				if rel == nil {
					ok = false
					break
				}
				h, ws, c, present := connCounts(rel)
				if !present {
					t.Fatalf("%s: release %s lacks connections.http/websocket or connectionCount: %v", what, id, rel)
				}
				if [3]int{h, ws, c} != w {
					ok = false
				}
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				raw, _ := json.Marshal(last["releases"])
				t.Fatalf("%s: want (http, websocket, connectionCount) %v; releases %s", what, counts, raw)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	want("idle v1", map[string][3]int{"v1": {0, 0, 0}})
	hold := openHold(t, port)
	defer hold.Close()
	ws := openWebSocket(t, port)
	defer ws.Close()
	want("one exchange and one WebSocket on v1", map[string][3]int{"v1": {1, 1, 2}})

	// v2 takes new traffic; v1 drains and keeps its connections.
	d.deploy("v2")
	want("v1 draining", map[string][3]int{"v1": {1, 1, 2}, "v2": {0, 0, 0}})
	ws2 := openWebSocket(t, port)
	defer ws2.Close()
	want("a WebSocket on v2", map[string][3]int{"v1": {1, 1, 2}, "v2": {0, 1, 1}})
	hold.Close()
	want("the exchange on v1 ended", map[string][3]int{"v1": {0, 1, 1}, "v2": {0, 1, 1}})
	ws.Close()
	want("v1 drained", map[string][3]int{"v1": {0, 0, 0}, "v2": {0, 1, 1}})
}

// TestStateStoreWritesEveryFiveSeconds (STA-01, spec §8.1): the periodic
// writer rewrites the file every 5000 ms (fake clock), and not at all once
// halted (shutdown, retirement).
func TestStateStoreWritesEveryFiveSeconds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	synctest.Test(t, func(t *testing.T) {
		var writes atomic.Int32
		s := &stateStore{path: path, snapshot: func(context.Context) any {
			return map[string]any{"n": writes.Add(1)}
		}}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go s.run(ctx)
		expect := func(after time.Duration, want int32) {
			t.Helper()
			time.Sleep(after)
			synctest.Wait()
			if got := writes.Load(); got != want {
				t.Fatalf("%d writes at +%v, want %d", got, time.Since(time.Unix(946684800, 0)), want)
			}
		}
		expect(5*time.Second-time.Millisecond, 0)
		expect(time.Millisecond, 1)
		expect(5*time.Second-time.Millisecond, 1)
		expect(time.Millisecond, 2)
		expect(10*time.Second, 4)
		s.halt()
		expect(30*time.Second, 4)
	})
	raw, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(raw), `"n": 4`) {
		t.Errorf("state file after four periodic writes: %s %v", raw, err)
	}
}

// TestShutdownAtFirstControlRequestLeavesNoState (STA-01, SHD-05, spec
// §8.1, §3.6 step 7): persistence is set up with the control socket, before
// any request is served: a shutdown handled while the daemon is still
// finishing its start (held in the metrics listening event) ends with the
// state file deleted, and nothing writes it afterwards.
func TestShutdownAtFirstControlRequestLeavesNoState(t *testing.T) {
	var d *inproc
	var shutdownErr error
	d = newInproc(t, inprocOpts{processes: sleeperProcess, statePath: "auto", metrics: "127.0.0.1:0", hook: func(r logRecord) {
		if r.Msg == "metrics listening" {
			// The control server serves already; the rest of the start
			// waits until the shutdown replied.
			_, shutdownErr = d.call(control.Request{Command: control.CmdShutdown})
		}
	}})
	d.start(nil)
	if err := d.mustEnd(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if shutdownErr != nil {
		t.Fatalf("shutdown: %v", shutdownErr)
	}
	if exists(d.statePath) {
		raw, _ := os.ReadFile(d.statePath)
		t.Errorf("state file left after a clean shutdown:\n%s", raw)
	}
}

// persistedAt parses a snapshot's persistedAt.
func persistedAt(t *testing.T, snap map[string]any) time.Time {
	t.Helper()
	s, _ := snap["persistedAt"].(string)
	at, err := time.Parse("2006-01-02T15:04:05.000Z", s)
	if err != nil {
		t.Fatalf("persistedAt %q: %v", s, err)
	}
	return at
}

func releaseState(snap map[string]any, id string) string {
	if r := releaseOf(snap, id); r != nil {
		s, _ := r["state"].(string)
		return s
	}
	return ""
}

// TestStatePersistedAfterDeployStopAndDrain (STA-01, spec §8.1): the
// state file is written as soon as persistence starts, after a successful
// deploy, after stop and after a background drain finishes, each before
// the 5 s timer could have done it.
func TestStatePersistedAfterDeployStopAndDrain(t *testing.T) {
	d := newInproc(t, inprocOpts{processes: appProcess(t, ""), statePath: "auto"})
	d.startReady()
	first := d.readState()
	if first == nil {
		t.Fatal("no state file once the control socket answers")
	}
	start := persistedAt(t, first)
	// Every snapshot checked below must predate the first timer write.
	beforeTimer := func(what string, snap map[string]any) {
		t.Helper()
		if at := persistedAt(t, snap); at.Sub(start) >= 5*time.Second-100*time.Millisecond {
			t.Fatalf("%s: snapshot persisted at +%v, too late to tell it from the 5 s timer (slow machine?)", what, at.Sub(start))
		}
	}

	d.deploy("v1")
	snap := d.readState()
	if snap["activeReleaseId"] != "v1" {
		t.Fatalf("state right after deploy v1: activeReleaseId %v", snap["activeReleaseId"])
	}
	beforeTimer("deploy v1", snap)

	// An exchange in flight keeps v1 draining after v2 takes over.
	hold := openHold(t, d.proxyPort())
	defer hold.Close()
	d.deploy("v2")
	snap = d.readState()
	if snap["activeReleaseId"] != "v2" || releaseState(snap, "v1") != "draining" {
		t.Fatalf("state right after deploy v2: active %v, v1 %q (want v2, draining)", snap["activeReleaseId"], releaseState(snap, "v1"))
	}
	beforeTimer("deploy v2", snap)
	hold.Close()
	waitUntil(t, "the state file to show v1 stopped after its drain", 3*time.Second, func() bool {
		snap = d.readState()
		return releaseState(snap, "v1") == "stopped"
	})
	beforeTimer("drain of v1", snap)
	if len(d.log.find("release drained")) != 1 {
		t.Errorf("release drained events: %v", d.log.find("release drained"))
	}

	d.mustCall(control.Request{Command: control.CmdStop, ReleaseID: "v2"})
	snap = d.readState()
	if releaseState(snap, "v2") != "stopped" || snap["activeReleaseId"] != nil {
		t.Fatalf("state right after stop v2: active %v, v2 %q", snap["activeReleaseId"], releaseState(snap, "v2"))
	}
	beforeTimer("stop v2", snap)
}

// TestStateWrittenOnlyOnceControlSocketExposed (STA-01, spec §8.1, §8.6):
// a bootstrap daemon writes nothing while it activates its release (the
// previous daemon's file stays as it was, although the deploy switched
// traffic), and writes at once when the control socket exists.
func TestStateWrittenOnlyOnceControlSocketExposed(t *testing.T) {
	var d *inproc
	var (
		mu        sync.Mutex
		checked   []string
		unchanged = map[string]bool{}
	)
	var prior []byte
	d = newInproc(t, inprocOpts{processes: sleeperProcess, statePath: "auto", hook: func(r logRecord) {
		switch r.Msg {
		case "traffic switched", "control socket listening":
			raw, _ := os.ReadFile(d.statePath)
			mu.Lock()
			checked = append(checked, r.Msg)
			unchanged[r.Msg] = string(raw) == string(prior)
			mu.Unlock()
		}
	}})
	prior = writeJSON(t, d.statePath, map[string]any{"activeReleaseId": "old", "orphans": []any{}, "releases": []any{}, "services": []any{}, "singletons": []any{}})
	d.start(&Bootstrap{ReleaseID: "v1", ReleasePath: d.release("v1"), Revision: "r1"})
	d.waitAnswer()
	mu.Lock()
	if !slices.Equal(checked, []string{"traffic switched", "control socket listening"}) {
		t.Fatalf("events seen: %v", checked)
	}
	for _, msg := range checked {
		if !unchanged[msg] {
			t.Errorf("the state file was written before the control socket existed (seen at %q)", msg)
		}
	}
	mu.Unlock()
	snap := d.readState()
	if snap["activeReleaseId"] != "v1" || snap["bootstrap"] == nil {
		t.Errorf("state once the socket answers: active %v, bootstrap %v", snap["activeReleaseId"], snap["bootstrap"])
	}
}

// TestStatePersistFailureEmitsEvent (STA-04, spec §8.1): a failed write
// emits `state persist failed` {error} and blocks nothing: the daemon
// answers, deploys (whose write fails again) and shuts down cleanly.
func TestStatePersistFailureEmitsEvent(t *testing.T) {
	missing := filepath.Join(socketDir(t), "missing", "state.json")
	d := newInproc(t, inprocOpts{processes: sleeperProcess, statePath: missing})
	d.startReady()
	failed := d.events("state persist failed")
	if len(failed) != 1 {
		t.Fatalf("state persist failed events after the first write: %+v", failed)
	}
	if msg, _ := failed[0].Data["error"].(string); !strings.Contains(msg, missing) || !strings.Contains(msg, "no such file or directory") {
		t.Errorf("state persist failed error %q: want the path and the cause", msg)
	}
	if keys := slices.Sorted(func(yield func(string) bool) {
		for k := range failed[0].Data {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(keys, []string{"error"}) {
		t.Errorf("state persist failed data keys %v, want [error]", keys)
	}
	start := time.Now()
	d.deploy("v1")
	if st := d.statusMap(); st["activeReleaseId"] != "v1" {
		t.Errorf("status after deploy: %v", st["activeReleaseId"])
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("deploy and status took %v with failing state writes", took)
	}
	if n := len(d.events("state persist failed")); n != 2 {
		t.Errorf("%d state persist failed events after the deploy, want 2 (start, deploy)", n)
	}
	d.mustCall(control.Request{Command: control.CmdShutdown})
	if err := d.mustEnd(); err != nil {
		t.Errorf("Run after shutdown: %v", err)
	}
}

// seedOrphans writes, as a previous daemon's snapshot, a release process,
// an orphans entry, a service and a singleton that are alive (sleepers)
// plus a release process that is gone.
func seedOrphans(t *testing.T, path string) (web, old, svc, cron *sleeper) {
	t.Helper()
	web, old, svc, cron = startSleeper(t), startSleeper(t), startSleeper(t), startSleeper(t)
	writeJSON(t, path, map[string]any{
		"activeReleaseId": "v0",
		"orphans":         []any{map[string]any{"id": "old", "pid": old.pid, "releaseId": nil}},
		"releases": []any{map[string]any{"releaseId": "v0", "state": "active", "processes": []any{
			map[string]any{"id": "web", "pid": web.pid},
			map[string]any{"id": "worker", "pid": deadPID(t)},
		}}},
		"services":   []any{map[string]any{"id": "beacon", "process": map[string]any{"pid": svc.pid}}},
		"singletons": []any{map[string]any{"id": "cron", "process": map[string]any{"pid": cron.pid}}},
	})
	return web, old, svc, cron
}

// TestStartupReportsOrphansWithoutSignalling (STA-05, spec §8.2): at start
// (exec runner) every live process of the previous snapshot — orphans
// entries, release processes, services, singletons — gets `orphaned managed process
// detected` {pid, processId, releaseId}, then one `orphaned processes from
// a previous daemon` {count, hint}; dead ones are not reported, and none
// is ever signalled, not even by the shutdown.
func TestStartupReportsOrphansWithoutSignalling(t *testing.T) {
	d := newInproc(t, inprocOpts{processes: sleeperProcess, statePath: "auto"})
	web, old, svc, cron := seedOrphans(t, d.statePath)
	d.startReady()
	detected := d.events("orphaned managed process detected")
	var got []string
	for _, ev := range detected {
		if len(ev.Data) != 3 {
			t.Errorf("orphan event data %v, want pid, processId, releaseId", ev.Data)
		}
		got = append(got, fmt.Sprintf("%v:%d:%v", ev.Data["processId"], num(ev.Data["pid"]), ev.Data["releaseId"]))
	}
	slices.Sort(got)
	want := []string{fmt.Sprintf("beacon:%d:<nil>", svc.pid), fmt.Sprintf("cron:%d:<nil>", cron.pid), fmt.Sprintf("old:%d:<nil>", old.pid), fmt.Sprintf("web:%d:v0", web.pid)}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("orphaned managed process detected: %v, want %v", got, want)
	}
	summary := d.events("orphaned processes from a previous daemon")
	if len(summary) != 1 {
		t.Fatalf("orphaned processes from a previous daemon: %+v", summary)
	}
	hint, _ := summary[0].Data["hint"].(string)
	if num(summary[0].Data["count"]) != 4 || !strings.HasPrefix(hint, "These processes were started by a previous Rollbridge daemon") || !strings.HasSuffix(hint, " 4 found.") {
		t.Errorf("summary %v", summary[0].Data)
	}
	var order []string
	for _, ev := range d.events("") {
		if strings.HasPrefix(ev.Msg, "orphaned") {
			order = append(order, ev.Msg)
		}
	}
	if len(order) != 5 || order[4] != "orphaned processes from a previous daemon" {
		t.Errorf("orphan events in order: %v, want the four per-process events, then the summary", order)
	}
	if ids := orphanIDs(d.statusMap()); len(ids) != 4 {
		t.Errorf("status.orphans %v", ids)
	}
	d.deploy("v1")
	d.mustCall(control.Request{Command: control.CmdShutdown})
	if err := d.mustEnd(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for name, s := range map[string]*sleeper{"web": web, "old": old, "beacon": svc, "cron": cron} {
		if !s.alive() {
			t.Errorf("orphan %s (pid %d) was signalled", name, s.pid)
		}
	}
}

// TestOrphansCarriedIntoSnapshotsAndShutdownState (STA-06, SHD-05, spec
// §6.5, §8.2, §3.6 step 7): the live orphans are in every snapshot the
// daemon writes, pruned when they die, and a clean shutdown rewrites the
// file with exactly the still-live orphans and nothing else.
func TestOrphansCarriedIntoSnapshotsAndShutdownState(t *testing.T) {
	d := newInproc(t, inprocOpts{processes: sleeperProcess, statePath: "auto"})
	web, old, svc, cron := seedOrphans(t, d.statePath)
	d.startReady()
	wantAll := []string{fmt.Sprintf("beacon:%d", svc.pid), fmt.Sprintf("cron:%d", cron.pid), fmt.Sprintf("old:%d", old.pid), fmt.Sprintf("web:%d", web.pid)}
	slices.Sort(wantAll)
	snap := d.readState()
	if got := orphanIDs(snap); !slices.Equal(got, wantAll) {
		t.Errorf("orphans in the first snapshot: %v, want %v", got, wantAll)
	}
	if snap["activeReleaseId"] != nil {
		t.Errorf("the first snapshot has an active release: %v", snap["activeReleaseId"])
	}
	// Two orphans die: the next snapshot (after a deploy) drops them.
	web.kill()
	cron.kill()
	d.deploy("v1")
	want2 := []string{fmt.Sprintf("beacon:%d", svc.pid), fmt.Sprintf("old:%d", old.pid)}
	slices.Sort(want2)
	snap = d.readState()
	if snap["activeReleaseId"] != "v1" {
		t.Fatalf("snapshot after deploy: active %v", snap["activeReleaseId"])
	}
	if got := orphanIDs(snap); !slices.Equal(got, want2) {
		t.Errorf("orphans in the snapshot after deploy: %v, want %v", got, want2)
	}
	if got := orphanIDs(d.statusMap()); !slices.Equal(got, want2) {
		t.Errorf("status.orphans: %v, want %v", got, want2)
	}
	old.kill()
	d.mustCall(control.Request{Command: control.CmdShutdown})
	if err := d.mustEnd(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	raw, err := os.ReadFile(d.statePath)
	if err != nil {
		t.Fatalf("state file after shutdown with a live orphan: %v", err)
	}
	var final map[string]any
	if err := json.Unmarshal(raw, &final); err != nil {
		t.Fatal(err)
	}
	wantFinal := map[string]any{
		"activeReleaseId": nil,
		"orphans":         []any{map[string]any{"id": "beacon", "pid": float64(svc.pid), "releaseId": nil}},
		"releases":        []any{}, "services": []any{}, "singletons": []any{},
	}
	if !reflect.DeepEqual(final, wantFinal) {
		t.Errorf("state file after shutdown:\n%s\nwant only the live orphan beacon (pid %d)", raw, svc.pid)
	}
	if !svc.alive() {
		t.Error("the live orphan was signalled")
	}
}

// TestBootstrapFailureKeepsOrphanRecords (BOO-04, spec §8.6 activation step
// 4): a failed bootstrap activation reports the prior orphans, emits
// `bootstrap activation failed`, leaves no socket, never signals the
// orphans and keeps the previous daemon's state file byte for byte.
func TestBootstrapFailureKeepsOrphanRecords(t *testing.T) {
	d := newInproc(t, inprocOpts{statePath: "auto",
		processes: `{id: "web", policy: "proxied", command: "exec sleep 1000", port: {from: 0, to: 0}, health: {path: "/ping", intervalMs: 20, startDelayMs: 0, timeoutMs: 300}}`})
	web, old, svc, cron := seedOrphans(t, d.statePath)
	prior, err := os.ReadFile(d.statePath)
	if err != nil {
		t.Fatal(err)
	}
	d.start(&Bootstrap{ReleaseID: "v1", ReleasePath: d.release("v1"), Revision: "r1"})
	runErr := d.mustEnd()
	if runErr == nil || !strings.Contains(runErr.Error(), "bootstrap activation of release v1 failed") {
		t.Fatalf("Run: %v, want the activation failure", runErr)
	}
	failed := d.log.find("bootstrap activation failed")
	if len(failed) != 1 || failed[0].Data["releaseId"] != "v1" || failed[0].Data["status"] != "error" {
		t.Errorf("bootstrap activation failed events: %+v", failed)
	}
	if n := len(d.log.find("orphaned managed process detected")); n != 4 {
		t.Errorf("%d orphaned managed process detected events, want 4", n)
	}
	if exists(d.ctlPath) {
		t.Error("control socket left by a failed bootstrap")
	}
	after, err := os.ReadFile(d.statePath)
	if err != nil || string(after) != string(prior) {
		t.Errorf("state file after the failed bootstrap (%v):\n%s\nwant the prior file unchanged:\n%s", err, after, prior)
	}
	for name, s := range map[string]*sleeper{"web": web, "old": old, "beacon": svc, "cron": cron} {
		if !s.alive() {
			t.Errorf("orphan %s (pid %d) was signalled", name, s.pid)
		}
	}
	if n := len(d.log.find("process exited")); n != 1 {
		t.Errorf("%d process exited events, want 1 (the attempt's web stopped)", n)
	}
}

// TestBootstrapProxyAnswersBeforeControlSocket (BOO-02, spec §8.6
// activation steps 1-3): the proxy is bound and serving before the
// bootstrap activation, so a request meanwhile gets 503 (not a refused
// connection); the control socket appears only after the activation
// succeeded, and then the release serves.
func TestBootstrapProxyAnswersBeforeControlSocket(t *testing.T) {
	var port atomic.Int32
	d := newInproc(t, inprocOpts{processes: appProcess(t, testAppDelayEnv+"=700"), hook: func(r logRecord) {
		if r.Msg == "proxy listening" {
			port.Store(int32(num(r.Data["port"])))
		}
	}})
	d.start(&Bootstrap{ReleaseID: "v1", ReleasePath: d.release("v1"), Revision: "r1"})
	waitUntil(t, "proxy listening", 10*time.Second, func() bool { return port.Load() != 0 })
	url := fmt.Sprintf("http://127.0.0.1:%d/", port.Load())
	client := &http.Client{Timeout: 5 * time.Second}
	unavailable := 0
	for !exists(d.ctlPath) {
		if err, ended := d.wait(0); ended {
			t.Fatalf("the daemon ended during activation: %v", err)
		}
		resp, err := client.Get(url)
		if err != nil {
			if exists(d.ctlPath) {
				break
			}
			t.Fatalf("request during activation: %v (want 503 from the bound proxy)", err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			unavailable++
		case http.StatusOK:
			// Traffic switched; the socket follows.
		default:
			t.Fatalf("request during activation: status %d, want 503", resp.StatusCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if unavailable == 0 {
		t.Fatal("no request got 503 while the activation ran")
	}
	if len(d.log.find("traffic switched")) != 1 || d.log.index("traffic switched") > d.log.index("control socket listening") {
		t.Errorf("the control socket was exposed before the activation succeeded:\n%s", d.log)
	}
	d.waitAnswer()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "release v1") {
		t.Errorf("after activation: %d %q", resp.StatusCode, body)
	}
	t.Logf("%d requests got 503 during the activation", unavailable)
}

// TestRetireOwnerRepliesAndEmits (OWN-03, spec §3.7): retire-owner replies
// {"status":"success","message":"owner retired"}, emits `external owner
// retired` {attestation, status: "draining"}, has removed the control
// socket by then, releases the proxy port, leaves the state file as it was
// and ends the daemon once its processes stopped in the background.
func TestRetireOwnerRepliesAndEmits(t *testing.T) {
	d := newInproc(t, inprocOpts{processes: sleeperProcess, statePath: "auto"})
	d.startReady()
	d.deploy("v1")
	port := d.proxyPort()
	att := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	raw, err := d.call(control.Request{Command: control.CmdRetireOwner, Attestation: att})
	if err != nil {
		t.Fatalf("retire-owner: %v", err)
	}
	var reply map[string]any
	if err := json.Unmarshal(raw, &reply); err != nil || !reflect.DeepEqual(reply, map[string]any{"status": "success", "message": "owner retired"}) {
		t.Errorf("retire-owner reply %s (%v), want {\"status\":\"success\",\"message\":\"owner retired\"}", raw, err)
	}
	if exists(d.ctlPath) {
		t.Error("the control socket file exists after the retire-owner reply")
	}
	retired := d.log.find("external owner retired")
	if len(retired) != 1 || !reflect.DeepEqual(retired[0].Data, map[string]any{"attestation": att, "status": "draining"}) {
		t.Errorf("external owner retired events: %+v", retired)
	}
	// The proxy listener is closed before the reply (spec §3.7 step 4): the
	// new owner can bind at once.
	if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
		t.Errorf("the proxy port is still held at the retire-owner reply: %v", err)
	} else {
		ln.Close()
	}
	if err := d.mustEnd(); err != nil {
		t.Errorf("Run after retirement: %v", err)
	}
	if n := len(d.log.find("process exited")); n != 1 {
		t.Errorf("%d process exited events, want 1 (v1's web stopped in the background)", n)
	}
	snap := d.readState()
	if snap == nil || snap["activeReleaseId"] != "v1" {
		t.Errorf("state file after retirement: %v, want it left as is (active v1)", snap)
	}
}

// stopHookRunner is a fake runner whose Stop first calls hook; a non-nil
// error from it is Stop's result (the instance keeps running).
type stopHookRunner struct {
	*unitstest.Fake
	hook func(name string) error
}

func (r *stopHookRunner) Stop(ctx context.Context, name string, sig syscall.Signal, g units.Grace) error {
	if err := r.hook(name); err != nil {
		return err
	}
	return r.Fake.Stop(ctx, name, sig, g)
}

// handDaemon is a daemon assembled like run does, around a fake runner:
// proxy bound and serving, manager with release v1 deployed (a web and
// two worker replicas), control server serving on control.path unless
// noControl, state store counting its snapshots when statePath is set.
type handDaemon struct {
	*daemon
	snapshots atomic.Int32
}

func newHandDaemon(t *testing.T, runner units.Runner, ctlPath, statePath string, noControl bool) *handDaemon {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "rollbridge.js")
	src := fmt.Sprintf(`export default {
  application: "spec",
  control: {path: %s},
  proxy: {port: 0},
  processes: [%s, {id: "worker", command: "worker", replicas: 2}]
}
`, jsString(ctlPath), sleeperProcess)
	if err := os.WriteFile(cfgPath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg, err := config.Load(ctx, cfgPath, config.LoadOptions{Env: []string{"PATH=/usr/bin:/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	h := &handDaemon{daemon: &daemon{cfg: cfg, log: slog.New(slog.DiscardHandler), events: release.NewEvents(nil, nil), runner: runner, done: make(chan struct{})}}
	d := h.daemon
	if err := d.newProxy(); err != nil {
		t.Fatal(err)
	}
	if err := d.bindProxy(ctx, nil); err != nil {
		t.Fatal(err)
	}
	d.serveProxy()
	life, endLife := context.WithCancel(ctx)
	t.Cleanup(endLife)
	d.mgr, err = release.New(release.Options{Config: cfg, Runner: runner, Traffic: trafficAdapter{d.proxy, d.log}, Events: d.events,
		Health: func(context.Context, string, config.Health) error { return nil },
		OnChange: func() {
			if d.state != nil {
				d.state.write(context.Background())
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.mgr.Run(life); err != nil {
		t.Fatal(err)
	}
	if _, err := d.mgr.Deploy(ctx, release.DeployRequest{ReleasePath: dir, ReleaseID: "v1"}); err != nil {
		t.Fatal(err)
	}
	if !noControl {
		ln, err := listenControl(ctx, cfg.Control)
		if err != nil {
			t.Fatal(err)
		}
		d.ctlLn = ln
		d.ctl = &control.Server{Handler: d}
		served := make(chan struct{})
		go func() { d.ctl.Serve(life, ln); close(served) }()
		t.Cleanup(func() { endLife(); <-served; d.ctl.Wait() })
	}
	if statePath != "" {
		d.state = &stateStore{path: statePath, snapshot: func(ctx context.Context) any {
			h.snapshots.Add(1)
			return d.snapshot(ctx)
		}}
		d.state.write(ctx)
	}
	return h
}

// TestShutdownUnlinksSocketBeforeStoppingProcesses (SHD-02, spec §3.6 steps
// 2-5): when the first process is asked to stop, the control socket file
// is already gone and no new control connection is accepted, while the
// requesting connection still gets the reply at the end.
func TestShutdownUnlinksSocketBeforeStoppingProcesses(t *testing.T) {
	ctlPath := filepath.Join(socketDir(t), "c.sock")
	var (
		mu            sync.Mutex
		stops         int
		socketAtStop  bool
		dialedAtStop  error
		answerAtFirst bool
	)
	r := &stopHookRunner{Fake: unitstest.NewFake("spec")}
	r.hook = func(string) error {
		mu.Lock()
		defer mu.Unlock()
		stops++
		if stops == 1 {
			socketAtStop = exists(ctlPath)
			var c net.Conn
			if c, dialedAtStop = net.DialTimeout("unix", ctlPath, time.Second); dialedAtStop == nil {
				c.Close()
			}
			answerAtFirst = socketAtStop && answers(ctlPath)
		}
		return nil
	}
	h := newHandDaemon(t, r, ctlPath, "", false)
	if !exists(ctlPath) || !answers(ctlPath) {
		t.Fatal("the control socket does not answer before the shutdown")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	raw, err := control.Call(ctx, ctlPath, control.Request{Command: control.CmdShutdown})
	if err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	var reply map[string]any
	if json.Unmarshal(raw, &reply); reply["message"] != "shutdown" {
		t.Errorf("shutdown reply %s", raw)
	}
	mu.Lock()
	defer mu.Unlock()
	if stops != 3 {
		t.Fatalf("%d instances stopped, want 3", stops)
	}
	if socketAtStop {
		t.Error("the control socket file still existed when the first process was asked to stop")
	}
	if dialedAtStop == nil || answerAtFirst {
		t.Errorf("a new control connection was accepted while processes stopped (dial error %v)", dialedAtStop)
	}
	select {
	case <-h.done:
	default:
		t.Error("the shutdown replied before it completed")
	}
}

// TestNoStateWritesWhileStopping (STA-01, spec §3.6 step 4, §8.1): once a
// shutdown stops processes, neither the periodic writer nor a change
// notification writes the state file; the shutdown's own cleanup then
// deletes it.
func TestNoStateWritesWhileStopping(t *testing.T) {
	ctlPath := filepath.Join(socketDir(t), "c.sock")
	statePath := filepath.Join(t.TempDir(), "state.json")
	var h *handDaemon
	var (
		mu            sync.Mutex
		stops         int
		writesAtStops []int32
	)
	r := &stopHookRunner{Fake: unitstest.NewFake("spec")}
	r.hook = func(string) error {
		// What the timer (or an OnChange) would do now.
		before := h.snapshots.Load()
		h.state.write(context.Background())
		mu.Lock()
		stops++
		writesAtStops = append(writesAtStops, h.snapshots.Load()-before)
		mu.Unlock()
		return nil
	}
	h = newHandDaemon(t, r, ctlPath, statePath, true)
	if !exists(statePath) {
		t.Fatal("no state file before the shutdown")
	}
	if err := h.shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if stops != 3 {
		t.Fatalf("%d instances stopped, want 3", stops)
	}
	if !slices.Equal(writesAtStops, []int32{0, 0, 0}) {
		t.Errorf("snapshots written while processes stopped: %v, want none", writesAtStops)
	}
	if exists(statePath) {
		t.Error("state file not deleted by the shutdown")
	}
}

// TestShutdownJoinsStepFailures (SHD-06, spec §3.6 step 8): a failure in
// any step does not skip the later ones, and the reply is one error
// joining every step's message with "; " in step order.
func TestShutdownJoinsStepFailures(t *testing.T) {
	// Directories with content cannot be removed: the socket unlink and
	// the state file deletion fail.
	blocker := func() string {
		dir := filepath.Join(socketDir(t), "busy")
		if err := os.MkdirAll(filepath.Join(dir, "x"), 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	ctlPath, statePath := blocker(), blocker()
	var stops atomic.Int32
	r := &stopHookRunner{Fake: unitstest.NewFake("spec")}
	r.hook = func(name string) error {
		stops.Add(1)
		return fmt.Errorf("stop %s: injected failure", name)
	}
	h := newHandDaemon(t, r, ctlPath, statePath, true)
	// The proxy listener is closed under the proxy: closing it again fails.
	h.serving = false
	h.proxyLn.Close()

	res, err := h.Handle(context.Background(), control.Request{Command: control.CmdShutdown}, control.Peer{})
	if err == nil {
		t.Fatalf("shutdown succeeded (%v) although every step failed", res)
	}
	parts := strings.Split(err.Error(), "; ")
	want := []string{
		"control socket unlink failed: remove " + ctlPath + ": directory not empty",
		"Shutdown failed to stop 3 owned resource(s).",
		"proxy close failed: close tcp ",
		"persistent state cleanup failed: remove " + statePath + ": directory not empty",
	}
	if len(parts) != len(want) {
		t.Fatalf("shutdown error %q: want %d parts joined by \"; \"", err, len(want))
	}
	for i, p := range parts {
		if !strings.HasPrefix(p, want[i]) {
			t.Errorf("part %d %q, want %q…", i, p, want[i])
		}
	}
	if !strings.HasSuffix(parts[2], "use of closed network connection") {
		t.Errorf("proxy part %q", parts[2])
	}
	if n := stops.Load(); n != 3 {
		t.Errorf("%d stop attempts, want 3 (the unlink failure must not skip them)", n)
	}
	// Idempotent: a repeated shutdown shares the first run's result.
	if _, err2 := h.Handle(context.Background(), control.Request{Command: control.CmdShutdown}, control.Peer{}); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("second shutdown: %v, want the same error", err2)
	}
	if n := stops.Load(); n != 3 {
		t.Errorf("%d stop attempts after a second shutdown, want 3", n)
	}
}

// TestRetireOwnerQuietsBeforeReleasingListeners (OWN-02, spec §3.7 steps
// 3–4): every instance's quietCommand has run while the old owner still
// held its control socket; only then are the listeners released.
func TestRetireOwnerQuietsBeforeReleasingListeners(t *testing.T) {
	// The hook names the control socket and a marker file, both known only
	// once newInproc picked the directory: placeholders, replaced below.
	quiet := `if [ -S __CTL__ ]; then echo held >> __MARK__; else echo released >> __MARK__; fi`
	d := newInproc(t, inprocOpts{processes: fmt.Sprintf(`{id: "web", policy: "proxied", command: "exec sleep 1000", port: {from: 0, to: 0}, health: false, lifecycle: {quietCommand: %s}},
    {id: "worker", command: "exec sleep 1000", lifecycle: {quietCommand: %s}}`, jsString(quiet), jsString(quiet))})
	marker := filepath.Join(d.dir, "quiet.txt")
	src, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	src = []byte(strings.NewReplacer("__CTL__", d.ctlPath, "__MARK__", marker).Replace(string(src)))
	if err := os.WriteFile(d.config, src, 0o644); err != nil {
		t.Fatal(err)
	}
	d.startReady()
	d.deploy("v1")
	att := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	if _, err := d.call(control.Request{Command: control.CmdRetireOwner, Attestation: att}); err != nil {
		t.Fatalf("retire-owner: %v", err)
	}
	b, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("no quiet hook ran before the reply: %v", err)
	}
	if got := strings.Fields(string(b)); len(got) != 2 || got[0] != "held" || got[1] != "held" {
		t.Errorf("control socket at each quiet hook: %v, want [held held] (quiet before releasing the listeners)", got)
	}
	if err := d.mustEnd(); err != nil {
		t.Errorf("Run after retirement: %v", err)
	}
}

// TestDrainOnShutdown (IMP-06, spec §11.3): with proxy.drainOnShutdown a
// request in flight when the shutdown begins is answered before its process
// is stopped; without it (the original's behaviour) the process is stopped
// under it and the request fails. The test app exits at once on SIGTERM.
func TestDrainOnShutdown(t *testing.T) {
	for _, drain := range []bool{false, true} {
		t.Run(fmt.Sprintf("drainOnShutdown=%v", drain), func(t *testing.T) {
			d := newInproc(t, inprocOpts{processes: appProcess(t, ""), proxy: fmt.Sprintf("drainOnShutdown: %v", drain)})
			d.startReady()
			d.deploy("v1")
			url := fmt.Sprintf("http://127.0.0.1:%d/slow", d.proxyPort())
			type result struct {
				status int
				body   string
				err    error
			}
			res := make(chan result, 1)
			go func() {
				resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
				if err != nil {
					res <- result{err: err}
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				res <- result{resp.StatusCode, string(b), err}
			}()
			time.Sleep(200 * time.Millisecond) // the request is in flight
			start := time.Now()
			if _, err := d.call(control.Request{Command: control.CmdShutdown}); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			took := time.Since(start)
			r := <-res
			if drain {
				if r.err != nil || r.status != http.StatusOK || r.body != "slow done\n" {
					t.Errorf("in-flight request during a draining shutdown: %d %q %v, want 200 \"slow done\"", r.status, r.body, r.err)
				}
				if took < 400*time.Millisecond {
					t.Errorf("shutdown replied after %v, before the in-flight request could finish", took)
				}
			} else if r.err == nil && r.status == http.StatusOK {
				t.Errorf("without drainOnShutdown the request still got 200 %q: the process was not stopped under it", r.body)
			}
			t.Logf("drainOnShutdown=%v: shutdown took %v; request: %d %v", drain, took.Round(time.Millisecond), r.status, r.err)
			if err := d.mustEnd(); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}
