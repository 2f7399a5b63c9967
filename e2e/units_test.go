package e2e

import (
	"context"
	"sort"
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
