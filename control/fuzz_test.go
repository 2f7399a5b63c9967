package control

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// FuzzDecodeRequest: any request line decodes or fails with an error, never
// panics; accepted requests name a known command and carry required fields.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"command":"status"}`,
		`{"command":"deploy","releasePath":"/srv/r1","releaseId":"v1","revision":"abc"}`,
		`{"command":"events","limit":5}`,
		`{"command":"logs","processId":"web","follow":true,"limit":10}`,
		`{"command":"restart","processId":"worker#1","policy":"companion"}`,
		`{"command":"retire-owner","attestation":"sha256:00"}`,
		`[1,2,3]`, `123`, `"x"`, `{`, `{"command":null}`, `{"command":"deploy","releasePath":{}}`,
		`{"command":"events","limit":1e400}`, "\x00\xff", `{"command":"status"}{"x":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := DecodeRequest(line)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if _, ok := requestFields[req.Command]; !ok {
			t.Fatalf("accepted unknown command %q", req.Command)
		}
		if req.Command == CmdDeploy && req.ReleasePath == "" {
			t.Fatal("deploy accepted without releasePath")
		}
		if req.Limit < 0 {
			t.Fatalf("negative limit %d", req.Limit)
		}
	})
}

// FuzzReadLine: the framing never returns more than the limit and never
// panics on arbitrary streams.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("{\"command\":\"status\"}\n{\"command\":\"events\"}\n"), 64)
	f.Add([]byte(strings.Repeat("x", 200)+"\n"), 100)
	f.Add([]byte("\r\n\n\r"), 1)
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		if limit < 1 || limit > 1<<16 {
			return
		}
		r := bufio.NewReaderSize(bytes.NewReader(data), 16)
		for range 1000 {
			line, err := readLine(r, limit)
			if err != nil {
				return
			}
			if len(line) > limit+1 {
				t.Fatalf("line of %d bytes over limit %d", len(line), limit)
			}
		}
	})
}
