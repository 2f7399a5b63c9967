// Package dbusctltest finds a real systemd manager for integration tests, or
// skips them loudly. Set ROLLBRIDGE_REQUIRE_SYSTEMD=1 (CI with the sandbox
// of scripts/systemd-sandbox) to turn the skip into a failure.
package dbusctltest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/dbusctl"
)

// RequireEnv is the variable that turns a missing manager into a failure.
const RequireEnv = "ROLLBRIDGE_REQUIRE_SYSTEMD"

// connectTimeout bounds finding the manager; a bus without one answers fast.
const connectTimeout = 3 * time.Second

// Required reports whether tests must fail instead of skip without systemd.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Unavailable skips the test (or fails it under ROLLBRIDGE_REQUIRE_SYSTEMD=1)
// with a message that names the missing prerequisite and the fix.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	msg := "SKIP (no systemd manager): " + reason +
		"; boot one with: eval \"$(scripts/systemd-sandbox start /tmp/rbsd-$USER)\""
	if Required() {
		t.Fatal(RequireEnv + "=1 but " + msg)
	}
	t.Skip(msg)
}

// Connect returns a connection to the user manager named by
// DBUS_SESSION_BUS_ADDRESS / XDG_RUNTIME_DIR, checked with a SystemState
// call, and closes it at the end of the test. Without one it skips (or
// fails, see RequireEnv).
func Connect(t testing.TB) *dbusctl.Conn {
	t.Helper()
	return ConnectBus(t, dbusctl.BusUser)
}

// ConnectBus is Connect for another transport (e.g. dbusctl.BusPrivate).
func ConnectBus(t testing.TB, bus dbusctl.Bus) *dbusctl.Conn {
	t.Helper()
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" && os.Getenv("XDG_RUNTIME_DIR") == "" {
		Unavailable(t, "neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := dbusctl.Dial(ctx, dbusctl.Options{Bus: bus, ConnectTimeout: connectTimeout})
	if err != nil {
		Unavailable(t, err.Error())
	}
	state, err := conn.SystemState(ctx)
	if err != nil {
		conn.Close()
		Unavailable(t, "the bus answers but no systemd manager does: "+err.Error())
	}
	if state != "running" && state != "degraded" {
		t.Logf("systemd manager SystemState=%s", state)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// JournalDir is the sandbox's journal directory ($SYSTEMD_SANDBOX_JOURNAL_DIR),
// for journalctl --directory; "" means the default journal.
func JournalDir() string { return os.Getenv("SYSTEMD_SANDBOX_JOURNAL_DIR") }
