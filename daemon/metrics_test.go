package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/rollbridge/rollbridge/proxy"
	"github.com/rollbridge/rollbridge/release"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestProxyErrorSeparatesDrainCuts: an exchange cut at a drain deadline is
// its own event and counter, not an upstream failure.
func TestProxyErrorSeparatesDrainCuts(t *testing.T) {
	d := &daemon{events: release.NewEvents(nil, nil)}
	m := newMetrics(d)
	evs, cancel := d.events.Subscribe()
	defer cancel()

	d.proxyError("v1", fmt.Errorf("forward to 127.0.0.1:4000: %w", proxy.ErrDrained))
	d.proxyError("v2", errors.New("dial tcp 127.0.0.1:4001: connect: connection refused"))
	for range 2 {
		m.observe(<-evs)
	}

	got := d.events.Recent(0)
	if len(got) != 2 {
		t.Fatalf("events %+v, want 2", got)
	}
	if ev := got[0]; ev.Message != "proxy request drained" || ev.Data["reason"] != "drained" || ev.Data["releaseId"] != "v1" {
		t.Errorf("drain cut event %+v, want proxy request drained of v1 with reason drained", ev)
	}
	if ev := got[1]; ev.Message != "proxy error" || ev.Data["releaseId"] != "v2" || ev.Data["reason"] != nil {
		t.Errorf("upstream failure event %+v, want proxy error of v2", ev)
	}
	if v := counterValue(t, m.proxyErrors); v != 1 {
		t.Errorf("rollbridge_proxy_errors_total = %v, want 1 (the drain cut is not an upstream error)", v)
	}
	if v := counterValue(t, m.proxyDrained); v != 1 {
		t.Errorf("rollbridge_proxy_drained_total = %v, want 1", v)
	}
}

// TestMetricsServeAnswersAcceptedConnections: when the endpoint stops (a
// reload hands its socket over), a connection it already accepted still
// gets its answer, even if the request arrives after the stop — not a closed
// connection, which would be a failed scrape.
func TestMetricsServeAnswersAcceptedConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &metrics{reg: prometheus.NewRegistry()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.serve(ctx, ln) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(100 * time.Millisecond) // accepted, no request yet
	cancel()
	time.Sleep(50 * time.Millisecond) // the listener is closed
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Errorf("the stopped endpoint still accepts")
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on an accepted connection after the stop: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("response %s, close %v: want 200 and Connection: close", resp.Status, resp.Close)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(metricsFinishTimeout + time.Second):
		t.Fatal("serve did not return")
	}
}
