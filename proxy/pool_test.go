package proxy

import (
	"context"
	"testing"
	"time"
)

func TestPoolLeastInFlightAvoidsBusyUpstream(t *testing.T) {
	p, base := startProxy(t, Options{})
	gA, a := newGate(t, "A")
	gB, b := newGate(t, "B")
	mustSwitch(t, p, "r", a, b)
	// Two blocked requests: least-in-flight must put them on different upstreams.
	for i := 1; i <= 2; i++ {
		fetchAsync(base + "/slow")
		waitFor(t, "request in flight", func() bool { h, _ := p.Connections("r"); return h == i })
	}
	gA.waitArrivals(t, 1)
	gB.waitArrivals(t, 1)
	// A finishes; B stays busy, so everything new goes to A.
	gA.release()
	waitFor(t, "A's request to finish", func() bool { h, _ := p.Connections("r"); return h == 1 })
	for range 10 {
		// The previous exchange may still be finishing after its response
		// reached the client; with equal counts the choice would rotate.
		waitFor(t, "only B in flight", func() bool { h, _ := p.Connections("r"); return h == 1 })
		if status, body := get(t, base+"/"); status != 200 || body != "A" {
			t.Fatalf("with B busy: %d %q; want A", status, body)
		}
	}
	waitCounts(t, p, "r", 1, 0)
	snap := p.Snapshot()
	if len(snap) != 1 || len(snap[0].Upstreams) != 1 || snap[0].Upstreams[0].Upstream != b || snap[0].Upstreams[0].HTTP != 1 {
		t.Fatalf("Snapshot = %+v; want one in-flight request on %s", snap, b)
	}
}

func TestPoolRoundRobinAlternates(t *testing.T) {
	p, base := startProxy(t, Options{Balance: RoundRobin})
	mustSwitch(t, p, "r", named(t, "one"), named(t, "two"), named(t, "three"))
	var got []string
	for range 6 {
		_, body := get(t, base+"/")
		got = append(got, body)
	}
	for i := 3; i < 6; i++ {
		if got[i] != got[i-3] || got[i] == got[i-1] {
			t.Fatalf("sequence %v is not a rotation", got)
		}
	}
}

func TestWebSocketPinnedToItsUpstream(t *testing.T) {
	p, base := startProxy(t, Options{Balance: RoundRobin})
	_, a := newWSEcho(t, "A")
	_, b := newWSEcho(t, "B")
	mustSwitch(t, p, "r", a, b)
	c := dialWS(t, base)
	first := echo(t, c, "m")
	for range 5 {
		get(t, base+"/") // moves the round-robin cursor
		if got := echo(t, c, "m"); got != first {
			t.Fatalf("WebSocket moved from %q to %q", first, got)
		}
	}
	waitCounts(t, p, "r", 0, 1)
	snap := p.Snapshot()
	if len(snap) != 1 || snap[0].WebSocket != 1 || len(snap[0].Upstreams) != 1 || snap[0].Upstreams[0].WebSocket != 1 {
		t.Fatalf("Snapshot = %+v; want one WebSocket on one upstream", snap)
	}
	c.CloseNow()
	waitFor(t, "websocket to close", func() bool { _, ws := p.Connections("r"); return ws == 0 })
	if r := p.Drain(context.Background(), "x", time.Now()); !r.Drained {
		t.Fatal(r)
	}
}
