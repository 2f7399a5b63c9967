// Command upstream is the benchmark's origin server: a minimal net/http
// server with fixed endpoints, so the proxy's cost is what varies.
//
//	/tiny      "ok\n" at once
//	/slow20ms  "ok\n" after 20 ms
//	/ping      200, for health checks
//	/stats     requests served so far, as JSON
//	/ws        a WebSocket handshake (101), then every byte echoed back
package main

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18081", "listen address (loopback)")
	name := flag.String("name", "upstream", "value of the X-Upstream response header")
	flag.Parse()
	if err := run(*addr, *name); err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}

func run(addr, name string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var served atomic.Int64
	body := []byte("ok\n")
	nameHdr := []string{name}
	mux := http.NewServeMux()
	mux.HandleFunc("/tiny", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header()["X-Upstream"] = nameHdr
		w.Write(body)
	})
	mux.HandleFunc("/slow20ms", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		time.Sleep(20 * time.Millisecond)
		w.Header()["X-Upstream"] = nameHdr
		w.Write(body)
	})
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	mux.HandleFunc("/ws", echoWebSocket)
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"name": name, "served": served.Load()})
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Printf("upstream %s listening on %s\n", name, ln.Addr())
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// echoWebSocket accepts a WebSocket handshake and echoes the raw stream (the
// benchmark only needs the connection held open through the proxy).
func echoWebSocket(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if key == "" {
		http.Error(w, "not a websocket handshake", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		base64.StdEncoding.EncodeToString(sum[:]))
	if brw.Flush() != nil {
		return
	}
	io.Copy(conn, brw)
}
