// Command demo-app is the example application bundled with Rollbridge: an
// HTTP server that answers /ping for health checks, / with its release id,
// /slow?ms=N after a delay, /sse with a server-sent event stream and /ws with
// a WebSocket echo. It is what the quickstart deploys and what the
// end-to-end tests run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

func main() {
	port := flag.Int("port", 0, "port to listen on (default $PORT)")
	host := flag.String("host", "127.0.0.1", "address to bind")
	leak := flag.Int("leak-mb-per-s", 0, "simulate a memory leak: grow the resident set by this many MiB per second")
	flag.Parse()
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
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "pong") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from release %s (pid %d)\n", release, os.Getpid())
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
