package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// runDoctor runs `doctor args…` in-process with dir as the working
// directory and the exec runner (the systemd checks are the doctor
// package's business).
func runDoctor(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runCLIEnv(t, dir, execEnv, append([]string{"doctor"}, args...)...)
}

// doctorDir writes a rollbridge.js with a free proxy port and a control
// socket inside dir; it returns the dir and the port.
func doctorDir(t *testing.T) (string, int) {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	js := fmt.Sprintf(`export default {
  application: "doctorcli%d",
  control: {path: %q},
  proxy: {port: %d},
  processes: [
    {id: "worker", command: "bin/worker {{releaseId}}", cwd: "{{revision}}"},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]
}
`, os.Getpid(), filepath.Join(dir, "c.sock"), port)
	if err := os.WriteFile(filepath.Join(dir, "rollbridge.js"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, port
}

func TestDoctorTextAllPass(t *testing.T) {
	dir, port := doctorDir(t)
	r := runDoctor(t, dir)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
	lines := strings.Split(r.stdout, "\n")
	if lines[0] != fmt.Sprintf("✓ config: valid: 2 process(es), proxy on 127.0.0.1:%d", port) {
		t.Errorf("first line %q", lines[0])
	}
	if lines[1] != "✓ control socket: no daemon running; "+filepath.Join(dir, "c.sock")+" is free to bind" {
		t.Errorf("second line %q", lines[1])
	}
	if !strings.HasSuffix(r.stdout, "\n\nAll checks passed.\n") {
		t.Errorf("summary: %q", r.stdout)
	}
	for _, l := range lines[:len(lines)-3] {
		if !strings.HasPrefix(l, "✓ ") || !strings.Contains(l, ": ") {
			t.Errorf("check line %q", l)
		}
	}
}

func TestDoctorTextFailure(t *testing.T) {
	dir, port := doctorDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := runDoctor(t, dir, "--release-path", "releases/gone", "--revision", "abc")
	if r.code != 1 {
		t.Errorf("exit %d, want 1", r.code)
	}
	release := filepath.Join(dir, "releases", "gone")
	for _, want := range []string{
		fmt.Sprintf("✗ proxy port: 127.0.0.1:%d is unavailable (EADDRINUSE)\n", port),
		"✗ release path: " + release + " is missing or not a directory\n",
		"✓ process templates: all 2 process command/cwd/env templates resolve\n",
		// cwd "{{revision}}" rendered with --revision, relative to the release.
		fmt.Sprintf("✗ process working directories: missing working directories: worker (%s), web (%s)\n", filepath.Join(release, "abc"), release),
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "All checks passed.") || !strings.HasSuffix(r.stdout, "\n\n") {
		t.Errorf("stdout ending: %q", r.stdout)
	}
	if r.stderr != "3 check(s) failed.\n" {
		t.Errorf("stderr %q", r.stderr)
	}
}

func TestDoctorJSON(t *testing.T) {
	dir, _ := doctorDir(t)
	if err := os.MkdirAll(filepath.Join(dir, "rel", "v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := runDoctor(t, dir, "--json", "--release-path", "rel", "--release-id", "v1", "-c", "rollbridge.js")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
	if !strings.HasPrefix(r.stdout, "{\n  \"checks\": [\n    {\n      \"detail\": ") || !strings.HasSuffix(r.stdout, "  ],\n  \"ok\": true\n}\n") {
		t.Errorf("JSON layout:\n%s", r.stdout)
	}
	var rep struct {
		Checks []map[string]any `json:"checks"`
		OK     bool             `json:"ok"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.OK || len(rep.Checks) < 7 {
		t.Fatalf("report %+v", rep)
	}
	for _, c := range rep.Checks {
		if len(c) != 3 || c["ok"] != true {
			t.Errorf("check %v", c)
		}
	}
	if rep.Checks[4]["name"] != "release path" || rep.Checks[4]["detail"] != filepath.Join(dir, "rel")+" exists" {
		t.Errorf("release path check %v", rep.Checks[4])
	}
	// --release-id v1 is the rendered {{releaseId}}; cwd {{revision}} falls back to it.
	if rep.Checks[6]["detail"] != "all 2 process working directories exist" {
		t.Errorf("working directories %v (want the release id as revision: rel/v1)", rep.Checks[6])
	}
}

func TestDoctorJSONFailureExitCode(t *testing.T) {
	dir, port := doctorDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := runDoctor(t, dir, "--json")
	if r.code != 1 || r.stderr != "" || !strings.HasSuffix(r.stdout, "\"ok\": false\n}\n") {
		t.Errorf("exit %d stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
}

func TestDoctorNoConfig(t *testing.T) {
	dir := t.TempDir()
	msg := "No config file found in " + dir + ". Pass --config <path> or add one of: rollbridge.js."
	r := runDoctor(t, dir, "--json")
	want := `{
  "checks": [
    {
      "detail": "` + msg + `",
      "name": "config",
      "ok": false
    }
  ],
  "ok": false
}
`
	if r.code != 1 || r.stdout != want || r.stderr != "" {
		t.Errorf("json: exit %d stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
	r = runDoctor(t, dir)
	if r.code != 1 || r.stdout != "✗ config: "+msg+"\n\n" || r.stderr != "1 check(s) failed.\n" {
		t.Errorf("text: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestDoctorInvalidConfig(t *testing.T) {
	r := runDoctor(t, ".", "-c", "testdata/broken.js")
	if r.code != 1 || r.stderr != "1 check(s) failed.\n" {
		t.Errorf("exit %d stderr %q", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "✗ config: ") || !strings.HasSuffix(r.stdout, ` issue(s) — run "rollbridge validate" for details`+"\n\n") ||
		strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("an invalid config must end the run after the config check:\n%s", r.stdout)
	}
}

func TestDoctorUsage(t *testing.T) {
	r := runDoctor(t, ".", "extra")
	if r.code != 1 || !strings.Contains(r.stderr, "unknown command") {
		t.Errorf("positional argument: exit %d stderr %q", r.code, r.stderr)
	}
	r = runDoctor(t, ".", "--help")
	for _, flag := range []string{"--config", "--json", "--release-path", "--release-id", "--revision"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("help lacks %s", flag)
		}
	}
}
