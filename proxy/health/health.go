// Package health runs the start-up health check of a proxied process: GET a
// URL until it answers 2xx or a deadline passes (spec §4.10). It imports only
// the standard library. The loop uses the time package and an injectable
// Prober, so its timing is testable inside testing/synctest bubbles.
package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Defaults for Options.
const (
	DefaultPath         = "/ping"
	DefaultInterval     = 250 * time.Millisecond
	DefaultTimeout      = 30 * time.Second
	DefaultProbeTimeout = 5 * time.Second
)

// Prober performs one probe of url within ctx and returns the HTTP status.
// A transport failure is returned as err (status is then ignored).
type Prober func(ctx context.Context, url string) (status int, err error)

// Options configures Check.
type Options struct {
	// URL is probed as is. If empty it is http://Host:Port/Path.
	URL  string
	Host string
	Port int
	// Path defaults to DefaultPath; a missing leading slash is added.
	Path string
	// Interval is the pause between failed probes (default 250 ms).
	Interval time.Duration
	// Timeout is the window after StartDelay in which probes start
	// (default 30 s). At least one probe is made, even if it is zero.
	Timeout time.Duration
	// StartDelay is waited before the window opens (default 0).
	StartDelay time.Duration
	// ProbeTimeout caps one probe (default 5 s); a probe also never runs
	// past the end of the window.
	ProbeTimeout time.Duration
	// Prober replaces the HTTP GET (tests). The default follows no
	// redirects, ignores $HTTP_PROXY and does not keep connections alive.
	Prober Prober
	// OnProbe, if set, is called after every probe (live progress).
	OnProbe func(ProbeResult)
}

// ProbeResult describes one probe.
type ProbeResult struct {
	URL     string
	Attempt int // 1-based
	// Status is the HTTP status, 0 if the request failed.
	Status int
	// Err is the transport error, nil if a response arrived.
	Err     error
	Healthy bool
	// Reason is why the probe was not healthy ("HTTP 503",
	// "connection refused", …); empty when healthy.
	Reason   string
	Duration time.Duration
}

// FailedError is returned when no probe was healthy within the window.
type FailedError struct {
	URL      string
	Reason   string // the last probe's reason
	Attempts int
}

// Error is the spec's exact text: "Health check failed for <url>: <reason>".
func (e *FailedError) Error() string {
	return "Health check failed for " + e.URL + ": " + e.Reason
}

// Check waits StartDelay, then probes until one answer is 2xx (nil) or the
// Timeout window ends (*FailedError). Redirects are not followed: a 3xx is
// unhealthy. If ctx ends first, Check returns an error wrapping ctx's.
func Check(ctx context.Context, opts Options) error {
	o, target, err := opts.normalize()
	if err != nil {
		return err
	}
	probe := o.Prober
	if probe == nil {
		var closeIdle func()
		probe, closeIdle = newHTTPProber()
		defer closeIdle()
	}
	if err := sleep(ctx, o.StartDelay); err != nil {
		return fmt.Errorf("health check of %s: %w", target, err)
	}
	deadline := time.Now().Add(o.Timeout)
	for attempt := 1; ; attempt++ {
		res := runProbe(ctx, probe, target, attempt, probeTimeout(deadline, o.ProbeTimeout))
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("health check of %s: %w", target, err)
		}
		if o.OnProbe != nil {
			o.OnProbe(res)
		}
		if res.Healthy {
			return nil
		}
		// A probe starts only while the window is open; if the next one
		// would start at or after its end, fail now instead of sleeping
		// for nothing.
		if !time.Now().Add(o.Interval).Before(deadline) {
			return &FailedError{URL: target, Reason: res.Reason, Attempts: attempt}
		}
		if err := sleep(ctx, o.Interval); err != nil {
			return fmt.Errorf("health check of %s: %w", target, err)
		}
	}
}

// probeTimeout is min(remaining window, cap); the very first probe of a
// zero-length window still gets the cap.
func probeTimeout(deadline time.Time, limit time.Duration) time.Duration {
	if remaining := time.Until(deadline); remaining > 0 && remaining < limit {
		return remaining
	}
	return limit
}

func runProbe(ctx context.Context, probe Prober, target string, attempt int, timeout time.Duration) ProbeResult {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	status, err := probe(pctx, target)
	res := ProbeResult{URL: target, Attempt: attempt, Err: err, Duration: time.Since(start)}
	switch {
	case err != nil:
		res.Reason = reason(err, timeout)
	case status >= 200 && status < 300:
		res.Status, res.Healthy = status, true
	default:
		res.Status = status
		res.Reason = "HTTP " + strconv.Itoa(status)
	}
	return res
}

// reason turns a client error into a short, specific reason.
func reason(err error, timeout time.Duration) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by peer"
	case errors.Is(err, context.DeadlineExceeded):
		return "no response within " + timeout.Round(time.Millisecond).String()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a response"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.Error()
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}

func (o Options) normalize() (Options, string, error) {
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Interval", &o.Interval, DefaultInterval},
		{"Timeout", &o.Timeout, DefaultTimeout},
		{"StartDelay", &o.StartDelay, 0},
		{"ProbeTimeout", &o.ProbeTimeout, DefaultProbeTimeout},
	} {
		if *d.v < 0 {
			return o, "", fmt.Errorf("health check: %s is %v; it must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.URL != "" {
		u, err := url.Parse(o.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return o, "", fmt.Errorf("health check: URL %q is not an absolute http(s) URL", o.URL)
		}
		return o, o.URL, nil
	}
	if o.Host == "" {
		return o, "", errors.New("health check: set URL, or Host and Port")
	}
	if o.Port < 1 || o.Port > 65535 {
		return o, "", fmt.Errorf("health check: Port %d out of range 1-65535", o.Port)
	}
	path := o.Path
	if path == "" {
		path = DefaultPath
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return o, "http://" + net.JoinHostPort(o.Host, strconv.Itoa(o.Port)) + path, nil
}

// newHTTPProber returns the default prober and a func that releases its
// connections.
func newHTTPProber() (Prober, func()) {
	tr := &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{}).DialContext,
	}
	client := &http.Client{
		Transport: tr,
		// A redirect is not a healthy answer (spec §11.2-9): report the 3xx.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	probe := func(ctx context.Context, target string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("User-Agent", "rollbridge-health")
		res, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		// Read a little so a small body does not reset the connection.
		io.Copy(io.Discard, io.LimitReader(res.Body, 4<<10))
		res.Body.Close()
		return res.StatusCode, nil
	}
	return probe, tr.CloseIdleConnections
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
