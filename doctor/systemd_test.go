package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
)

// noManager dials a socket where nothing listens.
func noManager(t *testing.T) dbusctl.Options {
	return dbusctl.Options{Bus: dbusctl.BusUser, Address: "unix:path=" + filepath.Join(t.TempDir(), "no-bus")}
}

func expectPrefix(t *testing.T, r Report, name string, ok bool, prefix string) Check {
	t.Helper()
	c := check(t, r, name)
	if c.OK != ok || !strings.HasPrefix(c.Detail, prefix) {
		t.Errorf("%s = (%v, %q), want (%v, %q…)", name, c.OK, c.Detail, ok, prefix)
	}
	return c
}

func TestRunnerSelection(t *testing.T) {
	f := newFixture(t, "", processesJS)

	t.Run("exec forced", func(t *testing.T) {
		r := run(t, f.options())
		if !r.OK {
			t.Fatal("report not ok")
		}
		expect(t, r, CheckSystemdManager, true, "not used: the exec runner is selected; processes run as plain child processes")
		expect(t, r, CheckTransientUnits, true, "not used: the exec runner starts processes itself")
		expect(t, r, CheckJournald, true, "not used: the exec runner keeps process output in memory")
		expect(t, r, CheckLeftoverUnits, true, "not used: the exec runner names no units")
		expect(t, r, CheckSlice, true, "not used: the exec runner puts processes in no slice")
		expect(t, r, CheckMemoryAccounting, true, "exec runner: no cgroup per instance; memory is read from VmRSS of each instance's processes")
	})
	t.Run("unknown runner", func(t *testing.T) {
		opts := f.options()
		opts.Runner = "docker"
		opts.Dial = noManager(t)
		r := run(t, opts)
		expect(t, r, CheckSystemdManager, false, `unknown runner "docker": use auto, systemd or exec`)
	})
	t.Run("auto without a manager falls back to exec", func(t *testing.T) {
		opts := f.options()
		opts.Runner = ""
		opts.Dial = noManager(t)
		r := run(t, opts)
		c := expectPrefix(t, r, CheckSystemdManager, true, "no systemd manager answers (")
		if !strings.HasSuffix(c.Detail, "; the daemon would fall back to the exec runner") {
			t.Errorf("detail %q", c.Detail)
		}
		expect(t, r, CheckJournald, true, "not used: the exec runner keeps process output in memory")
		if !r.OK {
			t.Error("the exec fallback is a supported setup; report not ok")
		}
	})
	t.Run("systemd forced without a manager fails", func(t *testing.T) {
		opts := f.options()
		opts.Runner = RunnerSystemd
		opts.Dial = noManager(t)
		opts.Journalctl = "true" // keep the journald check out of this case
		start := time.Now()
		r := run(t, opts)
		t.Logf("no manager found after %v", time.Since(start).Round(time.Millisecond))
		c := expectPrefix(t, r, CheckSystemdManager, false, "no systemd manager answers (")
		if !strings.HasSuffix(c.Detail, "; the systemd runner would fail — run under a systemd manager or select the exec runner") {
			t.Errorf("detail %q", c.Detail)
		}
		// Reported once, not once per dependent check.
		expect(t, r, CheckTransientUnits, true, "not checked: no systemd manager answers")
		expect(t, r, CheckLeftoverUnits, true, "not checked: no systemd manager answers")
		expect(t, r, CheckSlice, true, "not checked: no systemd manager answers")
		expect(t, r, CheckMemoryAccounting, true, "not checked: no systemd manager answers")
		expect(t, r, CheckJournald, true, "journalctl can read the default journal")
		if r.Failed() != 1 {
			t.Errorf("%d failed checks, want 1", r.Failed())
		}
	})
}

func TestJournald(t *testing.T) {
	f := newFixture(t, "", processesJS)
	base := f.options()
	base.Runner = RunnerSystemd
	base.Dial = noManager(t)

	t.Run("journalctl missing", func(t *testing.T) {
		opts := base
		opts.Journalctl = filepath.Join(t.TempDir(), "journalctl")
		r := run(t, opts)
		expectPrefix(t, r, CheckJournald, false, opts.Journalctl+" not found (")
	})
	t.Run("journalctl fails", func(t *testing.T) {
		opts := base
		opts.Journalctl = "false"
		r := run(t, opts)
		expect(t, r, CheckJournald, false, "journalctl cannot read the default journal: exit status 1")
	})
	t.Run("no journal files", func(t *testing.T) {
		if _, err := exec.LookPath("journalctl"); err != nil {
			t.Skip("SKIP: journalctl is not installed")
		}
		opts := base
		opts.JournalDir = t.TempDir()
		r := run(t, opts)
		expect(t, r, CheckJournald, false, "no journal files in the journal in "+opts.JournalDir+"; is systemd-journald running?")
	})
	t.Run("journal directory missing", func(t *testing.T) {
		if _, err := exec.LookPath("journalctl"); err != nil {
			t.Skip("SKIP: journalctl is not installed")
		}
		opts := base
		opts.JournalDir = filepath.Join(t.TempDir(), "gone")
		r := run(t, opts)
		expectPrefix(t, r, CheckJournald, false, "journalctl cannot read the journal in "+opts.JournalDir+": ")
	})
}

func TestSocketActivation(t *testing.T) {
	f := newFixture(t, "", processesJS)
	self := fmt.Sprint(os.Getpid())
	bind := fmt.Sprintf("127.0.0.1:%d", f.port)
	cases := []struct {
		name   string
		env    []string
		ok     bool
		detail string
	}{
		{"not activated", nil, true, `not socket-activated here (LISTEN_FDS unset): the daemon binds ` + bind + ` itself unless a .socket unit passes it a socket named "proxy"`},
		{"garbage count", []string{"LISTEN_FDS=two"}, false, `LISTEN_FDS="two" is not a number of sockets`},
		{"other pid", []string{"LISTEN_FDS=1", "LISTEN_PID=1"}, true, "LISTEN_FDS=1 is addressed to pid 1, not to this process: ignored; the daemon binds " + bind + " itself"},
		{"zero", []string{"LISTEN_FDS=0", "LISTEN_PID=" + self}, true, "LISTEN_FDS=0: no sockets passed; the daemon binds " + bind + " itself"},
		{"named proxy", []string{"LISTEN_FDS=2", "LISTEN_PID=" + self, "LISTEN_FDNAMES=control:proxy"}, true, `2 socket(s) passed; the proxy takes the one named "proxy" (host and port come from the .socket unit)`},
		{"single unnamed", []string{"LISTEN_FDS=1"}, true, "1 unnamed socket passed; the proxy takes it (host and port come from the .socket unit)"},
		{"no proxy name", []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=a:b"}, false, `2 socket(s) passed (names: a, b) but none is named "proxy"; set FileDescriptorName=proxy in the .socket unit`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := f.options()
			opts.Env = append(opts.Env, c.env...)
			r := run(t, opts)
			expect(t, r, CheckSocketActivation, c.ok, c.detail)
		})
	}
}

func TestMemoryAccountingFallbackUnreadable(t *testing.T) {
	t.Run("memory supervision configured", func(t *testing.T) {
		f := newFixture(t, "", `[
    {id: "worker", command: "w", memory: {limitBytes: 100000000}},
    {id: "web", policy: "proxied", command: "bin/web --port {{port}}", port: {from: 18390, to: 18399}}
  ]`)
		opts := f.options()
		opts.procDir = t.TempDir()
		r := run(t, opts)
		c := expectPrefix(t, r, CheckMemoryAccounting, false, "exec runner: no cgroup per instance, and VmRSS is unreadable (")
		if !strings.HasSuffix(c.Detail, "): memory supervision of worker cannot measure anything") {
			t.Errorf("detail %q", c.Detail)
		}
	})
	t.Run("no memory supervision", func(t *testing.T) {
		f := newFixture(t, "", processesJS)
		opts := f.options()
		opts.procDir = t.TempDir()
		r := run(t, opts)
		c := expectPrefix(t, r, CheckMemoryAccounting, true, "exec runner: no cgroup per instance, and VmRSS is unreadable (")
		if !strings.HasSuffix(c.Detail, "; no process configures memory supervision") {
			t.Errorf("detail %q", c.Detail)
		}
	})
}

func TestVMRSS(t *testing.T) {
	rss, err := vmRSS("", os.Getpid())
	if err != nil || rss == 0 {
		t.Fatalf("vmRSS(self) = %d, %v", rss, err)
	}
	t.Logf("own VmRSS %d bytes", rss)
}

// startUnit starts a transient unit for id in the real manager, as the
// systemd runner would name it, and stops it (and the application slice) at
// the end of the test. It returns the unit name and its main pid.
func startUnit(t *testing.T, conn *dbusctl.Conn, id units.Identity) (string, int) {
	t.Helper()
	name := id.UnitName()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := conn.StartTransient(ctx, dbusctl.TransientSpec{
		Name:             name,
		Description:      "doctor test leftover",
		Slice:            id.Slice(),
		Argv:             []string{"/bin/sleep", "300"},
		WorkingDirectory: "/",
		Environment:      id.IdentityEnv(),
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, u := range []string{name, id.Slice()} {
			if err := conn.Stop(ctx, u); err != nil && !errors.Is(err, dbusctl.ErrNoSuchUnit) {
				t.Errorf("stop %s: %v", u, err)
			}
		}
	})
	st, err := conn.State(ctx, name)
	if err != nil || st.MainPID == 0 {
		t.Fatalf("state of %s: %+v, %v", name, st, err)
	}
	return name, st.MainPID
}

// TestSystemdChecksRealManager runs the systemd checks against a real user
// manager (scripts/systemd-sandbox), with units a previous daemon left.
func TestSystemdChecksRealManager(t *testing.T) {
	conn := dbusctltest.Connect(t)
	f := newFixture(t, `statePath: "state.json",`, processesJS)
	opts := f.options()
	opts.Runner = RunnerAuto
	opts.JournalDir = dbusctltest.JournalDir()

	// Dialed the way the daemon would (BusAuto from the environment).
	r := run(t, opts)
	expectPrefix(t, r, CheckSystemdManager, true, "user manager (user bus) at ")
	if c := check(t, r, CheckSystemdManager); !strings.HasSuffix(c.Detail, "the daemon would run processes as transient units") {
		t.Errorf("manager detail %q", c.Detail)
	}
	expectPrefix(t, r, CheckTransientUnits, true, fmt.Sprintf("the user manager starts transient units as uid %d without extra privileges", os.Geteuid()))
	expectPrefix(t, r, CheckJournald, true, "journalctl can read ")
	pattern := units.AppUnitPattern(f.app)
	expect(t, r, CheckLeftoverUnits, true, "no running "+pattern+" units")
	slice := units.AppSlice(f.app)
	expect(t, r, CheckSlice, true, slice+" is not active: fine before the first deploy, systemd creates it with the first unit")
	check(t, r, CheckMemoryAccounting)
	if !r.OK {
		t.Fatalf("report not ok against a healthy manager")
	}

	// A previous daemon left the web unit of release r1 running, and
	// recorded its pid in the state file: the next daemon re-adopts it, so
	// it is no orphan.
	opts.Manager = conn
	web, webPID := startUnit(t, conn, units.Identity{App: f.app, Release: "r1", Process: "web", Replicas: 1})
	writeState(t, filepath.Join(f.dir, "state.json"), fmt.Sprintf(
		`{"releases": [{"releaseId": "r1", "processes": [{"id": "web", "pid": %d}]}], "services": [], "singletons": []}`, webPID))
	r = run(t, opts)
	expect(t, r, CheckLeftoverUnits, true, "1 running unit(s) of a previous daemon will be re-adopted when the daemon starts: "+web)
	expect(t, r, CheckOrphans, true, "no leftover processes from a previous daemon")
	expect(t, r, CheckSlice, true, slice+" is active with 1 running instance unit(s)")
	mem := check(t, r, CheckMemoryAccounting)
	if !mem.OK || !strings.Contains(mem.Detail, web) {
		t.Errorf("memory accounting should be read from the running unit: %+v", mem)
	}

	// A unit of a process the config no longer has is left running by the
	// daemon: a leftover, and its recorded pid an orphan.
	// So is a replica beyond the configured count.
	ghost, ghostPID := startUnit(t, conn, units.Identity{App: f.app, Release: "r1", Process: "ghost", Replicas: 1})
	extra, _ := startUnit(t, conn, units.Identity{App: f.app, Release: "r1", Process: "worker", Replica: 1, Replicas: 2})
	writeState(t, filepath.Join(f.dir, "state.json"), fmt.Sprintf(
		`{"releases": [{"releaseId": "r1", "processes": [{"id": "web", "pid": %d}, {"id": "ghost", "pid": %d}]}], "services": [], "singletons": []}`, webPID, ghostPID))
	r = run(t, opts)
	expect(t, r, CheckLeftoverUnits, false, fmt.Sprintf(
		`2 running unit(s) match no process of the config and would be left running unmanaged: %s (process "ghost" is not in the config), %s (replica 1 of "worker" exceeds replicas: 1) — stop them with systemctl --user stop '%s' '%s'`,
		ghost, extra, ghost, extra))
	expect(t, r, CheckOrphans, false, fmt.Sprintf("1 possible orphaned process(es) still running: ghost (pid %d) — verify and stop any leftovers", ghostPID))

	// With this application's daemon running, the units are its own.
	fakeDaemon(t, f.controlPath, f.app, "127.0.0.1", f.port)
	r = run(t, opts)
	expect(t, r, CheckLeftoverUnits, true, "3 running unit(s) belong to the running daemon")
	expect(t, r, CheckOrphans, true, "a daemon is running; its managed processes are not orphans")

	// Forcing exec never talks to the manager.
	opts.Runner = RunnerExec
	r = run(t, opts)
	expect(t, r, CheckLeftoverUnits, true, "not used: the exec runner names no units")
	expect(t, r, CheckSlice, true, "not used: the exec runner puts processes in no slice")
}

// TestSystemdChecksUnreadableManager: the manager answered the probe but
// then stopped answering, so units and the slice cannot be listed.
func TestSystemdChecksUnreadableManager(t *testing.T) {
	conn := dbusctltest.Connect(t)
	f := newFixture(t, "", processesJS)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d := &doctor{opts: f.options()}
	if !d.checkConfig(ctx) {
		t.Fatalf("config: %+v", d.checks)
	}
	d.checks = nil
	dead, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: conn.Bus(), Address: conn.Address()})
	if err != nil {
		t.Fatal(err)
	}
	dead.Close()
	m := &manager{kind: RunnerAuto, runner: RunnerSystemd, conn: dead}
	m.listUnits(ctx, d.cfg)
	if m.listErr == nil {
		t.Fatal("listing units on a closed connection succeeded")
	}
	d.checkLeftoverUnits(m)
	d.checkSlice(ctx, m)
	r := Report{Checks: d.checks}
	pattern := units.AppUnitPattern(f.app)
	slice := units.AppSlice(f.app)
	expectPrefix(t, r, CheckLeftoverUnits, false, "could not list "+pattern+" units: ")
	expectPrefix(t, r, CheckSlice, false, "could not read the state of "+slice+": ")
}

// TestSystemdChecksMaskedSlice: a masked application slice is not loaded,
// so not listed, yet systemd refuses to start any unit in it; doctor must
// say so (and stop saying so once it is unmasked).
func TestSystemdChecksMaskedSlice(t *testing.T) {
	conn := dbusctltest.Connect(t)
	f := newFixture(t, "", processesJS)
	opts := f.options()
	opts.Runner = RunnerAuto
	opts.Manager = conn
	opts.JournalDir = dbusctltest.JournalDir()
	slice := units.AppSlice(f.app)
	systemctl := func(args ...string) {
		t.Helper()
		out, err := exec.Command("systemctl", append([]string{"--user"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("systemctl --user %v: %v\n%s", args, err, out)
		}
	}
	systemctl("mask", "--runtime", slice)
	unmasked := false
	t.Cleanup(func() {
		if !unmasked {
			exec.Command("systemctl", "--user", "unmask", "--runtime", slice).Run()
		}
	})

	r := run(t, opts)
	expect(t, r, CheckSlice, false, slice+" is masked: systemd refuses to start any unit in it — unmask it with systemctl --user unmask "+slice)
	if r.OK {
		t.Error("report ok with a masked slice")
	}

	systemctl("unmask", "--runtime", slice)
	unmasked = true
	r = run(t, opts)
	expect(t, r, CheckSlice, true, slice+" is not active: fine before the first deploy, systemd creates it with the first unit")
}
