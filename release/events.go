package release

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"
)

// EventHistory is how many events the daemon keeps in memory (spec §9).
const EventHistory = 1000

// Event is one operational milestone: {"at", "data", "message"} (spec §9).
type Event struct {
	At      time.Time      `json:"-"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

// MarshalJSON renders the original's key order and timestamp format.
func (e Event) MarshalJSON() ([]byte, error) {
	data := e.Data
	if data == nil {
		data = map[string]any{}
	}
	return json.Marshal(struct {
		At      string         `json:"at"`
		Data    map[string]any `json:"data"`
		Message string         `json:"message"`
	}{Timestamp(e.At), data, e.Message})
}

// UnmarshalJSON reads an event as MarshalJSON renders it (a persisted
// history).
func (e *Event) UnmarshalJSON(raw []byte) error {
	var v struct {
		At      string         `json:"at"`
		Data    map[string]any `json:"data"`
		Message string         `json:"message"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	// An unreadable timestamp is kept as the zero time rather than losing
	// the event.
	at, _ := time.Parse(time.RFC3339Nano, v.At)
	*e = Event{At: at, Message: v.Message, Data: v.Data}
	return nil
}

// Timestamp formats t like the original: ISO-8601 UTC with milliseconds.
func Timestamp(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// Events is the bounded in-memory event history. Every event is also
// written to the daemon's structured log (slog), which is how it reaches
// stdout / the journal.
type Events struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	ring []Event
	next int
	full bool
	// subs receive every new event (live deploy progress, tests).
	subs map[chan Event]struct{}
}

// NewEvents returns an empty history logging to log (nil: discard).
func NewEvents(log *slog.Logger, now func() time.Time) *Events {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Events{log: log, now: now, ring: make([]Event, EventHistory), subs: map[chan Event]struct{}{}}
}

// Emit records an event. data may be nil.
func (e *Events) Emit(message string, data map[string]any) {
	ev := Event{At: e.now(), Message: message, Data: data}
	e.mu.Lock()
	e.ring[e.next] = ev
	e.next = (e.next + 1) % len(e.ring)
	if e.next == 0 {
		e.full = true
	}
	for ch := range e.subs {
		select {
		case ch <- ev:
		default: // a slow subscriber misses events rather than blocking the daemon
		}
	}
	e.mu.Unlock()
	attrs := make([]slog.Attr, 0, len(data))
	for k, v := range data {
		attrs = append(attrs, slog.Any(k, v))
	}
	e.log.LogAttrs(context.Background(), slog.LevelInfo, message, slog.Attr{Key: "data", Value: slog.GroupValue(attrs...)})
}

// Restore puts a previous daemon's history (oldest first) before the
// events recorded so far, keeping the newest EventHistory. Restored events
// are neither logged again nor sent to subscribers.
func (e *Events) Restore(prior []Event) {
	if len(prior) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var cur []Event
	if e.full {
		cur = append(cur, e.ring[e.next:]...)
	}
	cur = append(cur, e.ring[:e.next]...)
	all := append(append([]Event(nil), prior...), cur...)
	if over := len(all) - len(e.ring); over > 0 {
		all = all[over:]
	}
	clear(e.ring)
	n := copy(e.ring, all)
	e.next, e.full = n%len(e.ring), n == len(e.ring)
}

// Publish sends a transient event to subscribers only: it is neither kept
// in the history nor logged (health probes for live deploy progress).
func (e *Events) Publish(message string, data map[string]any) {
	ev := Event{At: e.now(), Message: message, Data: data}
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// Recent returns the newest limit events, oldest first; limit <= 0 or
// larger than the history returns everything (spec §6.9).
func (e *Events) Recent(limit int) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var all []Event
	if e.full {
		all = append(all, e.ring[e.next:]...)
	}
	all = append(all, e.ring[:e.next]...)
	if limit > 0 && limit < len(all) {
		all = all[len(all)-limit:]
	}
	return all
}

// Subscribe returns a channel receiving every new event until cancel is
// called. The channel is buffered; a subscriber that falls behind misses
// events instead of stalling the daemon.
func (e *Events) Subscribe() (ch <-chan Event, cancel func()) {
	c := make(chan Event, 256)
	e.mu.Lock()
	e.subs[c] = struct{}{}
	e.mu.Unlock()
	return c, func() {
		e.mu.Lock()
		delete(e.subs, c)
		e.mu.Unlock()
	}
}
