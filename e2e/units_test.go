package e2e

import (
	"context"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
	"github.com/rollbridge/rollbridge/units"
)

// dialManager connects to the systemd manager the daemon uses; the caller
// closes the connection.
func (e *env) dialManager(ctx context.Context) *dbusctl.Conn {
	e.t.Helper()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		e.t.Fatal(err)
	}
	return conn
}

// unitInfos lists the loaded units matching pattern.
func (e *env) unitInfos(pattern string) []dbusctl.UnitInfo {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := e.dialManager(ctx)
	defer conn.Close()
	infos, err := conn.ListUnits(ctx, pattern)
	if err != nil {
		e.t.Fatal(err)
	}
	return infos
}

// listUnits lists the app's instance units on the systemd manager.
func (e *env) listUnits() []string {
	e.t.Helper()
	var out []string
	for _, u := range e.unitInfos(units.AppUnitPattern(e.app)) {
		out = append(out, u.Name)
	}
	sort.Strings(out)
	return out
}

// systemctlUnits lists the app's instance units as an operator would:
// `systemctl --user list-units 'rollbridge-<app>-*'`, sorted names.
func (e *env) systemctlUnits() []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", "--user", "list-units", "--plain", "--no-legend", "--all",
		units.AppUnitPattern(e.app)).Output()
	if err != nil {
		e.t.Fatalf("systemctl --user list-units: %v", err)
	}
	e.t.Logf("systemctl --user list-units %s:\n%s", units.AppUnitPattern(e.app), out)
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	sort.Strings(names)
	return names
}

// sliceActive reports whether the app's slice is loaded and active.
func (e *env) sliceActive() bool {
	e.t.Helper()
	infos := e.unitInfos(units.AppSlice(e.app))
	return len(infos) > 0 && infos[0].ActiveState == "active"
}

// stopAppUnits stops every instance unit of the app (leftovers of a killed
// daemon).
func (e *env) stopAppUnits() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		e.t.Error(err)
		return
	}
	defer conn.Close()
	for _, name := range e.listUnits() {
		if err := conn.Stop(ctx, name); err != nil {
			e.t.Errorf("stop %s: %v", name, err)
		}
	}
}
