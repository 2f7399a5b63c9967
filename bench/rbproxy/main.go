// Command rbproxy runs package proxy alone, for benchmarks: it listens
// (socket-activated or bound), routes to upstream A and, on request, switches
// between A and B the way the daemon does (Switch, then Drain the old
// release in the background).
//
// Admin endpoints on -admin (loopback only):
//
//	POST /switch   switch to the other upstream; replies with the new release id
//	GET  /status   proxy.Snapshot() as JSON
//	GET  /debug/pprof/…  net/http/pprof (heap, goroutine, …)
//	POST /gc       collect garbage and return freed memory to the OS (what
//	               the resident set settles to, for bench/memory.sh)
//
// SIGHUP also switches. With -cpuprofile a CPU profile is written at exit.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rollbridge/rollbridge/proxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18180", "proxy listen address (ignored when socket-activated)")
	a := flag.String("a", "127.0.0.1:18081", "upstream of release a")
	b := flag.String("b", "", "upstream of release b (enables switching)")
	admin := flag.String("admin", "", "admin listen address, e.g. 127.0.0.1:18190")
	drain := flag.Duration("drain", 5*time.Second, "drain timeout of a switched-away release")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	memstats := flag.Bool("memstats", false, "print allocation and GC counts at exit")
	memprofile := flag.String("memprofile", "", "write an allocation profile to this file at exit")
	flag.Parse()
	if *memstats {
		defer printMemStats()
	}
	if *memprofile != "" {
		defer writeHeapProfile(*memprofile)
	}
	if err := run(*listen, *a, *b, *admin, *drain, *cpuprofile); err != nil {
		fmt.Fprintln(os.Stderr, "rbproxy:", err)
		os.Exit(1)
	}
}

func run(listen, a, b, admin string, drain time.Duration, cpuprofile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("-listen port: %w", err)
	}
	ln, activated, err := proxy.Listen(ctx, host, port, proxy.DefaultFDName)
	if err != nil {
		return err
	}
	var proxyErrors atomic.Int64
	defer func() {
		if n := proxyErrors.Load(); n > 0 {
			fmt.Fprintf(os.Stderr, "rbproxy: %d proxy errors\n", n)
		}
	}()
	p, err := proxy.New(proxy.Options{OnError: func(release string, err error) {
		if proxyErrors.Add(1) <= 5 {
			fmt.Fprintf(os.Stderr, "rbproxy: proxy error (release %s): %v\n", release, err)
		}
	}})
	if err != nil {
		return err
	}
	sw := &switcher{p: p, addrs: map[string]string{"a": a, "b": b}, cur: "a", drain: drain}
	if err := p.Switch("a", []string{a}); err != nil {
		return err
	}
	if b != "" {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go func() {
			for range hup {
				sw.toggle(ctx)
			}
		}()
	}
	if admin != "" {
		go serveAdmin(ctx, admin, sw)
	}
	fmt.Printf("rbproxy listening on %s (socket-activated: %v)\n", ln.Addr(), activated)
	return p.Serve(ctx, ln)
}

func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rbproxy:", err)
		return
	}
	defer f.Close()
	pprof.Lookup("allocs").WriteTo(f, 0)
}

func printMemStats() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fmt.Fprintf(os.Stderr, "rbproxy memstats: mallocs=%d bytes=%d gc=%d\n", m.Mallocs, m.TotalAlloc, m.NumGC)
}

type switcher struct {
	mu    sync.Mutex
	p     *proxy.Proxy
	addrs map[string]string
	cur   string
	drain time.Duration
	n     int
}

func (s *switcher) toggle(ctx context.Context) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur
	next := "b"
	if old == "b" {
		next = "a"
	}
	if s.addrs[next] == "" {
		return old
	}
	if err := s.p.Switch(next, []string{s.addrs[next]}); err != nil {
		fmt.Fprintln(os.Stderr, "rbproxy: switch:", err)
		return old
	}
	s.cur = next
	s.n++
	go s.p.Drain(ctx, old, time.Now().Add(s.drain))
	return next
}

func serveAdmin(ctx context.Context, addr string, sw *switcher) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /switch", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, sw.toggle(ctx))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(sw.p.Snapshot())
	})
	mux.HandleFunc("/debug/pprof/", httppprof.Index)
	mux.HandleFunc("POST /gc", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC() // twice: the first only moves sync.Pool contents to its victim cache
		debug.FreeOSMemory()
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "rbproxy admin:", err)
	}
}
