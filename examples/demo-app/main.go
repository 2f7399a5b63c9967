// Command demo-app is the example application bundled with Rollbridge: an
// HTTP server that answers /ping for health checks, / with its release id,
// pid and instance, /slow?ms=N after a delay, /sse with a server-sent event
// stream, /ws with a WebSocket echo and /stats with its counters. It is
// what the quickstart deploys and what the end-to-end tests and benchmarks
// run.
//
// Flags for replica tests and benchmarks: --cpu-ms N burns N ms of CPU per
// request to /; --ready-delay-ms N binds at once but tells systemd (or the
// exec runner) READY=1 through $NOTIFY_SOCKET only after N ms; --exit-after
// N exits after serving N requests to /; --replace-after N asks Rollbridge
// for a graceful replacement (sd_notify STATUS=rollbridge:replace) after N
// requests to /.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/coder/websocket"
)

func main() {
	port := flag.Int("port", 0, "port to listen on (default $PORT)")
	host := flag.String("host", "127.0.0.1", "address to bind")
	leak := flag.Int("leak-mb-per-s", 0, "simulate a memory leak: grow the resident set by this many MiB per second")
	cpuMS := flag.Float64("cpu-ms", 0, "burn this many milliseconds of CPU per request to /")
	readyDelay := flag.Int("ready-delay-ms", -1, "send sd_notify READY=1 this many ms after binding (-1: never)")
	exitAfter := flag.Int64("exit-after", 0, "exit with status 3 after serving this many requests to /")
	replaceAfter := flag.Int64("replace-after", 0, "ask for a graceful replacement after this many requests to /")
	fetch := flag.String("fetch", "", "GET this URL once at start-up and log the answer (dependency checks)")
	flag.Parse()
	if *fetch != "" {
		logFetch(*fetch)
	}
	if *leak > 0 {
		go leakMemory(*leak)
	}
	if *port == 0 {
		*port, _ = strconv.Atoi(os.Getenv("PORT"))
	}
	release := os.Getenv("ROLLBRIDGE_RELEASE_ID")
	if release == "" {
		release = "dev"
	}
	instance := os.Getenv("ROLLBRIDGE_INSTANCE_ID")
	var ready atomic.Bool
	var served, early atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "pong") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		n := served.Add(1)
		if !ready.Load() {
			early.Add(1)
		}
		if *cpuMS > 0 {
			burnCPU(time.Duration(*cpuMS * float64(time.Millisecond)))
		}
		fmt.Fprintf(w, "hello from release %s (pid %d, instance %s)\n", release, os.Getpid(), instance)
		if *exitAfter > 0 && n == *exitAfter {
			log.Printf("exiting after %d requests", n)
			go func() { time.Sleep(10 * time.Millisecond); os.Exit(3) }()
		}
		if *replaceAfter > 0 && n == *replaceAfter {
			log.Printf("asking for a replacement after %d requests", n)
			if err := sdNotify("STATUS=rollbridge:replace"); err != nil {
				log.Printf("sd_notify: %v", err)
			}
		}
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"pid": os.Getpid(), "instance": instance, "release": release,
			"ready": ready.Load(), "served": served.Load(), "servedBeforeReady": early.Load()})
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			fmt.Fprintf(w, "slow %dms from release %s\n", ms, release)
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %s %d\n\n", release, i)
			w.(http.Flusher).Flush()
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte(release+": "), msg...)); err != nil {
				return
			}
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	log.Printf("release %s listening on %s", release, ln.Addr())
	if *readyDelay < 0 {
		ready.Store(true) // no readiness protocol: serving is being ready
	} else {
		go func() {
			time.Sleep(time.Duration(*readyDelay) * time.Millisecond)
			ready.Store(true)
			if err := sdNotify("READY=1"); err != nil {
				log.Printf("sd_notify: %v", err)
				return
			}
			log.Printf("sent READY=1 after %d ms", *readyDelay)
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		log.Printf("release %s shutting down", release)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("serve: %v", err)
	}
}

// logFetch logs the body (or the error) of one GET.
func logFetch(url string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		log.Printf("fetch %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	log.Printf("fetch %s: %s %s", url, resp.Status, strings.TrimSpace(string(b)))
}

// sdNotify sends one sd_notify message to $NOTIFY_SOCKET (a datagram
// socket; a leading "@" names an abstract socket).
func sdNotify(msg string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return errors.New("NOTIFY_SOCKET is not set")
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(msg))
	return err
}

// burnCPU spins until this thread has used d of CPU time, so the work per
// request is the same however busy the machine is.
func burnCPU(d time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	x := uint64(1)
	for threadCPU()-start < d {
		for i := 0; i < 2000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	sink.Add(x)
}

var sink atomic.Uint64

// threadCPU is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
func threadCPU() time.Duration {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 3, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}

// leakMemory grows the resident set without bound, for memory-supervision
// demos and tests.
func leakMemory(mbPerSecond int) {
	var hoard [][]byte
	for range time.Tick(100 * time.Millisecond) {
		chunk := make([]byte, mbPerSecond<<20/10)
		for i := range chunk {
			chunk[i] = byte(i)
		}
		hoard = append(hoard, chunk)
	}
}
