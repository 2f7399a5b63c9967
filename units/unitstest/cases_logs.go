package unitstest

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

func testLogs(t *testing.T, h Harness) {
	f := newFixture(t, h)
	spec := f.workload("printer", ModePrint, "LINES=10", "STDERR=2")
	name := spec.Identity.UnitName()
	f.start(spec)
	var want []string
	for i := 1; i <= 10; i++ {
		want = append(want, "out-"+strconv.Itoa(i))
	}
	want = append(want, "err-1", "err-2", "end")
	lines := f.waitLogLines(name, len(want))
	if got := lineTexts(lines); !slices.Equal(got, want) {
		t.Fatalf("Logs = %q, want %q", got, want)
	}
	for i, l := range lines {
		wantStream := units.Stdout
		if l.Line == "err-1" || l.Line == "err-2" {
			wantStream = units.Stderr
		}
		if l.Stream != wantStream {
			t.Errorf("%q: stream %q, want %q", l.Line, l.Stream, wantStream)
		}
		if l.At.IsZero() || i > 0 && l.At.Before(lines[i-1].At) {
			t.Errorf("%q: time %v zero or before the previous line's", l.Line, l.At)
		}
	}
	last, err := f.r.Logs(f.ctx(10*time.Second), name, 3)
	if err != nil {
		t.Fatalf("Logs(3): %v", err)
	}
	if got := lineTexts(last); !slices.Equal(got, want[len(want)-3:]) {
		t.Errorf("Logs(3) = %q, want %q", got, want[len(want)-3:])
	}
}

func testLogLineSplitting(t *testing.T, h Harness) {
	f := newFixture(t, h)
	// \r\n ends a line, empty lines are dropped, a line written in two
	// writes is one line.
	spec := f.shell("split", `printf 'a\r\n\r\n\nb\n'; printf 'c'; sleep 0.2; printf 'd\n'; echo last; exec sleep 1000`)
	name := spec.Identity.UnitName()
	f.start(spec)
	want := []string{"a", "b", "cd", "last"}
	lines := f.waitLogLines(name, len(want))
	if got := lineTexts(lines); !slices.Equal(got, want) {
		t.Errorf("Logs = %q, want %q", got, want)
	}
}

func testLogsFollow(t *testing.T, h Harness) {
	f := newFixture(t, h)
	spec := f.workload("ticker", ModePrint, "LINES=100000", "INTERVAL_MS=50")
	name := spec.Identity.UnitName()
	f.start(spec)
	f.waitLogLines(name, 1)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan units.LogLine, 1000)
	errc := make(chan error, 1)
	go func() {
		errc <- f.r.Follow(ctx, name, func(l units.LogLine) {
			select {
			case got <- l:
			default:
			}
		})
	}()
	var seen []units.LogLine
	timeout := time.After(scaled(10 * time.Second))
	for len(seen) < 3 {
		select {
		case l := <-got:
			seen = append(seen, l)
		case err := <-errc:
			t.Fatalf("Follow returned early: %v", err)
		case <-timeout:
			t.Fatalf("Follow delivered %q within 10s, want 3 lines", lineTexts(seen))
		}
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Follow returned %v after cancel, want context.Canceled", err)
		}
	case <-time.After(scaled(5 * time.Second)):
		t.Fatalf("Follow did not return after its context was cancelled")
	}
	prev := 0
	for _, l := range seen {
		n, ok := lineNumber(l.Line)
		if !ok || n <= prev {
			t.Errorf("followed lines %q not increasing out-N lines", lineTexts(seen))
			break
		}
		prev = n
	}
}

// lineNumber parses N from the print workload's "out-N".
func lineNumber(line string) (int, bool) {
	s, ok := strings.CutPrefix(line, "out-")
	n, err := strconv.Atoi(s)
	return n, ok && err == nil
}

func testLogsKeptAcrossRestart(t *testing.T, h Harness) {
	f := newFixture(t, h)
	w := f.watch()
	spec := f.workload("once", ModePrint, "LINES=2", "EXIT=1")
	name := spec.Identity.UnitName()
	for i := 1; i <= 2; i++ {
		f.start(spec)
		w.wait(t, name, units.EventExited, i, 10*time.Second)
	}
	want := []string{"out-1", "out-2", "out-1", "out-2"}
	if got := lineTexts(f.waitLogLines(name, 4)); !slices.Equal(got, want) {
		t.Errorf("Logs after a restart = %q, want %q", got, want)
	}
}
