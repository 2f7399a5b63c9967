package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Client-side tests of ensure-daemon against spec §8.5 and §6.1
// (checklist ENS-01, ENS-06, ENS-07): everything that must fail before a
// daemon is contacted or started. They run the CLI in-process against
// specDaemon, a fake daemon that answers status and records every request,
// so "nothing was contacted" is observable. The end-to-end side (a real
// snapshot, a started daemon, the readiness wait) is in
// e2e/ensure_spec_test.go.

// ensureFake is a config whose control socket is served by a fake daemon
// that answers status (without a runtime identity, like a legacy daemon:
// an ensure-daemon that reached it would be refused, but only after the
// request was recorded).
type ensureFake struct {
	dir, app string
	daemon   *specDaemon
	logPath  string
	pidPath  string
}

func newEnsureFake(t *testing.T) ensureFake {
	t.Helper()
	dir, app, sock := recDir(t, "")
	d := newSpecDaemon(t, sock)
	d.reply("status", `{"status":"success","application":"`+app+`","activeReleaseId":null}`)
	return ensureFake{dir: dir, app: app, daemon: d,
		logPath: filepath.Join(dir, "logs", "daemon.log"), pidPath: filepath.Join(dir, "run", "daemon.pid")}
}

// args returns the command line of one of the two commands that run the
// ensure-daemon logic, with the log and pid paths pointed into the test's
// directory.
func (f ensureFake) args(command string, extra ...string) []string {
	var args []string
	switch command {
	case "ensure-daemon":
		args = []string{"ensure-daemon", "--json"}
	case "deploy":
		args = []string{"deploy", "--json", "--ensure-daemon", "--release-path", filepath.Join(f.dir, "release")}
	default:
		panic(command)
	}
	args = append(args, "--daemon-log-path", f.logPath, "--daemon-pid-path", f.pidPath)
	return append(args, extra...)
}

// wantNothingDone checks that no request reached the fake daemon and that
// no daemon was started: no log or pid file at the given paths or the
// default ones.
func (f ensureFake) wantNothingDone(t *testing.T) {
	t.Helper()
	if reqs := f.daemon.take(); len(reqs) != 0 {
		t.Errorf("the daemon was contacted: %q", reqs)
	}
	for _, p := range []string{f.logPath, f.pidPath, "/tmp/rollbridge-" + f.app + ".log", "/tmp/rollbridge-" + f.app + ".pid"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists: a daemon was started", p)
		}
	}
}

// filesUnder returns every non-directory entry below dir (relative), or
// nil when dir does not exist.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || strings.HasPrefix(d.Name(), ".prepare-") {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

// TestEnsureDaemonSnapshotFailureAborts covers ENS-01: the runtime snapshot
// is prepared before the control socket is contacted, so a base directory
// that fails the path checks aborts ensure-daemon (and deploy
// --ensure-daemon) with the snapshot's error although a daemon answers:
// no request is sent, no daemon started, no snapshot written.
func TestEnsureDaemonSnapshotFailureAborts(t *testing.T) {
	cases := []struct {
		name string
		// setup returns the --daemon-runtime-path to use and the error
		// message ensure-daemon must print.
		setup func(t *testing.T, dir string) (base, msg string)
	}{
		{"group- and other-writable base", func(t *testing.T, dir string) (string, string) {
			base := filepath.Join(dir, "shared")
			mkdirMode(t, base, 0o777)
			return base, unsafeRuntime(base, base+" is group- or other-writable (mode 0777)")
		}},
		{"writable ancestor without sticky bit", func(t *testing.T, dir string) (string, string) {
			open := filepath.Join(dir, "open")
			mkdirMode(t, open, 0o757)
			base := filepath.Join(open, "runtime")
			return base, unsafeRuntime(base, open+" is group- or other-writable without the sticky bit (mode 0757)")
		}},
		{"symlinked component", func(t *testing.T, dir string) (string, string) {
			mkdirMode(t, filepath.Join(dir, "real"), 0o700)
			link := filepath.Join(dir, "link")
			if err := os.Symlink("real", link); err != nil {
				t.Fatal(err)
			}
			base := filepath.Join(link, "runtime")
			return base, unsafeRuntime(base, link+" is a symbolic link")
		}},
		{"base is a file", func(t *testing.T, dir string) (string, string) {
			mkdirMode(t, filepath.Join(dir, "p"), 0o700)
			file := filepath.Join(dir, "p", "file")
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return file, "create daemon runtime directory " + file + ": mkdir " + file + ": not a directory"
		}},
	}
	for _, command := range []string{"ensure-daemon", "deploy"} {
		for _, c := range cases {
			t.Run(command+"/"+c.name, func(t *testing.T) {
				f := newEnsureFake(t)
				base, msg := c.setup(t, f.dir)
				before := filesUnder(t, base)
				r := runCLIEnv(t, f.dir, execEnv, f.args(command, "--daemon-runtime-path", base)...)
				want := "error: " + msg + "\n"
				if r.code != 1 || r.stderr != want || r.stdout != "" {
					t.Errorf("code %d\nstdout %q\nstderr %q\nwant   %q", r.code, r.stdout, r.stderr, want)
				}
				f.wantNothingDone(t)
				if after := filesUnder(t, base); len(after) != len(before) {
					t.Errorf("the refused runtime path changed: %q, before %q", after, before)
				}
			})
		}
	}
}

// unsafeRuntime is the snapshot's refusal of base (docs/runtime-snapshot.md).
func unsafeRuntime(base, reason string) string {
	return "unsafe Rollbridge daemon runtime path " + base + ": " + reason + "; point --daemon-runtime-path at a private directory"
}

func mkdirMode(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// TestEnsureDaemonStartTimeoutFlag covers the option side of ENS-06:
// --daemon-start-timeout-ms defaults to 10000 on both commands, and a value
// that is not a finite number ≥ 1 is refused with the spec's message before
// the snapshot is prepared or anything is contacted (spec §6.1). The wait
// itself is e2e.TestEnsureDaemonReadinessTimeout and
// e2e.TestEnsureDaemonReadinessPolling.
func TestEnsureDaemonStartTimeoutFlag(t *testing.T) {
	root := specRoot()
	for _, name := range []string{"ensure-daemon", "deploy"} {
		cmd, _, err := root.Find([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		fl := cmd.Flags().Lookup("daemon-start-timeout-ms")
		if fl == nil || fl.DefValue != "10000" {
			t.Errorf("%s --daemon-start-timeout-ms: %+v, want default 10000", name, fl)
		}
	}
	bad := []string{"0", "-1", "0.5", "0.999", "abc", "", "10s", "NaN", "nan", "Inf", "+Inf", "-Inf", "Infinity", "1e400"}
	for _, command := range []string{"ensure-daemon", "deploy"} {
		for _, v := range bad {
			t.Run(command+"/"+v, func(t *testing.T) {
				f := newEnsureFake(t)
				base := filepath.Join(f.dir, "runtime")
				r := runCLIEnv(t, f.dir, execEnv, f.args(command, "--daemon-runtime-path", base, "--daemon-start-timeout-ms="+v)...)
				const want = "error: --daemon-start-timeout-ms must be a positive number\n"
				if r.code != 1 || r.stderr != want || r.stdout != "" {
					t.Errorf("--daemon-start-timeout-ms=%q: code %d stdout %q stderr %q, want %q", v, r.code, r.stdout, r.stderr, want)
				}
				f.wantNothingDone(t)
				if _, err := os.Lstat(base); err == nil {
					t.Errorf("the snapshot was prepared before the option was checked")
				}
			})
		}
	}
}

// TestEnsureDaemonRejectsBootAttestation covers the option side of ENS-07:
// ensure-daemon (and deploy --ensure-daemon) have no --boot-attestation
// (spec §8.5: "unknown option"; the parser error is cobra's `unknown flag`,
// exit 1, spec §6.0), so an ensured daemon can never be given one; nothing
// is prepared, contacted or started. The runtime re-check after a start is
// e2e.TestEnsureDaemonRechecksRuntimeAfterStart.
func TestEnsureDaemonRejectsBootAttestation(t *testing.T) {
	root := specRoot()
	for _, name := range []string{"ensure-daemon", "deploy"} {
		cmd, _, err := root.Find([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		if fl := cmd.Flags().Lookup("boot-attestation"); fl != nil {
			t.Errorf("%s defines --boot-attestation: %+v", name, fl)
		}
	}
	attestation := "sha256:" + strings.Repeat("ab", 32)
	for _, command := range []string{"ensure-daemon", "deploy"} {
		for _, form := range [][]string{{"--boot-attestation", attestation}, {"--boot-attestation=" + attestation}} {
			t.Run(command+"/"+strings.Join(form, " "), func(t *testing.T) {
				f := newEnsureFake(t)
				base := filepath.Join(f.dir, "runtime")
				r := runCLIEnv(t, f.dir, execEnv, f.args(command, append([]string{"--daemon-runtime-path", base}, form...)...)...)
				const want = "error: unknown flag: --boot-attestation\n"
				if r.code != 1 || r.stderr != want || r.stdout != "" {
					t.Errorf("code %d stdout %q stderr %q, want exit 1 and %q", r.code, r.stdout, r.stderr, want)
				}
				f.wantNothingDone(t)
				if _, err := os.Lstat(base); err == nil {
					t.Errorf("the snapshot was prepared although the command line was refused")
				}
			})
		}
	}
}
