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

// listUnits lists the app's instance units on the systemd manager.
func (e *env) listUnits() []string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	infos, err := conn.ListUnits(ctx, units.AppUnitPattern(e.app))
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, u := range infos {
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: dbusctl.BusAuto})
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	infos, err := conn.ListUnits(ctx, units.AppSlice(e.app))
	if err != nil {
		e.t.Fatal(err)
	}
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
