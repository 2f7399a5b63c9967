package e2e

// CFG-07 (spec §2.3, §7.4): control.owner and control.group names are
// resolved when the daemon binds its control socket; an unknown name aborts
// the daemon's start with the spec's message. The resolution happens in
// package daemon (listenControl), so the real binary is the smallest unit
// these new tests may drive. The lifecycle-hook items of the checklist
// (TPL-04, GST-02, GST-03, GST-08) are unit-tested in package release
// (release/hooks_spec_test.go): the hooks are run by the release layer
// whatever the runner.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"
)

// TestControlUnknownOwnerOrGroup: a control.owner or control.group name
// that resolves to no local account stops `rollbridge daemon` with
// `Unknown user "<n>". …` / `Unknown group "<n>". …` (exit status non-zero,
// nothing left answering on the socket); known names start it.
func TestControlUnknownOwnerOrGroup(t *testing.T) {
	suffix := fmt.Sprint(rand.IntN(1_000_000))
	noUser, noGroup := "rbnouser"+suffix, "rbnogroup"+suffix
	if _, err := user.Lookup(noUser); err == nil {
		t.Skipf("SKIP: user %s exists", noUser)
	}
	if _, err := user.LookupGroup(noGroup); err == nil {
		t.Skipf("SKIP: group %s exists", noGroup)
	}
	cases := []struct {
		name, control, want string
	}{
		{"unknown owner", fmt.Sprintf(`owner: %q`, noUser),
			fmt.Sprintf(`Unknown user %q. Use a numeric id, or ensure the user exists in /etc/passwd (name resolution covers local users only).`, noUser)},
		{"unknown group", fmt.Sprintf(`group: %q`, noGroup),
			fmt.Sprintf(`Unknown group %q. Use a numeric id, or ensure the group exists in /etc/group (name resolution covers local groups only).`, noGroup)},
		{"unknown owner and group: the owner is reported", fmt.Sprintf(`owner: %q, group: %q`, noUser, noGroup),
			fmt.Sprintf(`Unknown user %q.`, noUser)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnvOpts(t, "exec", `[`+webProcess+`]`, envOpts{noStart: true})
			// The second control key overrides newEnv's (JS object literal).
			src, err := os.ReadFile(e.config)
			if err != nil {
				t.Fatal(err)
			}
			src = []byte(strings.Replace(string(src), "\n}\n", fmt.Sprintf(",\n  control: {path: %q, %s}\n}\n", e.ctlPath, c.control), 1))
			if err := os.WriteFile(e.config, src, 0o644); err != nil {
				t.Fatal(err)
			}
			e.spawnDaemon()
			select {
			case <-e.exited:
			case <-time.After(15 * time.Second):
				t.Fatalf("daemon still runs with %s:\n%s", c.control, e.logs.String())
			}
			if code := e.daemon.ProcessState.ExitCode(); code == 0 {
				t.Errorf("daemon exit status 0 with %s", c.control)
			}
			if logs := e.logs.String(); !strings.Contains(logs, c.want) {
				t.Errorf("daemon output does not contain %q:\n%s", c.want, logs)
			}
			if out, err := e.rbErr("status"); err == nil {
				t.Errorf("something answers on the control socket:\n%s", out)
			}
		})
	}

	t.Run("known names", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("SKIP: chown to another owner needs root")
		}
		u, err := user.LookupId("0")
		if err != nil {
			t.Skip("SKIP: no passwd entry for uid 0")
		}
		g, err := user.LookupGroupId("0")
		if err != nil {
			t.Skip("SKIP: no group entry for gid 0")
		}
		e := newEnvOpts(t, "exec", `[`+webProcess+`]`, envOpts{noStart: true})
		src, err := os.ReadFile(e.config)
		if err != nil {
			t.Fatal(err)
		}
		src = []byte(strings.Replace(string(src), "\n}\n", fmt.Sprintf(",\n  control: {path: %q, owner: %q, group: %q}\n}\n", e.ctlPath, u.Username, g.Name), 1))
		if err := os.WriteFile(e.config, src, 0o644); err != nil {
			t.Fatal(err)
		}
		e.startDaemon()
		if logs := e.logs.String(); strings.Contains(logs, "Unknown user") || strings.Contains(logs, "Unknown group") {
			t.Errorf("known names reported unknown:\n%s", logs)
		}
	})
}
