package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/config"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
)

func TestSystemdUnitsGolden(t *testing.T) {
	wd, _ := os.Getwd()
	env := []string{"PATH=/usr/bin:/bin", "HOME=/home/deployer"}
	cases := []struct {
		name, golden string
		args         []string
	}{
		{"system text", "systemd-units-system.txt", []string{"systemd-units", "-c", "testdata/units.js", "--binary", "/usr/bin/rollbridge"}},
		{"user json", "systemd-units-user.json", []string{"systemd-units", "--user", "--json", "-c", "testdata/units.js", "--binary", "/usr/bin/rollbridge", "--name", "shop-eu"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runCLIEnv(t, wd, env, c.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			golden(t, c.golden, r.stdout)
		})
	}
}

func TestSystemdUnitsContent(t *testing.T) {
	wd, _ := os.Getwd()
	r := runCLIEnv(t, wd, nil, "systemd-units", "--json", "-c", "testdata/units.js", "--binary", "/opt/rb/rollbridge")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep systemdUnitsReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("JSON: %v\n%s", err, r.stdout)
	}
	if rep.Service.Name != "rollbridge@shop.service" || rep.Socket.Name != "rollbridge@shop.socket" {
		t.Errorf("names %q, %q", rep.Service.Name, rep.Socket.Name)
	}
	if rep.Service.Path != "/etc/systemd/system/rollbridge@shop.service" {
		t.Errorf("service path %q", rep.Service.Path)
	}
	cfgPath := filepath.Join(wd, "testdata", "units.js")
	for _, want := range []string{
		"Type=notify\n", "NotifyAccess=all\n", "KillMode=process\n", "Restart=on-failure\n",
		"ExecStart=/opt/rb/rollbridge daemon --config " + cfgPath + "\n",
		"ExecReload=/bin/sh -c 'kill -HUP $MAINPID'\n",
		"ExecStop=/bin/sh -c 'test -n \"$MAINPID\" || exit 0; kill -TERM \"$MAINPID\"",
		"TimeoutStopSec=150s\n", // worker's gracefulStopMs 120000 + 30 s
		"ProtectSystem=full\n", "WantedBy=multi-user.target\n",
	} {
		if !strings.Contains(rep.Service.Content, want) {
			t.Errorf("service lacks %q:\n%s", want, rep.Service.Content)
		}
	}
	for _, bad := range []string{"PrivateTmp", "ProtectSystem=strict", "PrivateDevices", "ProtectHome", "PrivateNetwork"} {
		if strings.Contains(rep.Service.Content, bad) {
			t.Errorf("service must not use %s (it would hide the bus, /run/systemd/private, the control socket or releases)", bad)
		}
	}
	for _, want := range []string{"ListenStream=127.0.0.1:8182\n", "FileDescriptorName=proxy\n", "Service=rollbridge@shop.service\n", "WantedBy=sockets.target\n"} {
		if !strings.Contains(rep.Socket.Content, want) {
			t.Errorf("socket lacks %q:\n%s", want, rep.Socket.Content)
		}
	}
	for _, u := range []string{rep.Service.Content, rep.Socket.Content} {
		if !strings.HasPrefix(u, generatedMarker) {
			t.Errorf("unit does not start with the generated marker:\n%s", u)
		}
	}
}

func TestSystemdUnitsUserVariant(t *testing.T) {
	wd, _ := os.Getwd()
	r := runCLIEnv(t, wd, []string{"XDG_CONFIG_HOME=/home/d/.cfg"}, "systemd-units", "--user", "--json", "-c", "testdata/units.js", "--binary", "/usr/bin/rollbridge")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep systemdUnitsReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Service.Path != "/home/d/.cfg/systemd/user/rollbridge@shop.service" {
		t.Errorf("user unit path %q", rep.Service.Path)
	}
	if !strings.Contains(rep.Service.Content, "WantedBy=default.target\n") {
		t.Errorf("user service not wanted by default.target:\n%s", rep.Service.Content)
	}
	// Sandboxing needs privileges a user manager does not have.
	if strings.Contains(rep.Service.Content, "ProtectSystem") {
		t.Errorf("user service carries system hardening:\n%s", rep.Service.Content)
	}
}

func TestListenAddress(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		host, want string
		note       bool
	}{
		{"127.0.0.1", "127.0.0.1:8480", false},
		{"0.0.0.0", "0.0.0.0:8480", false},
		{"", "0.0.0.0:8480", false},
		{"::", "[::]:8480", false},
		{"::1", "[::1]:8480", false},
		{"[::1]", "[::1]:8480", false},
		{"localhost", "127.0.0.1:8480", true},
	}
	for _, c := range cases {
		got, note, err := listenAddress(ctx, "/etc/rollbridge/x.js", c.host, 8480)
		if err != nil {
			t.Errorf("%q: %v", c.host, err)
			continue
		}
		if got != c.want || (note != "") != c.note {
			t.Errorf("%q: got %q (note %q), want %q (note %v)", c.host, got, note, c.want, c.note)
		}
	}
	if _, _, err := listenAddress(ctx, "/etc/rollbridge/x.js", "127.0.0.1", 0); err == nil || !strings.Contains(err.Error(), "proxy.port is 0") {
		t.Errorf("port 0: err %v, want a proxy.port error", err)
	}
	if _, _, err := listenAddress(ctx, "/etc/rollbridge/x.js", "no-such-host.invalid", 80); err == nil || !strings.Contains(err.Error(), "does not resolve") {
		t.Errorf("unresolvable host: err %v", err)
	}
}

func TestUnitInstanceAndQuoting(t *testing.T) {
	for in, want := range map[string]string{
		"shop":        "shop",
		"shop-front":  "shop-front",
		"shop front":  `shop\x20front`,
		"a/b":         `a\x2fb`,
		".hidden":     `\x2ehidden`,
		"v1.2_x:y":    "v1.2_x:y",
		"caf\xc3\xa9": `caf\xc3\xa9`,
	} {
		got, err := unitInstance(in)
		if err != nil || got != want {
			t.Errorf("unitInstance(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := unitInstance("  "); err == nil {
		t.Error("blank instance accepted")
	}
	if _, err := unitInstance(strings.Repeat("x", 300)); err == nil {
		t.Error("overlong instance accepted")
	}
	for in, want := range map[string]string{
		"/etc/rollbridge/shop.js":   "/etc/rollbridge/shop.js",
		"/srv/my app/rollbridge.js": `"/srv/my app/rollbridge.js"`,
		"/srv/100%/x$y.js":          "/srv/100%%/x$$y.js",
		`/srv/a"b\c.js`:             `"/srv/a\"b\\c.js"`,
	} {
		if got := execArg(in); got != want {
			t.Errorf("execArg(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStopTimeout(t *testing.T) {
	mk := func(graces ...units.Grace) *config.Config {
		c := &config.Config{}
		for _, g := range graces {
			c.Processes = append(c.Processes, config.Process{GracefulStop: g})
		}
		return c
	}
	cases := []struct {
		cfg  *config.Config
		want string
	}{
		{mk(units.Grace{Timeout: 10 * time.Second}), "90s"},
		{mk(units.Grace{Timeout: 10 * time.Second}, units.Grace{Timeout: 5 * time.Minute}), "330s"},
		{mk(units.Grace{Timeout: 1500 * time.Millisecond}, units.Grace{Indefinite: true}), "infinity"},
		{mk(units.Grace{Timeout: 100*time.Second + 1}), "131s"},
	}
	for i, c := range cases {
		if got := stopTimeout(c.cfg); got != c.want {
			t.Errorf("case %d: %q, want %q", i, got, c.want)
		}
	}
}

func TestSystemdUnitsErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "zero.js")
	os.WriteFile(cfg, []byte(`export default {application: "z", proxy: {port: 0}, processes: [{id: "web", policy: "proxied", command: "x {{port}}", port: {from: 19000, to: 19001}}]}`), 0o644)
	r := runCLIEnv(t, dir, nil, "systemd-units", "-c", cfg, "--binary", "/usr/bin/rollbridge")
	if r.code != 1 || !strings.Contains(r.stderr, "proxy.port is 0") {
		t.Errorf("port 0: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLIEnv(t, dir, nil, "systemd-units", "-c", filepath.Join(dir, "missing.js"))
	if r.code != 1 || !strings.Contains(r.stderr, "error:") {
		t.Errorf("missing config: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLIEnv(t, dir, nil, "systemd-units", "-c", cfg, "--binary", "bin/rollbridge")
	if r.code != 1 || !strings.Contains(r.stderr, "must be an absolute path") {
		t.Errorf("relative --binary: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestSystemdUnitsInstallFiles(t *testing.T) {
	wd, _ := os.Getwd()
	dir := t.TempDir()
	args := []string{"systemd-units", "-c", "testdata/units.js", "--binary", "/usr/bin/rollbridge", "--install", "--no-reload", "--unit-dir", dir}
	r := runCLIEnv(t, wd, nil, args...)
	if r.code != 0 {
		t.Fatalf("install: exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "Wrote "+filepath.Join(dir, "rollbridge@shop.socket")) ||
		!strings.Contains(r.stdout, "systemctl enable --now rollbridge@shop.socket") {
		t.Errorf("install output:\n%s", r.stdout)
	}
	for _, n := range []string{"rollbridge@shop.service", "rollbridge@shop.socket"} {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v, want 0644", n, st.Mode().Perm())
		}
	}
	// Re-running replaces its own files; a hand-written unit is kept
	// unless --force.
	if r := runCLIEnv(t, wd, nil, args...); r.code != 0 {
		t.Fatalf("second install: exit %d: %s", r.code, r.stderr)
	}
	hand := filepath.Join(dir, "rollbridge@shop.service")
	os.WriteFile(hand, []byte("[Service]\nExecStart=/bin/true\n"), 0o644)
	r = runCLIEnv(t, wd, nil, args...)
	if r.code != 1 || !strings.Contains(r.stderr, "was not written by rollbridge systemd-units") {
		t.Errorf("foreign unit: exit %d, stderr %q", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(hand); string(b) != "[Service]\nExecStart=/bin/true\n" {
		t.Errorf("foreign unit was modified: %q", b)
	}
	r = runCLIEnv(t, wd, nil, append(args, "--force", "--json")...)
	if r.code != 0 {
		t.Fatalf("--force: exit %d: %s", r.code, r.stderr)
	}
	var rep systemdUnitsReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("--install --json output: %v\n%s", err, r.stdout)
	}
	if b, _ := os.ReadFile(hand); string(b) != rep.Service.Content {
		t.Errorf("--force did not write the generated unit")
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on the generated
// units and on the shipped ones in packaging/. ExecStart= must name an
// existing executable, so the binary path is a stand-in in a temp dir.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if dbusctltest.Required() {
			t.Fatal("systemd-analyze not found (package systemd) and " + dbusctltest.RequireEnv + "=1")
		}
		t.Skip("SKIP: systemd-analyze not found; install the systemd package to verify the units")
	}
	wd, _ := os.Getwd()
	tmp := t.TempDir()
	fake := filepath.Join(tmp, "bin", "rollbridge")
	os.MkdirAll(filepath.Dir(fake), 0o755)
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A system-mode verify touches the manager's load timestamp
	// /run/systemd/systemd-units-load, even in test mode; on a host without
	// a system manager the test removes the file it created.
	const unitsLoad = "/run/systemd/systemd-units-load"
	if _, err := os.Stat(unitsLoad); os.IsNotExist(err) {
		t.Cleanup(func() { os.Remove(unitsLoad) })
	}
	verify := func(t *testing.T, user bool, files ...string) {
		t.Helper()
		args := []string{"verify", "--man=no"}
		if user {
			args = append(args, "--user")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, sa, append(args, files...)...)
		// No manager needed: verify loads the files in a test-mode manager.
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=notice")
		if user {
			// A user-mode manager needs a runtime directory, even for verify.
			rt := filepath.Join(tmp, "xdg-runtime")
			os.MkdirAll(rt, 0o700)
			cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+rt)
		}
		// verify exits 0 on unknown keys and unparsable values (it only
		// warns), so any output counts as a failure.
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(append(args, files...), " "), err, out)
		}
	}
	for _, user := range []bool{false, true} {
		t.Run(fmt.Sprintf("generated user=%v", user), func(t *testing.T) {
			dir := filepath.Join(tmp, fmt.Sprintf("gen-%v", user))
			args := []string{"systemd-units", "-c", "testdata/units.js", "--binary", fake, "--install", "--no-reload", "--unit-dir", dir}
			if user {
				args = append(args, "--user")
			}
			if r := runCLIEnv(t, wd, nil, args...); r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			verify(t, user, filepath.Join(dir, "rollbridge@shop.service"), filepath.Join(dir, "rollbridge@shop.socket"))
		})
	}
	for _, v := range []struct {
		dir  string
		user bool
	}{{"../../packaging", false}, {"../../packaging/user", true}} {
		t.Run("shipped "+v.dir, func(t *testing.T) {
			dir := filepath.Join(tmp, "shipped", filepath.Base(v.dir))
			os.MkdirAll(dir, 0o755)
			var files []string
			for _, n := range []string{"rollbridge@.service", "rollbridge@.socket"} {
				b, err := os.ReadFile(filepath.Join(v.dir, n))
				if err != nil {
					t.Fatal(err)
				}
				// Verify an instance: the template as systemd instantiates it.
				inst := strings.Replace(n, "@.", "@demo.", 1)
				content := strings.ReplaceAll(string(b), "/usr/bin/rollbridge", fake)
				if err := os.WriteFile(filepath.Join(dir, inst), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				files = append(files, filepath.Join(dir, inst))
			}
			verify(t, v.user, files...)
		})
	}
}

func TestManPages(t *testing.T) {
	dir := t.TempDir()
	r := runCLIEnv(t, dir, []string{"SOURCE_DATE_EPOCH=1700000000"}, "man", "--dir", "man1")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "man1", "*.1"))
	names := map[string]bool{}
	for _, p := range pages {
		names[filepath.Base(p)] = true
	}
	for _, want := range []string{"rollbridge.1", "rollbridge-deploy.1", "rollbridge-daemon.1", "rollbridge-systemd-units.1"} {
		if !names[want] {
			t.Errorf("missing %s in %v", want, names)
		}
	}
	if names["rollbridge-man.1"] {
		t.Error("the hidden man command got a page")
	}
	b, err := os.ReadFile(filepath.Join(dir, "man1", "rollbridge-deploy.1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`.TH "ROLLBRIDGE-DEPLOY" "1" "Nov 2023" "Rollbridge `)) || !bytes.Contains(b, []byte("release-path")) {
		t.Errorf("rollbridge-deploy.1 looks wrong:\n%s", b[:min(len(b), 600)])
	}
	// "<app>" must survive Markdown (it would be an HTML tag).
	if !bytes.Contains(b, []byte("<app>")) {
		t.Errorf("rollbridge-deploy.1 lost the <app> placeholders:\n%s", b)
	}
	if bytes.Contains(b, []byte("Auto generated")) {
		t.Error("pages carry cobra's auto-generated footer")
	}
	if r := runCLIEnv(t, dir, nil, "man"); r.code != 1 || !strings.Contains(r.stderr, "--dir is required") {
		t.Errorf("without --dir: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestSystemdUnitsUserManager installs the generated user units into the
// sandbox's user manager, starts the socket, and checks that a request
// socket-activates a real daemon (Type=notify READY=1, the "proxy" fd) and
// that `systemctl --user reload` re-executes it (MainPID changes).
func TestSystemdUnitsUserManager(t *testing.T) {
	conn := dbusctltest.Connect(t)
	conn.Close()
	sandbox := os.Getenv("SYSTEMD_SANDBOX_DIR")
	if sandbox == "" {
		dbusctltest.Unavailable(t, "SYSTEMD_SANDBOX_DIR is not set: this test installs units into the scripts/systemd-sandbox user manager's config dir")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "rollbridge")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	port := unitsFreePort(t)
	app := fmt.Sprintf("rbunits%d", os.Getpid())
	cfg := filepath.Join(tmp, "rollbridge.js")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`export default {
  application: %q,
  control: {path: %q},
  proxy: {port: %d},
  processes: [{id: "web", policy: "proxied", command: "./web --port {{port}}", port: {from: 19400, to: 19499}}]
}`, app, filepath.Join(tmp, "ctl.sock"), port)), 0o644)
	unitDir := filepath.Join(sandbox, "config", "systemd", "user")
	env := append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(sandbox, "config"))
	svc, sock := "rollbridge@"+app+".service", "rollbridge@"+app+".socket"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		exec.CommandContext(ctx, "systemctl", "--user", "stop", sock, svc).Run()
		exec.CommandContext(ctx, "systemctl", "--user", "reset-failed", sock, svc).Run()
		os.Remove(filepath.Join(unitDir, svc))
		os.Remove(filepath.Join(unitDir, sock))
		exec.CommandContext(ctx, "systemctl", "--user", "daemon-reload").Run()
	})
	// The units are new to the manager, which loads them on first use: no
	// daemon-reload needed (the sandbox's small /run/systemd can refuse one).
	r := runCLIEnv(t, tmp, env, "systemd-units", "--user", "-c", cfg, "--binary", bin, "--install", "--no-reload")
	if r.code != 0 {
		t.Fatalf("install: exit %d: %s", r.code, r.stderr)
	}
	userctl(t, "start", sock)
	if st := userctl(t, "show", "-p", "ActiveState", "--value", svc); st != "inactive" {
		t.Fatalf("the service is %s before any connection; want inactive (socket activation)", st)
	}
	start := time.Now()
	status, body := unitsGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port))
	t.Logf("first request (socket activation + daemon start) answered in %v: %d %q", time.Since(start), status, body)
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "No active release") {
		t.Fatalf("first request: %d %q; want 503 No active release from the activated daemon", status, body)
	}
	if st := userctl(t, "show", "-p", "ActiveState", "--value", svc); st != "active" {
		t.Fatalf("service %s after the request; want active", st)
	}
	pid1 := userctl(t, "show", "-p", "MainPID", "--value", svc)
	userctl(t, "reload", svc)
	deadline := time.Now().Add(30 * time.Second)
	var pid2 string
	for {
		pid2 = userctl(t, "show", "-p", "MainPID", "--value", svc)
		st := userctl(t, "show", "-p", "ActiveState", "--value", svc)
		if pid2 != pid1 && pid2 != "0" && st == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("MainPID still %s (state %s) 30 s after reload; want a new daemon pid", pid2, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("reload: MainPID %s -> %s", pid1, pid2)
	if status, body := unitsGet(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); status != http.StatusServiceUnavailable {
		t.Fatalf("after reload: %d %q", status, body)
	}
	userctl(t, "stop", svc)
	if res := userctl(t, "show", "-p", "Result", "--value", svc); res != "success" {
		t.Errorf("stop result %q, want success (the daemon exits 0 on SIGTERM)", res)
	}
}

func userctl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", append([]string{"--user"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("systemctl --user %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func unitsGet(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func unitsFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}
