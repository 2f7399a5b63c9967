package exec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// pollInterval is how often a stop checks whether the tree is gone (spec
// §5.5: 10 ms).
const pollInterval = 10 * time.Millisecond

// readerDrain is how long Shutdown lets output readers reach the end of
// their pipes before closing the pipes under them.
const readerDrain = 250 * time.Millisecond

// Stop ends the instance: sig (unless 0) to the process group and to every
// descendant that left it, a wait of up to grace for all of them to be
// gone, then SIGKILL (never with grace.Indefinite) and up to
// units.KillWait more. When ctx ends first, Stop returns its error and
// sends nothing more; the instance stays in StateStopping. An instance
// with no live process (unknown, never started, exited) is a no-op.
func (r *Runner) Stop(ctx context.Context, name string, sig syscall.Signal, grace units.Grace) error {
	_, rn := r.lookup(name)
	if rn == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	members, err := r.members(rn)
	if err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	if len(members) > 0 {
		if err := r.stopTree(ctx, rn, members, sig, grace); err != nil {
			return fmt.Errorf("stop %s: %w", name, err)
		}
	}
	// The main process may still be a zombie the watcher has not reaped.
	select {
	case <-rn.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s: %w", name, ctx.Err())
	}
}

func (r *Runner) stopTree(ctx context.Context, rn *run, members []procInfo, sig syscall.Signal, grace units.Grace) error {
	r.mu.Lock()
	if rn.exit == nil {
		rn.stopping, rn.stopSig = true, sig
	}
	r.mu.Unlock()
	if sig != 0 {
		if err := signalTree(rn.pid, members, sig); err != nil {
			return err
		}
	}
	var deadline <-chan time.Time
	if !grace.Indefinite {
		t := time.NewTimer(grace.Timeout)
		defer t.Stop()
		deadline = t.C
	}
	left, err := r.waitGone(ctx, rn, deadline)
	if err != nil || len(left) == 0 {
		return err
	}
	if err := signalTree(rn.pid, left, syscall.SIGKILL); err != nil {
		return err
	}
	t := time.NewTimer(units.KillWait)
	defer t.Stop()
	left, err = r.waitGone(ctx, rn, t.C)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("pids %v still running %v after SIGKILL", pidsOf(left), units.KillWait)
	}
	return nil
}

// waitGone polls until no process of the run is alive (nil), ctx ends
// (its error) or deadline fires (the processes still alive).
func (r *Runner) waitGone(ctx context.Context, rn *run, deadline <-chan time.Time) ([]procInfo, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	// Usually the tree ends with the main process: check at once when it
	// is reaped rather than at the next tick.
	mainDone := rn.done
	for {
		members, err := r.members(rn)
		if err != nil || len(members) == 0 {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return members, ctx.Err()
		case <-deadline:
			return members, nil
		case <-mainDone:
			mainDone = nil
		case <-tick.C:
		}
	}
}

// members scans /proc for the run's live processes and remembers those
// that left the process group, so they stay tracked after their parent
// exits.
func (r *Runner) members(rn *run) ([]procInfo, error) {
	procs, err := scanProcs()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	members := treeOf(procs, rn.pid, rn.known)
	for _, m := range members {
		if m.pgid != rn.pid {
			rn.known[m.key()] = struct{}{}
		}
	}
	return members, nil
}

// Signal sends sig to every live process of the instance (its process
// group and the descendants that left it).
func (r *Runner) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	inst, rn := r.lookup(name)
	if inst == nil {
		return fmt.Errorf("signal %s: %w", name, units.ErrNotFound)
	}
	if rn == nil {
		return fmt.Errorf("signal %s: not started yet", name)
	}
	members, err := r.members(rn)
	if err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	if len(members) == 0 {
		return fmt.Errorf("signal %s: no process is running", name)
	}
	if err := signalTree(rn.pid, members, sig); err != nil {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	return nil
}

// Close stops every instance (see Shutdown), bounded by
// Options.CloseTimeout.
func (r *Runner) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.CloseTimeout)
	defer cancel()
	return r.Shutdown(ctx)
}

// Shutdown refuses new work, stops every instance with its own stop signal
// and grace (children cannot safely outlive the runner: nothing would
// reap them or read their output), SIGKILLs whatever is left when ctx ends,
// and ends the runner's goroutines. Watch channels are closed and Follow
// calls return ErrClosed. Calls after the first return nil at once.
func (r *Runner) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.inflight.Wait() // no Start can add a run or goroutine after this

	r.mu.Lock()
	runs := make(map[string]*run, len(r.instances))
	for name, inst := range r.instances {
		if inst.run != nil {
			runs[name] = inst.run
		}
	}
	r.mu.Unlock()

	var mu sync.Mutex
	var errs []error
	stopAll := func(ctx context.Context, force bool) {
		var wg sync.WaitGroup
		for name, rn := range runs {
			sig, grace := rn.spec.StopSignal, rn.spec.Grace
			if force {
				sig, grace = syscall.SIGKILL, units.Grace{}
			}
			wg.Go(func() {
				if err := r.Stop(ctx, name, sig, grace); err != nil && (force || ctx.Err() == nil) {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	stopAll(ctx, false)
	if ctx.Err() != nil {
		kctx, cancel := context.WithTimeout(context.Background(), units.KillWait)
		stopAll(kctx, true)
		cancel()
	}

	close(r.closing)
	if !waitTimeout(&r.wg, readerDrain) {
		// Escaped processes may hold output pipes open; stop reading them.
		r.mu.Lock()
		for f := range r.pipes {
			f.Close() // unblocks the reader's Read
		}
		r.mu.Unlock()
		if !waitTimeout(&r.wg, units.KillWait) {
			errs = append(errs, errors.New("close exec runner: main processes not reaped"))
		}
	}
	return errors.Join(errs...)
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
