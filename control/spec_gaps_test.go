package control

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// completionHandler answers shutdown and retire-owner like the daemon (or
// fails them when fail is set) without stopping the server, so a closed
// connection can only come from the server's handling of the reply.
func completionHandler(fail bool) HandlerFunc {
	return func(_ context.Context, req Request, _ Peer) (any, error) {
		switch req.Command {
		case CmdShutdown:
			if fail {
				return nil, errors.New("control socket unlink failed: boom; Shutdown failed to stop 1 owned resource(s).")
			}
			return map[string]string{"message": "shutdown"}, nil
		case CmdRetireOwner:
			if fail {
				return nil, errors.New("Owner retirement attestation must use the canonical sha256:<64 lowercase hex> format")
			}
			return map[string]string{"message": "owner retired"}, nil
		}
		return map[string]any{"application": "demo"}, nil
	}
}

// sameJSON compares two JSON objects by value (escaping of <, > and & is
// the encoder's business, not the protocol's).
func sameJSON(a, b string) bool {
	var x, y map[string]any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return string(xb) == string(yb)
}

const validAttestation = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestServerClosesConnectionAfterCompletionReplies (CTL-05, spec §3.6 step
// 9, §7.3): the reply to shutdown and retire-owner — success or error — is
// the last line on its connection; the server closes it even though the
// client keeps it open. Other commands, and requests that never reached
// the handler, leave the connection usable.
func TestServerClosesConnectionAfterCompletionReplies(t *testing.T) {
	for _, c := range []struct {
		name    string
		fail    bool
		request string
		want    string // the single reply line
	}{
		{"shutdown", false, `{"command":"shutdown"}`, `{"status":"success","message":"shutdown"}`},
		{"retire-owner", false, `{"command":"retire-owner","attestation":"` + validAttestation + `"}`, `{"status":"success","message":"owner retired"}`},
		{"shutdown error", true, `{"command":"shutdown"}`, `{"error":"control socket unlink failed: boom; Shutdown failed to stop 1 owned resource(s).","status":"error"}`},
		{"retire-owner error", true, `{"command":"retire-owner","attestation":"sha256:00"}`, `{"error":"Owner retirement attestation must use the canonical sha256:<64 lowercase hex> format","status":"error"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := startServer(t, &Server{Handler: completionHandler(c.fail), IdleTimeout: time.Minute})
			conn, r := dial(t, path)
			if _, err := conn.Write([]byte(c.request + "\n")); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			lines := readUntilClosed(t, conn, r)
			if len(lines) != 1 || !sameJSON(lines[0], c.want) || !strings.HasSuffix(lines[0], "\n") {
				t.Fatalf("lines before the close: %q; want just %s", lines, c.want)
			}
			// Closed by the reply, not by the (one minute) idle timeout.
			if d := time.Since(start); d > patience/2 {
				t.Errorf("connection closed %v after the request", d)
			}
		})
	}

	t.Run("other commands keep the connection", func(t *testing.T) {
		path := startServer(t, &Server{Handler: completionHandler(false)})
		conn, r := dial(t, path)
		_ = conn.SetDeadline(time.Now().Add(patience))
		for _, line := range []string{
			`{"command":"status"}`,
			`{"command":"events"}`,
			// Decoding errors: the command never ran, so nothing completed.
			`{"command":"retire-owner"}`,
			`{"command":"shutdown"`,
			`{"command":"status"}`,
		} {
			if _, err := conn.Write([]byte(line + "\n")); err != nil {
				t.Fatalf("write %s: %v", line, err)
			}
			reply, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reply to %s: %v (connection closed?)", line, err)
			}
			if strings.HasPrefix(line, `{"command":"retire-owner"}`) && reply != `{"error":"attestation is required","status":"error"}`+"\n" {
				t.Errorf("retire-owner without attestation: %s", reply)
			}
		}
	})

	t.Run("client library", func(t *testing.T) {
		path := startServer(t, &Server{Handler: completionHandler(false)})
		raw, err := Call(context.Background(), path, Request{Command: CmdShutdown})
		if err != nil || string(raw) != `{"status":"success","message":"shutdown"}` {
			t.Fatalf("Call(shutdown) = %s, %v", raw, err)
		}
	})
}

// TestDecodeRetireOwnerAttestation (OWN-01, spec §3.7): the attestation is
// a required string; a missing, empty, null or non-string value is
// "attestation is required", and a canonical value reaches the handler
// unchanged. (The sha256:<64 lowercase hex> format itself is checked by the
// daemon's handler before anything happens: daemon
// TestRetireOwnerRejectsMalformedAttestation.)
func TestDecodeRetireOwnerAttestation(t *testing.T) {
	for _, line := range []string{
		`{"command":"retire-owner"}`,
		`{"command":"retire-owner","attestation":""}`,
		`{"command":"retire-owner","attestation":null}`,
		`{"command":"retire-owner","attestation":42}`,
		`{"command":"retire-owner","attestation":["` + validAttestation + `"]}`,
		`{"command":"retire-owner","attestation":{"sha256":"00"}}`,
	} {
		_, err := DecodeRequest([]byte(line))
		if err == nil || err.Error() != "attestation is required" {
			t.Errorf("%s: error %v, want exactly %q", line, err, "attestation is required")
		}
	}
	b, _ := json.Marshal(map[string]string{"command": "retire-owner", "attestation": validAttestation})
	req, err := DecodeRequest(b)
	if err != nil || req.Command != CmdRetireOwner || req.Attestation != validAttestation {
		t.Fatalf("canonical attestation: %+v, %v", req, err)
	}
}
