package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// RemoteError is an error reply from the daemon.
type RemoteError struct{ Message string }

func (e *RemoteError) Error() string { return e.Message }

// Call sends one request to the daemon at path and returns the raw reply
// line (a JSON object with "status":"success"). An error reply becomes a
// *RemoteError; a missing daemon surfaces the dial error (ENOENT /
// ECONNREFUSED, spec §3.6).
func Call(ctx context.Context, path string, req Request) (json.RawMessage, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	line, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	_, werr := c.Write(append(line, '\n'))
	if werr != nil && !peerClosed(werr) {
		return nil, fmt.Errorf("send %s request to %s: %w", req.Command, path, werr)
	}
	reply, err := bufio.NewReaderSize(c, 64<<10).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if werr != nil {
			return nil, fmt.Errorf("send %s request to %s: %w", req.Command, path, werr)
		}
		return nil, fmt.Errorf("read %s reply from %s: %w", req.Command, path, err)
	}
	var env struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal(reply, &env); err != nil {
		return nil, fmt.Errorf("decode reply from %s: %w", path, err)
	}
	if env.Status != "success" {
		return nil, &RemoteError{Message: env.Error}
	}
	return json.RawMessage(trimEOL(reply)), nil
}

// peerClosed tells whether a write failed because the daemon had already
// closed the connection. It may have written an error line first (a refusal
// over its connection cap, a timeout), which says more than EPIPE.
func peerClosed(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// ProbeResult describes what answers on a control socket path (spec §7.5).
type ProbeResult struct {
	// Alive is true when something accepted the connection.
	Alive bool
	// Rollbridge is true when it answered like a Rollbridge daemon; the
	// fields below are then set.
	Rollbridge      bool
	Application     string
	ActiveReleaseID *string
	ProxyHost       string
	ProxyPort       int
	// Busy is true when the daemon refused the probe because its
	// connection cap was reached: almost certainly a Rollbridge daemon,
	// but its application is unknown (Rollbridge stays false).
	Busy bool
}

// ProbeTimeout is how long Probe waits for the first reply line.
const ProbeTimeout = time.Second

// Probe checks path: ENOENT/ECONNREFUSED → not alive; any other dial error
// is returned ("cannot tell"); a status reply carrying an application →
// a Rollbridge daemon; a daemon's refusal over its connection cap → alive,
// Busy; anything else, or silence for ProbeTimeout → alive, foreign.
func Probe(ctx context.Context, path string) (ProbeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return ProbeResult{}, nil
		}
		return ProbeResult{}, err
	}
	defer c.Close()
	res := ProbeResult{Alive: true}
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if _, err := c.Write([]byte("{\"command\":\"status\"}\n")); err != nil && !peerClosed(err) {
		return res, nil
	}
	line, err := bufio.NewReaderSize(c, 64<<10).ReadBytes('\n')
	if err != nil {
		return res, nil
	}
	var st struct {
		Error           string  `json:"error"`
		Application     *string `json:"application"`
		ActiveReleaseID *string `json:"activeReleaseId"`
		Proxy           struct {
			Host string `json:"host"`
			Port int    `json:"port"`
		} `json:"proxy"`
	}
	if json.Unmarshal(line, &st) != nil || st.Application == nil {
		res.Busy = strings.HasPrefix(st.Error, busyMessage)
		return res, nil
	}
	res.Rollbridge = true
	res.Application = *st.Application
	res.ActiveReleaseID = st.ActiveReleaseID
	res.ProxyHost, res.ProxyPort = st.Proxy.Host, st.Proxy.Port
	return res, nil
}

// StreamCall sends req and calls fn with every reply line until the daemon
// closes the connection, fn returns an error, or ctx ends (then nil).
func StreamCall(ctx context.Context, path string, req Request, fn func(json.RawMessage) error) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	_, werr := c.Write(append(line, '\n'))
	if werr != nil && !peerClosed(werr) {
		return fmt.Errorf("send %s request to %s: %w", req.Command, path, werr)
	}
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		reply, err := r.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if werr != nil {
				return fmt.Errorf("send %s request to %s: %w", req.Command, path, werr)
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read %s reply from %s: %w", req.Command, path, err)
		}
		var env struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(reply, &env); err != nil {
			return fmt.Errorf("decode reply from %s: %w", path, err)
		}
		if env.Status != "success" {
			return &RemoteError{Message: env.Error}
		}
		if err := fn(json.RawMessage(trimEOL(reply))); err != nil {
			return err
		}
	}
}
