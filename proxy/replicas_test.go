package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// getReq sends req with a fresh connection and returns status, body and the
// response's Set-Cookie lines.
func getReq(t *testing.T, req *http.Request) (int, string, []string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b), res.Header.Values("Set-Cookie")
}

func newReq(t *testing.T, url string, header ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return req
}

func TestCookieAffinityKeepsAClientOnOneUpstream(t *testing.T) {
	p, base := startProxy(t, Options{})
	a, b, c := named(t, "A"), named(t, "B"), named(t, "C")
	rt := Route{Upstreams: []string{a, b, c}, Affinity: Affinity{Cookie: "rb"}}
	if err := p.SwitchRoute("r", rt); err != nil {
		t.Fatal(err)
	}
	status, first, cookies := getReq(t, newReq(t, base+"/"))
	if status != 200 || len(cookies) != 1 || !strings.HasPrefix(cookies[0], "rb=") || !strings.Contains(cookies[0], "Path=/; HttpOnly") {
		t.Fatalf("first response: %d %q cookies %q; want one rb cookie", status, first, cookies)
	}
	cookie := strings.SplitN(cookies[0], ";", 2)[0]
	for range 20 {
		_, body, set := getReq(t, newReq(t, base+"/", "Cookie", "other=1; "+cookie))
		if body != first || len(set) != 0 {
			t.Fatalf("with %s: went to %q (set %q); want %q and no new cookie", cookie, body, set, first)
		}
	}
	// Without the cookie, least-in-flight spreads clients over all three.
	seen := map[string]bool{}
	for range 30 {
		_, body, set := getReq(t, newReq(t, base+"/"))
		seen[body] = true
		if len(set) != 1 {
			t.Fatalf("a new client got cookies %q; want one", set)
		}
	}
	if len(seen) != 3 {
		t.Errorf("new clients reached %v; want all three upstreams", seen)
	}
	// An unknown value is balanced again and re-set.
	if _, _, set := getReq(t, newReq(t, base+"/", "Cookie", "rb=bogus")); len(set) != 1 {
		t.Errorf("unknown cookie value: Set-Cookie %q; want a new one", set)
	}
	// The remembered upstream leaves the route: the client moves and is told.
	var rest []string
	for _, u := range []string{a, b, c} {
		if name := map[string]string{a: "A", b: "B", c: "C"}[u]; name != first {
			rest = append(rest, u)
		}
	}
	rt.Upstreams = rest
	if err := p.SwitchRoute("r", rt); err != nil {
		t.Fatal(err)
	}
	_, moved, set := getReq(t, newReq(t, base+"/", "Cookie", cookie))
	if moved == first || len(set) != 1 || set[0] == cookies[0] {
		t.Fatalf("after %q left: served by %q with Set-Cookie %q; want another upstream and a new cookie", first, moved, set)
	}
	newCookie := strings.SplitN(set[0], ";", 2)[0]
	for range 5 {
		if _, body, _ := getReq(t, newReq(t, base+"/", "Cookie", newCookie)); body != moved {
			t.Fatalf("with the new cookie: %q, want %q", body, moved)
		}
	}
}

func TestSingleUpstreamSetsNoAffinityCookie(t *testing.T) {
	p, base := startProxy(t, Options{})
	if err := p.SwitchRoute("r", Route{Upstreams: []string{named(t, "A")}, Affinity: Affinity{Cookie: "rb"}}); err != nil {
		t.Fatal(err)
	}
	if _, body, set := getReq(t, newReq(t, base+"/")); body != "A" || len(set) != 0 {
		t.Fatalf("single upstream: %q with cookies %q; want no cookie", body, set)
	}
}

func TestClientIPAffinity(t *testing.T) {
	p, base := startProxy(t, Options{})
	addrs := []string{named(t, "A"), named(t, "B"), named(t, "C")}
	if err := p.SwitchRoute("r", Route{Upstreams: addrs, Affinity: Affinity{ClientIP: true}}); err != nil {
		t.Fatal(err)
	}
	// The test client connects from 127.0.0.1, a loopback front proxy: the
	// forwarded address counts.
	where := map[string]string{}
	count := map[string]int{}
	for i := range 60 {
		ip := fmt.Sprintf("203.0.113.%d", i)
		_, body, set := getReq(t, newReq(t, base+"/", "X-Forwarded-For", "10.0.0.1, "+ip))
		if len(set) != 0 {
			t.Fatalf("client-IP affinity set a cookie: %q", set)
		}
		where[ip] = body
		count[body]++
	}
	if len(count) != 3 {
		t.Fatalf("60 client addresses reached %v; want all three upstreams", count)
	}
	for ip, first := range where {
		if _, body, _ := getReq(t, newReq(t, base+"/", "X-Forwarded-For", ip)); body != first {
			t.Fatalf("%s moved from %q to %q", ip, first, body)
		}
		if _, body, _ := getReq(t, newReq(t, base+"/", "X-Real-IP", ip)); body != first {
			t.Fatalf("%s via X-Real-IP went to %q, want %q", ip, body, first)
		}
	}
	// Rendezvous hashing: when B leaves, only B's clients move.
	if err := p.SwitchRoute("r", Route{Upstreams: []string{addrs[0], addrs[2]}, Affinity: Affinity{ClientIP: true}}); err != nil {
		t.Fatal(err)
	}
	for ip, first := range where {
		_, body, _ := getReq(t, newReq(t, base+"/", "X-Forwarded-For", ip))
		if first != "B" && body != first || body == "B" {
			t.Fatalf("after B left, %s went from %q to %q", ip, first, body)
		}
	}
}

func TestReswitchKeepsCountsAndInFlight(t *testing.T) {
	p, base := startProxy(t, Options{})
	gA, a := newGate(t, "A")
	b, c := named(t, "B"), named(t, "C")
	mustSwitch(t, p, "r", a, b)
	var done <-chan fetchResult
	for done == nil {
		ch := fetchAsync(base + "/")
		select {
		case <-gA.arrived:
			done = ch
		case <-ch:
		}
	}
	waitCounts(t, p, "r", 1, 0)
	// C joins while A has a request in flight: the count is kept and the
	// least-in-flight choice still sees A busy.
	mustSwitch(t, p, "r", a, b, c)
	if h, _ := p.Connections("r"); h != 1 {
		t.Fatalf("Connections after the re-switch = %d, want 1", h)
	}
	seen := map[string]bool{}
	for range 10 {
		_, body := get(t, base+"/")
		seen[body] = true
	}
	if seen["A"] || !seen["B"] || !seen["C"] {
		t.Fatalf("with A busy, requests went to %v; want B and C only", seen)
	}
	// A leaves while its request is still in flight: it finishes there.
	mustSwitch(t, p, "r", b, c)
	waitCounts(t, p, "r", 1, 0) // the last GET's exchange may still be finishing
	if got := p.UpstreamConnections("r"); got[a].HTTP != 1 || len(got) != 1 {
		t.Fatalf("UpstreamConnections = %+v, want one request on %s", got, a)
	}
	gA.release()
	if res := <-done; res.err != nil || res.status != 200 || res.body != "A" {
		t.Fatalf("the in-flight request: %+v", res)
	}
	waitCounts(t, p, "r", 0, 0)
}

func TestFailoverToALiveUpstream(t *testing.T) {
	var reported atomic.Int64
	p, base := startProxy(t, Options{OnError: func(string, error) { reported.Add(1) }})
	dead := refusingPort(t)
	// dies answers nothing: it closes the connection after reading the
	// request head, like a process killed mid-request.
	var died atomic.Int64
	dies := rawUpstream(t, func(string) (string, bool) { died.Add(1); return "", true })
	live := named(t, "live")
	mustSwitch(t, p, "r", dead, dies, live)
	for range 30 {
		if status, body := get(t, base+"/"); status != 200 || body != "live" {
			t.Fatalf("GET with dead replicas: %d %q; want the live one", status, body)
		}
	}
	if n := reported.Load(); n != 0 {
		t.Errorf("%d errors reported for GETs that a live upstream served", n)
	}
	// A POST may move off a refused connect (nothing was sent) but not off
	// an upstream that died with its body.
	okPost, badPost := 0, 0
	client := &http.Client{Timeout: 10 * time.Second}
	for range 30 {
		res, err := client.Post(base+"/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode == 200 {
			okPost++
		} else {
			badPost++
		}
	}
	if died.Load() == 0 || okPost == 0 {
		t.Errorf("POSTs: %d ok, %d failed, dying upstream saw %d; want some of each", okPost, badPost, died.Load())
	}
	t.Logf("POSTs: %d ok, %d failed on the dying upstream", okPost, badPost)
	// Every upstream dead: 502 as before.
	mustSwitch(t, p, "r2", dead, refusingPort(t))
	if status, _ := get(t, base+"/"); status != http.StatusBadGateway {
		t.Fatalf("all dead: %d, want 502", status)
	}
}

// refusingPort returns a loopback address that refuses connections and
// stays so until the test ends: the port is bound but not listening, so no
// other process can take it meanwhile (a closed port could be reused).
func refusingPort(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

func TestDrainUpstream(t *testing.T) {
	p, base := startProxy(t, Options{})
	gA, a := newGate(t, "A")
	b := named(t, "B")
	mustSwitch(t, p, "r", a, b)
	// Park one request on A.
	var onA <-chan fetchResult
	for onA == nil {
		ch := fetchAsync(base + "/")
		select {
		case <-gA.arrived:
			onA = ch
		case res := <-ch:
			if res.body != "B" {
				t.Fatalf("unexpected %+v", res)
			}
		}
	}
	if res := p.DrainUpstream(context.Background(), "r", a, time.Now().Add(time.Second)); res.Err == nil {
		t.Fatalf("DrainUpstream of a routed upstream: %+v, want ErrRouted", res)
	}
	mustSwitch(t, p, "r", b)
	drained := make(chan DrainResult, 1)
	go func() { drained <- p.DrainUpstream(context.Background(), "r", a, time.Now().Add(10*time.Second)) }()
	select {
	case res := <-drained:
		t.Fatalf("DrainUpstream returned with a request in flight: %+v", res)
	case <-time.After(100 * time.Millisecond):
	}
	if _, body := get(t, base+"/"); body != "B" {
		t.Fatalf("new request went to %q", body)
	}
	gA.release()
	if res := <-drained; !res.Drained || res.Err != nil {
		t.Fatalf("DrainUpstream = %+v", res)
	}
	if res := <-onA; res.status != 200 || res.body != "A" {
		t.Fatalf("parked request: %+v", res)
	}

	// At the deadline what is left on the upstream is cut (504), the rest
	// of the release is not.
	gC, c := newGate(t, "C")
	gD, d := newGate(t, "D")
	mustSwitch(t, p, "r", c, d)
	r1, r2 := fetchAsync(base+"/"), fetchAsync(base+"/")
	gC.waitArrivals(t, 1)
	gD.waitArrivals(t, 1)
	mustSwitch(t, p, "r", d)
	res := p.DrainUpstream(context.Background(), "r", c, time.Now().Add(50*time.Millisecond))
	if res.Drained || res.CutHTTP != 1 {
		t.Fatalf("DrainUpstream at the deadline = %+v, want one cut request", res)
	}
	var cut, kept fetchResult
	gD.release()
	for _, ch := range []<-chan fetchResult{r1, r2} {
		if f := <-ch; f.body == "D" {
			kept = f
		} else {
			cut = f
		}
	}
	if cut.status != http.StatusGatewayTimeout || kept.status != 200 {
		t.Fatalf("cut %+v kept %+v; want 504 and 200", cut, kept)
	}
	if got := p.UpstreamConnections("nope"); len(got) != 0 {
		t.Fatal(got)
	}
}

func TestSwitchRouteValidation(t *testing.T) {
	p, _ := startProxy(t, Options{})
	a := named(t, "A")
	for _, rt := range []Route{
		{Upstreams: []string{a, a}},
		{Upstreams: []string{a}, Balance: 9},
		{Upstreams: []string{a}, Affinity: Affinity{Cookie: "x", ClientIP: true}},
		{Upstreams: []string{a}, Affinity: Affinity{Cookie: "a=b"}},
	} {
		if err := p.SwitchRoute("r", rt); err == nil {
			t.Errorf("SwitchRoute(%+v) succeeded", rt)
		}
	}
	if _, _, ok := p.Active(); ok {
		t.Fatal("a refused route became active")
	}
}

// TestManyReplicasSpreadUnderLoad: concurrent keep-alive clients reach every
// upstream of a release with least-in-flight.
func TestManyReplicasSpreadUnderLoad(t *testing.T) {
	p, base := startProxy(t, Options{})
	var addrs []string
	hits := make([]atomic.Int64, 4)
	for i := range hits {
		addrs = append(addrs, startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			time.Sleep(time.Millisecond)
		})))
	}
	mustSwitch(t, p, "r", addrs...)
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			c := &http.Client{Timeout: 10 * time.Second}
			for range 50 {
				res, err := c.Get(base + "/")
				if err != nil {
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		}()
	}
	for range 8 {
		<-done
	}
	for i := range hits {
		if n := hits[i].Load(); n < 20 {
			t.Errorf("upstream %d served %d of 400 requests; want a share", i, n)
		}
	}
}

// TestKeepAlivePostsOnReusedUpstreamConnections is a regression test: when
// an upstream answered before the request-body copy had returned, the copy
// was unblocked with a past write deadline that stayed on the connection,
// which went back to the pool; the next request on it could not be written
// and waited for an answer forever.
func TestKeepAlivePostsOnReusedUpstreamConnections(t *testing.T) {
	p, base := startProxy(t, Options{})
	mustSwitch(t, p, "r", named(t, "live"))
	client := &http.Client{Timeout: 5 * time.Second}
	for i := range 300 {
		res, err := client.Post(base+"/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(b) != "live" {
			t.Fatalf("POST %d: %d %q", i, res.StatusCode, b)
		}
	}
}
