package proxy

import (
	"sync/atomic"
	"time"
)

// DurationBounds are the upper bounds (seconds) of the request-duration
// histogram kept per release; a final +Inf bucket is implied.
var DurationBounds = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// releaseStats are cumulative figures of one release, updated with atomics
// when an exchange finishes (a few nanoseconds on the hot path).
type releaseStats struct {
	requests   atomic.Uint64
	websockets atomic.Uint64
	errors     atomic.Uint64
	// classes counts responses by status class: [0] no response sent,
	// [1]..[5] 1xx..5xx.
	classes [6]atomic.Uint64
	buckets [14]atomic.Uint64 // len(DurationBounds)+1
	sumNano atomic.Int64
}

func (s *releaseStats) record(x *exchange, d time.Duration) {
	if x.ws {
		s.websockets.Add(1)
		return
	}
	s.requests.Add(1)
	class := int(x.status / 100)
	if class < 0 || class > 5 {
		class = 0
	}
	s.classes[class].Add(1)
	s.sumNano.Add(int64(d))
	secs := d.Seconds()
	i := 0
	for i < len(DurationBounds) && secs > DurationBounds[i] {
		i++
	}
	s.buckets[i].Add(1)
}

// ReleaseStats is a snapshot of one release's cumulative proxy figures.
type ReleaseStats struct {
	Release string
	// Requests counts finished HTTP exchanges; WebSockets finished
	// WebSocket sessions; UpstreamErrors failures reported to OnError.
	Requests, WebSockets, UpstreamErrors uint64
	// ByClass counts responses by status class ("2xx", …, "none" when the
	// client got no response).
	ByClass map[string]uint64
	// Buckets are cumulative counts per DurationBounds entry (then +Inf);
	// DurationSum is the total in seconds.
	Buckets     []uint64
	DurationSum float64
	// InFlight are the current counts.
	InFlight Counts
}

// Stats returns the cumulative figures of every release the proxy knows
// (the daemon's Prometheus collector reads them at scrape time).
func (p *Proxy) Stats() []ReleaseStats {
	p.mu.Lock()
	rels := make([]*release, 0, len(p.releases))
	for _, r := range p.releases {
		rels = append(rels, r)
	}
	p.mu.Unlock()
	out := make([]ReleaseStats, 0, len(rels))
	for _, r := range rels {
		s := &r.stats
		rs := ReleaseStats{Release: r.id, Requests: s.requests.Load(), WebSockets: s.websockets.Load(),
			UpstreamErrors: s.errors.Load(), ByClass: map[string]uint64{}, DurationSum: time.Duration(s.sumNano.Load()).Seconds()}
		for i, name := range []string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"} {
			rs.ByClass[name] = s.classes[i].Load()
		}
		var cum uint64
		for i := range s.buckets {
			cum += s.buckets[i].Load()
			rs.Buckets = append(rs.Buckets, cum)
		}
		h, ws := r.counts()
		rs.InFlight = Counts{HTTP: h, WebSocket: ws}
		out = append(out, rs)
	}
	return out
}
