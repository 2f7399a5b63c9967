package unitstest

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// testNotifyReadiness: with Spec.Notify, Start returns only after READY=1,
// through a socket of the runner's own (never the caller's NOTIFY_SOCKET);
// an instance that exits first or stays silent past StartTimeout fails the
// start with ErrNotReady and leaves nothing running.
func testNotifyReadiness(t *testing.T, h Harness) {
	f := newFixture(t, h)
	const delay = 400 * time.Millisecond
	sockFile, tsBefore := f.path("sock"), time.Now()
	spec := f.workload("ready", ModeNotify, "SOCKFILE="+sockFile, "DELAY_MS="+strconv.Itoa(int(delay/time.Millisecond)),
		"NOTIFY_SOCKET=/nonexistent/daemon-notify")
	spec.Notify, spec.StartTimeout = true, 20*time.Second
	w := f.watch()
	st := f.start(spec)
	if took := time.Since(tsBefore); took < delay {
		t.Errorf("Start returned after %v, before the instance sent READY=1 (it waits %v)", took, delay)
	}
	if st.MainPID <= 0 || st.State != units.StateRunning {
		t.Errorf("Start = %+v, want running with a pid", st)
	}
	if sock := f.readFile(sockFile, 10*time.Second); sock == "" || sock == "/nonexistent/daemon-notify" {
		t.Errorf("instance saw NOTIFY_SOCKET=%q; want the runner's own socket", sock)
	}
	if got := f.status(spec.Identity.UnitName()); got.State != units.StateRunning || got.MainPID != st.MainPID {
		t.Errorf("Status = %+v, want running", got)
	}
	// The STATUS= text sent with READY=1 arrives as a Status event.
	if ev := w.wait(t, spec.Identity.UnitName(), units.EventStatus, 1, 10*time.Second); ev.Status != "almost" {
		t.Errorf("Status event %+v, want STATUS=almost", ev.Event)
	}

	// Exits before READY=1.
	early := f.workload("early", ModeNotify, "DELAY_MS=100", "EXIT=1", "CODE=3")
	early.Notify, early.StartTimeout = true, 20*time.Second
	if _, err := f.startE(early); !errors.Is(err, units.ErrNotReady) {
		t.Errorf("Start of an instance exiting before READY=1: %v, want ErrNotReady", err)
	}
	f.expectNotRunning(early.Identity.UnitName())

	// Never sends READY=1.
	pidFile := f.path("silent.pid")
	silent := f.workload("silent", ModeNotify, "NOREADY=1", "PIDFILE="+pidFile)
	silent.Notify, silent.StartTimeout = true, 700*time.Millisecond
	start := time.Now()
	_, err := f.startE(silent)
	took := time.Since(start)
	if !errors.Is(err, units.ErrNotReady) || !strings.Contains(err.Error(), "READY=1") {
		t.Errorf("Start of a silent instance: %v, want ErrNotReady naming READY=1", err)
	}
	if took < 700*time.Millisecond || took > scaled(20*time.Second) {
		t.Errorf("silent start failed after %v; want about its 700ms StartTimeout", took)
	}
	pid := f.readPID(pidFile)
	if !eventually(10*time.Second, func() bool { return !alive(pid) }) {
		t.Errorf("silent instance (pid %d) still alive after its failed start", pid)
	}
	f.expectNotRunning(silent.Identity.UnitName())
	t.Logf("READY=1 after %v: Start returned; silent instance failed after %v", delay, took.Round(time.Millisecond))
}

// expectNotRunning checks that name has no running instance.
func (f *fixture) expectNotRunning(name string) {
	f.t.Helper()
	if !eventually(10*time.Second, func() bool {
		st, err := f.r.Status(f.ctx(10*time.Second), name)
		return err != nil || st.State != units.StateRunning && st.State != units.StateStarting && st.State != units.StateStopping
	}) {
		st, err := f.r.Status(f.ctx(10*time.Second), name)
		f.t.Errorf("%s still running after a failed start: %+v %v", name, st, err)
	}
}
