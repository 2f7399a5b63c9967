package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestProxyResponseHeaderTimeout: proxy.responseHeaderTimeoutMs reaches the
// daemon's proxy: a response slower than the bound is answered 504 and
// reported as a proxy error; a faster one passes. The proxy does not depend
// on the runner, so the exec runner suffices.
func TestProxyResponseHeaderTimeout(t *testing.T) {
	e := newEnvOpts(t, "exec", `[`+webProcess+`]`, envOpts{noStart: true})
	e.editConfig("drainTimeoutMs: 15000", "drainTimeoutMs: 15000, connectTimeoutMs: 2000, responseHeaderTimeoutMs: 300")
	e.startDaemon()
	e.deploy("v1")

	code, body, err := get(e.proxyURL("/slow?ms=3000"))
	if err != nil || code != 504 {
		t.Fatalf("response slower than responseHeaderTimeoutMs: %d %q %v, want 504", code, body, err)
	}
	if code, body, err := get(e.proxyURL("/slow?ms=10")); err != nil || code != 200 || !strings.Contains(body, "slow 10ms") {
		t.Fatalf("fast response: %d %q %v, want 200", code, body, err)
	}
	e.waitFor("the timeout's proxy error event", 5*time.Second, func() bool {
		return len(indexOf(e.eventLog(), "proxy error", "", "v1")) == 1
	})
}
