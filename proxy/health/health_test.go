package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The timing tests run in synctest bubbles with a scripted Prober: time is
// virtual, so delays and deadlines are checked exactly and instantly.

type call struct {
	at       time.Duration // since the start of Check
	deadline time.Duration // the probe context's deadline, since the start
}

// scripted answers statuses in order (then repeats the last) and records calls.
func scripted(start time.Time, calls *[]call, answers ...any) Prober {
	return func(ctx context.Context, url string) (int, error) {
		now := time.Since(start)
		dl, _ := ctx.Deadline()
		*calls = append(*calls, call{at: now, deadline: dl.Sub(start)})
		a := answers[min(len(*calls), len(answers))-1]
		switch v := a.(type) {
		case int:
			return v, nil
		case error:
			return 0, v
		case time.Duration: // hang this long, or until the probe times out
			select {
			case <-time.After(v):
				return 200, nil
			case <-ctx.Done():
				return 0, fmt.Errorf("get %s: %w", url, ctx.Err())
			}
		}
		panic("bad answer")
	}
}

func TestStartDelayIsWaitedBeforeTheFirstProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []call
		start := time.Now()
		err := Check(t.Context(), Options{Host: "127.0.0.1", Port: 1, StartDelay: 3 * time.Second, Prober: scripted(start, &calls, 200)})
		if err != nil || len(calls) != 1 || calls[0].at != 3*time.Second {
			t.Fatalf("err %v, calls %+v; want one probe at 3s", err, calls)
		}
	})
}

func TestProbesEveryIntervalUntil2xx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []call
		var seen []ProbeResult
		start := time.Now()
		err := Check(t.Context(), Options{Host: "127.0.0.1", Port: 1, Interval: 250 * time.Millisecond,
			Prober: scripted(start, &calls, 503, errors.New("boom"), 302, 204), OnProbe: func(r ProbeResult) { seen = append(seen, r) }})
		if err != nil {
			t.Fatal(err)
		}
		want := []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, 750 * time.Millisecond}
		if len(calls) != len(want) {
			t.Fatalf("calls %+v", calls)
		}
		for i, c := range calls {
			if c.at != want[i] {
				t.Fatalf("probe %d at %v; want %v", i+1, c.at, want[i])
			}
		}
		reasons := []string{"HTTP 503", "boom", "HTTP 302", ""}
		for i, r := range seen {
			if r.Attempt != i+1 || r.Reason != reasons[i] || r.Healthy != (i == 3) {
				t.Fatalf("OnProbe %d = %+v", i, r)
			}
		}
	})
}

func TestFailureAfterTheWindowNamesURLAndLastReason(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []call
		start := time.Now()
		err := Check(t.Context(), Options{Host: "127.0.0.1", Port: 4100, Path: "health", Timeout: time.Second,
			Interval: 250 * time.Millisecond, Prober: scripted(start, &calls, 500, 503)})
		var fe *FailedError
		if !errors.As(err, &fe) || err.Error() != "Health check failed for http://127.0.0.1:4100/health: HTTP 503" {
			t.Fatalf("err = %v", err)
		}
		// Probes start at 0, .25, .5 and .75 s; one at 1 s would start with
		// the window already closed.
		if len(calls) != 4 || fe.Attempts != 4 || calls[3].at != 750*time.Millisecond || time.Since(start) != 750*time.Millisecond {
			t.Fatalf("calls %+v, returned after %v", calls, time.Since(start))
		}
	})
}

func TestAtLeastOneProbeEvenWithATinyWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []call
		start := time.Now()
		err := Check(t.Context(), Options{URL: "http://127.0.0.1:1/", Timeout: time.Nanosecond, Prober: scripted(start, &calls, 503)})
		if err == nil || len(calls) != 1 {
			t.Fatalf("err %v, calls %+v; want exactly one failed probe", err, calls)
		}
	})
}

func TestProbeTimeoutIsBoundedByCapAndWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []call
		start := time.Now()
		// Every probe hangs: each gets min(remaining window, 5 s cap).
		err := Check(t.Context(), Options{Host: "127.0.0.1", Port: 1, Timeout: 8 * time.Second, Interval: time.Second,
			Prober: scripted(start, &calls, time.Hour)})
		if err == nil || !strings.HasSuffix(err.Error(), ": no response within 2s") {
			t.Fatalf("err = %v", err)
		}
		if len(calls) != 2 || calls[0].deadline != 5*time.Second || calls[1].at != 6*time.Second || calls[1].deadline != 8*time.Second {
			t.Fatalf("calls %+v; want probes at 0 s (until 5 s) and 6 s (until 8 s)", calls)
		}
		if elapsed := time.Since(start); elapsed != 8*time.Second {
			t.Fatalf("Check took %v; want exactly the 8 s window", elapsed)
		}
	})
}

func TestContextCancelStopsCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls []call
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		err := Check(ctx, Options{Host: "127.0.0.1", Port: 1, StartDelay: time.Second, Prober: scripted(time.Now(), &calls, 503)})
		if !errors.Is(err, context.DeadlineExceeded) || errors.As(err, new(*FailedError)) {
			t.Fatalf("err = %v; want the context's error", err)
		}
	})
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{{}, {Host: "h"}, {Host: "h", Port: 70000}, {URL: "ftp://x"}, {URL: "/relative"},
		{Host: "h", Port: 1, Interval: -1}} {
		if err := Check(context.Background(), o); err == nil || errors.As(err, new(*FailedError)) {
			t.Errorf("Check(%+v) = %v; want a validation error", o, err)
		}
	}
}

// Real loopback tests of the default HTTP prober.

func server(t *testing.T, h http.HandlerFunc) (host string, port int) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a := srv.Listener.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port
}

func TestLoopbackHealthy2xx(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	host, port := server(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path+" "+r.Header.Get("User-Agent"))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	if err := Check(context.Background(), Options{Host: host, Port: port}); err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 || paths[0] != "/ping rollbridge-health" {
		t.Fatalf("requests %q; want one GET /ping", paths)
	}
}

func TestLoopbackRedirectIsNotFollowed(t *testing.T) {
	host, port := server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			return
		}
		http.Redirect(w, r, "/ok", http.StatusFound)
	})
	err := Check(context.Background(), Options{Host: host, Port: port, Path: "/up", Timeout: 100 * time.Millisecond, Interval: 40 * time.Millisecond})
	want := fmt.Sprintf("Health check failed for http://%s:%d/up: HTTP 302", host, port)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v; want %q", err, want)
	}
}

func TestLoopbackRefusedReason(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	err = Check(context.Background(), Options{Host: "127.0.0.1", Port: port, Timeout: 50 * time.Millisecond, Interval: 20 * time.Millisecond})
	want := fmt.Sprintf("Health check failed for http://127.0.0.1:%d/ping: connection refused", port)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v; want %q", err, want)
	}
}

func TestLoopbackHangingProbeTimesOut(t *testing.T) {
	release := make(chan struct{})
	host, port := server(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	start := time.Now()
	err := Check(context.Background(), Options{Host: host, Port: port, Timeout: 300 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, Interval: 10 * time.Millisecond})
	elapsed := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), ": no response within ") {
		t.Fatalf("err = %v", err)
	}
	if elapsed > 5*time.Second {
		t.Fatalf("a hanging upstream held the check for %v", elapsed)
	}
	t.Logf("hanging upstream failed after %v", elapsed)
}
