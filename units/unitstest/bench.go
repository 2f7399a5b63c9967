package unitstest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// BenchStartStop starts n instances of `sleep 1000` one after the other,
// then stops them one after the other (SIGTERM, 5 s grace), and reports
// per-instance medians and totals in milliseconds:
// start-ms/unit, start-total-ms, stop-ms/unit, stop-total-ms (averaged over
// the benchmark's rounds). newRunner returns a runner bound to app and registers its
// cleanup.
func BenchStartStop(b *testing.B, newRunner func(tb testing.TB, app string) units.Runner, n int) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Fatalf("sleep not found: %v", err)
	}
	dir := b.TempDir()
	var startMed, startTot, stopMed, stopTot time.Duration
	rounds := 0
	for b.Loop() {
		rounds++
		app := UniqueApp()
		r := newRunner(b, app)
		names := make([]string, n)
		for i := range names {
			names[i] = units.Identity{App: app, Release: "v1", Process: "p" + strconv.Itoa(i), Replicas: 1}.UnitName()
			b.Cleanup(func() { _ = r.Stop(context.Background(), names[i], syscall.SIGKILL, units.Grace{}) })
		}
		ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Minute))
		starts := make([]time.Duration, n)
		for i := range n {
			spec := units.Spec{
				Identity:   units.Identity{App: app, Release: "v1", Process: "p" + strconv.Itoa(i), Replicas: 1},
				Argv:       []string{sleep, "1000"},
				Dir:        dir,
				Env:        os.Environ(),
				StopSignal: syscall.SIGTERM,
				Grace:      units.Grace{Timeout: 5 * time.Second},
			}
			t0 := time.Now()
			if _, err := r.Start(ctx, spec); err != nil {
				cancel()
				b.Fatalf("start %d: %v", i, err)
			}
			starts[i] = time.Since(t0)
		}
		stops := make([]time.Duration, n)
		for i, name := range names {
			t0 := time.Now()
			if err := r.Stop(ctx, name, syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second}); err != nil {
				cancel()
				b.Fatalf("stop %s: %v", name, err)
			}
			stops[i] = time.Since(t0)
		}
		cancel()
		startMed += median(starts)
		startTot += sum(starts)
		stopMed += median(stops)
		stopTot += sum(stops)
	}
	msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(rounds) }
	b.ReportMetric(msf(startMed), "start-ms/unit")
	b.ReportMetric(msf(startTot), "start-total-ms")
	b.ReportMetric(msf(stopMed), "stop-ms/unit")
	b.ReportMetric(msf(stopTot), "stop-total-ms")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func sum(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}

// BenchStartStopConcurrent starts n instances of `sleep 1000` with up to
// width starts in flight at once (as a deploy starts the replicas of a
// process), then stops them the same way, and reports the wall time of each
// phase in milliseconds: start-wall-ms, stop-wall-ms.
func BenchStartStopConcurrent(b *testing.B, newRunner func(tb testing.TB, app string) units.Runner, n, width int) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Fatalf("sleep not found: %v", err)
	}
	dir := b.TempDir()
	var startWall, stopWall time.Duration
	rounds := 0
	for b.Loop() {
		rounds++
		app := UniqueApp()
		r := newRunner(b, app)
		ids := make([]units.Identity, n)
		for i := range ids {
			ids[i] = units.Identity{App: app, Release: "v1", Process: "p" + strconv.Itoa(i), Replicas: 1}
			name := ids[i].UnitName()
			b.Cleanup(func() { _ = r.Stop(context.Background(), name, syscall.SIGKILL, units.Grace{}) })
		}
		ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Minute))
		run := func(op func(i int) error) (time.Duration, error) {
			sem := make(chan struct{}, width)
			errs := make([]error, n)
			var wg sync.WaitGroup
			t0 := time.Now()
			for i := range n {
				sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-sem }()
					errs[i] = op(i)
				})
			}
			wg.Wait()
			return time.Since(t0), errors.Join(errs...)
		}
		d, err := run(func(i int) error {
			_, err := r.Start(ctx, units.Spec{
				Identity:   ids[i],
				Argv:       []string{sleep, "1000"},
				Dir:        dir,
				Env:        os.Environ(),
				StopSignal: syscall.SIGTERM,
				Grace:      units.Grace{Timeout: 5 * time.Second},
			})
			return err
		})
		if err != nil {
			cancel()
			b.Fatalf("start: %v", err)
		}
		startWall += d
		d, err = run(func(i int) error {
			return r.Stop(ctx, ids[i].UnitName(), syscall.SIGTERM, units.Grace{Timeout: 5 * time.Second})
		})
		cancel()
		if err != nil {
			b.Fatalf("stop: %v", err)
		}
		stopWall += d
	}
	msf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(rounds) }
	b.ReportMetric(msf(startWall), "start-wall-ms")
	b.ReportMetric(msf(stopWall), "stop-wall-ms")
}
