package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"testing"
	"time"
)

// gate is an upstream whose requests block until the gate opens.
type gate struct {
	name    string
	open    chan struct{}
	arrived chan struct{}
}

func newGate(t *testing.T, name string) (*gate, string) {
	g := &gate{name: name, open: make(chan struct{}), arrived: make(chan struct{}, 1000)}
	addr := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.arrived <- struct{}{}
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, name)
	}))
	t.Cleanup(g.release)
	return g, addr
}

var releaseMu sync.Mutex

func (g *gate) release() {
	releaseMu.Lock()
	defer releaseMu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *gate) waitArrivals(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.arrived:
		case <-time.After(10 * time.Second):
			t.Fatalf("upstream %s: fewer than %d requests arrived", g.name, n)
		}
	}
}

func TestSwitchWithRequestsInFlight(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError})
	gA, addrA := newGate(t, "A")
	addrB := named(t, "B")
	mustSwitch(t, p, "a", addrA)

	const n = 20
	type result struct {
		status int
		body   string
		err    error
	}
	old := make(chan result, n)
	client := &http.Client{Timeout: 20 * time.Second}
	for range n {
		go func() {
			res, err := client.Get(base + "/slow")
			if err != nil {
				old <- result{err: err}
				return
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			old <- result{res.StatusCode, string(b), err}
		}()
	}
	gA.waitArrivals(t, n)
	if h, ws := p.Connections("a"); h != n || ws != 0 {
		t.Fatalf("Connections(a) = %d, %d; want %d, 0", h, ws, n)
	}

	mustSwitch(t, p, "b", addrB)
	for range n {
		if status, body := getWith(t, client, base+"/new"); status != 200 || body != "B" {
			t.Fatalf("after the switch: %d %q; want 200 B", status, body)
		}
	}
	if h, _ := p.Connections("a"); h != n {
		t.Fatalf("in-flight on the old release changed to %d by the switch", h)
	}
	gA.release()
	for range n {
		r := <-old
		if r.err != nil || r.status != 200 || r.body != "A" {
			t.Fatalf("in-flight request: %d %q %v; want 200 A from the old upstream", r.status, r.body, r.err)
		}
	}
	waitFor(t, "old release to be idle", func() bool { h, _ := p.Connections("a"); return h == 0 })
	errs.none(t)
}

func TestKeepAliveConnectionFollowsSwitch(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "a", named(t, "A"))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	var reused []bool
	fetch := func() string {
		req, _ := http.NewRequest("GET", base+"/", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) },
		}))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return string(b)
	}
	if got := fetch(); got != "A" {
		t.Fatalf("before switch: %q", got)
	}
	mustSwitch(t, p, "b", named(t, "B"))
	if got := fetch(); got != "B" {
		t.Fatalf("after switch on the same connection: %q; want B", got)
	}
	if len(reused) != 2 || !reused[1] {
		t.Fatalf("connection reuse %v; the second request should reuse the keep-alive connection", reused)
	}
}

func TestSwitchUnderConcurrentLoadLosesNothing(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError})
	addrs := []string{named(t, "A"), named(t, "B")}
	mustSwitch(t, p, "a", addrs[0])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	failures := make(chan string, 100)
	for range 8 {
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second}
			for ctx.Err() == nil {
				res, err := client.Get(base + "/")
				if err != nil {
					failures <- err.Error()
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failures <- res.Status
					return
				}
			}
		})
	}
	releases := []string{"a", "b"}
	switches := 0
	for i := 1; ctx.Err() == nil; i++ {
		time.Sleep(20 * time.Millisecond)
		mustSwitch(t, p, releases[i%2], addrs[i%2])
		go p.Drain(ctx, releases[(i+1)%2], time.Now().Add(time.Minute))
		switches++
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Errorf("request failed during switches: %s", f)
	}
	errs.none(t)
	t.Logf("%d switches under load", switches)
}

func TestDrainCompletesWhenLastRequestFinishes(t *testing.T) {
	p, base := startProxy(t, Options{})
	g, addrA := newGate(t, "A")
	mustSwitch(t, p, "a", addrA)
	done := fetchAsync(base + "/slow")
	g.waitArrivals(t, 1)
	mustSwitch(t, p, "b", named(t, "B"))

	drained := make(chan DrainResult, 1)
	go func() { drained <- p.Drain(context.Background(), "a", time.Now().Add(time.Minute)) }()
	select {
	case r := <-drained:
		t.Fatalf("Drain returned %+v while a request was in flight", r)
	case <-time.After(100 * time.Millisecond):
	}
	g.release()
	select {
	case r := <-drained:
		if !r.Drained || r.Err != nil || r.CutHTTP != 0 {
			t.Fatalf("Drain = %+v; want Drained", r)
		}
		t.Logf("drained after %v", r.Elapsed)
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return after the last request finished")
	}
	if r := <-done; r.status != 200 {
		t.Fatalf("drained request got %d %v", r.status, r.err)
	}
}

func TestDrainDeadlineCutsRequests(t *testing.T) {
	errs := newErrorLog()
	p, base := startProxy(t, Options{OnError: errs.onError})
	upstreamCancelled := make(chan struct{}, 2)
	mustSwitch(t, p, "a", startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/streaming" {
			io.WriteString(w, "started")
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
		upstreamCancelled <- struct{}{}
	})))
	waiting := fetchAsync(base + "/waiting")
	res, err := http.Get(base + "/streaming")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	waitFor(t, "two requests in flight", func() bool { h, _ := p.Connections("a"); return h == 2 })
	mustSwitch(t, p, "b", named(t, "B"))

	r := p.Drain(context.Background(), "a", time.Now().Add(200*time.Millisecond))
	if r.Drained || r.CutHTTP != 2 || r.Err != nil {
		t.Fatalf("Drain = %+v; want 2 HTTP exchanges cut", r)
	}
	if r := <-waiting; r.status != 504 || r.body != "Gateway timeout\n" {
		t.Fatalf("request cut before its response started got %d %q %v; want 504", r.status, r.body, r.err)
	}
	if _, err := io.ReadAll(res.Body); err == nil {
		t.Fatal("streaming response cut at the drain deadline ended cleanly; want an aborted body")
	}
	for range 2 {
		e := errs.next(t)
		if e.release != "a" || !errors.Is(e.err, ErrDrained) {
			t.Fatalf("OnError(%q, %v); want release a and ErrDrained", e.release, e.err)
		}
	}
	for range 2 {
		select {
		case <-upstreamCancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("upstream request not cancelled by the drain deadline")
		}
	}
	waitFor(t, "counts to reach zero", func() bool { h, _ := p.Connections("a"); return h == 0 })
	if status, body := get(t, base+"/"); status != 200 || body != "B" {
		t.Fatalf("active release after the cut: %d %q", status, body)
	}
}

func TestIdleKeepAliveConnectionDoesNotHoldDrain(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "a", named(t, "A"))
	conn, err := net.Dial("tcp", base[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return conn, nil // every request on this one keep-alive connection
	}}}
	if status, body := getWith(t, client, base+"/"); status != 200 || body != "A" {
		t.Fatalf("%d %q", status, body)
	}
	mustSwitch(t, p, "b", named(t, "B"))
	r := p.Drain(context.Background(), "a", time.Now().Add(10*time.Second))
	if !r.Drained || r.Elapsed > 5*time.Second {
		t.Fatalf("Drain with only an idle keep-alive connection = %+v; want drained at once", r)
	}
	if status, body := getWith(t, client, base+"/"); status != 200 || body != "B" {
		t.Fatalf("next request on the idle connection: %d %q; want 200 B", status, body)
	}
}

func TestDrainRefusesActiveReleaseAndHonoursContext(t *testing.T) {
	p, base := startProxy(t, Options{})
	g, addrA := newGate(t, "A")
	mustSwitch(t, p, "a", addrA)
	if r := p.Drain(context.Background(), "a", time.Now().Add(time.Second)); !errors.Is(r.Err, ErrActive) {
		t.Fatalf("Drain(active) = %+v; want ErrActive", r)
	}
	if r := p.Drain(context.Background(), "unknown", time.Now()); !r.Drained {
		t.Fatalf("Drain(unknown) = %+v; want drained", r)
	}
	fetchAsync(base + "/slow")
	g.waitArrivals(t, 1)
	mustSwitch(t, p, "b", named(t, "B"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	r := p.Drain(ctx, "a", time.Now().Add(time.Minute))
	if !errors.Is(r.Err, context.DeadlineExceeded) || r.CutHTTP != 0 {
		t.Fatalf("Drain with ended ctx = %+v; want ctx error and nothing cut", r)
	}
	if h, _ := p.Connections("a"); h != 1 {
		t.Fatalf("request cut although Drain gave up")
	}
}

func TestSwitchBackToCutReleaseStartsFresh(t *testing.T) {
	p, base := startProxy(t, Options{})
	g, addrA := newGate(t, "A")
	mustSwitch(t, p, "a", addrA)
	fetchAsync(base + "/slow")
	g.waitArrivals(t, 1)
	mustSwitch(t, p, "b", named(t, "B"))
	if r := p.Drain(context.Background(), "a", time.Now().Add(10*time.Millisecond)); r.CutHTTP != 1 {
		t.Fatalf("Drain = %+v; want one cut", r)
	}
	mustSwitch(t, p, "a", named(t, "A2"))
	if status, body := get(t, base+"/"); status != 200 || body != "A2" {
		t.Fatalf("re-activated release answered %d %q", status, body)
	}
}

func TestSnapshotAndForget(t *testing.T) {
	p, base := startProxy(t, Options{})
	g, addrA := newGate(t, "A")
	mustSwitch(t, p, "a", addrA)
	fetchAsync(base + "/slow")
	g.waitArrivals(t, 1)
	mustSwitch(t, p, "b", named(t, "B"))
	snap := p.Snapshot()
	if len(snap) != 2 || snap[0].Release != "a" || snap[0].Active || snap[0].HTTP != 1 ||
		len(snap[0].Upstreams) != 1 || snap[0].Upstreams[0].Upstream != addrA || snap[0].Upstreams[0].HTTP != 1 ||
		snap[1].Release != "b" || !snap[1].Active || snap[1].Total() != 0 {
		t.Fatalf("Snapshot = %+v", snap)
	}
	if p.Forget("b") {
		t.Fatal("Forget accepted the active release")
	}
	if !p.Forget("a") || p.Forget("a") {
		t.Fatal("Forget(a) should succeed once")
	}
	if h, ws := p.Connections("a"); h != 0 || ws != 0 {
		t.Fatalf("forgotten release still counted: %d %d", h, ws)
	}
	g.release()
}
