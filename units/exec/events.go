package exec

import (
	"context"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// broadcaster fans events out to Watch subscribers.
//
// Policy: publishing never blocks and never drops. Each subscriber has an
// unbounded FIFO queue drained by its own goroutine into the channel Watch
// returned, so a slow subscriber delays only itself, and an exit event is
// never lost. The queue of a subscriber that stops reading grows by at most
// two events per start (started, exited) until its context ends. When the
// runner closes, queued events are still offered for up to drainWait, then
// the channel is closed.
type broadcaster struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

type subscriber struct {
	mu    sync.Mutex
	queue []units.Event
	wake  chan struct{} // capacity 1: "queue is not empty"
}

func (b *broadcaster) publish(ev units.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		s.mu.Lock()
		s.queue = append(s.queue, ev)
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// subscribe registers a subscriber and returns its channel, fed by a
// goroutine that ends (closing the channel) when ctx ends or stop is
// closed. done is called when that goroutine returns.
func (b *broadcaster) subscribe(ctx context.Context, stop <-chan struct{}, done func()) <-chan units.Event {
	s := &subscriber{wake: make(chan struct{}, 1)}
	b.mu.Lock()
	if b.subs == nil {
		b.subs = make(map[*subscriber]struct{})
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()

	out := make(chan units.Event, 16)
	go func() {
		defer done()
		defer close(out)
		defer func() {
			b.mu.Lock()
			delete(b.subs, s)
			b.mu.Unlock()
		}()
		s.run(ctx, stop, out)
	}()
	return out
}

// drainWait bounds how long a subscriber's queued events are still offered
// after the runner closed.
const drainWait = time.Second

func (s *subscriber) run(ctx context.Context, stop <-chan struct{}, out chan<- units.Event) {
	var deadline <-chan time.Time // set once stop is closed
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for i := 0; i < len(batch); {
			select {
			case out <- batch[i]:
				i++
			case <-ctx.Done():
				return
			case <-stop:
				stop, deadline = nil, time.After(drainWait)
			case <-deadline:
				return
			}
		}
		if deadline != nil {
			s.mu.Lock()
			empty := len(s.queue) == 0
			s.mu.Unlock()
			if empty {
				return
			}
			continue
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		case <-stop:
			stop, deadline = nil, time.After(drainWait)
		}
	}
}
