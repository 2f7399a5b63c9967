package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/release"
	"github.com/rollbridge/rollbridge/statefile"
)

// stateInterval is how often the snapshot is rewritten (spec §8.1).
const stateInterval = 5 * time.Second

// sanitizedKeys are removed at any depth before a snapshot is written, so
// commands, environments and captured output never reach the disk.
var sanitizedKeys = map[string]bool{
	"children": true, "command": true, "cwd": true, "env": true,
	"environment": true, "logs": true, "output": true,
}

// stateStore persists the daemon's snapshot to statePath: atomically (temp
// file in the same directory, fsync, rename), mode 0600, serialized.
type stateStore struct {
	path     string
	snapshot func(ctx context.Context) any
	onError  func(error)

	mu      sync.Mutex // serializes writes
	counter int
	stopped bool
}

// write persists one snapshot now.
func (s *stateStore) write(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if err := s.writeLocked(ctx); err != nil && s.onError != nil {
		s.onError(err)
	}
}

func (s *stateStore) writeLocked(ctx context.Context) error {
	raw, err := json.Marshal(s.snapshot(ctx))
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	out, err := json.MarshalIndent(sanitize(v), "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	s.counter++
	tmp := fmt.Sprintf("%s.%d.%d.tmp", s.path, os.Getpid(), s.counter)
	return writeAtomic(tmp, s.path, append(out, '\n'))
}

func writeAtomic(tmp, path string, data []byte) error {
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write state %s: %w", tmp, err)
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace state %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// run writes every stateInterval until ctx ends.
func (s *stateStore) run(ctx context.Context) {
	t := time.NewTicker(stateInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.write(ctx)
		}
	}
}

// halt stops writing and leaves the file to a successor daemon.
func (s *stateStore) halt() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// finish stops writing (waiting for an in-flight write) and removes the file,
// or rewrites it with only the still-alive prior orphans (spec §3.6 step 7).
func (s *stateStore) finish(orphans []orphan) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if len(orphans) > 0 {
		out, _ := json.MarshalIndent(map[string]any{
			"activeReleaseId": nil, "orphans": orphans, "releases": []any{}, "services": []any{}, "singletons": []any{},
		}, "", "  ")
		s.counter++
		return writeAtomic(fmt.Sprintf("%s.%d.%d.tmp", s.path, os.Getpid(), s.counter), s.path, append(out, '\n'))
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func sanitize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, val := range t {
			if sanitizedKeys[k] {
				delete(t, k)
				continue
			}
			t[k] = sanitize(val)
		}
	case []any:
		for i := range t {
			t[i] = sanitize(t[i])
		}
	}
	return v
}

// orphan is a process of a previous daemon that is still alive (spec §8.2).
type orphan = statefile.Process

// readOrphans lists live processes recorded in a previous daemon's snapshot.
// A missing or unparsable file yields none.
func readOrphans(path string) []orphan {
	return statefile.LiveProcesses(path, statefile.Alive)
}

// orphanSet holds the prior daemon's live processes; dead ones are pruned
// permanently on every read (spec §6.5).
type orphanSet struct {
	mu   sync.Mutex
	list []orphan
}

func (o *orphanSet) live() []orphan {
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := o.list[:0]
	for _, e := range o.list {
		if statefile.Alive(e.PID) {
			kept = append(kept, e)
		}
	}
	o.list = kept
	return append([]orphan{}, kept...)
}

// reportOrphans emits the startup events of spec §8.2.
func reportOrphans(events *release.Events, list []orphan) {
	for _, o := range list {
		var rel any
		if o.ReleaseID != nil {
			rel = *o.ReleaseID
		}
		events.Emit("orphaned managed process detected", map[string]any{"pid": o.PID, "processId": o.ID, "releaseId": rel})
	}
	if len(list) > 0 {
		events.Emit("orphaned processes from a previous daemon", map[string]any{
			"count": len(list),
			"hint":  "These processes were started by a previous Rollbridge daemon and are not managed by this one. Verify them (pids can be recycled) and stop them if they are leftovers. " + strconv.Itoa(len(list)) + " found.",
		})
	}
}

// readPriorState parses a previous daemon's snapshot (status with restart
// counters and crash times, plus the sanitized event history) for
// re-adoption; nil when there is none or it cannot be parsed.
func readPriorState(path string) *release.PriorState {
	if path == "" {
		return nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var p release.PriorState
	if json.Unmarshal(raw, &p) != nil {
		return nil
	}
	return &p
}
