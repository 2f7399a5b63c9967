// Command holdconns opens N client connections to an HTTP server, makes one
// request on each (a keep-alive GET, or a WebSocket handshake plus one
// echoed frame with -ws), and holds them all open until its stdin closes or
// it is signalled. It prints "held N" once every connection is established,
// so a benchmark can measure what N idle connections cost the server.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18180", "server address (loopback)")
	n := flag.Int("n", 1000, "connections to hold")
	path := flag.String("path", "/tiny", "request path")
	ws := flag.Bool("ws", false, "open WebSockets (path should be a WebSocket endpoint)")
	flag.Parse()
	if err := run(*addr, *n, *path, *ws); err != nil {
		fmt.Fprintln(os.Stderr, "holdconns:", err)
		os.Exit(1)
	}
}

func run(addr string, n int, path string, ws bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// 32 dialers at a time: fast, without overflowing the server's backlog.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(ctx, addr, path, ws)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = c
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Printf("held %d\n", n)
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-ctx.Done():
	case <-done:
	}
	return nil
}

// open makes one connection and its request, and returns it open.
func open(ctx context.Context, addr, path string, ws bool) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: bench\r\n\r\n"
	if ws {
		req = "GET " + path + " HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	}
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if ws {
		if resp.StatusCode != http.StatusSwitchingProtocols {
			c.Close()
			return nil, fmt.Errorf("handshake: %s", resp.Status)
		}
		// One masked text frame "hi", echoed back as is by the upstream.
		frame := []byte{0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2}
		if _, err := c.Write(frame); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.ReadFull(br, make([]byte, len(frame))); err != nil {
			c.Close()
			return nil, fmt.Errorf("echo: %w", err)
		}
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = errors.New(resp.Status)
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
