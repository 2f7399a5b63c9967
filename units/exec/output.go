package exec

import (
	"bytes"
	"sync"
	"time"

	"github.com/rollbridge/rollbridge/units"
)

// maxLineBytes bounds a line held while waiting for its newline; a longer
// line is stored in pieces of this size.
const maxLineBytes = 64 << 10

// ring keeps the newest lines of one instance, both streams combined. It
// outlives the instance's runs, so output survives restarts of the name.
type ring struct {
	mu    sync.Mutex
	lines []units.LogLine // circular, len(lines) is the capacity
	head  int             // index of the oldest line
	n     int
	seq   uint64 // lines ever added; the newest line has number seq
	// grew is closed and replaced whenever lines are added: a broadcast
	// to followers without registering them.
	grew chan struct{}
}

func newRing(capacity int) *ring {
	return &ring{lines: make([]units.LogLine, capacity), grew: make(chan struct{})}
}

// resize changes the capacity, keeping the newest lines.
func (r *ring) resize(capacity int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if capacity == len(r.lines) {
		return
	}
	kept := r.lastLocked(capacity)
	r.lines = make([]units.LogLine, capacity)
	r.head, r.n = 0, copy(r.lines, kept)
}

func (r *ring) add(lines []units.LogLine) {
	if len(lines) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := len(r.lines)
	for _, l := range lines {
		if r.n < c {
			r.lines[(r.head+r.n)%c] = l
			r.n++
		} else {
			r.lines[r.head] = l
			r.head = (r.head + 1) % c
		}
		r.seq++
	}
	close(r.grew)
	r.grew = make(chan struct{})
}

// last returns up to n newest lines, oldest first; n <= 0 means all.
func (r *ring) last(n int) []units.LogLine {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastLocked(n)
}

func (r *ring) lastLocked(n int) []units.LogLine {
	if n <= 0 || n > r.n {
		n = r.n
	}
	out := make([]units.LogLine, n)
	c := len(r.lines)
	for i := range n {
		out[i] = r.lines[(r.head+r.n-n+i)%c]
	}
	return out
}

// cursor returns the current line number and the channel closed by the
// next add.
func (r *ring) cursor() (uint64, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq, r.grew
}

// since returns the lines added after line number seq that are still held
// (a follower slower than the ring loses the oldest ones), the new cursor
// and the channel closed by the next add.
func (r *ring) since(seq uint64) ([]units.LogLine, uint64, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastLocked(int(min(r.seq-seq, uint64(r.n)))), r.seq, r.grew
}

// splitter turns a byte stream into lines: split on "\n", a trailing "\r"
// removed, empty lines dropped. Unlike the original's per-chunk split, a
// line written in several writes is kept whole (up to maxLineBytes).
type splitter struct {
	partial []byte
}

func (s *splitter) feed(chunk []byte, emit func(string)) {
	for {
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			break
		}
		s.partial = append(s.partial, chunk[:i]...)
		s.flush(emit)
		chunk = chunk[i+1:]
	}
	s.partial = append(s.partial, chunk...)
	for len(s.partial) >= maxLineBytes {
		emit(string(s.partial[:maxLineBytes]))
		s.partial = append(s.partial[:0], s.partial[maxLineBytes:]...)
	}
}

// flush emits the held partial line (at a newline or at end of stream).
func (s *splitter) flush(emit func(string)) {
	line := bytes.TrimSuffix(s.partial, []byte("\r"))
	if len(line) > 0 {
		emit(string(line))
	}
	s.partial = s.partial[:0]
}

// capture reads one output stream of a run into the ring until EOF or
// until the read end is closed (by Shutdown, for output pipes held open by
// escaped processes).
func capture(rg *ring, src interface{ Read([]byte) (int, error) }, stream units.Stream) {
	var sp splitter
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			at := time.Now()
			var lines []units.LogLine
			sp.feed(buf[:n], func(l string) {
				lines = append(lines, units.LogLine{At: at, Line: l, Stream: stream})
			})
			rg.add(lines)
		}
		if err != nil {
			var lines []units.LogLine
			sp.flush(func(l string) {
				lines = append(lines, units.LogLine{At: time.Now(), Line: l, Stream: stream})
			})
			rg.add(lines)
			return
		}
	}
}
