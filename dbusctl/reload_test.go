package dbusctl_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
)

// TestReloadPicksUpChangedUnitFile writes a unit file into the user
// manager's runtime unit directory ($XDG_RUNTIME_DIR/systemd/user), starts
// it, changes the file and checks that only Reload makes the manager see the
// change.
func TestReloadPicksUpChangedUnitFile(t *testing.T) {
	c := dbusctltest.Connect(t)
	ctx := ctxFor(t, 30*time.Second)
	runtimeDir := os.Getenv("XDG_RUNTIME_DIR")
	if runtimeDir == "" {
		dbusctltest.Unavailable(t, "XDG_RUNTIME_DIR is not set: no runtime unit directory to write to")
	}
	dir := filepath.Join(runtimeDir, "systemd", "user")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := unitName(t, c, "reload")
	path := filepath.Join(dir, name)
	write := func(desc string) {
		t.Helper()
		unit := "[Unit]\nDescription=" + desc + "\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
		if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("rollbridge reload test before")
	t.Cleanup(func() {
		os.Remove(path)
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Reload(cctx)
	})
	// The unit is started (and stays loaded: RemainAfterExit) so the
	// manager keeps the old definition until it reloads; the unitName
	// cleanup, registered first, runs last and stops it.
	if err := c.Reload(ctx); err != nil {
		if strings.Contains(err.Error(), "not enough space available") {
			// systemd refuses a reload unless /run/systemd has 16 MiB free;
			// a sandbox with a 16m tmpfs there can never reload.
			t.Skipf("SKIP: the manager refuses daemon-reload for lack of space on its /run/systemd (give the sandbox's /run/systemd tmpfs at least 64m): %v", err)
		}
		t.Fatal(err)
	}
	systemctl(t, "start", name)
	if got := systemctl(t, "show", "-p", "Description", "--value", name); got != "rollbridge reload test before" {
		t.Fatalf("Description = %q before the change", got)
	}

	write("rollbridge reload test after")
	if got := systemctl(t, "show", "-p", "NeedDaemonReload", "--value", name); got != "yes" {
		t.Fatalf("NeedDaemonReload = %q after changing the file, want yes", got)
	}
	start := time.Now()
	if err := c.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon-reload took %v", time.Since(start))
	if got := systemctl(t, "show", "-p", "NeedDaemonReload", "--value", name); got != "no" {
		t.Fatalf("NeedDaemonReload = %q after Reload, want no", got)
	}
	if got := systemctl(t, "show", "-p", "Description", "--value", name); got != "rollbridge reload test after" {
		t.Fatalf("after Reload: Description = %q, want the new one", got)
	}
}

// systemctl runs `systemctl --user ARGS…` against the test's manager.
func systemctl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", append([]string{"--user"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("systemctl --user %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}
