package unitstest

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

func fakeSpec(process string) units.Spec {
	return units.Spec{
		Identity: units.Identity{App: "shop", Release: "v1", Process: process, Replicas: 1},
		Command:  "true",
		Dir:      "/",
	}
}

func next(t *testing.T, ch <-chan units.Event) units.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
		return units.Event{}
	}
}

func TestFakeLifecycle(t *testing.T) {
	ctx := t.Context()
	f := NewFake("shop")
	events, _ := f.Watch(ctx)
	spec := fakeSpec("web")
	name := spec.Identity.UnitName()

	st, err := f.Start(ctx, spec)
	if err != nil || st.State != units.StateRunning || st.MainPID < FakePIDBase {
		t.Fatalf("Start = %+v, %v", st, err)
	}
	if ev := next(t, events); ev.Kind != units.EventStarted || ev.PID != st.MainPID {
		t.Errorf("event %+v", ev)
	}
	if _, err := f.Start(ctx, spec); !errors.Is(err, units.ErrAlreadyRunning) {
		t.Errorf("second Start: %v", err)
	}
	if err := f.Exit(name, units.Exit{Code: 3}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Kind != units.EventExited || ev.Exit.Code != 3 {
		t.Errorf("event %+v", ev)
	}
	if st, _ := f.Status(ctx, name); st.State != units.StateFailed || st.MainPID != 0 || *st.Exit != (units.Exit{Code: 3}) {
		t.Errorf("Status after crash = %+v", st)
	}
	st2, err := f.Start(ctx, spec)
	if err != nil || st2.MainPID == st.MainPID {
		t.Fatalf("restart = %+v, %v", st2, err)
	}
	next(t, events)
	if err := f.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Exit != (units.Exit{Code: -1, Signal: syscall.SIGTERM}) {
		t.Errorf("stop exit %+v", ev.Exit)
	}
	if st, _ := f.Status(ctx, name); st.State != units.StateExited {
		t.Errorf("state after requested stop = %s", st.State)
	}
	if err := f.Stop(ctx, "nope", syscall.SIGTERM, units.Grace{}); err != nil {
		t.Errorf("Stop(unknown) = %v", err)
	}
	if _, err := f.Status(ctx, "nope"); !errors.Is(err, units.ErrNotFound) {
		t.Errorf("Status(unknown) = %v", err)
	}
	var ops []string
	for _, c := range f.Calls() {
		ops = append(ops, c.Op)
	}
	if want := []string{"start", "start", "start", "stop", "stop"}; !slices.Equal(ops, want) {
		t.Errorf("calls %v, want %v", ops, want)
	}
}

func TestFakeFailStart(t *testing.T) {
	ctx := t.Context()
	f := NewFake("shop")
	spec := fakeSpec("web")
	f.FailStart(spec.Identity.UnitName(), ErrFakeStart)
	if _, err := f.Start(ctx, spec); !errors.Is(err, ErrFakeStart) {
		t.Errorf("Start = %v, want ErrFakeStart", err)
	}
	if list, _ := f.List(ctx, "shop"); len(list) != 0 {
		t.Errorf("failed start left %+v", list)
	}
	f.FailStart(spec.Identity.UnitName(), nil)
	if _, err := f.Start(ctx, spec); err != nil {
		t.Errorf("Start after clearing the failure: %v", err)
	}
}

func TestFakeGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		f := NewFake("shop")
		spec := fakeSpec("stubborn")
		name := spec.Identity.UnitName()
		f.IgnoreStop(name, true)

		f.Start(ctx, spec)
		t0 := time.Now()
		if err := f.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d != 5*time.Second {
			t.Errorf("stop took %v, want the 5s grace", d)
		}
		if st, _ := f.Status(ctx, name); *st.Exit != (units.Exit{Code: -1, Signal: syscall.SIGKILL}) || st.State != units.StateFailed {
			t.Errorf("after grace: %+v", st)
		}

		// Indefinite: only ctx ends the wait.
		f.Start(ctx, spec)
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := f.Stop(cctx, name, syscall.SIGTERM, units.Grace{Indefinite: true})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("indefinite stop = %v", err)
		}
		if st, _ := f.Status(ctx, name); st.State != units.StateStopping {
			t.Errorf("state %s, want stopping", st.State)
		}
		if err := f.Signal(ctx, name, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}

		// sig 0: the process leaves by itself within the window.
		f.IgnoreStop(name, false)
		f.Start(ctx, spec)
		go func() {
			time.Sleep(time.Second)
			f.Exit(name, units.Exit{})
		}()
		t0 = time.Now()
		if err := f.Stop(ctx, name, 0, units.Grace{Timeout: 10 * time.Second}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d != time.Second {
			t.Errorf("sig-0 stop took %v, want 1s", d)
		}
		if st, _ := f.Status(ctx, name); st.State != units.StateExited {
			t.Errorf("state %s after a clean exit", st.State)
		}
	})
}

func TestFakeLogsAndReopen(t *testing.T) {
	ctx := t.Context()
	f := NewFake("shop")
	spec := fakeSpec("web")
	spec.OutputLines = 3
	name := spec.Identity.UnitName()
	f.Start(ctx, spec)
	f.Output(name, units.Stdout, "a", "b")
	f.Output(name, units.Stderr, "c", "d")
	lines, _ := f.Logs(ctx, name, 0)
	if got := lineTexts(lines); !slices.Equal(got, []string{"b", "c", "d"}) || lines[2].Stream != units.Stderr {
		t.Errorf("Logs = %q", got)
	}

	fctx, cancel := context.WithCancel(ctx)
	got := make(chan string, 10)
	errc := make(chan error, 1)
	go func() { errc <- f.Follow(fctx, name, func(l units.LogLine) { got <- l.Line }) }()
	// Follow may subscribe after the first Output; keep writing until
	// something arrives.
	var first string
	for first == "" {
		f.Output(name, units.Stdout, "x")
		select {
		case first = <-got:
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || first != "x" {
		t.Errorf("Follow: first %q, err %v", first, err)
	}

	g := f.Reopen()
	list, _ := g.List(ctx, "shop")
	if len(list) != 1 || list[0].Name != name || list[0].State != units.StateRunning {
		t.Fatalf("reopened List = %+v", list)
	}
	events, _ := g.Watch(ctx)
	if err := g.Stop(ctx, name, syscall.SIGTERM, units.Grace{}); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Kind != units.EventExited || ev.Name != name {
		t.Errorf("reopened watch: %+v", ev)
	}
}
