package systemd_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl/dbusctltest"
	"github.com/rollbridge/rollbridge/units"
	"github.com/rollbridge/rollbridge/units/systemd"
	"github.com/rollbridge/rollbridge/units/unitstest"
)

// The conformance suite needs a systemd manager; boot the sandbox first:
//
//	eval "$(scripts/systemd-sandbox start /tmp/rbsd-units)"
//	ROLLBRIDGE_REQUIRE_SYSTEMD=1 go test ./units/systemd/
//
// Without one every test skips loudly.

func TestMain(m *testing.M) {
	unitstest.WorkloadMain()
	os.Exit(m.Run())
}

// newRunner connects through dbusctltest (skip or fail without a manager)
// and closes the runner at the end of the test.
func newRunner(tb testing.TB, app string) units.Runner {
	tb.Helper()
	conn := dbusctltest.Connect(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := systemd.New(ctx, app, systemd.Options{Conn: conn, JournalDir: dbusctltest.JournalDir()})
	if err != nil {
		tb.Fatalf("systemd.New: %v", err)
	}
	tb.Cleanup(func() {
		// Runs after the tests' own stop cleanups: also remove the
		// application's slice so a long-lived sandbox does not collect them.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = conn.Stop(ctx, units.AppSlice(app))
		r.Close()
	})
	return r
}

func TestConformance(t *testing.T) {
	unitstest.RunSuite(t, unitstest.Harness{
		New:                 func(t *testing.T, app string) units.Runner { return newRunner(t, app) },
		KillsSetsidChildren: true,
		Readopts:            true,
		LogsAfterRestart:    true,
	})
}

// BenchmarkStartStop100 starts 100 units one after the other, then stops
// them; it reports per-unit medians and totals.
func BenchmarkStartStop100(b *testing.B) {
	unitstest.BenchStartStop(b, newRunner, 100)
}

// BenchmarkStartStop100Concurrent starts and stops 100 units with 16 calls
// in flight, as a deploy starts a process's replicas.
func BenchmarkStartStop100Concurrent(b *testing.B) {
	unitstest.BenchStartStopConcurrent(b, newRunner, 100, 16)
}
