package doctor

import (
	"context"
	"errors"
	"testing"
)

func TestTransientPermission(t *testing.T) {
	const addr = "unix:path=/run/dbus/system_bus_socket"
	fix := "run the daemon as root or under a user manager (XDG_RUNTIME_DIR), or add a polkit rule granting org.freedesktop.systemd1.manage-units to this user"
	cases := []struct {
		name   string
		user   bool
		euid   int
		answer polkitAnswer
		err    error
		asked  bool
		ok     bool
		detail string
	}{
		{name: "user manager", user: true, euid: 1000, ok: true,
			detail: "the user manager starts transient units as uid 1000 without extra privileges"},
		{name: "system manager as root", euid: 0, ok: true,
			detail: "the system manager accepts transient units from root"},
		{name: "polkit grants", euid: 1000, answer: polkitAnswer{authorized: true}, asked: true, ok: true,
			detail: "the system manager: uid 1000 is not root, but polkit grants it org.freedesktop.systemd1.manage-units"},
		{name: "polkit denies", euid: 1000, asked: true,
			detail: "the system manager and uid 1000 is not root: polkit does not grant it org.freedesktop.systemd1.manage-units — " + fix},
		{name: "polkit wants a password", euid: 1000, answer: polkitAnswer{challenge: true}, asked: true,
			detail: "the system manager and uid 1000 is not root: polkit grants org.freedesktop.systemd1.manage-units only after interactive authentication, which a daemon cannot give — " + fix},
		{name: "no polkit", euid: 1000, err: errors.New("polkit CheckAuthorization: org.freedesktop.DBus.Error.ServiceUnknown"), asked: true,
			detail: "the system manager and uid 1000 is not root: StartTransientUnit needs root or polkit's org.freedesktop.systemd1.manage-units, and polkit could not be asked (polkit CheckAuthorization: org.freedesktop.DBus.Error.ServiceUnknown) — " + fix},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			asked := false
			authorize := func(_ context.Context, address string) (polkitAnswer, error) {
				asked = true
				if address != addr {
					t.Errorf("polkit asked on %q, want %q", address, addr)
				}
				return c.answer, c.err
			}
			ok, detail := transientPermission(context.Background(), c.user, c.euid, addr, authorize)
			if ok != c.ok || detail != c.detail {
				t.Errorf("= (%v, %q), want (%v, %q)", ok, detail, c.ok, c.detail)
			}
			if asked != c.asked {
				t.Errorf("polkit asked: %v, want %v", asked, c.asked)
			}
		})
	}
}

// TestAskPolkitNoBus: a bus that cannot be reached is an error (reported as
// a failed check), not a hang or a pass.
func TestAskPolkitNoBus(t *testing.T) {
	_, err := askPolkit(context.Background(), "unix:path="+t.TempDir()+"/no-bus")
	if err == nil {
		t.Fatal("askPolkit on a missing bus succeeded")
	}
	t.Log(err)
}
