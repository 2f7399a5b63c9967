package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEnsureDaemonRuntimeSnapshot: ensure-daemon starts the daemon from a
// content-addressed copy of the binary, reuses a compatible daemon, and
// refuses a daemon running different code.
func TestEnsureDaemonRuntimeSnapshot(t *testing.T) {
	forEachRunner(t, func(t *testing.T, runner string) {
		e := newEnvOpts(t, runner, `[{id: "web", policy: "proxied", command: "./demo-app --port {{port}}", port: {from: 0, to: 0}, health: {intervalMs: 50}}]`, envOpts{noStart: true})
		base := filepath.Join(e.dir, "runtime")
		out := e.rb("ensure-daemon", "--json", "--daemon-runtime-path", base,
			"--daemon-log-path", filepath.Join(e.dir, "daemon.log"), "--daemon-pid-path", filepath.Join(e.dir, "daemon.pid"))
		var st struct {
			DaemonRuntime struct {
				Digest, Path, Version string
				Format                int
			} `json:"daemonRuntime"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		rt := st.DaemonRuntime
		if rt.Format != 1 || rt.Path != filepath.Join(base, rt.Digest) {
			t.Fatalf("daemonRuntime %+v, want a snapshot under %s", rt, base)
		}
		if _, err := os.Stat(filepath.Join(rt.Path, "rollbridge")); err != nil {
			t.Fatalf("snapshot binary: %v", err)
		}
		// A second ensure-daemon reuses the running daemon.
		e.rb("ensure-daemon", "--json", "--daemon-runtime-path", base)
		e.rb("deploy", "--ensure-daemon", "--daemon-runtime-path", base, "--release-path", e.release("v1"), "--release-id", "v1")
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v1") {
			t.Errorf("not serving v1: %q", body)
		}
		// A different build must not drive this daemon.
		other := filepath.Join(e.dir, "rollbridge-other")
		if err := copyFile(rbBinary, other); err != nil {
			t.Fatal(err)
		}
		f, _ := os.OpenFile(other, os.O_APPEND|os.O_WRONLY, 0o755)
		f.Write([]byte("different build"))
		f.Close()
		cmd := exec.Command(other, "deploy", "--ensure-daemon", "-c", e.config, "--daemon-runtime-path", base, "--release-path", e.release("v2"), "--release-id", "v2")
		cmd.Env = e.environ()
		msg, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(msg), "The running Rollbridge daemon has a legacy or mismatched runtime. The deploy was not sent.") {
			t.Errorf("mismatched runtime not refused: %v\n%s", err, msg)
		}
		if _, body, _ := get(e.proxyURL("/")); !strings.Contains(body, "release v1") {
			t.Errorf("a refused deploy changed the release: %q", body)
		}
		e.rb("shutdown")
		e.waitFor("socket removed", 20*time.Second, func() bool { _, err := os.Stat(e.ctlPath); return err != nil })
	})
}
