package proxy

import (
	"net"
	"net/http"
	"testing"
	"time"
)

func TestStatsCountRequestsByClassAndDuration(t *testing.T) {
	p, base := startProxy(t, Options{})
	up := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		if r.URL.Path == "/slow" {
			time.Sleep(30 * time.Millisecond)
		}
		w.Write([]byte("ok"))
	}))
	mustSwitch(t, p, "v1", up)
	for _, path := range []string{"/", "/", "/slow", "/missing"} {
		get(t, base+path)
	}
	// A refused upstream: 502 and one upstream error.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	mustSwitch(t, p, "v2", dead)
	if code, _ := get(t, base+"/"); code != http.StatusBadGateway {
		t.Fatalf("dead upstream answered %d", code)
	}
	// The response reaches the client just before the exchange finishes.
	waitCounts(t, p, "v1", 0, 0)
	waitCounts(t, p, "v2", 0, 0)
	stats := map[string]ReleaseStats{}
	for _, s := range p.Stats() {
		stats[s.Release] = s
	}
	v1, v2 := stats["v1"], stats["v2"]
	if v1.Requests != 4 || v1.ByClass["2xx"] != 3 || v1.ByClass["4xx"] != 1 || v1.UpstreamErrors != 0 {
		t.Errorf("v1 stats %+v", v1)
	}
	if v2.Requests != 1 || v2.ByClass["5xx"] != 1 || v2.UpstreamErrors != 1 {
		t.Errorf("v2 stats %+v", v2)
	}
	if n := len(v1.Buckets); n != len(DurationBounds)+1 || v1.Buckets[n-1] != 4 {
		t.Errorf("buckets %v", v1.Buckets)
	}
	// The slow request lands above the 25 ms bound, the fast ones below.
	if v1.Buckets[3] > 3 || v1.DurationSum < 0.03 {
		t.Errorf("durations: buckets %v sum %v", v1.Buckets, v1.DurationSum)
	}
}
