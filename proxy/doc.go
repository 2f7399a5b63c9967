// Package proxy is Rollbridge's stable HTTP/1.1 and WebSocket entry point:
// a reverse proxy that sends each request to the release active when it
// arrives, counts what is in flight per release, and drains retired
// releases.
//
// The daemon wires it as:
//
//	ln, _, err := proxy.Listen(ctx, host, port, proxy.DefaultFDName) // socket activation or bind
//	p, err := proxy.New(proxy.Options{OnError: emitProxyError})
//	go p.Serve(ctx, ln)
//	p.Switch("r2", []string{"127.0.0.1:4102"}) // after r2 is healthy
//	res := p.Drain(ctx, "r1", time.Now().Add(drainTimeout))
//	p.Forget("r1") // once r1's processes are stopped
//
// Switching is one atomic pointer store; requests never wait on it. Each
// client connection is served by one goroutine that parses a request with
// net/http's parser, writes it upstream over a per-release keep-alive pool,
// and streams the response back, so a plain exchange needs no goroutine
// hand-off. Each routed exchange is registered on its release until it is
// finished, which is what Connections, Snapshot and Drain read. See
// docs/proxy.md for headers, timeouts, error answers and benchmark figures.
package proxy
