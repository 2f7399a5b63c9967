package systemd

import (
	"errors"
	"strings"
	"testing"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

func accountSpec(user, group string) units.Spec {
	return units.Spec{
		Identity: units.Identity{App: "demo", Release: "r1", Process: "web", Replicas: 1},
		Command:  "true", Dir: "/srv/demo", User: user, Group: group,
	}
}

// TestCheckSpecAccountOnUserManager: a user manager refuses user/group
// before any D-Bus call, naming the config fields and the way out.
func TestCheckSpecAccountOnUserManager(t *testing.T) {
	user := &Runner{app: "demo", user: true}
	err := user.checkSpec(accountSpec("shop", "www-data"))
	if !errors.Is(err, dbusctl.ErrNotSupported) {
		t.Fatalf("checkSpec = %v, want ErrNotSupported", err)
	}
	for _, frag := range []string{`user "shop", group "www-data"`, "user manager", "system manager", "remove user/group"} {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("error %q does not mention %q", err, frag)
		}
	}
	if err := user.checkSpec(accountSpec("", "")); err != nil {
		t.Errorf("no account on a user manager: %v", err)
	}
	system := &Runner{app: "demo"}
	if err := system.checkSpec(accountSpec("shop", "")); err != nil {
		t.Errorf("user on the system manager: %v", err)
	}
}

// TestStartErrorAccount: systemd's 217/USER and 216/GROUP spawn failures
// name the account instead of only systemd's status.
func TestStartErrorAccount(t *testing.T) {
	r := &Runner{app: "demo"}
	cases := []struct {
		user, group string
		status      int
		want        string
	}{
		{"nope", "", exitUser, `user "nope": no such account`},
		{"", "nogrp", exitGroup, `group "nogrp": no such account`},
		{"shop", "nogrp", exitGroup, `user "shop", group "nogrp": no such account`},
	}
	for _, c := range cases {
		spec := accountSpec(c.user, c.group)
		jerr := &dbusctl.JobError{Unit: "u.service", Op: "start", Result: "failed", ExitCode: dbusctl.CLDExited, ExitStatus: c.status}
		err := r.startError("u.service", spec, jerr, jerr)
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "user/group of the process") {
			t.Errorf("status %d: %q, want it to contain %q", c.status, err, c.want)
		}
		var got *dbusctl.JobError
		if !errors.As(err, &got) || !errors.Is(err, dbusctl.ErrJobFailed) {
			t.Errorf("status %d: %v does not wrap the job error", c.status, err)
		}
	}
	jerr := &dbusctl.JobError{Unit: "u.service", Op: "start", Result: "failed", ExitCode: dbusctl.CLDExited, ExitStatus: 200}
	if err := r.startError("u.service", accountSpec("shop", ""), jerr, jerr); !strings.Contains(err.Error(), `not accessible as user "shop"`) {
		t.Errorf("CHDIR as another user: %v", err)
	}
}
