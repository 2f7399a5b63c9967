package doctor

import (
	"context"
	"fmt"
	"slices"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

// checkSlice reports the state of the application's slice, which every
// instance unit of the application runs in. systemd creates it with the
// first unit, so a slice that is not loaded is fine; a failed one is
// reported with the command that clears it.
func (d *doctor) checkSlice(ctx context.Context, m *manager) {
	slice := units.AppSlice(d.cfg.Application)
	switch {
	case m.conn == nil && m.systemd():
		d.add(CheckSlice, true, "not checked: no systemd manager answers")
		return
	case m.conn == nil:
		d.add(CheckSlice, true, "not used: the exec runner puts processes in no slice")
		return
	}
	sctx, cancel := context.WithTimeout(ctx, ManagerProbeTimeout)
	defer cancel()
	// ListUnits, unlike GetUnit on the object path, loads no "not-found"
	// stub for a slice that does not exist yet.
	list, err := m.conn.ListUnits(sctx, slice)
	var masked []string
	if err == nil {
		masked, err = m.conn.MaskedUnitFiles(sctx, slice)
	}
	ok, detail := sliceState(slice, list, slices.Contains(masked, slice), err, len(m.units), m.conn.UserManager())
	d.add(CheckSlice, ok, detail)
}

// sliceState judges the listing of the slice: list holds the slice when it
// is loaded and active, activating, deactivating, reloading or failed;
// masked says its unit file is masked (then it is usually not loaded, so
// not listed); running is the number of the application's running
// instance units.
func sliceState(slice string, list []dbusctl.UnitInfo, masked bool, err error, running int, user bool) (bool, string) {
	if err != nil {
		return false, fmt.Sprintf("could not read the state of %s: %v", slice, err)
	}
	flag := ""
	if user {
		flag = " --user"
	}
	var info *dbusctl.UnitInfo
	for i := range list {
		if list[i].Name == slice {
			info = &list[i]
		}
	}
	if info == nil && masked {
		return false, fmt.Sprintf("%s is masked: systemd refuses to start any unit in it — unmask it with systemctl%s unmask %s", slice, flag, slice)
	}
	if info == nil {
		return true, fmt.Sprintf("%s is not active: fine before the first deploy, systemd creates it with the first unit", slice)
	}
	state := info.ActiveState
	if info.SubState != "" && info.SubState != info.ActiveState {
		state += " (" + info.SubState + ")"
	}
	switch {
	case info.LoadState != "" && info.LoadState != "loaded":
		return false, fmt.Sprintf("%s is %s (load state %s): units cannot be started in it — check its unit file with systemctl%s status %s (systemctl%s unmask %s if it is masked)",
			slice, state, info.LoadState, flag, slice, flag, slice)
	case info.ActiveState == "failed":
		return false, fmt.Sprintf("%s is failed; clear it with systemctl%s reset-failed %s before deploying", slice, flag, slice)
	default:
		return true, fmt.Sprintf("%s is %s with %d running instance unit(s)", slice, state, running)
	}
}
