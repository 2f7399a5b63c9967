package doctor

import (
	"errors"
	"testing"

	"github.com/rollbridge/rollbridge/dbusctl"
)

func TestSliceState(t *testing.T) {
	const slice = "rollbridge-shop.slice"
	cases := []struct {
		name   string
		list   []dbusctl.UnitInfo
		masked bool
		err    error
		user   bool
		ok     bool
		detail string
	}{
		{name: "before the first deploy", ok: true,
			detail: slice + " is not active: fine before the first deploy, systemd creates it with the first unit"},
		{name: "other units only", list: []dbusctl.UnitInfo{{Name: "rollbridge-shop2.slice", LoadState: "loaded", ActiveState: "failed"}}, ok: true,
			detail: slice + " is not active: fine before the first deploy, systemd creates it with the first unit"},
		{name: "active", list: []dbusctl.UnitInfo{{Name: slice, LoadState: "loaded", ActiveState: "active", SubState: "active"}}, ok: true,
			detail: slice + " is active with 2 running instance unit(s)"},
		{name: "failed", user: true, list: []dbusctl.UnitInfo{{Name: slice, LoadState: "loaded", ActiveState: "failed", SubState: "failed"}},
			detail: slice + " is failed; clear it with systemctl --user reset-failed " + slice + " before deploying"},
		{name: "masked", list: []dbusctl.UnitInfo{{Name: slice, LoadState: "masked", ActiveState: "active", SubState: "active"}},
			detail: slice + " is active (load state masked): units cannot be started in it — check its unit file with systemctl status " + slice + " (systemctl unmask " + slice + " if it is masked)"},
		{name: "masked and not loaded", user: true, masked: true,
			detail: slice + " is masked: systemd refuses to start any unit in it — unmask it with systemctl --user unmask " + slice},
		{name: "list fails", err: errors.New("list units [" + slice + "]: connection closed"),
			detail: "could not read the state of " + slice + ": list units [" + slice + "]: connection closed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ok, detail := sliceState(slice, c.list, c.masked, c.err, 2, c.user)
			if ok != c.ok || detail != c.detail {
				t.Errorf("= (%v, %q), want (%v, %q)", ok, detail, c.ok, c.detail)
			}
		})
	}
}
